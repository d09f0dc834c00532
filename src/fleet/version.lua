-- tollgate: a version read, bumped or compared-and-bumped in one step (src/fleet/coordination.rs).
--
-- KEYS[1]  the version: a hash {e = epoch (decimal, drawn by the first caller), n = number}
-- ARGV     op ('0' read, '1' bump, '2' bump if), a fresh epoch (used only if the key is new),
--          the expected epoch and number (op '2')
-- returns  {1, epoch, number} read or bumped | {0, epoch, number} stale (op '2')
-- No TTL: a version lives as long as the server keeps it (an evicted one comes back with a new
-- epoch, so no tag issued before matches it).
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[2]
  redis.call('HSET', KEYS[1], 'e', e, 'n', 0)
end
local op = ARGV[1]
if op == '0' then
  return { 1, e, redis.call('HGET', KEYS[1], 'n') }
end
if op == '2' then
  local n = redis.call('HGET', KEYS[1], 'n')
  if e ~= ARGV[3] or n ~= ARGV[4] then
    return { 0, e, n }
  end
end
return { 1, e, redis.call('HINCRBY', KEYS[1], 'n', 1) }
