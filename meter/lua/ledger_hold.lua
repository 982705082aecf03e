-- ledger_hold.lua: pause (or resume) the trimming of a shard's usage stream for one
-- reconcile pass; see ledger_trim.lua.
--
-- KEYS[1]: the shard's holds zset
-- ARGV[1]: the pass's token   ARGV[2]: how long to hold, ms (0 = release the hold)
-- Reply:   the number of live holds after the call
--
-- Expiry uses Redis's clock (TIME), the same clock ledger_trim.lua compares it with, so a
-- pass that dies never pauses trimming for longer than its TTL.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('ZADD', KEYS[1], now_ms + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
