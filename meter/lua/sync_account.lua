-- sync_account.lua: bring an account's limits and status in Redis up to a
-- version written in Postgres; creates the account (balance 0) when missing.
--
-- KEYS[1]: account hash
-- ARGV: version, overage line, daily hard limit (-1 none), daily notify
--       threshold (-1 none), low-balance threshold (-1 none), status (a|s|p: active,
--       suspended, payment method required; keys.account_status)
-- Reply: {status, balance}: status 1 applied, 0 Redis already had this
--        version or a newer one (nothing changed)
--
-- Versions make concurrent admin writes land in Postgres order whatever order
-- they reach Redis in. The balance is never set here: only credits, debits and
-- refunds move it (and the reconcile repair, which rebuilds it from the ledger).
local ver = redis.call('HGET', KEYS[1], 'ver')
if ver and tonumber(ver) >= tonumber(ARGV[1]) then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'bal'))}
end
if not ver then
  redis.call('HSETNX', KEYS[1], 'bal', '0')
  redis.call('HSETNX', KEYS[1], 'day', '0')
  redis.call('HSETNX', KEYS[1], 'spt', '0')
end
redis.call('HSET', KEYS[1], 'ver', ARGV[1], 'ovl', ARGV[2], 'lim', ARGV[3], 'ntf', ARGV[4],
  'rth', ARGV[5], 'st', ARGV[6])
local f = redis.call('HMGET', KEYS[1], 'bal', 'low')
local bal = tonumber(f[1])
if f[2] == '1' and (tonumber(ARGV[5]) < 0 or bal >= tonumber(ARGV[5])) then
  redis.call('HSET', KEYS[1], 'low', '0')
end
return {1, bal}
