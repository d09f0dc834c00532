-- tollgate: check-and-increment over several windows, all or nothing, in one step.
-- (Runs after window.lua: the sliding window's state and its helpers.)
--
-- The same counting rule as src/window/sliding (sliding) and src/window/exact.rs (exact), so
-- that the shared store decides exactly as the embedded one. Time comes from the caller
-- (ARGV[1]); the decision's header values are computed in Rust from the states returned.
--
-- KEYS[i]   state of window i:
--             sliding "g,n,cur,c1,...,cB" (window.lua);
--             exact "t1,t2,...": admission times (ms), oldest first, at most `limit` of them
-- ARGV      now_ms, cost, ttl_ms, then per window: exact (0/1), window_ms, limit, g, B
--           (g and B are 0 for an exact window)
-- returns   { refused (0 = admitted, else the 1-based window that refused), written (0/1),
--             per window: {0, n, cur, c1..cB} or {1, t1..} } -- the state after the step
--
-- A sliding window admits iff its total at the effective sub-window + cost <= limit. An
-- admitted window is rotated to the effective sub-window (counts older than ne-B are dropped)
-- and the cost added to its sub-window ne.
--
-- Order, as in the embedded store: the sliding windows in order, each counting the cost if it
-- fits, stopping at the first that refuses (it and the later ones are not written); then, if
-- all took it, the exact windows. If any refuses, the cost is taken back from the sliding
-- windows that counted it; their rotation stays (as the embedded store's take-back leaves it).
-- A cost of 0 writes nothing.
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local nw = #KEYS

local function exact_eval(times, w, limit)
  local newest = times[#times] or 0
  local eff = math.max(now, newest)
  local live = 0
  for _, t in ipairs(times) do
    if t + w > eff then live = live + 1 end
  end
  return eff, live + cost <= limit
end

local st = {}
local refused = 0
-- Sliding windows first, in order (as the embedded store adds them).
for i = 1, nw do
  local a = 3 + (i - 1) * 5
  local exact, w, limit, g, b = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
    tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local raw = redis.call('GET', KEYS[i])
  if exact == 0 then
    local s = load(raw or nil, g, b)
    if cost > 0 and refused == 0 then
      local judged, total = judge(s, now)
      if total + cost <= limit then
        judged.cur = judged.cur + cost
        judged.added = true
        s = judged
      else
        refused = i
      end
    end
    st[i] = s
  else
    st[i] = { exact = true, times = parse(raw or nil), w = w, limit = limit }
  end
end
-- Then the exact windows, only if every sliding one took the cost.
if cost > 0 and refused == 0 then
  for i = 1, nw do
    local e = st[i]
    if e.exact then
      local eff, fits = exact_eval(e.times, e.w, e.limit)
      if not fits then
        refused = i
        break
      end
      e.eff = eff
    end
  end
end

local written = 0
if cost > 0 then
  for i = 1, nw do
    local e = st[i]
    if e.exact then
      if refused == 0 then
        for _ = 1, cost do e.times[#e.times + 1] = e.eff end
        local keep = {}
        for j = math.max(#e.times - e.limit + 1, 1), #e.times do keep[#keep + 1] = e.times[j] end
        e.times = keep
        redis.call('SET', KEYS[i], join(keep), 'PX', ttl)
        written = 1
      end
    elseif e.added then
      if refused ~= 0 then
        -- Taken back; the rotation stays, as in the embedded store.
        e.cur = e.cur - cost
      end
      save(KEYS[i], e, ttl)
      written = 1
    end
  end
end

local out = { refused, written }
for i = 1, nw do
  local e = st[i]
  if e.exact then
    local r = { 1 }
    for _, t in ipairs(e.times) do r[#r + 1] = t end
    out[#out + 1] = r
  else
    out[#out + 1] = reply(e)
  end
end
return out
