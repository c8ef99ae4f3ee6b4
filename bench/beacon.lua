-- POST beacon batches: POST /pixel with a text/plain JSON body of BATCH events (as navigator.sendBeacon sends).
--
-- Against your own deployment (ORIGIN must be one of the site's allowed origins):
--   SITE=shop ORIGIN=https://shop.example BATCH=5 wrk -t1 -c64 -d30s --latency -s bench/beacon.lua https://pxl.example.com
--
-- Each POST records BATCH events (answer 204).
-- Env: SITE (default shop), ORIGIN (default https://shop.localhost), BATCH (default 5), UA, BENCH_SUMMARY.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

local site = os.getenv("SITE") or "shop"
local batch = tonumber(os.getenv("BATCH") or "5")
local kind = "beacon" .. batch
local events = {}
for n = 1, batch do
  events[n] = string.format('{"e":"scroll","url":"https://shop.localhost/p/%d","props":{"depth":%d,"ab":"b"}}', n, n * 10)
end
local body = string.format('{"site":"%s","events":[%s]}', site, table.concat(events, ","))
local req

-- wrk only knows the Host header once init() runs, so the request is formatted here.
function init(args)
  req = wrk.format("POST", "/pixel", {
    ["User-Agent"] = bench.ua, ["Content-Type"] = "text/plain;charset=UTF-8",
    ["Origin"] = os.getenv("ORIGIN") or "https://shop.localhost",
  }, body)
end

function request()
  bench.count(kind)
  return req
end
