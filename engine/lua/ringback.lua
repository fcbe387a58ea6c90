#!lua name=ringback
--[[
Ringback's Valkey function library (FUNCTION LOAD REPLACE at startup; persisted in
the AOF, reloaded by the engine if a fresh server lacks it).

Every function here touches the keys of ONE profile (one hash tag, one cluster
slot). KEYS are always the seven profile keys in engine/keys.py order:
  KEYS[1] p      hash    the profile
  KEYS[2] seen   zset    event ids in the dedupe window (score = receive ms)
  KEYS[3] pages  list    recent "ts path" entries, newest first
  KEYS[4] rl     string  batches in the current rate-limit window
  KEYS[5] links  set     "<site>:<anonymous_id>" merged into this customer
  KEYS[6] attrs  hash    CRM attributes
  KEYS[7] hist   stream  contact history

Profile hash fields (strings in Valkey, numbers where numeric):
  first_ts last_ts seen_ms online_until     timestamps (ms)
  n:<type>                                   events per type
  cat:<category>                             page views per category
  i:<key> it:<key>                           decayed intent and the ms it was computed at
  s_n s_start s_last s_pages s_dwell s_events  current session (s_n counts sessions)
  dwell                                      total visible dwell (ms)
  c:<product>:{amount,term,rate,monthly,ts,n,max}  loan calculator state
  f:<action> f:last_abandon f:last_abandon_ts     form interactions (names, never values)
  x:<product> x:<product>:call               registered interest / asked for a call (ms)
  last_page utm_source utm_campaign first_utm_source first_utm_campaign site
  merged_into                                (anonymous only) the customer it merged into
]]

local STRIDE = 15

-- Read the whole hash into a table once; mutate in Lua; write back the changed fields
-- in one HSET. Cheaper than a command per field and trivially atomic.
local function load_hash(key)
  local flat = redis.call('HGETALL', key)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end

local function num(h, k)
  return tonumber(h[k]) or 0
end

local function set(h, dirty, k, v)
  h[k] = v
  dirty[k] = true
end

local function incr(h, dirty, k, by)
  set(h, dirty, k, num(h, k) + by)
end

local function fmt(v)
  if type(v) == 'number' then
    if v == math.floor(v) and math.abs(v) < 1e15 then return string.format('%d', v) end
    return string.format('%.17g', v)
  end
  return v
end

local function flush(key, h, dirty)
  local args = {}
  for k in pairs(dirty) do
    args[#args + 1] = k
    args[#args + 1] = fmt(h[k])
  end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
end

-- Exponentially decayed sum: value halves every half-life; events may arrive late.
local function decay_add(h, dirty, key, ts, w, half_life)
  local vk, tk = 'i:' .. key, 'it:' .. key
  local v = num(h, vk)
  local t0 = tonumber(h[tk]) or ts
  if ts >= t0 then
    v = v * 2 ^ (-(ts - t0) / half_life) + w
    t0 = ts
  else
    v = v + w * 2 ^ (-(t0 - ts) / half_life)
  end
  set(h, dirty, vk, v)
  set(h, dirty, tk, t0)
end

local function max_field(h, dirty, k, v)
  if v > num(h, k) then set(h, dirty, k, v) end
end

local function flatten(h)
  local out = {}
  for k, v in pairs(h) do
    out[#out + 1] = k
    out[#out + 1] = fmt(v)
  end
  return out
end

--[[
rb_ingest: apply one batch to one profile, exactly once per event id.
ARGV: now_ms, ttl_s (0 = keep forever), dedupe_window_ms, half_life_ms, session_gap_ms,
      presence_ttl_ms, rl_max (0 = off), rl_window_ms, link_member ('' = none), site,
      n_events, then n_events x STRIDE fields:
      id type ts page cat ikey w dwell prod amount term rate monthly x1 x2
Returns {'ok', accepted, duplicates, 0, profile flat, accepted flags}
     (flags: one '1'/'0' per event, in batch order), {'rate_limited', retry_after_ms},
     or {'needs_merge'} (nothing written) when link_member is not yet in `links`.
     or {'rate_limited', retry_after_ms}.
]]
local function ingest(keys, args)
  local P, SEEN, PAGES, RL, LINKS = keys[1], keys[2], keys[3], keys[4], keys[5]
  local now = tonumber(args[1])
  local ttl_s = tonumber(args[2])
  local window = tonumber(args[3])
  local half_life = tonumber(args[4])
  local gap = tonumber(args[5])
  local presence_ttl = tonumber(args[6])
  local rl_max = tonumber(args[7])
  local rl_window = tonumber(args[8])
  local link = args[9]
  local site = args[10]
  local n = tonumber(args[11])

  -- First identified batch of this anonymous id: merge before applying, so events the
  -- anonymous profile already counted are deduped by the merged `seen` set.
  if link ~= '' and redis.call('SISMEMBER', LINKS, link) == 0 then
    return {'needs_merge'}
  end

  if rl_max > 0 then
    local count = redis.call('INCR', RL)
    if count == 1 then redis.call('PEXPIRE', RL, rl_window) end
    if count > rl_max then
      return {'rate_limited', redis.call('PTTL', RL)}
    end
  end

  redis.call('ZREMRANGEBYSCORE', SEEN, '-inf', '(' .. (now - window))
  local h = load_hash(P)
  local dirty = {}
  local accepted, dups = 0, 0
  local new_pages = {}
  local flags = {}

  for e = 0, n - 1 do
    local b = 11 + e * STRIDE
    local id, etype, ts = args[b + 1], args[b + 2], tonumber(args[b + 3])
    if redis.call('ZADD', SEEN, 'NX', now, id) == 0 then
      dups = dups + 1
      flags[e + 1] = '0'
    else
      accepted = accepted + 1
      flags[e + 1] = '1'
      local page, cat, ikey = args[b + 4], args[b + 5], args[b + 6]
      local w, dwell = tonumber(args[b + 7]), tonumber(args[b + 8])
      local prod = args[b + 9]
      local x1, x2 = args[b + 14], args[b + 15]
      local tsc = math.min(ts, now)

      incr(h, dirty, 'n:' .. etype, 1)
      if h['first_ts'] == nil or ts < num(h, 'first_ts') then set(h, dirty, 'first_ts', ts) end
      max_field(h, dirty, 'last_ts', ts)
      max_field(h, dirty, 'seen_ms', tsc)
      max_field(h, dirty, 'online_until', tsc + presence_ttl)

      -- Sessions: a gap longer than session_gap_ms starts a new one.
      local s_last = tonumber(h['s_last'])
      if s_last == nil or ts - s_last > gap then
        incr(h, dirty, 's_n', 1)
        set(h, dirty, 's_start', ts)
        set(h, dirty, 's_last', ts)
        set(h, dirty, 's_pages', 0)
        set(h, dirty, 's_dwell', 0)
        set(h, dirty, 's_events', 0)
      end
      max_field(h, dirty, 's_last', ts)
      incr(h, dirty, 's_events', 1)

      if ikey ~= '' and w > 0 then decay_add(h, dirty, ikey, tsc, w, half_life) end

      if etype == 'page_view' then
        incr(h, dirty, 's_pages', 1)
        if cat ~= '' then incr(h, dirty, 'cat:' .. cat, 1) end
        if page ~= '' then
          set(h, dirty, 'last_page', page)
          new_pages[#new_pages + 1] = ts .. ' ' .. page
        end
        if x1 ~= '' then
          set(h, dirty, 'utm_source', x1)
          if h['first_utm_source'] == nil then set(h, dirty, 'first_utm_source', x1) end
        end
        if x2 ~= '' then
          set(h, dirty, 'utm_campaign', x2)
          if h['first_utm_campaign'] == nil then set(h, dirty, 'first_utm_campaign', x2) end
        end
      elseif etype == 'heartbeat' then
        incr(h, dirty, 's_dwell', dwell)
        incr(h, dirty, 'dwell', dwell)
      elseif etype == 'calc' then
        local c = 'c:' .. prod .. ':'
        incr(h, dirty, c .. 'n', 1)
        local amount = tonumber(args[b + 10])
        max_field(h, dirty, c .. 'max', amount)
        if ts >= num(h, c .. 'ts') then
          set(h, dirty, c .. 'ts', ts)
          set(h, dirty, c .. 'amount', amount)
          set(h, dirty, c .. 'term', tonumber(args[b + 11]))
          set(h, dirty, c .. 'rate', args[b + 12])
          set(h, dirty, c .. 'monthly', args[b + 13])
        end
      elseif etype == 'form' then
        incr(h, dirty, 'f:' .. x1, 1)
        if x1 == 'abandon' then
          set(h, dirty, 'f:last_abandon', x2)
          set(h, dirty, 'f:last_abandon_ts', ts)
        end
      elseif etype == 'interest' then
        max_field(h, dirty, 'x:' .. prod, ts)
        if x1 == '1' then max_field(h, dirty, 'x:' .. prod .. ':call', ts) end
      end
    end
  end

  if accepted > 0 then
    if h['site'] == nil then set(h, dirty, 'site', site) end
    flush(P, h, dirty)
    if #new_pages > 0 then
      redis.call('LPUSH', PAGES, unpack(new_pages))
      redis.call('LTRIM', PAGES, 0, 19)
    end
    if ttl_s > 0 then
      redis.call('EXPIRE', P, ttl_s)
      redis.call('EXPIRE', PAGES, ttl_s)
    end
  end
  redis.call('PEXPIRE', SEEN, window)
  return {'ok', accepted, dups, 0, flatten(h), table.concat(flags)}
end

--[[
rb_merge_export: read an anonymous profile for merging into customer ARGV[1].
Marks it merged_into=<customer> so erasure finds it and it is never merged twice
into two different customers. Returns {'ok', profile flat, seen flat, pages}
or {'conflict', other_customer}.
]]
local function merge_export(keys, args)
  local P = keys[1]
  local customer = args[1]
  local current = redis.call('HGET', P, 'merged_into')
  if current and current ~= customer then return {'conflict', current} end
  if redis.call('EXISTS', P) == 1 then redis.call('HSET', P, 'merged_into', customer) end
  return {
    'ok',
    redis.call('HGETALL', P),
    redis.call('ZRANGE', keys[2], 0, -1, 'WITHSCORES'),
    redis.call('LRANGE', keys[3], 0, -1),
  }
end

--[[
rb_merge_apply: fold an exported anonymous profile into this customer, exactly once.
The SISMEMBER/SADD on `links` is the idempotency point: a retried or concurrent merge
of the same anonymous id finds it there and changes nothing.
ARGV: link_member, half_life_ms, dedupe_window_ms, n_fields, fields flat...,
      n_seen, seen flat (id, score)..., n_pages, pages...
Returns 1 if merged, 0 if it had already been.
]]
local function merge_apply(keys, args)
  local P, SEEN, PAGES, LINKS = keys[1], keys[2], keys[3], keys[5]
  local link = args[1]
  local half_life = tonumber(args[2])
  local window = tonumber(args[3])
  if redis.call('SADD', LINKS, link) == 0 then return 0 end

  local pos = 4
  local nf = tonumber(args[pos]); pos = pos + 1
  local a = {}
  for i = 1, nf, 2 do a[args[pos + i - 1]] = args[pos + i] end
  pos = pos + nf
  local h = load_hash(P)
  local dirty = {}
  local a_newer = num(a, 'last_ts') > num(h, 'last_ts')

  for k, v in pairs(a) do
    if k == 'merged_into' or k == 'site' then
      -- anonymous-only bookkeeping
    elseif k:sub(1, 2) == 'n:' or k:sub(1, 4) == 'cat:' or k == 'dwell'
        or (k:sub(1, 2) == 'f:' and k ~= 'f:last_abandon' and k ~= 'f:last_abandon_ts')
        or (k:sub(1, 2) == 'c:' and k:sub(-2) == ':n') then
      incr(h, dirty, k, tonumber(v))
    elseif k:sub(1, 2) == 'i:' then
      local key = k:sub(3)
      local at = tonumber(a['it:' .. key]) or 0
      decay_add(h, dirty, key, at, tonumber(v), half_life)
    elseif k:sub(1, 3) == 'it:' then
      -- handled with its i: field
    elseif k:sub(1, 2) == 'c:' and k:sub(-4) == ':max' then
      max_field(h, dirty, k, tonumber(v))
    elseif k:sub(1, 2) == 'c:' then
      local prefix = k:match('^(c:[^:]+:)')
      if num(a, prefix .. 'ts') > num(h, prefix .. 'ts') then set(h, dirty, k, v) end
    elseif k == 'first_ts' then
      if h[k] == nil or tonumber(v) < num(h, k) then set(h, dirty, k, tonumber(v)) end
    elseif k == 'last_ts' or k == 'seen_ms' or k == 'online_until' or k:sub(1, 2) == 'x:' then
      max_field(h, dirty, k, tonumber(v))
    elseif k:sub(1, 6) == 'first_' then
      if h[k] == nil then set(h, dirty, k, v) end
    elseif k:sub(1, 2) == 's_' then
      if num(a, 's_last') > num(h, 's_last') then set(h, dirty, k, v) end
    elseif a_newer or h[k] == nil then
      set(h, dirty, k, v)
    end
  end
  flush(P, h, dirty)

  local ns = tonumber(args[pos]); pos = pos + 1
  for i = 0, ns / 2 - 1 do
    redis.call('ZADD', SEEN, 'NX', args[pos + 2 * i + 1], args[pos + 2 * i])
  end
  pos = pos + ns
  if ns > 0 then redis.call('PEXPIRE', SEEN, window) end
  local np = tonumber(args[pos]); pos = pos + 1
  if np > 0 then
    local all = redis.call('LRANGE', PAGES, 0, -1)
    for i = 0, np - 1 do all[#all + 1] = args[pos + i] end
    table.sort(all, function(x, y)
      return (tonumber(x:match('^(%d+)')) or 0) > (tonumber(y:match('^(%d+)')) or 0)
    end)
    redis.call('DEL', PAGES)
    local keep = {}
    for i = 1, math.min(20, #all) do keep[i] = all[i] end
    redis.call('RPUSH', PAGES, unpack(keep))
  end
  return 1
end

--[[
rb_erase: delete every key of one profile. Returns the linked anonymous ids so the
caller can erase those profiles too (they live in other slots).
]]
local function erase(keys, args)
  local links = redis.call('SMEMBERS', keys[5])
  local deleted = redis.call('DEL', unpack(keys))
  return {deleted, links}
end

--[[
rb_read: the profile, its recent pages and its links, in one call.
]]
local function read(keys, args)
  return {
    redis.call('HGETALL', keys[1]),
    redis.call('LRANGE', keys[3], 0, -1),
    redis.call('SMEMBERS', keys[5]),
    redis.call('HGETALL', keys[6]),
  }
end

redis.register_function('rb_ingest', ingest)
redis.register_function('rb_merge_export', merge_export)
redis.register_function('rb_merge_apply', merge_apply)
redis.register_function('rb_erase', erase)
redis.register_function{function_name = 'rb_read', callback = read, flags = {'no-writes'}}
