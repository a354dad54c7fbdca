-- wrk script: POST one JSON body over and over, print the summary as one JSON line.
--
--   wrk -t1 -c16 -d10s --latency -s bench/wrk_post.lua URL -- BODY_FILE [HEADER_FILE]
--
-- BODY_FILE holds the request body; HEADER_FILE (optional) holds "Name: value"
-- lines (an Authorization header, say). done() prints a line starting with
-- "WRK_JSON " that bench/wrk.py parses; latencies are in microseconds.

local function read_file(path)
  local fh = assert(io.open(path, "rb"))
  local data = fh:read("*a")
  fh:close()
  return data
end

function init(args)
  wrk.method = "POST"
  wrk.body = read_file(args[1])
  wrk.headers["Content-Type"] = "application/json"
  if args[2] ~= nil and args[2] ~= "" then
    for line in read_file(args[2]):gmatch("[^\r\n]+") do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      if name then wrk.headers[name] = value end
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.3f,"stdev":%.3f,"max":%d,' ..
    '"p50":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d}}',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9))
  io.write("WRK_JSON " .. out .. "\n")
end
