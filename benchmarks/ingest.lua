-- wrk script: realistic, unique batches for POST /v1/events.
-- wrk -s benchmarks/ingest.lua URL -- <events_per_batch> <visitors> <thread_tag> [delay_ms]
-- With delay_ms each connection waits that long between requests: a paced background
-- load of about connections * 1000 / (delay_ms + latency) requests/s.
-- Event ids are unique per request (so dedupe never short-cuts the work) and
-- visitors rotate over a pool (so per-visitor rate limits are not what we measure).
local n, visitors, tag = 10, 20000, "t"
local counter = 0
local kinds = {
  '{"id":"%s","type":"page_view","ts":%d,"page":"/mortgages/rates","props":{"title":"Mortgage rates","utm_source":"newsletter"}}',
  '{"id":"%s","type":"calc","ts":%d,"page":"/mortgages/calculator","props":{"product":"mortgage","amount":250000,"term_months":300,"rate":4.1,"monthly_payment":1332.5}}',
  '{"id":"%s","type":"heartbeat","ts":%d,"page":"/mortgages/calculator","props":{"dwell_ms":15000}}',
  '{"id":"%s","type":"click","ts":%d,"page":"/mortgages/calculator","props":{"text":"Talk to an advisor","href":"/contact"}}',
  '{"id":"%s","type":"scroll","ts":%d,"page":"/mortgages/calculator","props":{"depth":50}}',
}

function init(args)
  n = tonumber(args[1]) or n
  visitors = tonumber(args[2]) or visitors
  tag = args[3] or tag
  local delay_ms = tonumber(args[4]) or 0
  if delay_ms > 0 then
    -- wrk looks for a global delay() after init: defined only when pacing. Random
    -- around the mean, so connections do not fall into step and arrive in bursts.
    function delay() return math.random() * 2 * delay_ms end
  end
end

function request()
  counter = counter + 1
  local now = os.time() * 1000
  local parts = {}
  for i = 1, n do
    local id = string.format("%s%x.%x", tag, counter, i)
    parts[i] = string.format(kinds[(counter + i) % #kinds + 1], id, now)
  end
  local body = string.format('{"site":"demo-bank","anonymous_id":"bench-%08d","events":[%s]}',
    (counter * 7919) % visitors, table.concat(parts, ","))
  return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json"}, body)
end
