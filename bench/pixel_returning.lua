-- Pixel hits from returning visitors: the same page-view pixel, with a visitor cookie
-- taken from an earlier response (the server checks its signature on every hit).
--
-- Against your own deployment: collect cookies first (one "csid=..." per line), then run:
--   for n in $(seq 200); do curl -s -o /dev/null -D - "https://pxl.example.com/pixel?site=shop" \
--     | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\);.*/\1/p'; done > cookies.txt
--   COOKIES_FILE=cookies.txt SITE=shop wrk -t1 -c64 -d30s --latency -s bench/pixel_returning.lua https://pxl.example.com
-- or pass one cookie: COOKIE='csid=...' wrk ...
--
-- Each hit records one page_view event and refreshes the cookie.
-- Env: COOKIES_FILE or COOKIE, SITE (default shop), UA, BENCH_SUMMARY.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

local site = os.getenv("SITE") or "shop"
local cookies
if os.getenv("COOKIES_FILE") then
  cookies = bench.lines(os.getenv("COOKIES_FILE"))
elseif os.getenv("COOKIE") then
  cookies = {os.getenv("COOKIE")}
else
  error("set COOKIES_FILE or COOKIE (a visitor cookie from an earlier response)")
end
local reqs = {}
local i = bench.start(#cookies)

-- wrk only knows the Host header once init() runs, so requests are formatted here.
function init(args)
  for n, cookie in ipairs(cookies) do
    reqs[n] = wrk.format("GET", "/pixel?site=" .. site .. "&e=page_view&url=https%3A%2F%2Fshop.localhost%2Fp%2F" .. n, {
      ["User-Agent"] = bench.ua, ["Accept"] = "image/avif,image/webp,*/*",
      ["Referer"] = "https://shop.localhost/", ["Cookie"] = "_ga=GA1.2.3.4; " .. cookie,
    })
  end
end

function request()
  i = i + 1
  if i > #reqs then i = 1 end
  bench.count("pixel")
  return reqs[i]
end
