-- Click redirects (GET /pixel?_open_pix=1&k=KEY -> 302) with many distinct valid KEYs.
--
-- Against your own deployment:
--   .venv/bin/python -m bench.keys --config /etc/platform/main.json --count 20000 --out keys.txt
--   KEYS_FILE=keys.txt wrk -t1 -c64 -d30s --latency -s bench/click.lua https://pxl.example.com
--
-- Each click records one pixel_open event and one visitor link; KEYs are
-- minted with the current token key and expire after COOKIESAVER_TOKEN_MAX_AGE.
-- The KEYs should use a test profile range: they create real visitor links.
-- Env: KEYS_FILE (default keys.txt), UA, BENCH_SUMMARY (JSON summary path).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

local keys = bench.lines(os.getenv("KEYS_FILE") or "keys.txt")
local reqs = {}
local i = bench.start(#keys)

-- wrk only knows the Host header once init() runs, so requests are formatted here.
function init(args)
  for n, key in ipairs(keys) do
    reqs[n] = wrk.format("GET", "/pixel?_open_pix=1&k=" .. key, {["User-Agent"] = bench.ua, ["Accept"] = "text/html"})
  end
end

function request()
  i = i + 1
  if i > #reqs then i = 1 end
  bench.count("click")
  return reqs[i]
end
