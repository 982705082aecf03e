-- recharge_state.lua: record an account's auto-recharge state (advisory: admit.lua
-- reads it only to explain a no-credit refusal), without creating the account.
--
-- KEYS[1]: account hash
-- ARGV[1]: the state (keys.RECHARGE_STATES: i in flight, d declined, p paused), or ''
--          for none (the field is deleted)
-- Reply:   1 written, 0 no such account (nothing changed)
--
-- The check and the write are one step: an HSET alone would create a hash for an
-- account Redis does not have (not synced yet, or gone), which credit.lua and the
-- reconcile would then take for a synced account.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'rch')
else
  redis.call('HSET', KEYS[1], 'rch', ARGV[1])
end
return 1
