-- The sustained test: returning visitors' pixels at a fixed rate (wrk's delay(), paced per thread).
--
-- Against your own deployment (RATE is requests per second for all threads; THREADS must match -t):
--   RATE=5000 THREADS=1 COOKIES_FILE=cookies.txt wrk -t1 -c64 -d60s --latency -s bench/paced.lua https://pxl.example.com
-- and watch cookiesaver_writer_queue_documents and cookiesaver_spool_documents stay flat.
-- Latency is measured from each paced send (no coordinated-omission correction).
-- Env: RATE (required), THREADS, COOKIES_FILE or COOKIE, SITE, UA, BENCH_SUMMARY.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "common.lua")

if not os.getenv("RATE") then error("set RATE (requests per second)") end
dofile(dir .. "pixel_returning.lua")
