-- tollgate: check-and-increment over several sliding windows, all or nothing, in one step.
--
-- The same arithmetic as src/window (bucketed) and src/window/exact.rs (exact), so that the
-- shared store decides exactly as the embedded one. Time comes from the caller (ARGV[1]).
--
-- KEYS[i]   state of window i: bucketed "c,n,x0,x1,...,x(k-1)" (counter width, newest
--           sub-window number, counts newest first); exact "t1,t2,..." (admission times, ms,
--           oldest first, at most `limit` of them)
-- ARGV      now_ms, cost, kmax, ttl_ms, then per window: window_ms, limit, exact (0/1), c
-- returns   { refused (0 = admitted, else the 1-based window that refused), written (0/1),
--             per window: {0, c, n, x0..} or {1, t1..} } -- the state after the step
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local kmax = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local nw = #KEYS

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

local function layout(c, w)
  local k = math.max(math.min(idiv(32, c), kmax), 2)
  local s = math.max(idiv(w + k - 2, k - 1), 1)
  return k, s
end

local function zeros(k)
  local t = {}
  for i = 1, k do t[i] = 0 end
  return t
end

local function total(b)
  local t = 0
  for i = 1, b.k do t = t + b.x[i] end
  return t
end

local function fresh(c, w)
  local k, s = layout(c, w)
  return { c = c, k = k, s = s, n = idiv(now, s), x = zeros(k) }
end

-- Re-express b with wider counters: each old sub-window goes to the new one holding its last
-- millisecond (never earlier, so nothing is released early).
local function widen(b, c, w)
  local k, s = layout(c, w)
  local n = math.max(idiv(now, s), idiv((b.n + 1) * b.s - 1, s))
  local x = zeros(k)
  for age = 0, b.k - 1 do
    local v = b.x[age + 1]
    if v > 0 then
      local m = math.max(b.n - age, 0)
      local na = math.max(n - idiv((m + 1) * b.s - 1, s), 0)
      if na < k then x[na + 1] = x[na + 1] + v end
    end
  end
  local max = 2 ^ c - 1
  for i = 1, k do x[i] = math.min(x[i], max) end
  return { c = c, k = k, s = s, n = n, x = x }
end

local function normalize(raw, need, w)
  if not raw then return fresh(need, w) end
  local t = {}
  for v in string.gmatch(raw, '[^,]+') do t[#t + 1] = tonumber(v) end
  local c = t[1]
  local k, s = layout(c, w)
  local b = { c = c, k = k, s = s, n = t[2], x = zeros(k) }
  for i = 1, k do b.x[i] = t[i + 2] or 0 end
  if total(b) == 0 then return fresh(need, w) end
  local nn = idiv(now, s)
  if nn >= b.n then
    -- Age every counter by the sub-windows that passed (a clock that went back keeps b.n).
    local d = nn - b.n
    local x = zeros(k)
    for i = 1, k - d do x[i + d] = b.x[i] end
    b.x = x
    b.n = nn
  end
  if c < need then return widen(b, need, w) end
  return b
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
-- Bucketed windows first, in order (as the embedded store adds them).
for i = 1, nw do
  local a = 4 + (i - 1) * 4
  local w, limit, exact, need =
    tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local raw = redis.call('GET', KEYS[i])
  if exact == 0 then
    local b = normalize(raw or nil, need, w)
    b.w = w
    if cost > 0 and refused == 0 then
      local after = total(b) + cost
      if after <= limit and after <= 2 ^ b.c - 1 then
        b.x[1] = b.x[1] + cost
        b.added = true
      else
        refused = i
      end
    end
    st[i] = b
  else
    local times = {}
    if raw then
      for v in string.gmatch(raw, '[^,]+') do times[#times + 1] = tonumber(v) end
    end
    st[i] = { exact = true, times = times, w = w, limit = limit }
  end
end
-- Then the exact windows, only if every bucketed one took the cost.
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

local function save_bucketed(i, b)
  if total(b) == 0 then
    redis.call('DEL', KEYS[i])
    return
  end
  local parts = { b.c, b.n }
  for j = 1, b.k do parts[#parts + 1] = b.x[j] end
  redis.call('SET', KEYS[i], table.concat(parts, ','), 'PX', ttl)
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
        redis.call('SET', KEYS[i], table.concat(keep, ','), 'PX', ttl)
        written = 1
      end
    elseif e.added then
      if refused ~= 0 then
        -- Taken back; the aged (or widened) state stays, as in the embedded store.
        e.x[1] = e.x[1] - cost
      end
      save_bucketed(i, e)
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
    local r = { 0, e.c, e.n }
    for j = 1, e.k do r[#r + 1] = e.x[j] end
    out[#out + 1] = r
  end
end
return out
