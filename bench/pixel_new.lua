-- Pixel hits from new visitors: GET /pixel?site=SITE&e=page_view&url=... with no cookie.
--
-- Against your own deployment (SITE is a site id from COOKIESAVER_SITES):
--   SITE=shop wrk -t1 -c64 -d30s --latency -s bench/pixel_new.lua https://pxl.example.com
--
-- Each hit records one page_view event and mints a visitor id (Set-Cookie).
-- Env: SITE (default shop), UA, BENCH_SUMMARY.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

local site = os.getenv("SITE") or "shop"
local headers = {["User-Agent"] = bench.ua, ["Accept"] = "image/avif,image/webp,*/*", ["Referer"] = "https://shop.localhost/"}
local reqs = {}
local i = bench.start(500)

-- wrk only knows the Host header once init() runs, so requests are formatted here.
function init(args)
  for n = 1, 500 do
    reqs[n] = wrk.format("GET", "/pixel?site=" .. site .. "&e=page_view&url=https%3A%2F%2Fshop.localhost%2Fp%2F" .. n, headers)
  end
end

function request()
  i = i + 1
  if i > #reqs then i = 1 end
  bench.count("pixel")
  return reqs[i]
end
