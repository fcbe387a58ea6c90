// Segment's Node library, unmodified, pointed at a Ringback engine (tests/test_js_clients.py).
// usage: node segment_node.mjs HOST WRITE_KEY USER_ID ANONYMOUS_ID
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, userId, anonymousId] = process.argv.slice(2)
const analytics = new Analytics({ writeKey, host, flushAt: 10, maxRetries: 2 })
const errors = []
analytics.on('error', (err) => errors.push(String(err?.reason?.message ?? err?.reason ?? err)))

analytics.page({ userId, anonymousId, name: 'Mortgages', properties: { path: '/mortgages' } })
for (let i = 0; i < 3; i++) {
  analytics.track({
    userId,
    anonymousId,
    event: 'Mortgage Calculated',
    messageId: `mc-${anonymousId}-${i}`,
    properties: { amount: 250000 + i * 10000, term_months: 300 },
  })
}
// The same message again, as a retry would send it: counted once.
analytics.track({
  userId,
  anonymousId,
  event: 'Mortgage Calculated',
  messageId: `mc-${anonymousId}-0`,
  properties: { amount: 250000, term_months: 300 },
})
await analytics.closeAndFlush({ timeout: 10000 })
console.log(JSON.stringify({ errors }))
