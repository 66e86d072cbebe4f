-- wrk load for POST requests: rotates through pre-built bodies and counts statuses.
--
--   wrk -t1 -c64 -d10s -s benchmarks/bodies.lua http://127.0.0.1:8000/predict -- BODY_DIR [COUNT]
--
-- BODY_DIR holds manifest.txt (one "file<TAB>content type" line per body, in rotation order) and the bodies,
-- written by benchmarks/serve.py (write_bodies: one multipart form per test digit) or benchmarks/soak.py (a mix
-- of good and bad requests); COUNT, when given, takes the first COUNT. Requests are built once per thread in
-- init(), so the generator costs the same for every server it drives. done() sums every thread's statuses and
-- prints one line, WRK_RESULT and JSON (latencies in microseconds), for the Python that ran wrk.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  local dir, count = args[1], tonumber(args[2])
  requests = {}
  for line in io.lines(dir .. "/manifest.txt") do
    if count and #requests >= count then
      break
    end
    local name, content_type = line:match("^([^\t]+)\t(.+)$")
    local headers = { ["Content-Type"] = content_type }
    table.insert(requests, wrk.format("POST", nil, headers, read_file(dir .. "/" .. name)))
  end
  index = (id * 7919) % #requests  -- threads start apart, so they do not send the same body in lockstep
  statuses = {}
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[tostring(status)] = (counts[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.timeout, table.concat(parts, ", ")))
end
