-- wrk script for benchmarks/http.py: POST a different JSON body each request and print one JSON summary line.
--   wrk -t1 -c32 -d8s -s benchmarks/wrk_post.lua http://127.0.0.1:PORT/v1/sentiment -- BODIES_FILE
-- BODIES_FILE holds one request body (a JSON object) per line; each wrk thread reads it once at start.
-- No response() hook: defining one makes wrk hand every response to Lua, which costs the client CPU we are
-- trying not to measure; non-2xx answers are still counted (summary.errors.status).

local bodies = {}
local index = 0

function init(args)
   for line in io.lines(args[1]) do
      bodies[#bodies + 1] = line
   end
   -- threads start at different places so that they do not send the same text at the same moment
   index = ((tonumber(id) or 0) * 997) % #bodies  -- id: set by setup() below
end

function setup(thread)
   thread:set("id", tostring(setup_count or 0))
   setup_count = (setup_count or 0) + 1
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
   index = index % #bodies + 1
   return wrk.format(nil, nil, nil, bodies[index])
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
      '"max_us": %d, "mean_us": %.1f, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
      summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
