-- tollgate: complete (ARGV[3] = 2) or abort (ARGV[3] = 0) a lease, in one step.
--
-- KEYS[1]  the record (see begin.lua)
-- ARGV     fence, fingerprint, new state, deadline (s; completed records), response, gc_ms
-- returns  {0} done | {1, current fence} lease lost | {2} already completed
local fence = tonumber(ARGV[1])
local r = redis.call('HMGET', KEYS[1], 'st', 'f', 'fp')
if not r[1] then return { 1, 0 } end
local st, f = tonumber(r[1]), tonumber(r[2])
if f ~= fence or r[3] ~= ARGV[2] then return { 1, f } end
if st == 2 then return { 2 } end
if st ~= 1 then return { 1, f } end
if tonumber(ARGV[3]) == 2 then
  redis.call('HSET', KEYS[1], 'st', 2, 'dl', tonumber(ARGV[4]), 'resp', ARGV[5])
else
  redis.call('HSET', KEYS[1], 'st', 0, 'dl', 0)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
return { 0 }
