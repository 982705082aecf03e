-- credit.lua: add money to an account (top-up, grant, recharge) once per credit
-- id, however often it is retried; decided as meter/money.py `credit`.
--
-- KEYS[1]: account hash   KEYS[2]: zset of credit ids applied to the account
-- ARGV: credit id, amount (micros, signed), now (ms), how long ids are remembered (ms)
-- Reply: {status, balance}: status 1 credited, 0 already applied (nothing
--        changed), -1 unknown account (nothing changed; sync the account first)
--
-- The credit is recorded in Postgres before this runs; the id is the ledger
-- entry's, so a retry after a crash finds it here and credits nothing more.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1, 0}
end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'bal'))}
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[3]) - tonumber(ARGV[4])))
local bal = redis.call('HINCRBY', KEYS[1], 'bal', ARGV[2])
local f = redis.call('HMGET', KEYS[1], 'rth', 'low')
if f[2] == '1' and (not f[1] or tonumber(f[1]) < 0 or bal >= tonumber(f[1])) then
  redis.call('HSET', KEYS[1], 'low', '0')
end
return {1, bal}
