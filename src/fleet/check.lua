-- tollgate: check-and-increment over several windows, all or nothing, in one step.
--
-- The same counting rule as src/window/sliding (sliding) and src/window/exact.rs (exact), so
-- that the shared store decides exactly as the embedded one. Time comes from the caller
-- (ARGV[1]); the decision's header values are computed in Rust from the states returned.
--
-- KEYS[i]   state of window i:
--             sliding "g,n,cur,c1,...,cB": the sub-window length g (ms), the head's sub-window
--               number n, its count cur, then the counts of sub-windows n-B .. n-1, oldest
--               first (B = the number of counts; a count may be 0);
--             exact "t1,t2,...": admission times (ms), oldest first, at most `limit` of them
-- ARGV      now_ms, cost, ttl_ms, then per window: exact (0/1), window_ms, limit, g, B
--           (g and B are 0 for an exact window)
-- returns   { refused (0 = admitted, else the 1-based window that refused), written (0/1),
--             per window: {0, n, cur, c1..cB} or {1, t1..} } -- the state after the step
--
-- The sliding rule: a request is judged at the effective sub-window ne = max(now // g, n) (a
-- clock behind the head counts in the head's sub-window) against the counts of sub-windows
-- ne-B .. ne, and admitted iff that total + cost <= limit. An admitted window is rotated to ne
-- (counts older than ne-B are dropped) and the cost added to its sub-window ne.
--
-- Order, as in the embedded store: the sliding windows in order, each counting the cost if it
-- fits, stopping at the first that refuses (it and the later ones are not written); then, if
-- all took it, the exact windows. If any refuses, the cost is taken back from the sliding
-- windows that counted it; their rotation stays (as the embedded store's take-back leaves it).
-- A cost of 0 writes nothing. All arithmetic is on integers below 2^53, exactly.
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local nw = #KEYS
-- 9999-12-31T23:59:59.999Z: later times are read as this one by sliding windows (as the
-- embedded store reads them).
local MAX_TIME_MS = 253402300799999

-- a // b for non-negative integers below 2^53, exactly.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function zeros(k)
  local t = {}
  for i = 1, k do t[i] = 0 end
  return t
end

-- Integers as plain digits (tostring would switch to an exponent from 10^14 on).
local function join(t)
  local s = {}
  for i = 1, #t do s[i] = string.format('%d', t[i]) end
  return table.concat(s, ',')
end

local function parse(raw)
  local t = {}
  if raw then
    for v in string.gmatch(raw, '[^,]+') do t[#t + 1] = tonumber(v) end
  end
  return t
end

-- A sliding window's state as { g, b, n, cur, x } (x[i] counts sub-window n - b - 1 + i).
-- A state written with another sub-window length or count (the fleet's `sub_windows` changed)
-- is re-expressed: each old sub-window's count goes to the new sub-window holding its last
-- millisecond (counted later, never released earlier).
local function load(raw, g, b)
  local st = { g = g, b = b, n = 0, cur = 0, x = zeros(b) }
  if not raw then return st end
  local t = parse(raw)
  local g0, n0, cur0 = t[1], t[2], t[3]
  local b0 = #t - 3
  if g0 == g and b0 == b then
    st.n, st.cur = n0, cur0
    for i = 1, b do st.x[i] = t[i + 3] end
    return st
  end
  local n = idiv((n0 + 1) * g0 - 1, g)
  st.n = n
  local function put(m0, v)
    if v > 0 and m0 >= 0 then
      local m = idiv((m0 + 1) * g0 - 1, g)
      if m == n then
        st.cur = st.cur + v
      elseif m >= n - b then
        local i = m - (n - b) + 1
        st.x[i] = st.x[i] + v
      end
    end
  end
  put(n0, cur0)
  for i = 1, b0 do put(n0 - b0 + i - 1, t[i + 3]) end
  return st
end

-- The count of absolute sub-window m in state st.
local function count(st, m)
  if m == st.n then return st.cur end
  if m < st.n and m >= st.n - st.b then return st.x[m - (st.n - st.b) + 1] end
  return 0
end

-- st moved to sub-window ne >= st.n (what aged out is dropped), and its total there.
local function rotate(st, ne)
  if ne > st.n then
    local x = zeros(st.b)
    for i = 1, st.b do x[i] = count(st, ne - st.b + i - 1) end
    st.cur = count(st, ne)
    st.x = x
    st.n = ne
  end
  local t = st.cur
  for i = 1, st.b do t = t + st.x[i] end
  return t
end

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
      local ne = math.max(idiv(math.min(now, MAX_TIME_MS), g), s.n)
      local judged = { g = g, b = b, n = s.n, cur = s.cur, x = s.x }
      local total = rotate(judged, ne)
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
      -- Kept even when every count is 0: the head's sub-window still holds back a clock that
      -- steps back (ne = max(now // g, n)).
      local parts = { e.g, e.n, e.cur }
      for j = 1, e.b do parts[#parts + 1] = e.x[j] end
      redis.call('SET', KEYS[i], join(parts), 'PX', ttl)
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
    local r = { 0, e.n, e.cur }
    for j = 1, e.b do r[#r + 1] = e.x[j] end
    out[#out + 1] = r
  end
end
return out
