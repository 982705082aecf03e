-- admit.lua: admit a batch of calls; each call's check and debit are one atomic
-- step (the whole script is atomic), decided exactly as meter/money.py `admit`.
--
-- KEYS[1]: the batch's record (keys.admit_batch: unique per batch); then d
--       records of earlier batches whose replies are in (deleted here); then
--       the account hashes and usage streams the batch touches. On Redis Cluster
--       they must share one hash tag ({sN}); the caller groups by slot.
-- ARGV[1]: UTC day number (the caller's clock; a smaller day never rolls back)
-- ARGV[2]: n, the number of calls
-- ARGV[3]: seconds the batch's record is kept (0: keep none)
-- ARGV[4]: d, the number of earlier records to delete; then n groups of 7:
--          account key index, stream key index, price (micros), api key id,
--          project id, account id, route name
--          A call whose caller is not known yet has account key index 0 and the
--          SHA-256 (hex) of its API key in place of the key id: the script reads
--          the key's hash (meter:apikey:<hex>, the fields of live_state.API_KEY_FIELDS)
--          and admits on the account it names.
--          Those keys are not in KEYS, which only a single (non-cluster) Redis
--          accepts; the key shapes are those of meter/keys.py.
-- Reply:   an empty list when the batch was voided before it ran (void.lua left
--          its record as '-': nothing is decided, nothing changes); else n groups
--          of 6:
--          outcome (0 admitted, 1 no credit, 2 daily limit, 3 suspended,
--          4 key revoked, 5 unknown account, 6 unknown key, 7 payment method
--          required), balance after, available after, daily limit remaining
--          (-1 = no limit), signals (bit flags), then a slot of two meanings: the
--          usage event id ("" when no event was written) or, for outcome 1, the
--          account's auto-recharge state (its 'rch' field, "" when absent). A
--          no-credit refusal never writes an event (it fires no signal), so the
--          slot is free there; the field is read only then.
--          then, for a call resolved by its key's hash, 4 more: key id, project
--          id, account id, shard (all nil when the key is unknown)
--          A call priced by its account's price table (below) has '@<table>@<price>'
--          appended to the slot, and to its word of the batch's record, and bit 16 set
--          in the signals (never in the usage event's): a reader of the common reply
--          has nothing more to look at.
--
-- Price tables: the status of an active account on a plan with prices of its own is
-- the plan's id instead of 'a'; meter:pt:{sN}:<plan> (keys.price_table, in the
-- account's slot) holds the plan's price of each route it changes (a variable-cost
-- route's reserve). The call's route found there is admitted at that price instead of
-- ARGV's; any other route, or an account with status 'a', at ARGV's. An account
-- without a table pays one string comparison for it.
--
-- How it works: one HMGET reads everything the decision needs, including the
-- status (a active, s suspended, p payment method required: checked in money.py's
-- order, s before p before the key) and the revocation flag of the calling key;
-- counters change only through HINCRBY (exact integers; Lua numbers are doubles
-- and must never be written back);
-- every admitted call appends one event to its shard's usage stream, which the
-- ledger worker moves into Postgres. A refusal that fires a signal appends a
-- zero-amount event so the signal is never lost.
--
-- The batch's record: when a batch debits anything, the script keeps, under
-- KEYS[1], one word per call: the debit's event id, or '-' (no debit); a call
-- resolved by its key's hash adds its key id, project, account and shard
-- ('/'-joined). The caller has the record deleted by its next batch on the
-- same slot once it has the reply (no command of its own). When the
-- reply is lost (timeout, connection gone), void.lua reads it to refund the
-- debits of calls that were answered 503 (or, if the batch has not run, leaves
-- '-' so that it never does).
--
-- Cost: Redis runs this script for every admitted call, and converting numbers
-- between strings and Lua is a large part of it (tonumber about 1,600 machine
-- instructions, tostring about 2,500, against about 100,000 for a whole
-- admission, counted with callgrind). So the settings of an account (overage,
-- limit, thresholds), which repeat from call to call of a batch, are converted
-- once per distinct string (number_once); today's day number is compared as the
-- string the caller sent (the same string means the same number; any other
-- string is converted and compared as a number); and the stream's day and
-- signal fields reuse strings.
if redis.call('EXISTS', KEYS[1]) == 1 then return {} end  -- voided before it ran
if ARGV[4] ~= '0' then redis.call('UNLINK', unpack(KEYS, 2, 1 + tonumber(ARGV[4]))) end
local day = tonumber(ARGV[1])
local today = ARGV[1]
local n = tonumber(ARGV[2])
local out = {}
local record, debits = {}, 0  -- a word per call (see above)
local numbers = {['-1'] = -1, ['0'] = 0}
local SIGNALS = {'0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11', '12', '13', '14',
  '15'}  -- the signal bits as the event's string, indexed by bits + 1

-- tonumber(s or default), converting each distinct string once per run
local function number_once(s, default)
  if not s then return default end
  local v = numbers[s]
  if v == nil then
    v = tonumber(s)
    numbers[s] = v
  end
  return v
end

-- does the day field s hold the day number d (whose string is ds)?
local function is_day(s, d, ds)
  if s == ds then return true end
  return s ~= false and tonumber(s) == d
end

-- available = max(0, balance + overage), capped by what is left of the daily limit
local function available(bal, ovl, lim, spt)
  local money = bal + ovl
  if money < 0 then money = 0 end
  if lim < 0 then return money, -1 end
  local left = lim - spt
  if left < 0 then left = 0 end
  if left < money then return left, left end
  return money, left
end

-- a call refused before anything was read of its account (6 items appended to out)
local function unknown(outcome)
  out[#out + 1] = outcome; out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = -1
  out[#out + 1] = 0; out[#out + 1] = ''
end

-- one call, decided and answered (6 items appended to out)
local function decide(akey, skey, price_s, keyid, project, account, route)
  local f = redis.call('HMGET', akey, 'bal', 'ovl', 'lim', 'ntf', 'rth', 'st', 'day', 'spt',
    'nfd', 'lfd', 'low', 'rk:' .. keyid)
  if not f[1] then
    unknown(5)
  else
    local tag = false  -- '@<table>@<price>' when the account's price table prices the call
    local st = f[6]
    if st ~= 'a' and st ~= 's' and st ~= 'p' and st then
      local own = redis.call('HGET', 'meter:pt:' .. string.match(akey, '{s%d+}') .. ':' .. st,
        route)
      if own then price_s, tag = own, '@' .. st .. '@' .. own end
    end
    local price = tonumber(price_s)
    local bal, ovl, lim = tonumber(f[1]), number_once(f[2], 0), number_once(f[3], -1)
    local ntf, rth, spt = number_once(f[4], -1), number_once(f[5], -1), tonumber(f[8] or 0)
    local sday, sday_s = day, today
    if f[7] ~= today then sday, sday_s = tonumber(f[7] or 0), f[7] or '0' end
    local low = f[11] == '1'
    local outcome, signals, eid = 0, 0, ''
    if f[6] == 's' then
      outcome = 3
    elseif f[6] == 'p' then
      outcome = 7
    elseif f[12] then
      outcome = 4
    else
      if day > sday then
        sday, sday_s, spt = day, today, 0
        redis.call('HSET', akey, 'day', today, 'spt', '0')
      end
      local money, left = bal + ovl, lim - spt
      if money < 0 then money = 0 end
      if left < 0 then left = 0 end
      if lim >= 0 and price > left then
        outcome = 2
        if not is_day(f[10], sday, sday_s) then
          signals = 2
          redis.call('HSET', akey, 'lfd', sday_s)
        end
      elseif price > money then
        outcome = 1
        eid = redis.call('HGET', akey, 'rch') or ''  -- why there is no money (see Reply)
      else
        local before_bal, before_spt = bal, spt
        if price > 0 then
          bal = redis.call('HINCRBY', akey, 'bal', '-' .. price_s)
          spt = redis.call('HINCRBY', akey, 'spt', price_s)
        end
        if ntf >= 0 and before_spt < ntf and ntf <= spt and not is_day(f[9], sday, sday_s) then
          signals = signals + 1
          redis.call('HSET', akey, 'nfd', sday_s)
        end
        if lim >= 0 and spt >= lim and not is_day(f[10], sday, sday_s) then
          signals = signals + 2
          redis.call('HSET', akey, 'lfd', sday_s)
        end
        if rth >= 0 and bal < rth and not low then
          signals = signals + 4
          redis.call('HSET', akey, 'low', '1')
        end
        if before_bal >= 0 and bal < 0 then
          signals = signals + 8
        end
      end
    end
    if outcome == 0 or signals ~= 0 then
      local t = 'd'
      if outcome ~= 0 then t = 'x'; price_s = '0' end
      eid = redis.call('XADD', skey, '*', 't', t, 'a', account, 'p', project, 'k', keyid,
        'r', route, 'm', price_s, 'd', sday_s, 'g', SIGNALS[signals + 1])
    end
    local bits = signals
    if tag then eid, bits = eid .. tag, signals + 16 end
    local avail, left = available(bal, ovl, lim, spt)
    out[#out + 1] = outcome; out[#out + 1] = bal; out[#out + 1] = avail
    out[#out + 1] = left; out[#out + 1] = bits; out[#out + 1] = eid
    if outcome == 0 then
      debits = debits + 1
      return eid
    end
  end
  return '-'
end

for i = 0, n - 1 do
  local b = 5 + i * 7
  if ARGV[b] ~= '0' then
    record[i + 1] = decide(KEYS[tonumber(ARGV[b])], KEYS[tonumber(ARGV[b + 1])], ARGV[b + 2],
      ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6])
  else
    local k = redis.call('HMGET', 'meter:apikey:' .. ARGV[b + 3], 'id', 'project', 'account',
      'shard')
    if k[1] and k[2] and k[3] and k[4] then
      local tag = '{s' .. k[4] .. '}'
      local eid = decide('meter:acct:' .. tag .. ':' .. k[3], 'meter:usage:' .. tag, ARGV[b + 2],
        k[1], k[2], k[3], ARGV[b + 6])
      record[i + 1] = eid .. '/' .. k[1] .. '/' .. k[2] .. '/' .. k[3] .. '/' .. k[4]
      out[#out + 1] = k[1]; out[#out + 1] = k[2]; out[#out + 1] = k[3]; out[#out + 1] = k[4]
    else
      unknown(6)
      record[i + 1] = '-'
      out[#out + 1] = false; out[#out + 1] = false; out[#out + 1] = false
      out[#out + 1] = false
    end
  end
end
if debits > 0 and ARGV[3] ~= '0' then
  redis.call('SET', KEYS[1], table.concat(record, ' '), 'EX', ARGV[3])
end
return out
