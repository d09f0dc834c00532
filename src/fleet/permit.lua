-- tollgate: take a concurrency permit in one step (src/fleet/coordination.rs).
--
-- KEYS[1]  the permits of a key: a sorted set, member = permit stamp, score = deadline (ms)
-- ARGV     now_ms, cap, deadline_ms, member, gc_ms (how long Redis keeps the key at least)
-- returns  {1, held} taken (held: permits held now, this one included) | {0, held} at the cap
-- A permit whose deadline is not after now has ended: dropped before counting.
local now = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= cap then
  return { 0, held }
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
local gc = tonumber(ARGV[5])
if redis.call('PTTL', KEYS[1]) < gc then
  redis.call('PEXPIRE', KEYS[1], gc)
end
return { 1, held + 1 }
