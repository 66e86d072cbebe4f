-- wrk load for the soak test: rotates through a mix of good and bad POST /predict requests.
--
--   wrk -t2 -c32 -d30s --latency -s benchmarks/soak.lua http://127.0.0.1:8000/predict -- BODY_DIR
--
-- BODY_DIR holds manifest.txt (one "file<TAB>content type" line per request) and the bodies, written by
-- benchmarks/soak.py. Requests are built once per thread in init(). response() counts statuses per
-- thread; done() sums them and prints one JSON line (latencies in microseconds) for soak.py.

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
  local dir = args[1]
  requests = {}
  for line in io.lines(dir .. "/manifest.txt") do
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
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "statuses": {%s}, "p50": %d, "p90": %d, "p99": %d, "max": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, table.concat(parts, ", "),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    errors.connect, errors.read, errors.write, errors.timeout))
end
