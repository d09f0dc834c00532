-- tollgate: settle a reservation (src/debit.rs) in one step: claim its guard, then turn the
-- estimate into the actual cost. (Runs after window.lua.) Not settle.lua: that one completes
-- or aborts an idempotency lease.
--
-- KEYS[1..n]  the sliding windows' states (window.lua); KEYS[n+1] the reservation's guard
-- ARGV        now_ms, ttl_ms (of the windows' keys), guard value, op (0 nothing, 1 give back,
--             2 overdraw), units, then per window: g, B, capacity (2^c - 1, c the counter
--             width), m (the sub-window the estimate was counted in; -1 if none)
-- returns     {-1} the guard is gone or is another reservation's (settled before, or
--             expired): nothing written |
--             { 0, written (0/1), per window {0, n, cur, c1..cB} } -- the states after
--
-- Give back: `units` come off sub-window m of each window if m is still one of its B + 1
-- sub-windows (m in n-B .. n, the head not moved first, as the embedded store's take-back
-- does), never more than m holds. Overdraw: `units` are counted in the effective sub-window of
-- each window past its limit, as much as fits under the capacity (none if it is full).
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local op = tonumber(ARGV[4])
local units = tonumber(ARGV[5])
local nw = #KEYS - 1

if redis.call('GET', KEYS[nw + 1]) ~= ARGV[3] then return { -1 } end
redis.call('DEL', KEYS[nw + 1])

local written = 0
local out = { 0, 0 }
for i = 1, nw do
  local a = 5 + (i - 1) * 4
  local g, b, cap, m = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 4])
  local raw = redis.call('GET', KEYS[i])
  local s = load(raw or nil, g, b)
  if op == 1 and raw and m >= 0 and m <= s.n and m >= s.n - s.b then
    local take = math.min(units, count(s, m))
    if take > 0 then
      if m == s.n then
        s.cur = s.cur - take
      else
        local j = m - (s.n - s.b) + 1
        s.x[j] = s.x[j] - take
      end
      save(KEYS[i], s, ttl)
      written = 1
    end
  elseif op == 2 then
    local judged, total = judge(s, now)
    local add = math.min(units, cap - total)
    if add > 0 then
      judged.cur = judged.cur + add
      s = judged
      save(KEYS[i], s, ttl)
      written = 1
    end
  end
  out[#out + 1] = reply(s)
end
out[2] = written
return out
