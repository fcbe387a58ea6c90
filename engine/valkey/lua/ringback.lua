#!lua name=ringback
--[[
Ringback's Valkey function library (FUNCTION LOAD REPLACE at startup; persisted in
the AOF, reloaded by the engine if a fresh server lacks it).

Every function here touches the keys of ONE profile (one hash tag, one cluster
slot). KEYS are always the seven profile keys in engine/keys.py order:
  KEYS[1] p      string  the profile: one JSON object (fields below)
  KEYS[2] seen   zset    event ids in the dedupe window, each as a 64-bit hash in decimal
                         (engine/profile/profiles.py dedupe_member); score = receive
                         hour since DEDUPE_EPOCH_MS. Both are integers a listpack
                         stores in 8 and 2 bytes (14 B an entry with back-lengths, was 24)
  KEYS[3] links  set     "<site>:<anonymous_id>" merged into this customer
  KEYS[4] attrs  hash    CRM attributes
  KEYS[5] hist   stream  contact history (decisions, outcomes), capped
  KEYS[6] pol    hash    contact policy: r:<rule> / c:<channel> cooldown-until ms,
                         d:<channel>:<day> contacts that day
  KEYS[7] refs   zset    where the profile's data lives in other slots (reference ->
                         ms it is gone for sure); written by rb_refs (and a plain ZADD
                         for page-offer audits), read by rb_erase, trimmed by rb_ingest
  KEYS[8] erased string  (rb_erase, rb_history only) the erasure marker: ms erased

The profile is one JSON value rather than a hash: measured here, an HSET of ~30 fields
into a listpack hash cost ~33 µs of Valkey time, a GET + cjson decode/encode + SET ~15.

Profile fields. engine/profile/layout.py declares them (FIELDS: what each means, how a
batch writes it, how rb_merge_apply merges it); this table repeats that declaration,
and tests/test_profile_layout.py checks the two agree row for row, and that rb_ingest
and rb_merge_apply do what each row says. Change both together. <name> parts are
chosen by the client (products, forms) or config (types, categories).
<profile-fields>
  code                 write        merge           meaning
  first_ts             min          min             first event (ms)
  last_ts              max          max             newest event (ms)
  online_until         max          max             newest event (at most now) + presence ttl
  n:<type>             counter      sum             events per type
  cat:<category>       counter      sum             page views per category
  i:<key>              decayed      decayed_sum     decayed intent per category or product
  it:<key>             decay_ts     decayed_sum     the ms i:<key> was decayed to
  s_n                  session      newest_session  sessions started
  s_start              session      newest_session  current session start (ms; absent: first_ts)
  s_last               session      newest_session  current session last event (ms; absent: last_ts)
  s_pages              session      newest_session  current session page views
  s_dwell              session      newest_session  current session dwell (ms; absent: 0)
  s_events             session      newest_session  current session events
  dwell                counter      sum             total visible dwell (ms)
  c:<product>:amount   latest       newest_product  newest calculator amount
  c:<product>:term     latest       newest_product  newest calculator term (months)
  c:<product>:rate     latest       newest_product  newest calculator rate (absent: none)
  c:<product>:monthly  latest       newest_product  newest monthly payment (absent: none)
  c:<product>:ts       latest       newest_product  newest calculator event (ms)
  c:<product>:was      previous     newest_product  [amount, term, ts - c:<product>:ts] before the newest amount/term change
  c:<product>:n        counter      sum             calculator events
  c:<product>:max      max          max             largest amount
  f:focus              counter      sum             form fields focused
  f:abandon            counter      sum             forms abandoned
  f:submit             counter      sum             forms submitted
  f:last_abandon       latest       newer_profile   newest abandoned form (name)
  f:last_abandon_ts    latest       newer_profile   its ms
  x:<product>          max          max             newest interest (ms)
  x:<product>:call     max          max             newest call request (ms)
  pages                recent       recent          newest first: 'ts path', then '-<gap ms>[ path]'
  last_page            latest       newer_profile   newest page (absent: pages' newest path)
  lp_ts                latest       newer_profile   its ms (absent: pages' newest ts)
  utm_source           latest       newest_touch    last touch utm_source
  utm_medium           latest       newest_touch    last touch utm_medium
  utm_campaign         latest       newest_touch    last touch utm_campaign
  utm_term             latest       newest_touch    last touch utm_term
  utm_content          latest       newest_touch    last touch utm_content
  ref                  latest       newest_touch    last touch referrer host
  utm_ts               latest       newest_touch    last touch (ms)
  first_utm_source     first        earliest_touch  first touch utm_source
  first_utm_medium     first        earliest_touch  first touch utm_medium
  first_utm_campaign   first        earliest_touch  first touch utm_campaign
  first_utm_term       first        earliest_touch  first touch utm_term
  first_utm_content    first        earliest_touch  first touch utm_content
  first_ref            first        earliest_touch  first touch referrer host
  first_utm_ts         first        earliest_touch  first touch (ms)
  sg                   external     union_min       {segment: ms entered}, current members
  sgx                  external     union_max       {segment: ms of its last exit}
  site                 first        kept            site of the first batch (customers; an anonymous profile's key holds it)
  rl_w                 bookkeeping  kept            rate-limit window start (ms)
  rl_n                 bookkeeping  kept            batches in the window
  trim_ts              bookkeeping  kept            last dedupe-set trim (h, DEDUPE_EPOCH_MS)
  kn:c                 bookkeeping  recounted       calc names kept
  kn:x                 bookkeeping  recounted       interest names kept (absent: 0)
  kn:i                 bookkeeping  recounted       intent names kept (absent: 0)
  kn:cat               bookkeeping  recounted       categories names kept (absent: 0)
  attrs                external     kept            (customers) CRM attributes
  merged_into          external     kept            (anonymous) the customer it merged into
</profile-fields>

Bounded size. A client chooses product names, pages and campaign values, so each key
space it can grow is capped here (rb_ingest counts new keys per space in kn:<space>
and ranks the profile only when a count passes its cap; rb_merge_apply always ranks;
the least recent go first) and each string it sends is clipped to a budget of
cjson-encoded bytes in engine/profile/delta.py (`/` and `"` count 2, control chars 6):
  c:<product>:*      10 products, newest by c:<product>:ts             <= 5560 B
  x:<product>[:call] 10 products, newest by x:<product>                <= 1230 B
  i:<key> it:<key>   16 keys (categories, products), newest by it:<key> <= 1904 B
  cat:<category>     16 categories, most viewed (names from config)     <=  976 B
  pages              20 entries, path <= 96 B each, a '-' on 19 of them  <= 2330 B
  sg, sgx            32 segments each (ids from config, <= 64 chars)     <= 5711 B
  last_page 256 B; the 6 codes of each touch (utm_*, ref; first_*) and
  f:last_abandon 128 B each; site 64 B; merged_into 128 B               <= 2390 B
  28 fixed numeric fields (n:<type> for 8 types, f:<action> for 3, ...)  <=  916 B
  kn:c kn:x kn:i kn:cat (two-digit counts)                               <=   48 B
So a profile is at most 21,067 bytes (every name at its longest, every number 21
characters), under the 24 KB (MAX_PROFILE_BYTES) that tests/test_profile_caps.py
asserts (a typical one, with a touch, a product and a few segments, is well under
2 KB); `attrs`, which the bank writes (PUT .../attributes), comes on top. A profile
stored before the caps (no kn:* counts, or over LEGACY_TRIM_BYTES) is trimmed by its
next batch.
]]

-- Read the whole profile into a table once; mutate in Lua; write it back once.
local function load_hash(key)
  local raw = redis.call('GET', key)
  if not raw then return {} end
  return cjson.decode(raw)
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

-- The profile as stored: cjson's JSON without its `\/` escapes. JSON does not need
-- `/` escaped, every reader (cjson, orjson) takes it plain, and paths, referrers and
-- URLs are full of them: a byte each (4 of a typical 640 B profile). The pattern
-- is backslash-slash (`\` is no escape in a Lua pattern); an escaped backslash before
-- a slash comes out as `\\\/`, whose last two bytes match, so it still reads back.
local function encode_profile(h)
  return (cjson.encode(h):gsub('\\/', '/'))
end

-- Write the profile back (keeping any TTL); returns the JSON it wrote.
local function flush(key, h, dirty)
  local raw = encode_profile(h)
  if next(dirty) ~= nil then redis.call('SET', key, raw, 'KEEPTTL') end
  return raw
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
  -- 7 significant digits, where cjson writes 14: a score, not a ledger (7 B less).
  set(h, dirty, vk, tonumber(string.format('%.7g', v)))
  set(h, dirty, tk, t0)
end

local function max_field(h, dirty, k, v)
  if v > num(h, k) then set(h, dirty, k, v) end
end

-- XADD an entry (a flat {field: value} table) to a capped stream.
local function append_history(key, entry, max)
  local flat = {}
  for k, v in pairs(entry) do
    flat[#flat + 1] = k
    flat[#flat + 1] = type(v) == 'table' and cjson.encode(v) or tostring(v)
  end
  return redis.call('XADD', key, 'MAXLEN', '~', max, '*', unpack(flat))
end

local MAX_PAGES = 20

-- The newest MAX_PAGES page entries of two lists, newest first, as `pages` stores them
-- (engine/profile/profiles.py page_entries reads them): the newest 'ts path', each
-- older one '-<ms before the entry above> path', or just '-<ms>' when its path is the
-- one above's. A gap takes ~5 digits where a ts takes 13, and a page viewed again
-- (a calculator's, a reload) no bytes; a profile stored before reads as all 'ts path'.
-- Each entry's ts is read once (a comparator that parsed both sides cost ~90 µs a
-- batch: 2 x n log n pattern matches), then the entries are sorted as numbers.
local function recent_pages(old, new)
  local all = {}
  local function add(list)
    local t, path
    for _, p in ipairs(list) do
      local rel, n, sp, rest = p:match('^(%-?)(%d+)( ?)(.*)$')
      if rel == '-' and t then t = t - tonumber(n) else t = tonumber(n) or 0 end
      if sp ~= '' or not path then path = rest or p end
      all[#all + 1] = {t, path}
    end
  end
  if type(old) == 'table' then add(old) end
  add(new)
  table.sort(all, function(x, y) return x[1] > y[1] end)
  local keep, t, path = {}, nil, nil
  for i = 1, math.min(MAX_PAGES, #all) do
    local e = all[i]
    if not t then
      keep[i] = string.format('%d', e[1]) .. ' ' .. e[2]
    elseif e[2] == path then
      keep[i] = '-' .. string.format('%d', t - e[1])
    else
      keep[i] = '-' .. string.format('%d', t - e[1]) .. ' ' .. e[2]
    end
    t, path = e[1], e[2]
  end
  return keep
end

-- The path of the newest entry of a `pages` list (nil if none). `last_page` is left out
-- while it is this path (engine/profile/profiles.py decode_profile falls back to it).
local function newest_path(pages)
  return type(pages) == 'table' and pages[1] and pages[1]:match('^%-?%d+ (.*)$') or nil
end

-- Timestamps a profile can imply are left out while it does (~70 B of a typical
-- 650 B profile, where they all are): lp_ts while it is the newest page's ts (the
-- newest entry of `pages` always holds its ts in full: `recent_pages`), s_last while it
-- is last_ts, s_start while it is first_ts (one session). `spell_out` writes them back
-- for the code that compares them (rb_ingest, rb_merge_apply, both sides of it),
-- `leave_out` takes them out again before the profile is stored; decode_profile reads
-- an absent one the same way. A profile stored before holds them all and reads as it
-- is. it:<key> (often last_ts too) is not left out: a worker of the release before
-- would read an absent one as 0 and decay the intent to nothing.
local function newest_page_ts(pages)
  return type(pages) == 'table' and pages[1] and tonumber(pages[1]:match('^(%d+)')) or nil
end
local function spell_out(h)
  if h['lp_ts'] == nil then h['lp_ts'] = newest_page_ts(h['pages']) end
  if h['s_start'] == nil and h['s_n'] ~= nil then h['s_start'] = tonumber(h['first_ts']) end
  local last = tonumber(h['last_ts'])
  if last == nil then return end
  if h['s_last'] == nil and h['s_n'] ~= nil then h['s_last'] = last end
end
local function leave_out(h)
  if h['lp_ts'] ~= nil and tonumber(h['lp_ts']) == newest_page_ts(h['pages']) then
    h['lp_ts'] = nil
  end
  if h['s_start'] ~= nil and tonumber(h['s_start']) == tonumber(h['first_ts']) then
    h['s_start'] = nil
  end
  local last = tonumber(h['last_ts'])
  if last == nil then return end
  if tonumber(h['s_last']) == last then h['s_last'] = nil end
end

-- Caps on the key spaces a client chooses (header: "Bounded size"). Change with the
-- worst-case size there and tests/test_profile_caps.py.
local MAX_CALC = 10       -- c:<product>:*      newest by c:<product>:ts
local MAX_INTEREST = 10   -- x:<product>[:call]  newest by x:<product>
local MAX_INTENT = 16     -- i:<key> it:<key>    newest by it:<key>
local MAX_CATEGORIES = 16 -- cat:<category>      most viewed (names come from config)
local MAX_PROFILE_BYTES = 24576  -- the documented worst case (without `attrs`)
-- A stored profile past this was written before the caps: trim it on its next batch.
-- Past the worst case by the largest CRM attributes (50 held products, ~3.4 KB), so a
-- capped customer with full attributes is never re-ranked on every batch.
local LEGACY_TRIM_BYTES = MAX_PROFILE_BYTES + 4096

-- Keep the `max` entries of {name -> rank} with the highest rank (ties: smaller name);
-- returns the set of names to drop, or nil when nothing is over.
local function over_cap(ranks, count, max)
  if count <= max then return nil end
  local names = {}
  for name in pairs(ranks) do names[#names + 1] = name end
  table.sort(names, function(x, y)
    if ranks[x] ~= ranks[y] then return ranks[x] > ranks[y] end
    return x < y
  end)
  local drop = {}
  for i = max + 1, #names do drop[names[i]] = true end
  return drop
end

-- Enforce the caps on h: one pass to rank, one more only if something must go.
-- Returns true if it dropped fields. Called when a batch or merge added a field.
local function cap_profile(h)
  local calc, interest, intent, cats = {}, {}, {}, {}
  local nc, nx, ni, ncat = 0, 0, 0, 0
  for k, v in pairs(h) do
    local p2 = k:sub(1, 2)
    if p2 == 'c:' then
      local prod, f = k:match('^c:([^:]*):(.*)$')
      if prod then
        if calc[prod] == nil then nc = nc + 1; calc[prod] = 0 end
        if f == 'ts' then calc[prod] = tonumber(v) or 0 end
      end
    elseif p2 == 'x:' then
      local prod = k:match('^x:([^:]*)')
      if interest[prod] == nil then nx = nx + 1; interest[prod] = 0 end
      if not k:find(':', 3, true) then interest[prod] = tonumber(v) or 0 end
    elseif p2 == 'i:' or k:sub(1, 3) == 'it:' then
      local key = p2 == 'i:' and k:sub(3) or k:sub(4)
      if intent[key] == nil then ni = ni + 1; intent[key] = 0 end
      if p2 ~= 'i:' then intent[key] = tonumber(v) or 0 end
    elseif k:sub(1, 4) == 'cat:' then
      ncat = ncat + 1
      cats[k:sub(5)] = tonumber(v) or 0
    end
  end
  local dc = over_cap(calc, nc, MAX_CALC)
  local dx = over_cap(interest, nx, MAX_INTEREST)
  local di = over_cap(intent, ni, MAX_INTENT)
  local dcat = over_cap(cats, ncat, MAX_CATEGORIES)
  -- What is kept, so rb_ingest counts new keys instead of ranking on every batch. A
  -- count of 0 is left out (num() reads it as 0), but kn:c: it marks a profile stored
  -- with the caps (rb_ingest).
  h['kn:c'] = math.min(nc, MAX_CALC)
  h['kn:x'] = nx > 0 and math.min(nx, MAX_INTEREST) or nil
  h['kn:i'] = ni > 0 and math.min(ni, MAX_INTENT) or nil
  h['kn:cat'] = ncat > 0 and math.min(ncat, MAX_CATEGORIES) or nil
  if not (dc or dx or di or dcat) then return false end
  -- Clearing fields while traversing with pairs is allowed in Lua.
  for k in pairs(h) do
    local p2 = k:sub(1, 2)
    if (dc and p2 == 'c:' and dc[k:match('^c:([^:]*)')])
        or (dx and p2 == 'x:' and dx[k:match('^x:([^:]*)')])
        or (di and p2 == 'i:' and di[k:sub(3)])
        or (di and k:sub(1, 3) == 'it:' and di[k:sub(4)])
        or (dcat and k:sub(1, 4) == 'cat:' and dcat[k:sub(5)]) then
      h[k] = nil
    end
  end
  return true
end

-- A touch's value codes (layout.py LAST_TOUCH), last and first; utm_ts is its ms.
local TOUCH = {'utm_source', 'utm_medium', 'utm_campaign', 'utm_term', 'utm_content', 'ref'}

-- All codes of both touches, each merged as a whole (loading the library runs no loop).
local TOUCH_CODES = {
  utm_source = true, utm_medium = true, utm_campaign = true, utm_term = true,
  utm_content = true, ref = true, utm_ts = true,
  first_utm_source = true, first_utm_medium = true, first_utm_campaign = true,
  first_utm_term = true, first_utm_content = true, first_ref = true, first_utm_ts = true,
}

-- Whether `h` holds a first touch (first_utm_ts, or a first_* code stored before it).
local function has_first_touch(h)
  if h['first_utm_ts'] ~= nil then return true end
  for _, k in ipairs(TOUCH) do
    if h['first_' .. k] ~= nil then return true end
  end
  return false
end

-- Segment membership (sg: {segment: ms entered}, sgx: {segment: ms of its last exit})
-- holds ids from config, capped per object; rb_segments writes it, merges union it.
local MAX_SEGMENTS = 32

-- A {name: ms} object with at most MAX_SEGMENTS names, keeping the earliest ms (members:
-- the longest standing) or the latest (exits: the most recent); ties, the smaller name.
-- nil when empty: an empty object is never stored.
local function capped_ms(t, earliest)
  local names = {}
  for name in pairs(t) do names[#names + 1] = name end
  if #names == 0 then return nil end
  if #names <= MAX_SEGMENTS then return t end
  table.sort(names, function(x, y)
    if t[x] ~= t[y] then
      if earliest then return t[x] < t[y] end
      return t[x] > t[y]
    end
    return x < y
  end)
  local kept = {}
  for i = 1, MAX_SEGMENTS do kept[names[i]] = t[names[i]] end
  return kept
end

-- The union of two stored {name: ms} objects (either may be absent), per name the
-- earliest or the latest ms; capped.
local function union_ms(x, y, earliest)
  local u = {}
  for _, t in ipairs({x or {}, y or {}}) do
    if type(t) == 'table' then
      for name, ms in pairs(t) do
        local cur = u[name]
        if cur == nil or (earliest and ms < cur) or (not earliest and ms > cur) then
          u[name] = ms
        end
      end
    end
  end
  return capped_ms(u, earliest)
end

-- Keys a capped key space has, kept in the profile (kn:<space>) by cap_profile and
-- counted up by rb_ingest as new keys appear: ranking runs only when one goes over.
local CAP_OF = {['kn:c'] = MAX_CALC, ['kn:x'] = MAX_INTEREST, ['kn:i'] = MAX_INTENT,
                ['kn:cat'] = MAX_CATEGORIES}

-- The capped space a NEW field opens: a calculator product (its c:<p>:n counter), an
-- interest product (x:<p>, not x:<p>:call), a category; nil for any other field.
local function capped_space(k)
  local p2 = k:sub(1, 2)
  if p2 == 'c:' then return k:sub(-2) == ':n' and 'kn:c' or nil end
  if p2 == 'x:' then return (not k:find(':', 3, true)) and 'kn:x' or nil end
  if k:sub(1, 4) == 'cat:' then return 'kn:cat' end
  return nil
end

-- Count one new key of `space`; true when the space is now over its cap.
local function opened(h, dirty, space)
  local n = num(h, space) + 1
  set(h, dirty, space, n)
  return n > CAP_OF[space]
end

-- Count `k` if it is a new key of a capped space; true when that space is now over.
local function opens_over(h, dirty, k)
  if h[k] ~= nil then return false end
  local space = capped_space(k)
  return space ~= nil and opened(h, dirty, space)
end

-- The contact policy check-and-take shared by rb_reserve and rb_ingest's reservation:
-- nil and what it replaced (for rb_release) when taken, else the suppression reason.
local function take_policy(POL, a, now)
  local rk, ck = 'r:' .. a.rule, 'c:' .. a.channel
  local dk = 'd:' .. a.channel .. ':' .. a.day
  local state = redis.call('HMGET', POL, rk, ck, dk)
  if a.rule_cooldown_ms > 0 and (tonumber(state[1]) or 0) > now then
    return 'cooldown_rule'
  end
  if a.channel_cooldown_ms > 0 and (tonumber(state[2]) or 0) > now then
    return 'cooldown_channel'
  end
  if a.max_per_day > 0 and (tonumber(state[3]) or 0) >= a.max_per_day then
    return 'daily_cap'
  end
  local set_r = string.format('%d', now + a.rule_cooldown_ms)
  local set_c = string.format('%d', now + a.channel_cooldown_ms)
  redis.call('HSET', POL, rk, set_r, ck, set_c)
  redis.call('HINCRBY', POL, dk, 1)
  -- Keep policy state two days past the longest cooldown, then let it go.
  local keep = math.max(a.rule_cooldown_ms, a.channel_cooldown_ms) + 2 * 86400000
  if redis.call('PTTL', POL) < keep then redis.call('PEXPIRE', POL, keep) end
  return nil, {set_r, set_c, state[1] or '', state[2] or ''}
end

-- rb_ingest's reservation pre-check: every term of a contact rule's condition that
-- reads a stored number (engine/decisions/precheck.py derives them) holds on the
-- updated profile `h`. A term is {field, op, value}; field '@online' is "still online".
-- Necessary, not sufficient: the decision in Python has the last word.
local CMP = {
  ['>='] = function(x, y) return x >= y end, ['>'] = function(x, y) return x > y end,
  ['<='] = function(x, y) return x <= y end, ['<'] = function(x, y) return x < y end,
  ['=='] = function(x, y) return x == y end, ['!='] = function(x, y) return x ~= y end,
}
local function precheck_holds(h, c, now)
  if c.consent then
    local attrs = type(h['attrs']) == 'table' and h['attrs'] or {}
    if attrs['consent_call'] ~= true or attrs['do_not_call'] == true then return false end
  end
  for _, t in ipairs(c.pre) do
    local x
    if t[1] == '@online' then
      x = (tonumber(h['online_until']) or 0) > now and 1 or 0
    else
      x = tonumber(h[t[1]])
    end
    if x == nil or not CMP[t[2]](x, t[3]) then return false end
  end
  return true
end

-- The dedupe set's scores and trim_ts count hours from 2026-01-01 UTC: a listpack keeps
-- such a count in 2 bytes until 2029-09 (16-bit), in 3 after; hours since 1970 take 3.
local DEDUPE_EPOCH_MS = 1767225600000

--[[
rb_ingest: apply one batch to one profile, exactly once per event id.
ARGV[1]: JSON {now, ttl (s, 0 = keep forever), win (dedupe window ms), hl (half-life ms),
         gap (session gap ms), rlmax (0 = off), rlwin (ms), link ('' = none), site,
         ids [dedupe members: the event ids hashed], expect ('1' new / '0' duplicate
         per id), delta {...},
         res (optional) [contact candidates: rb_reserve's fields (rule, channel,
         rule_cooldown_ms, channel_cooldown_ms, max_per_day, day) plus pre [terms] and
         consent (bool), best first]}
The delta aggregates the events flagged '1' in `expect` (engine/profile/delta.py).
Returns {'ok', accepted, duplicates, 0, profile JSON, flags, reservations}
                                   reservations: '' or a JSON list: one (rule, channel,
                                   reason) per candidate refused, then (rule, channel,
                                   'ok', day, set_r, set_c, prev_r, prev_c) for the one
                                   taken, if any
     | {'retry', flags}            Valkey's view of which ids are new differs from
                                   `expect`: nothing written, rebuild the delta
     | {'rate_limited', retry_after_ms}
     | {'needs_merge'}             link not yet in `links`: merge first, nothing written
Common path: four calls (ZMSCORE, ZADD, GET, SET); each redis.call costs ~3 µs here.
]]
local function ingest(keys, args)
  local P, SEEN, LINKS = keys[1], keys[2], keys[3]
  local a = cjson.decode(args[1])
  local now = a.now

  -- First identified batch of this anonymous id: merge before applying, so events the
  -- anonymous profile already counted are deduped by the merged `seen` set.
  if a.link ~= '' and redis.call('SISMEMBER', LINKS, a.link) == 0 then
    return {'needs_merge'}
  end

  local ids = a.ids
  local scores = redis.call('ZMSCORE', SEEN, unpack(ids))
  local flags, fresh = {}, {}
  local hour = math.floor((now - DEDUPE_EPOCH_MS) / 3600000)  -- the score
  local seen_here = {}
  for i, id in ipairs(ids) do
    if scores[i] or seen_here[id] then
      flags[i] = '0'
    else
      flags[i] = '1'
      seen_here[id] = true
      fresh[#fresh + 1] = hour
      fresh[#fresh + 1] = id
    end
  end
  local flagstr = table.concat(flags)
  if flagstr ~= a.expect then return {'retry', flagstr} end
  local accepted = #fresh / 2
  if accepted == 0 then return {'ok', 0, #ids, 0, '{}', flagstr, ''} end

  local raw0 = redis.call('GET', P)
  local h = raw0 and cjson.decode(raw0) or {}
  spell_out(h)
  local dirty = {}
  if a.rlmax > 0 then
    if now - num(h, 'rl_w') >= a.rlwin then
      set(h, dirty, 'rl_w', now)
      set(h, dirty, 'rl_n', 0)
    end
    if num(h, 'rl_n') >= a.rlmax then
      return {'rate_limited', num(h, 'rl_w') + a.rlwin - now}
    end
    incr(h, dirty, 'rl_n', 1)
  end

  redis.call('ZADD', SEEN, unpack(fresh))
  -- Dropping ids older than the window costs calls: do it at most once an hour (the
  -- TTL set here outlives the window, and an active visitor trims every hour).
  -- trim_ts is the hour of the last trim (8 digits less than its ms); a profile stored
  -- before holds ms, far ahead of any hour, and trims on its next batch.
  local trimmed = tonumber(h['trim_ts'])
  if not trimmed or hour > trimmed or trimmed > hour + 24 then
    -- Ids of hours wholly before the window go: each is kept at least `win`.
    local oldest = math.floor((now - a.win - DEDUPE_EPOCH_MS) / 3600000)
    redis.call('ZREMRANGEBYSCORE', SEEN, '-inf', '(' .. string.format('%d', oldest))
    -- Scores in ms (ids stored before hourly scores and hashed ids; none is ever looked
    -- up again): they would outlive the window, so they go too.
    redis.call('ZREMRANGEBYSCORE', SEEN, '(1000000000', '+inf')
    redis.call('PEXPIRE', SEEN, a.win + 3600000)
    -- The index of data in other slots: page-offer audits add to it with a plain ZADD
    -- (deliver.write_audit, no function call on the hot path), so its housekeeping is
    -- here: expired references go, and the key expires with its latest reference.
    if keys[7] then
      redis.call('ZREMRANGEBYSCORE', keys[7], '-inf', '(' .. string.format('%d', now))
      local last = redis.call('ZRANGE', keys[7], -1, -1, 'WITHSCORES')
      if last[2] then
        redis.call('PEXPIREAT', keys[7], string.format('%d', tonumber(last[2])))
      end
    end
    set(h, dirty, 'trim_ts', hour)
  end

  local d = a.delta
  -- A new product, interest, intent key or category is counted; the caps are enforced
  -- (ranking the whole profile) only when a count goes over, or once for a profile
  -- stored before the counts existed.
  local over = raw0 ~= nil and h['kn:c'] == nil
  for k, v in pairs(d.inc) do
    if opens_over(h, dirty, k) then over = true end
    incr(h, dirty, k, v)
  end
  for k, v in pairs(d.max) do
    if opens_over(h, dirty, k) then over = true end
    max_field(h, dirty, k, v)
  end
  for k, v in pairs(d.min) do
    if h[k] == nil or v < num(h, k) then set(h, dirty, k, v) end
  end
  -- The first campaign touch, written once with all its fields: a profile that has one
  -- (first_utm_ts, or a first_* field stored before it existed) keeps it whole.
  if d.touch1 and next(d.touch1) ~= nil and not has_first_touch(h) then
    for k, v in pairs(d.touch1) do set(h, dirty, k, v) end
  end
  -- Calculator history: a newer scenario that changes amount or term makes the stored
  -- one (or the batch's own earlier one) c:<product>:was. Read before `latest` below
  -- replaces the stored scenario. Its ts is stored as ms before c:<product>:ts (<= 0,
  -- ~6 digits where a ts takes 13); `latest` below moves c:<product>:ts to this `ts`,
  -- so a was kept while the scenario is unchanged is moved back by as much. One stored
  -- before holds its ts (> 0) as it was and keeps it (decode_profile reads both).
  for c, w in pairs(d.was or {}) do
    local ts, amount, term, inner = w[1], w[2], w[3], w[4]
    local sts = tonumber(h[c .. 'ts'])
    if sts == nil or ts >= sts then
      local kept = h[c .. 'was']
      if inner ~= cjson.null then
        set(h, dirty, c .. 'was', {inner[1], inner[2], inner[3] - ts})
      elseif sts ~= nil and (num(h, c .. 'amount') ~= amount or num(h, c .. 'term') ~= term) then
        set(h, dirty, c .. 'was', {tonumber(h[c .. 'amount']), tonumber(h[c .. 'term']), sts - ts})
      elseif sts ~= nil and ts > sts and type(kept) == 'table' and (tonumber(kept[3]) or 1) <= 0 then
        set(h, dirty, c .. 'was', {kept[1], kept[2], kept[3] - (ts - sts)})
      end
    end
  end
  for _, group in ipairs(d.latest) do
    local ts_field, ts, fields = group[1], group[2], group[3]
    if h[ts_field] == nil or ts >= num(h, ts_field) then
      set(h, dirty, ts_field, ts)
      -- null: the newer event has no such value (a calculation without a rate).
      for k, v in pairs(fields) do set(h, dirty, k, v ~= cjson.null and v or nil) end
    end
  end
  for key, tv in pairs(d.decay) do
    if h['it:' .. key] == nil and opened(h, dirty, 'kn:i') then over = true end
    decay_add(h, dirty, key, tv[1], tv[2], a.hl)
  end
  for i, seg in ipairs(d.sess) do
    local s_last = tonumber(h['s_last'])
    if i > 1 or s_last == nil or seg[1] - s_last > a.gap then
      incr(h, dirty, 's_n', 1)
      set(h, dirty, 's_start', seg[1])
      set(h, dirty, 's_last', seg[2])
      set(h, dirty, 's_pages', seg[3])
      set(h, dirty, 's_dwell', seg[4] > 0 and seg[4] or nil)  -- absent: 0
      set(h, dirty, 's_events', seg[5])
    else
      max_field(h, dirty, 's_last', seg[2])
      incr(h, dirty, 's_pages', seg[3])
      if seg[4] > 0 then incr(h, dirty, 's_dwell', seg[4]) end
      incr(h, dirty, 's_events', seg[5])
    end
  end
  if #d.pages > 0 then
    h['pages'] = recent_pages(h['pages'], d.pages)
    if h['last_page'] == newest_path(h['pages']) then h['last_page'] = nil end
  end
  -- An anonymous profile's key holds its site (a.site ''): stored for customers only.
  if h['site'] == nil and a.site ~= '' then h['site'] = a.site end
  -- Also when the stored profile is over the worst case: one written before the caps.
  if over or (raw0 and #raw0 > LEGACY_TRIM_BYTES) then cap_profile(h) end
  leave_out(h)

  local raw = encode_profile(h)
  if a.ttl > 0 then
    redis.call('SET', P, raw, 'EX', a.ttl)
  else
    redis.call('SET', P, raw)
  end

  -- The contact reservation, in this same call (one round trip fewer for a callback):
  -- the first candidate whose pre-check holds on the updated profile and whose policy
  -- allows it is taken; candidates refused by policy say why. rb_release gives a
  -- reservation back when the decision does not make that contact.
  local taken = ''
  if a.res then
    local verdicts = {}
    for _, c in ipairs(a.res) do
      if precheck_holds(h, c, now) then
        local why, was = take_policy(keys[6], c, now)
        if why then
          verdicts[#verdicts + 1] = {c.rule, c.channel, why}
        else
          verdicts[#verdicts + 1] = {c.rule, c.channel, 'ok', c.day, was[1], was[2], was[3], was[4]}
          break
        end
      end
    end
    if #verdicts > 0 then taken = cjson.encode(verdicts) end
  end
  return {'ok', accepted, #ids - accepted, 0, raw, flagstr, taken}
end

--[[
rb_merge_export: read an anonymous profile for merging into customer ARGV[1].
Marks it merged_into=<customer> so erasure finds it and it is never merged twice
into two different customers. Returns {'ok', profile JSON, seen flat}
or {'conflict', other_customer}.
]]
local function merge_export(keys, args)
  local P = keys[1]
  local customer = args[1]
  local h = load_hash(P)
  local current = h['merged_into']
  if current and current ~= customer then return {'conflict', current} end
  local raw = '{}'
  if next(h) ~= nil then
    h['merged_into'] = customer
    raw = flush(P, h, {merged_into = true})
  end
  return {
    'ok',
    raw,
    redis.call('ZRANGE', keys[2], 0, -1, 'WITHSCORES'),
  }
end

--[[
rb_merge_apply: fold an exported anonymous profile into this customer, exactly once.
The SISMEMBER/SADD on `links` is the idempotency point: a retried or concurrent merge
of the same anonymous id finds it there and changes nothing.
ARGV: link_member, half_life_ms, dedupe_window_ms, anonymous profile JSON,
      n_seen, seen flat (id, score)...
Returns 1 if merged, 0 if it had already been.
]]
local function merge_apply(keys, args)
  local P, SEEN, LINKS = keys[1], keys[2], keys[3]
  local link = args[1]
  local half_life = tonumber(args[2])
  local window = tonumber(args[3])
  if redis.call('SADD', LINKS, link) == 0 then return 0 end

  local a = cjson.decode(args[4])
  local pos = 5
  local h = load_hash(P)
  -- last_page, left out while it is the newest page's path: spelled out to merge.
  a['last_page'] = a['last_page'] or newest_path(a['pages'])
  h['last_page'] = h['last_page'] or newest_path(h['pages'])
  spell_out(a)  -- and the timestamps each implies
  spell_out(h)
  local h0 = {}  -- the customer as it was: comparisons must not see our own updates
  for k, v in pairs(h) do h0[k] = v end
  local dirty = {}
  local a_newer = num(a, 'last_ts') > num(h0, 'last_ts')

  -- Campaign touches, each as a whole (no medium of one touch beside another's source):
  -- A's last touch when it is newer; the earlier first touch by first_utm_ts (C's on a
  -- tie). A first touch stored before first_utm_ts existed cannot be compared: C's
  -- stays, and A's is taken only when C has none.
  if num(a, 'utm_ts') > num(h0, 'utm_ts') then
    for _, k in ipairs(TOUCH) do set(h, dirty, k, a[k]) end
    set(h, dirty, 'utm_ts', a['utm_ts'])
  end
  local a_first, c_first = tonumber(a['first_utm_ts']), tonumber(h0['first_utm_ts'])
  if has_first_touch(a) and (not has_first_touch(h0)
      or (a_first and c_first and a_first < c_first)) then
    for _, k in ipairs(TOUCH) do set(h, dirty, 'first_' .. k, a['first_' .. k]) end
    set(h, dirty, 'first_utm_ts', a['first_utm_ts'])
  end

  for k, v in pairs(a) do
    if TOUCH_CODES[k] then
      -- merged above
    elseif k == 'merged_into' or k == 'site' or k == 'trim_ts' or k == 'rl_w' or k == 'rl_n'
        or k:sub(1, 3) == 'kn:'
        or k == 'attrs' then
      -- anonymous-only bookkeeping
    elseif k:sub(1, 2) == 'n:' or k:sub(1, 4) == 'cat:' or k == 'dwell'
        or (k:sub(1, 2) == 'f:' and k ~= 'f:last_abandon' and k ~= 'f:last_abandon_ts')
        or (k:sub(1, 2) == 'c:' and k:sub(-2) == ':n') then
      incr(h, dirty, k, tonumber(v))
    elseif k == 'pages' then
      set(h, dirty, 'pages', recent_pages(h0['pages'], v))
    elseif k == 'sg' or k == 'sgx' then
      -- Segments: the union; a member since the earlier entry, the later exit.
      set(h, dirty, k, union_ms(h0[k], v, k == 'sg'))
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
      if num(a, prefix .. 'ts') > num(h0, prefix .. 'ts') then
        set(h, dirty, k, v)
        -- A's newest calculation had no rate or monthly payment: nor has the merge.
        if k == prefix .. 'ts' then
          h[prefix .. 'rate'] = a[prefix .. 'rate']
          h[prefix .. 'monthly'] = a[prefix .. 'monthly']
          h[prefix .. 'was'] = a[prefix .. 'was']
        end
      end
    elseif k == 'first_ts' then
      if h[k] == nil or tonumber(v) < num(h, k) then set(h, dirty, k, tonumber(v)) end
    elseif k == 'last_ts' or k == 'online_until' or k:sub(1, 2) == 'x:' then
      max_field(h, dirty, k, tonumber(v))
    elseif k:sub(1, 2) == 's_' then
      if num(a, 's_last') > num(h0, 's_last') then
        set(h, dirty, k, v)
        if k == 's_last' then h['s_dwell'] = a['s_dwell'] end  -- absent in A: 0
      end
    elseif a_newer or h[k] == nil then
      set(h, dirty, k, v)
    end
  end
  if h['last_page'] == newest_path(h['pages']) then h['last_page'] = nil end
  -- Each side was within the caps; their union may not be.
  cap_profile(h)  -- also sets the kn:* counts of the union
  leave_out(h)
  dirty.caps = true
  flush(P, h, dirty)

  local ns = tonumber(args[pos]); pos = pos + 1
  for i = 0, ns / 2 - 1 do
    redis.call('ZADD', SEEN, 'NX', args[pos + 2 * i + 1], args[pos + 2 * i])
  end
  if ns > 0 then redis.call('PEXPIRE', SEEN, window + 3600000) end
  return 1
end

--[[
rb_erase: delete every key of one profile. Returns the linked anonymous ids and the
profile's index of its data in other slots (KEYS[7] refs, engine/refs.py), read in
the same atomic step, so the caller erases those too.
KEYS[8] (optional): the erasure marker (keys.profile_erased), set AFTER the delete to
ARGV[1] (the erasure ms plus a clock-skew allowance) for ARGV[2] ms: rb_refs and
rb_history refuse data born before it,
so a write in flight during the erasure cannot re-create what it deleted.
Returns {deleted, links, refs}.
]]
local function erase(keys, args)
  local links = redis.call('SMEMBERS', keys[3])
  local refs = keys[7] and redis.call('ZRANGE', keys[7], 0, -1) or {}
  local deleted = redis.call('DEL', unpack(keys, 1, math.min(#keys, 7)))
  if keys[8] and args[1] then
    redis.call('SET', keys[8], args[1], 'PX', args[2])
  end
  return {deleted, links, refs}
end

-- Whether data born at `born` ms belongs to an erased past: the profile's erasure
-- marker says it was erased at or after that ms (a customer who came back after
-- the erasure makes new data, which is kept).
local function erased_since(marker, born)
  if not marker or not born then return false end
  local at = tonumber(redis.call('GET', marker))
  return at ~= nil and at >= tonumber(born)
end

--[[
rb_refs: record where a profile's data lives outside its slot (engine/refs.py), for
the rare writers (triggers, outcomes, webhook copies). KEYS[1]: the profile's refs
key; KEYS[2]: its erasure marker (same slot; no other profile key is needed).
ARGV: now_ms, born_ms (when the indexed data was created), then (until_ms, reference)
pairs. Returns 'erased' and writes nothing when the profile was erased at or after
born_ms (the caller deletes what it just wrote); else drops expired references, lets
the index expire with its last reference, and returns how many it holds.
No cap: a cap would drop references to data that still exists (engine/refs.py).
]]
local function refs(keys, args)
  local R = keys[1]
  if erased_since(keys[2], args[2]) then return 'erased' end
  redis.call('ZADD', R, unpack(args, 3))
  redis.call('ZREMRANGEBYSCORE', R, '-inf', '(' .. args[1])
  local last = redis.call('ZRANGE', R, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', R, string.format('%d', tonumber(last[2])))
  end
  return redis.call('ZCARD', R)
end

--[[
rb_read: the profile, its links and its 50 latest contact-history entries, in one call.
]]
local function read(keys, args)
  return {
    redis.call('GET', keys[1]) or '{}',
    redis.call('SMEMBERS', keys[3]),
    redis.call('XREVRANGE', keys[5], '+', '-', 'COUNT', 50),
  }
end

--[[
rb_set_attrs: replace the customer's CRM attributes (kept inside the profile, so the
ingest path reads them with no extra call). ARGV[1]: attributes JSON object.
Returns 1 if the profile already existed, 0 if it was created.
]]
local function set_attrs(keys, args)
  local P = keys[1]
  local h = load_hash(P)
  local existed = next(h) ~= nil and 1 or 0
  h['attrs'] = cjson.decode(args[1])
  redis.call('SET', P, encode_profile(h), 'KEEPTTL')
  return existed
end

--[[
rb_segments: segment membership changes of one profile (engine/profile/segments_store.py).
ARGV[1]: JSON {entered: {segment: ms}, exited: {segment: ms}}. An entered segment keeps
its older entry ms when already a member; an exited one leaves `sg`, and its ms becomes
its last exit in `sgx` (only if it was a member: a repeated exit changes nothing). Both
objects are capped (MAX_SEGMENTS). Never creates a profile: one that does not exist
(erased, expired, never seen) stays absent. Returns 1 if the profile exists, else 0.
]]
local function segments(keys, args)
  local P = keys[1]
  local raw = redis.call('GET', P)
  if not raw then return 0 end
  local h = cjson.decode(raw)
  local a = cjson.decode(args[1])
  local sg = type(h['sg']) == 'table' and h['sg'] or {}
  local sgx = type(h['sgx']) == 'table' and h['sgx'] or {}
  local changed = false
  for name, ms in pairs(a.entered or {}) do
    if sg[name] == nil or ms < sg[name] then sg[name] = ms; changed = true end
  end
  for name, ms in pairs(a.exited or {}) do
    if sg[name] ~= nil then
      sg[name] = nil
      if sgx[name] == nil or ms > sgx[name] then sgx[name] = ms end
      changed = true
    end
  end
  if changed then
    h['sg'] = capped_ms(sg, true)
    h['sgx'] = capped_ms(sgx, false)
    redis.call('SET', P, encode_profile(h), 'KEEPTTL')
  end
  return 1
end

--[[
rb_reserve: the contact policy, atomically. Two workers deciding for the same customer
at the same moment both call this; the second finds the cooldown the first just set.
ARGV[1]: JSON {now, rule, channel, rule_cooldown_ms, channel_cooldown_ms, max_per_day
         (0 = no cap), day ('YYYY-MM-DD' in the calendar's zone), history {field: value},
         history_max}
Returns {'ok'} (cooldowns set, count taken, history appended) or {'suppressed', reason}.
]]
local function reserve(keys, args)
  local a = cjson.decode(args[1])
  local why = take_policy(keys[6], a, a.now)
  if why then return {'suppressed', why} end
  append_history(keys[5], a.history, a.history_max)
  return {'ok'}
end

--[[
rb_release: give back a reservation rb_ingest took for a contact the decision then did
not make. ARGV[1]: JSON {rule, channel, day, set_r, set_c, prev_r, prev_c} (rb_ingest's
reply). Each cooldown goes back to what it was only if it is still the one this
reservation set (a later reservation's stays); the day's count goes down by one.
Returns 1.
]]
local function release(keys, args)
  local POL = keys[6]
  local a = cjson.decode(args[1])
  local pairs_ = {{'r:' .. a.rule, a.set_r, a.prev_r}, {'c:' .. a.channel, a.set_c, a.prev_c}}
  for _, f in ipairs(pairs_) do
    if redis.call('HGET', POL, f[1]) == f[2] then
      if f[3] == '' then redis.call('HDEL', POL, f[1]) else redis.call('HSET', POL, f[1], f[3]) end
    end
  end
  local dk = 'd:' .. a.channel .. ':' .. a.day
  if (tonumber(redis.call('HGET', POL, dk)) or 0) > 0 then redis.call('HINCRBY', POL, dk, -1) end
  return 1
end

--[[
rb_history: append one entry to the contact history (web offers shown, outcomes).
ARGV[1]: JSON {entry: {field: value}, max, born (optional: when the recorded decision
was created)}. With KEYS[8] (the erasure marker) and born, returns 'erased' and writes
nothing when the profile was erased at or after born; else the entry's id.
]]
local function history(keys, args)
  local a = cjson.decode(args[1])
  if erased_since(keys[8], a.born) then return 'erased' end
  return append_history(keys[5], a.entry, a.max)
end

--[[
rb_claim: exactly one agent wins a trigger. KEYS[1] = the trigger record (hash).
ARGV: agent, now_ms. Returns {'ok'} | {'taken', by} | {'expired'} | {'unknown'}.
]]
local function claim(keys, args)
  local rec = keys[1]
  local state = redis.call('HMGET', rec, 'expires_ms', 'claimed_by', 'outcome')
  if not state[1] then return {'unknown'} end
  if state[2] then return {'taken', state[2]} end
  if tonumber(state[1]) < tonumber(args[2]) then return {'expired'} end
  redis.call('HSET', rec, 'claimed_by', args[1], 'claimed_ms', args[2])
  return {'ok'}
end

--[[
rb_complete: record the outcome of a claimed trigger, once, by the agent who claimed it
(or a system/supervisor, ARGV[4] = '1'). ARGV: agent, outcome, now_ms, override.
Returns {'ok', data JSON} | {'not_claimed'} | {'not_yours', by} | {'done', outcome} | {'unknown'}.
]]
local function complete(keys, args)
  local rec = keys[1]
  local state = redis.call('HMGET', rec, 'data', 'claimed_by', 'outcome')
  if not state[1] then return {'unknown'} end
  if state[3] then return {'done', state[3]} end
  if not state[2] then return {'not_claimed'} end
  if state[2] ~= args[1] and args[4] ~= '1' then return {'not_yours', state[2]} end
  redis.call('HSET', rec, 'outcome', args[2], 'completed_ms', args[3])
  return {'ok', state[1]}
end

--[[
rb_presence: is the customer online? For the dashboards' "online now", polled for the
open callbacks only. KEYS[1]: the profile (p) alone - the one function that needs no
other key of the profile. Returns {online_until, last_ts} (ms; 0 when unknown), so
the engine decodes two integers instead of the whole profile.
]]
local function presence(keys, args)
  local h = load_hash(keys[1])
  return {math.floor(num(h, 'online_until')), math.floor(num(h, 'last_ts'))}
end

--[[
rb_funnel: a trigger's report counters in one call (engine/delivery/reports.py).
KEYS: one day's funnel hashes (they share a slot); ARGV, per hash: how many of its
fields follow, then the fields, each incremented by 1. Returns the new counts, flat,
in the order given (the engine reads them to find a name new to the day).
]]
local function funnel(keys, args)
  local out, a = {}, 1
  for i = 1, #keys do
    local n = tonumber(args[a])
    a = a + 1
    for _ = 1, n do
      out[#out + 1] = redis.call('HINCRBY', keys[i], args[a], 1)
      a = a + 1
    end
  end
  return out
end

redis.register_function('rb_ingest', ingest)
redis.register_function('rb_funnel', funnel)
redis.register_function('rb_claim', claim)
redis.register_function('rb_complete', complete)
redis.register_function('rb_reserve', reserve)
redis.register_function('rb_release', release)
redis.register_function('rb_history', history)
redis.register_function('rb_set_attrs', set_attrs)
redis.register_function('rb_segments', segments)
redis.register_function('rb_merge_export', merge_export)
redis.register_function('rb_merge_apply', merge_apply)
redis.register_function('rb_erase', erase)
redis.register_function('rb_refs', refs)
redis.register_function{function_name = 'rb_read', callback = read, flags = {'no-writes'}}
redis.register_function{function_name = 'rb_presence', callback = presence, flags = {'no-writes'}}
