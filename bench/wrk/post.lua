-- wrk script: POST a chat completion body with an Authorization header, then print a JSON summary.
-- Environment: BENCH_BODY (the JSON body), BENCH_AUTH (the bearer token; empty: no header).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"bench/canned","messages":[{"role":"user","content":"Say hello."}]}'
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH") or ""
if auth ~= "" then
   wrk.headers["Authorization"] = "Bearer " .. auth
end

-- One line that bench/wrk.py parses: latency in microseconds, counts, and wrk's error classes.
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.2f,"stdev":%.2f,"max":%d,' ..
      '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end
