-- wrk load for POST /predict: rotates through pre-built multipart bodies and counts statuses.
--
--   wrk -t1 -c64 -d10s -s benchmarks/multipart.lua http://127.0.0.1:8000/predict -- BODY_DIR COUNT
--
-- BODY_DIR holds body_0000.bin... and boundary.txt, written by benchmarks/serve.py (one body per test
-- digit, each a PNG plus the number field). Requests are built once per thread in init(), so the
-- generator costs the same for every server it drives. done() prints one JSON line for serve.py.

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
  local boundary = read_file(dir .. "/boundary.txt")
  local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }
  requests = {}
  for i = 0, count - 1 do
    local body = read_file(string.format("%s/body_%04d.bin", dir, i))
    requests[i + 1] = wrk.format("POST", nil, headers, body)
  end
  -- threads start at different images, so they do not send the same one in lockstep
  index = (id * 7919) % count
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
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"socket_errors": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, table.concat(parts, ", ")))
end
