-- void.lua: after an admission batch's reply was lost (timeout, connection gone),
-- say which of its calls were debited, so the caller can refund them; or, if
-- the batch has not run, make sure it never does.
--
-- KEYS[1]: the batch's record (keys.admit_batch), as admit.lua keeps it
-- ARGV[1]: seconds the '-' left for a batch that has not run is kept
-- Reply:   admit.lua's record: a word per call of the batch (the debit's event
--          id, '-' for no debit; a call resolved by its key's hash adds its key
--          id, project, account and shard, '/'-joined); an empty string when
--          the batch did not run (or debited nothing)
--
-- How it works: admit.lua begins with EXISTS on the record and stops if it is
-- there, and keeps the record only when it debited something. Scripts run one
-- at a time, so a batch either ran before this script (its record, if it
-- debited anything, is read here) or runs after it and finds the '-' this
-- script leaves, whatever became of the connection it was sent on. Calling
-- this again answers the same; the refunds go through settle.lua, at most once
-- per call.
local record = redis.call('GET', KEYS[1])
if not record then
  redis.call('SET', KEYS[1], '-', 'EX', ARGV[1])
  return ''
end
if record == '-' then return '' end
return record
