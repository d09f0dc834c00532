-- tollgate: reserve an estimate (src/debit.rs) in one step: check.lua's counting over sliding
-- windows, all or nothing, and the reservation's guard. (Runs after window.lua.)
--
-- KEYS[1..n]  the sliding windows' states (window.lua); KEYS[n+1] the guard (keys.rs)
-- ARGV        now_ms, estimate, ttl_ms (of the windows' keys), guard_ttl_ms, guard value, then
--             per window: limit, g, B
-- returns     {-1} the reservation's id is taken (nothing written) |
--             { refused (0 = admitted, else the 1-based window that refused), written (0/1),
--               per window {0, n, cur, c1..cB} } -- the states after the step
--
-- An estimate above 0 is counted exactly as check.lua counts a cost (the windows in order,
-- the first refusing one stops it, the earlier ones take it back and keep their rotation); the
-- head of each window that took it, n, is the sub-window the estimate is counted in, which the
-- reservation remembers. An estimate of 0 is admitted iff a cost of 1 would be, and writes
-- nothing. Only an admitted reservation writes its guard, "SET NX" with its own expiry: the
-- key a settle must delete first (debit.lua), so that a reservation settles once.
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local nw = #KEYS - 1

local st = {}
local refused = 0
for i = 1, nw do
  local a = 5 + (i - 1) * 3
  local limit, g, b = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local s = load(redis.call('GET', KEYS[i]) or nil, g, b)
  if refused == 0 then
    local judged, total = judge(s, now)
    if total + math.max(cost, 1) <= limit then
      if cost > 0 then
        judged.cur = judged.cur + cost
        judged.added = true
        s = judged
      end
    else
      refused = i
    end
  end
  st[i] = s
end

if refused == 0 then
  local guard = redis.call('SET', KEYS[nw + 1], ARGV[5], 'NX', 'PX', tonumber(ARGV[4]))
  if not guard then return { -1 } end
end

local written = 0
local out = { refused, 0 }
for i = 1, nw do
  local e = st[i]
  if e.added then
    if refused ~= 0 then
      -- Taken back; the rotation stays, as in check.lua.
      e.cur = e.cur - cost
    end
    save(KEYS[i], e, ttl)
    written = 1
  end
  out[#out + 1] = reply(e)
end
out[2] = written
return out
