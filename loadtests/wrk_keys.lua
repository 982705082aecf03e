-- wrk_keys.lua: send each request with an API key picked from a file.
--
-- Configured by environment variables (wrk decides before init() whether a
-- script builds each request itself, so the choice is made at load time):
--   WRK_KEYS_FILE   one API key per line; unset or empty: no Authorization header
--   WRK_KEYS_DIST   uniform (default), zipf, or sequence: thread t of T sends keys t,
--                   t + T, t + 2T, ... so that the first N calls together send each of
--                   the N keys once (a cold cache warmed by one pass), then again
--   WRK_THREADS     T, wrk's -t (set by loadtests/wrk.py)
--   WRK_ZIPF_S      Zipf exponent (default 0.99): key of rank k gets a share ~ 1/k^s
--   WRK_KEYS_LIMIT  use only the first N keys of the file (default: all)
--   WRK_KEYS_DYNAMIC  1: build each request in request() even for one key, so that
--                     a one-key run costs wrk what a million-key run does
--
-- With zero or one key the request is static (wrk sends the same bytes each
-- time, its fastest path); with more, request() picks a key per call by a
-- binary search in the cumulative distribution, the same as
-- loadtests/keyspace.py `pick`. Each wrk thread has its own Lua state: the
-- keys are loaded in init(), not in wrk's main state, and each thread seeds its
-- generator differently. All lines must be equally long (API keys are).

local path = os.getenv("WRK_KEYS_FILE") or ""
local dist = os.getenv("WRK_KEYS_DIST") or "uniform"
local s = tonumber(os.getenv("WRK_ZIPF_S") or "0.99")
local limit = tonumber(os.getenv("WRK_KEYS_LIMIT") or "0")
local dynamic = os.getenv("WRK_KEYS_DYNAMIC") == "1"
local threads = tonumber(os.getenv("WRK_THREADS") or "1")

if dist ~= "uniform" and dist ~= "zipf" and dist ~= "sequence" then
  error("WRK_KEYS_DIST must be uniform, zipf or sequence, not " .. dist)
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
  -- The keys stay in the file's one string, read at fixed offsets: a million
  -- separate Lua strings would cost each wrk thread ~0.5 s to build, inside the
  -- measured run (wrk starts a thread's load before it inits the next one), and
  -- a ~100 MB heap that wrk's garbage collector keeps walking.
  local data, width, n, cdf = nil, 0, 0, nil

  local function load()
    local f = assert(io.open(path, "rb"))
    data = f:read("*a")
    f:close()
    width = (data:find("\n", 1, true) or (#data + 1))  -- a key and its newline
    if width < 2 then error("WRK_KEYS_FILE: the first line is empty") end
    n = math.floor((#data + 1) / width)
    if limit > 0 and n > limit then n = limit end
    for k = 1, n do
      local nl = k * width
      if nl <= #data and data:byte(nl) ~= 10 then
        error("WRK_KEYS_FILE: every line must be as long as the first (line " .. k .. ")")
      end
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

  local turn = 0
  local function pick()
    if dist == "sequence" then
      local i = ((thread_number or 1) - 1 + turn * threads) % n + 1
      turn = turn + 1
      return i
    end
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
    if data == nil then load() end
    if head == nil then
      -- wrk.format() ends with the blank line; put the header before it
      local base = wrk.format()
      head = base:sub(1, #base - 2) .. "Authorization: Bearer "
    end
    local at = (pick() - 1) * width + 1
    return head .. data:sub(at, at + width - 2) .. tail
  end

  function init(args)
    math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919)
    for _ = 1, 10 do math.random() end
    if data == nil then load() end
  end
end

local started = 0

function setup(thread)
  started = started + 1
  thread:set("thread_number", started)
end
