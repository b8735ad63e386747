-- wrk script: POSTs one fixed, pre-generated body (bench/make_bodies.py) on every request and
-- prints one parseable summary line at the end.
--
--   WRK_BODY_FILE=bench/out/bodies/json-64.json WRK_CONTENT_TYPE=application/json WRK_ROWS=64 \
--     wrk -t1 -c32 -d15s --timeout 30s -s bench/wrk_post.lua http://127.0.0.1:8080/log_prob
--
-- Environment:
--   WRK_BODY_FILE     file whose bytes are the request body (required)
--   WRK_CONTENT_TYPE  Content-Type header (default application/json)
--   WRK_ROWS          rows per request, for rows/s in the summary (default 1)
--   WRK_LABEL         free text copied into the summary line (no spaces)
--
-- Summary line (times in ms; non2xx = responses with status >= 400, as wrk counts them):
--   wrk_result label=.. requests=.. duration_s=.. rps=.. rows_per_request=.. rows_per_s=..
--     mean_ms=.. p50_ms=.. p90_ms=.. p99_ms=.. max_ms=.. non2xx=.. err_connect=.. err_read=..
--     err_write=.. err_timeout=..

local path = os.getenv("WRK_BODY_FILE")
if path == nil or path == "" then
  error("WRK_BODY_FILE is not set")
end
local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()

local rows = tonumber(os.getenv("WRK_ROWS") or "1") or 1
local label = os.getenv("WRK_LABEL") or "-"

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"

-- No request()/response() functions: wrk then sends the pre-built request without calling Lua per
-- request, so the client costs as little CPU as possible.

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local rps = 0
  if secs > 0 then rps = summary.requests / secs end
  local function ms(us) return us / 1000.0 end
  local e = summary.errors
  io.write(string.format(
    "wrk_result label=%s requests=%d duration_s=%.3f rps=%.3f rows_per_request=%d rows_per_s=%.1f " ..
    "mean_ms=%.3f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f " ..
    "non2xx=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
    label, summary.requests, secs, rps, rows, rps * rows,
    ms(latency.mean), ms(latency:percentile(50)), ms(latency:percentile(90)),
    ms(latency:percentile(99)), ms(latency.max),
    e.status, e.connect, e.read, e.write, e.timeout))
end
