-- tollgate: the sliding window's state on the server, shared by the scripts that count in it
-- (check.lua, reserve.lua, debit.lua: each is this text followed by the script's own, joined
-- in store.rs). Only local functions and constants: a script reads its own KEYS and ARGV.
--
-- A sliding window's key holds "g,n,cur,c1,...,cB": the sub-window length g (ms), the head's
-- sub-window number n, its count cur, then the counts of sub-windows n-B .. n-1, oldest first
-- (B = the number of counts; a count may be 0). The same counting rule as src/window/sliding,
-- so that the shared store decides exactly as the embedded one: a request is judged at the
-- effective sub-window ne = max(now // g, n) (a clock behind the head counts in the head's
-- sub-window) against the counts of sub-windows ne-B .. ne. All arithmetic is on integers below
-- 2^53, exactly.

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

-- st as it is at `now`: a copy moved to the effective sub-window, and its total there. st
-- itself is not changed.
local function judge(st, now)
  local ne = math.max(idiv(math.min(now, MAX_TIME_MS), st.g), st.n)
  local j = { g = st.g, b = st.b, n = st.n, cur = st.cur, x = st.x }
  return j, rotate(j, ne)
end

-- Write st back to `key`, expiring after ttl ms. Kept even when every count is 0: the head's
-- sub-window still holds back a clock that steps back (ne = max(now // g, n)).
local function save(key, st, ttl)
  local parts = { st.g, st.n, st.cur }
  for j = 1, st.b do parts[#parts + 1] = st.x[j] end
  redis.call('SET', key, join(parts), 'PX', ttl)
end

-- st as a script returns it: {0, n, cur, c1..cB}.
local function reply(st)
  local r = { 0, st.n, st.cur }
  for j = 1, st.b do r[#r + 1] = st.x[j] end
  return r
end

-- [end of window.lua]
