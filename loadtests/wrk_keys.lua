-- wrk_keys.lua: send each request with an API key picked from a file.
--
-- Configured by environment variables (wrk decides before init() whether a
-- script builds each request itself, so the choice is made at load time):
--   WRK_KEYS_FILE   one API key per line; unset or empty: no Authorization header
--   WRK_KEYS_DIST   uniform (default) or zipf
--   WRK_ZIPF_S      Zipf exponent (default 0.99): key of rank k gets a share ~ 1/k^s
--   WRK_KEYS_LIMIT  use only the first N keys of the file (default: all)
--   WRK_KEYS_DYNAMIC  1: build each request in request() even for one key, so that
--                     a one-key run costs wrk what a million-key run does
--
-- With zero or one key the request is static (wrk sends the same bytes each
-- time, its fastest path); with more, request() picks a key per call by a
-- binary search in the cumulative distribution, the same as
-- loadtests/keyspace.py `pick`. Each wrk thread has its own Lua state: the
-- keys are loaded in init() (a million in ~0.2 s), not in wrk's main state,
-- and each thread seeds its generator differently.

local path = os.getenv("WRK_KEYS_FILE") or ""
local dist = os.getenv("WRK_KEYS_DIST") or "uniform"
local s = tonumber(os.getenv("WRK_ZIPF_S") or "0.99")
local limit = tonumber(os.getenv("WRK_KEYS_LIMIT") or "0")
local dynamic = os.getenv("WRK_KEYS_DYNAMIC") == "1"

if dist ~= "uniform" and dist ~= "zipf" then
  error("WRK_KEYS_DIST must be uniform or zipf, not " .. dist)
end

-- The first two keys decide between the static and the dynamic request.
local first = {}
if path ~= "" then
  for line in io.lines(path) do
    if line ~= "" then first[#first + 1] = line end
    if #first == 2 then break end
  end
end
local many = #first == 2 and limit ~= 1

if not dynamic and not many and #first > 0 then
  wrk.headers["Authorization"] = "Bearer " .. first[1]
end

if many or (dynamic and #first > 0) then
  local keys, n, cdf = nil, 0, nil

  local function load()
    local f = assert(io.open(path, "rb"))
    local data = f:read("*a")
    f:close()
    keys = {}
    local pos, len = 1, #data
    while pos <= len and (limit <= 0 or n < limit) do
      local stop = data:find("\n", pos, true) or (len + 1)
      if stop > pos then
        n = n + 1
        keys[n] = data:sub(pos, stop - 1)
      end
      pos = stop + 1
    end
    if dist == "zipf" then
      cdf = {}
      local total = 0.0
      for k = 1, n do
        total = total + 1.0 / (k ^ s)
        cdf[k] = total
      end
      for k = 1, n do cdf[k] = cdf[k] / total end
    end
  end

  local function pick()
    local u = math.random()
    if cdf == nil then
      local i = math.floor(u * n) + 1
      if i > n then i = n end
      return i
    end
    local lo, hi = 1, n
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
    end
    return lo
  end

  local head, tail = nil, "\r\n\r\n"

  function request()
    if keys == nil then load() end
    if head == nil then
      -- wrk.format() ends with the blank line; put the header before it
      local base = wrk.format()
      head = base:sub(1, #base - 2) .. "Authorization: Bearer "
    end
    return head .. keys[pick()] .. tail
  end

  function init(args)
    math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919)
    for _ = 1, 10 do math.random() end
    if keys == nil then load() end
  end
end

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end
