-- tollgate hybrid: apply one node's batch of counts for one window of one key, once, and
-- return the fleet's counts.
--
-- KEYS[1]  the window's counters: a hash {sub-window number -> count}, the sub-windows of the
--          sliding window (g = ceil(W / B) ms; sub-window m counts while m + B + 1 > ne)
-- KEYS[2]  the last batch number applied from this node for this key
-- ARGV     seq (0 = read only), now_ms, k (= B + 1, live sub-windows), g, ttl_ms, then pairs:
--          sub-window, count
-- returns  {n1, c1, n2, c2, ...}: the fleet's counts per sub-window, after the batch
--
-- A batch whose number is not above the last one applied was applied before (its reply was
-- lost): it is not applied again. The node keeps a batch until this reply arrives, so a batch
-- is applied exactly once however often the connection drops.
local seq = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local k = tonumber(ARGV[3])
local g = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local nn = math.floor(now / g)
if nn * g > now then nn = nn - 1 elseif (nn + 1) * g <= now then nn = nn + 1 end
if seq > 0 then
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  if seq > last then
    for i = 6, #ARGV - 1, 2 do
      redis.call('HINCRBY', KEYS[1], ARGV[i], tonumber(ARGV[i + 1]))
    end
    redis.call('SET', KEYS[2], seq, 'PX', ttl)
  end
end
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local n = tonumber(all[i])
  -- Sub-windows long gone on every node's clock (k more sub-windows of margin) are dropped.
  if n + 2 * k <= nn then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = n
    out[#out + 1] = tonumber(all[i + 1])
  end
end
if #out > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return out
