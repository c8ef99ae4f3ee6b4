-- Shared by the cookiesaver wrk scripts (loaded with dofile from the script's own directory).
--
-- Provides: bench.lines(path), bench.count(kind), bench.ua, bench.unique(),
-- and wrk's global setup()/done(): done() prints what each thread sent, per
-- kind, and writes it as JSON to $BENCH_SUMMARY when set. With $RATE set
-- (requests per second, all threads together) it also defines delay(), which
-- paces requests to that rate (wrk2-style, with a per-thread schedule).

bench = {}

bench.ua = os.getenv("UA") or
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"

function bench.lines(path)
  local out = {}
  local f = io.open(path, "r")
  if not f then error("cannot open " .. path) end
  for line in f:lines() do
    if #line > 0 then out[#out + 1] = line end
  end
  f:close()
  if #out == 0 then error(path .. " is empty") end
  return out
end

sent = {}
function bench.count(kind)
  sent[kind] = (sent[kind] or 0) + 1
end

-- A per-thread prefix, so ids made by different threads (and runs) never collide.
local seed = tonumber(tostring({}):match("0x(%x+)"), 16) or 0
math.randomseed(os.time() + seed % 100000)
local prefix = string.format("%x%x", os.time(), math.random(0, 0xfffffff))
local serial = 0
function bench.unique()
  serial = serial + 1
  return prefix .. "-" .. serial
end

-- Start each thread at a different place in a list.
function bench.start(n)
  return math.random(1, n)
end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

local function us(x) return string.format("%.0f", x) end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("sent") or {}
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do parts[#parts + 1] = string.format('"%s": %d', k, v) end
  local e = summary.errors
  local json = string.format(
    '{"sent": {%s}, "requests": %d, "duration_us": %d, "p50_us": %s, "p99_us": %s, "max_us": %s, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}',
    table.concat(parts, ", "), summary.requests, summary.duration,
    us(latency:percentile(50)), us(latency:percentile(99)), us(latency.max),
    e.connect, e.read, e.write, e.status, e.timeout)
  io.write("sent per kind: ", table.concat(parts, ", "), "\n")
  local path = os.getenv("BENCH_SUMMARY")
  if path then
    local f = assert(io.open(path, "w"))
    f:write(json, "\n")
    f:close()
  end
end

-- Pacing: each thread owns RATE/threads of the rate and hands out send slots in order.
local rate = tonumber(os.getenv("RATE") or "")
if rate and rate > 0 then
  local ok, ffi = pcall(require, "ffi")
  local now_ms
  if ok then
    ffi.cdef [[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clk_id, bench_timespec *tp);
    ]]
    local ts = ffi.new("bench_timespec")
    now_ms = function()
      ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
    end
  end
  local nthreads = tonumber(os.getenv("THREADS") or "1")
  local interval = 1000 * nthreads / rate
  local next_slot = nil
  function delay()
    if not now_ms then return interval * 64 end  -- no ffi: a fixed delay, assuming 64 connections
    local now = now_ms()
    if next_slot == nil or next_slot < now - 1000 then next_slot = now end  -- never build up a burst
    local slot = next_slot
    next_slot = slot + interval
    local wait = slot - now
    if wait < 0 then wait = 0 end
    return math.floor(wait)
  end
end

return bench
