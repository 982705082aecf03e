-- settle.lua: give back part or all of an admitted price, at most once per call
-- (variable-cost settlement, or a refund when the upstream failed); decided as
-- meter/money.py `refund`.
--
-- KEYS[1]: account hash   KEYS[2]: shard usage stream   KEYS[3]: settled marker of the call
-- ARGV: refund amount (micros, > 0), UTC day the call was admitted, marker TTL
--       (seconds), api key id, project id, account id, route, admission event id
-- Reply: {status, balance}: status 1 refunded, 0 already settled (nothing
--        changed), -1 unknown account (nothing changed)
--
-- The marker makes a retried settlement harmless: the first one wins.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1, 0}
end
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[3]) then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'bal'))}
end
local amount = ARGV[1]
local bal = redis.call('HINCRBY', KEYS[1], 'bal', amount)
local f = redis.call('HMGET', KEYS[1], 'day', 'spt', 'rth', 'low')
if f[1] == ARGV[2] then
  local spt = tonumber(f[2] or 0) - tonumber(amount)
  if spt < 0 then spt = 0 end
  redis.call('HSET', KEYS[1], 'spt', string.format('%d', spt))
end
if f[4] == '1' and (not f[3] or tonumber(f[3]) < 0 or bal >= tonumber(f[3])) then
  redis.call('HSET', KEYS[1], 'low', '0')
end
redis.call('XADD', KEYS[2], '*', 't', 'r', 'a', ARGV[6], 'p', ARGV[5], 'k', ARGV[4],
  'r', ARGV[7], 'm', amount, 'd', ARGV[2], 'o', ARGV[8])
return {1, bal}
