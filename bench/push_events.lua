-- Push callbacks: POST /push/events as the service worker sends them (delivered/clicked/closed).
--
-- Against your own deployment:
--   wrk -t1 -c64 -d30s --latency -s bench/push_events.lua https://pxl.example.com
--
-- Each report is one push_events document; the message id is unique per request
-- (reports dedupe on message, subscription and type), so they are all stored.
-- Use a test message-id range on a real deployment: MESSAGE_PREFIX (default bench-).
-- Env: MESSAGE_PREFIX, UA, BENCH_SUMMARY.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

local prefix = os.getenv("MESSAGE_PREFIX") or "bench-"
local subscription = string.rep("5e", 32)
local types = {"delivered", "clicked", "closed"}
local headers = {["User-Agent"] = bench.ua, ["Content-Type"] = "text/plain;charset=UTF-8"}
local n = 0

function request()
  n = n + 1
  bench.count("push")
  local body = string.format('{"type":"%s","message":"%s%s","subscription":"%s"}',
    types[n % 3 + 1], prefix, bench.unique(), subscription)
  return wrk.format("POST", "/push/events", headers, body)
end
