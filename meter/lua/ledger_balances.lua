-- ledger_balances.lua: read, at one instant, the Redis side of a reconcile pass over one
-- shard: the accounts' balances, which of their pending credits Redis has applied, and
-- the newest entry of the usage stream.
--
-- KEYS[1]: shard usage stream   KEYS[2]: trimmed-through marker (ledger_trim.lua)
--          then per account: account hash, credits-applied zset
-- ARGV[1]: the shard's offset as read from Postgres (last applied stream id)
-- ARGV[2]: n, the number of accounts; then per account: c, then c credit ids that
--          Postgres has not yet marked as applied to Redis
-- Reply:   {status, newest id, then per account: exists (0/1), balance, c flags
--          (1 = that credit is applied in Redis)}
--          status 1 = ok; 0 = stale: the stream was trimmed past ARGV[1], so entries
--          after the Postgres offset may be gone (read Postgres again); newest id is
--          "0-0" for an empty stream
--
-- Every debit and refund moves the balance and appends its event in one script, so the
-- balances read here include exactly the events up to the newest id; the caller then
-- reads the (immutable) entries between the offset and that id.
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_less(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  return ams < bms or (ams == bms and aseq < bseq)
end

local marker = redis.call('GET', KEYS[2]) or '0-0'
if id_less(ARGV[1], marker) then
  return {0, '0-0'}
end
local newest = '0-0'
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  newest = last[1][1]
end
local out = {1, newest}
local n = tonumber(ARGV[2])
local a = 3
for i = 0, n - 1 do
  local hash, credits = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local bal = redis.call('HGET', hash, 'bal')
  if bal then
    out[#out + 1] = 1
    out[#out + 1] = tonumber(bal)
  else
    out[#out + 1] = 0
    out[#out + 1] = 0
  end
  local c = tonumber(ARGV[a])
  for j = 1, c do
    if redis.call('ZSCORE', credits, ARGV[a + j]) then
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  end
  a = a + 1 + c
end
return out
