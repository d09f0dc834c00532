-- tollgate: "have I seen this Idempotency-Key?" in one step (src/idempotency/engine.rs).
--
-- KEYS[1]  the record: a hash {st = 0 vacant | 1 in flight | 2 completed, f = fence,
--          dl = deadline (s since the epoch), fp = fingerprint, resp = encoded response}
-- ARGV     fingerprint, now_ms, lease deadline (s), gc_ms (how long Redis keeps the key)
-- returns  {1, fence, deadline} started | {2, fence, response} replay | {3} in flight |
--          {4} mismatch
local fp = ARGV[1]
local now = tonumber(ARGV[2])
local dl = tonumber(ARGV[3])
local gc = tonumber(ARGV[4])
local r = redis.call('HMGET', KEYS[1], 'st', 'f', 'dl', 'fp')
local fence = 0
if r[1] then
  local st, f, odl = tonumber(r[1]), tonumber(r[2]), tonumber(r[3])
  local live = now < odl * 1000
  local same = r[4] == fp
  if st == 2 and live then
    if same then return { 2, f, redis.call('HGET', KEYS[1], 'resp') } end
    return { 4 }
  end
  if st == 1 and live then
    if same then return { 3 } end
    return { 4 }
  end
  fence = f
end
-- New, aborted or expired: the key is free. Take it over with a higher fence (23 bits, never 0).
local nf = fence + 1
if nf >= 8388608 then nf = 1 end
redis.call('HSET', KEYS[1], 'st', 1, 'f', nf, 'dl', dl, 'fp', fp)
redis.call('HDEL', KEYS[1], 'resp')
redis.call('PEXPIRE', KEYS[1], gc)
return { 1, nf, dl }
