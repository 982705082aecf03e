-- ledger_trim.lua: trim a shard's usage stream through the last id the ledger committed
-- to Postgres (never beyond it), unless a reconcile pass holds the stream.
--
-- KEYS[1]: shard usage stream   KEYS[2]: trimmed-through marker   KEYS[3]: holds zset
-- ARGV[1]: the last stream id committed to Postgres ("ms-seq")
-- Reply:   {removed, marker}: removed = entries removed (-1 = held, nothing changed);
--          marker = the trimmed-through id after the call ("0-0" = never trimmed)
--
-- How it works: entries leave the stream only through this script, and the marker moves
-- with them, atomically. A reconcile pass reads the shard's Postgres offset, then the
-- stream: if the marker is still at or below that offset, every entry after the offset is
-- still in the stream, so "Postgres balance - unapplied events" can be computed exactly.
-- While a pass holds the shard (a zset member whose score, an expiry in ms of Redis time,
-- is in the future), trimming waits; the next trim after the hold catches up.
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_less(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  return ams < bms or (ams == bms and aseq < bseq)
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
local marker = redis.call('GET', KEYS[2]) or '0-0'
if redis.call('ZCARD', KEYS[3]) > 0 then
  return {-1, marker}
end
local ms, seq = string.match(ARGV[1], '^(%d+)-(%d+)$')
local removed = redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. string.format('%d', tonumber(seq) + 1))
if id_less(marker, ARGV[1]) then
  marker = ARGV[1]
  redis.call('SET', KEYS[2], marker)
end
return {removed, marker}
