-- A mix of a mailing's traffic: returning and new visitors' pixels, clicks, opens, beacons, push reports.
--
-- Against your own deployment (see click.lua and pixel_returning.lua for the files):
--   KEYS_FILE=keys.txt COOKIES_FILE=cookies.txt SITE=shop ORIGIN=https://shop.example \
--     wrk -t1 -c64 -d30s --latency -s bench/mix.lua https://pxl.example.com
--
-- Weights per 20 requests: 8 returning pixel, 3 new pixel, 3 click, 2 open pixel (k=KEY),
-- 2 beacon (3 events each), 2 push report.
-- Env: KEYS_FILE, COOKIES_FILE, SITE, ORIGIN, MESSAGE_PREFIX, UA, BENCH_SUMMARY.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

local site = os.getenv("SITE") or "shop"
local keys = bench.lines(os.getenv("KEYS_FILE") or "keys.txt")
local cookies = bench.lines(os.getenv("COOKIES_FILE") or "cookies.txt")
local base = {["User-Agent"] = bench.ua, ["Accept"] = "*/*"}
local prefix = os.getenv("MESSAGE_PREFIX") or "bench-"
local subscription = string.rep("5e", 32)
local beacon
function init(args)
  beacon = wrk.format("POST", "/pixel", {
    ["User-Agent"] = bench.ua, ["Content-Type"] = "text/plain;charset=UTF-8",
    ["Origin"] = os.getenv("ORIGIN") or "https://shop.localhost",
  }, '{"site":"' .. site .. '","events":[{"e":"scroll","url":"https://shop.localhost/a"},' ..
     '{"e":"scroll","url":"https://shop.localhost/b"},{"e":"goal","props":{"value":12.5}}]}')
end
local plan = {"ret", "click", "ret", "new", "ret", "open", "beacon3", "ret", "push", "click",
              "ret", "new", "ret", "open", "beacon3", "ret", "push", "click", "ret", "new"}
local step = bench.start(#plan)
local k = bench.start(#keys)
local c = bench.start(#cookies)

local function key()
  k = k + 1
  if k > #keys then k = 1 end
  return keys[k]
end

function request()
  step = step + 1
  if step > #plan then step = 1 end
  local kind = plan[step]
  bench.count(kind)
  if kind == "ret" then
    c = c + 1
    if c > #cookies then c = 1 end
    return wrk.format("GET", "/pixel?site=" .. site .. "&e=page_view&url=https%3A%2F%2Fshop.localhost%2F", {
      ["User-Agent"] = bench.ua, ["Cookie"] = cookies[c]})
  elseif kind == "new" then
    return wrk.format("GET", "/pixel?site=" .. site .. "&url=https%3A%2F%2Fshop.localhost%2Fnew", base)
  elseif kind == "click" then
    return wrk.format("GET", "/pixel?_open_pix=1&k=" .. key(), base)
  elseif kind == "open" then
    return wrk.format("GET", "/pixel?k=" .. key(), base)
  elseif kind == "beacon3" then
    return beacon
  else
    return wrk.format("POST", "/push/events", {["Content-Type"] = "text/plain;charset=UTF-8"},
      string.format('{"type":"delivered","message":"%s%s","subscription":"%s"}', prefix, bench.unique(), subscription))
  end
end
