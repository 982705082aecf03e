-- ledger_repair.lua: rebuild the Redis state of a shard's accounts from Postgres (after
-- Redis lost data), counting the usage events Postgres has not applied yet.
--
-- KEYS[1]: shard usage stream   KEYS[2]: trimmed-through marker (ledger_trim.lua)
--          then per account: account hash, credits-applied zset
-- ARGV[1]: the shard's offset as read from Postgres (last applied stream id)
-- ARGV[2]: read-through id: the caller has already counted the entries after ARGV[1] up
--          to this id into each account's base balance and spend
-- ARGV[3]: today (UTC day number)   ARGV[4]: n, the number of accounts; then per account:
--          account id, base balance, base spent today, config version, overage line,
--          daily hard limit (-1 none), notify threshold (-1 none), low-balance
--          threshold (-1 none), status (a|s|p), notify fired day (-1 none), limit fired
--          day (-1 none), c, r; then c pairs (credit id, applied at ms); then r revoked
--          API key ids
-- Reply:   {status, created, rebuilt}: status 1 = done; 0 = stale: the stream was
--          trimmed past ARGV[1] (nothing changed; read Postgres again)
--
-- How it works: the balance is set to base + the events appended after ARGV[2] (the
-- gateway may be admitting calls meanwhile; each admission moved the balance and
-- appended its event atomically, so those events are exactly what base misses). The
-- spend of today is kept when Redis still counts today, else rebuilt the same way.
-- Config is applied as sync_account.lua does (only a newer version); credit ids are
-- remembered as applied, because the base balance includes every Postgres credit.
-- If the stream's ids restarted below the Postgres offset (Redis lost the stream), the
-- stream's last id is moved up to the offset so that new events sort after it.
local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_less(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  return ams < bms or (ams == bms and aseq < bseq)
end

local offset, through, today = ARGV[1], ARGV[2], tonumber(ARGV[3])
local marker = redis.call('GET', KEYS[2]) or '0-0'
if id_less(offset, marker) then
  return {0, 0, 0}
end

if offset ~= '0-0' then
  local last = '0-0'
  if redis.call('EXISTS', KEYS[1]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then last = info[i + 1] end
    end
  end
  if id_less(last, offset) then
    redis.call('XADD', KEYS[1], offset, 'repair', '1')
    redis.call('XDEL', KEYS[1], offset)
  end
end

-- What the gateway appended after the caller's read: net debit and today's spend.
local tail_net, tail_spent = {}, {}
local entries = redis.call('XRANGE', KEYS[1], '(' .. through, '+')
for _, entry in ipairs(entries) do
  local f = entry[2]
  local t, acct, amount, day = nil, nil, 0, nil
  for i = 1, #f, 2 do
    local k = f[i]
    if k == 't' then t = f[i + 1]
    elseif k == 'a' then acct = f[i + 1]
    elseif k == 'm' then amount = tonumber(f[i + 1])
    elseif k == 'd' then day = tonumber(f[i + 1]) end
  end
  if acct and (t == 'd' or t == 'r') then
    local sign = 1
    if t == 'r' then sign = -1 end
    tail_net[acct] = (tail_net[acct] or 0) + sign * amount
    if day == today then
      tail_spent[acct] = (tail_spent[acct] or 0) + sign * amount
    end
  end
end

local created, rebuilt = 0, 0
local n = tonumber(ARGV[4])
local a = 5
for i = 0, n - 1 do
  local hash, credits = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local acct = ARGV[a]
  local bal = tonumber(ARGV[a + 1]) - (tail_net[acct] or 0)
  local spent = tonumber(ARGV[a + 2]) + (tail_spent[acct] or 0)
  if spent < 0 then spent = 0 end
  local version = tonumber(ARGV[a + 3])
  local c, r = tonumber(ARGV[a + 11]), tonumber(ARGV[a + 12])
  local cur = redis.call('HMGET', hash, 'ver', 'day', 'nfd', 'lfd', 'low')
  if cur[1] then rebuilt = rebuilt + 1 else created = created + 1 end
  redis.call('HSET', hash, 'bal', string.format('%d', bal))
  if not cur[1] or tonumber(cur[1]) < version then
    redis.call('HSET', hash, 'ver', ARGV[a + 3], 'ovl', ARGV[a + 4], 'lim', ARGV[a + 5],
      'ntf', ARGV[a + 6], 'rth', ARGV[a + 7], 'st', ARGV[a + 8])
  end
  if not cur[2] or tonumber(cur[2]) < today then
    redis.call('HSET', hash, 'day', tostring(today), 'spt', string.format('%d', spent))
  end
  if not cur[3] and tonumber(ARGV[a + 9]) >= 0 then
    redis.call('HSET', hash, 'nfd', ARGV[a + 9])
  end
  if not cur[4] and tonumber(ARGV[a + 10]) >= 0 then
    redis.call('HSET', hash, 'lfd', ARGV[a + 10])
  end
  local rth = tonumber(redis.call('HGET', hash, 'rth') or '-1')
  if cur[5] == '1' and (rth < 0 or bal >= rth) then
    redis.call('HSET', hash, 'low', '0')
  end
  local p = a + 13
  for j = 0, c - 1 do
    redis.call('ZADD', credits, 'NX', ARGV[p + 2 * j + 1], ARGV[p + 2 * j])
  end
  p = p + 2 * c
  for j = 0, r - 1 do
    redis.call('HSET', hash, 'rk:' .. ARGV[p + j], '1')
  end
  a = p + r
end
return {1, created, rebuilt}
