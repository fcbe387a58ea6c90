// Snowplow's browser tracker, unmodified, bundled by esbuild for a test page
// (tests/test_js_clients.py): the page calls window.snowplowTest.*.
import { newTracker, trackPageView, trackStructEvent } from '@snowplow/browser-tracker'

window.snowplowTest = { newTracker, trackPageView, trackStructEvent }
