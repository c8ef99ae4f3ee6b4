"""``make bench``: cookiesaver side by side with nginx, a bare aiohttp pixel and a bare twisted.web pixel.

    python -m bench.run                   # 3 runs of 5 s per row after a warm-up, then 60 s paced
    python -m bench.run --quick           # a smoke run: 1 run of 2 s per row, 10 s paced
    python -m bench.run --runs 5 --duration 20 --skip-sustained --json out.json

Every server runs pinned to CPU 1 and wrk (one thread, 64 keep-alive
connections) to CPU 0 when the machine has two CPUs; the embedded
MongoDB-wire server (secantusd-py) shares CPU 0 with wrk. The table shows
medians; exit status 1 when any server fails to answer correctly or
cookiesaver's stored events differ from what its clients were answered,
never because of a ratio (the machine is shared: ratios are for reading).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
CONNECTIONS = 64
SERVER_CPU = "1"
CLIENT_CPU = "0"

#: Documents each kind of request stores (kind names are what the Lua scripts count), by collection.
EVENTS_PER_KIND: Mapping[str, tuple[str, int]] = {
    "pixel": ("events", 1),
    "ret": ("events", 1),
    "new": ("events", 1),
    "click": ("events", 1),
    "open": ("events", 1),
    "beacon5": ("events", 5),
    "beacon3": ("events", 3),
    "push": ("push_events", 1),
}


# --- results and the table ----------------------------------------------------------------


@dataclass
class RunResult:
    """One wrk run."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors: connect, read, write, timeout
    non2xx: int
    cpu_us: float | None  # server CPU per request
    sent: dict[str, int] = field(default_factory=dict)


@dataclass
class Row:
    """One line of the table: a server and a traffic script, several runs."""

    name: str
    runs: list[RunResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    responses: int | None = None  # cookiesaver rows: 2xx/3xx answers wrk read, all runs with warm-up
    expected: dict[str, int] | None = None  # documents the sent requests must have stored, by collection
    stored: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and bool(self.runs)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(row: Row) -> dict[str, Any]:
    """Medians over the runs (errors are summed: any is a failure)."""
    runs = row.runs
    cpu = [r.cpu_us for r in runs if r.cpu_us is not None]
    return {
        "rps": median([r.rps for r in runs]),
        "p50_ms": median([r.p50_ms for r in runs]),
        "p99_ms": median([r.p99_ms for r in runs]),
        "errors": sum(r.errors for r in runs),
        "non2xx": sum(r.non2xx for r in runs),
        "cpu_us": median(cpu) if cpu else None,
        "all_rps": [r.rps for r in runs],
    }


def _ratio(value: float, base: float | None) -> str:
    if not base or math.isnan(base) or math.isnan(value):
        return "-"
    return f"{value / base:.2f}"


def _num(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value / 1000:.1f}k" if value >= 10000 else f"{value:.0f}"


def format_table(rows: Sequence[Row], nginx: str = "nginx empty_gif", aiohttp: str = "bare aiohttp pixel") -> str:
    """The one table: medians, ratios to nginx and to bare aiohttp, and the events check."""
    sums = {row.name: summarize(row) for row in rows}
    base_nginx = sums[nginx]["rps"] if nginx in sums else None
    base_aiohttp = sums[aiohttp]["rps"] if aiohttp in sums else None
    header = ["row", "req/s", "runs", "p50 ms", "p99 ms", "errors", "non-2xx/3xx", "CPU us/req", "x nginx", "x aiohttp", "stored / accepted (answers read)", "ok"]
    lines = [header]
    for row in rows:
        s = sums[row.name]
        events = "-"
        if row.expected is not None and row.stored is not None:
            parts = [f"{c}: {row.stored.get(c, 0)} / {n}" for c, n in sorted(row.expected.items())]
            events = "; ".join(parts) + (f" ({row.responses})" if row.responses is not None else "")
        lines.append(
            [
                row.name,
                _num(s["rps"]),
                "/".join(_num(v) for v in s["all_rps"]),
                f"{s['p50_ms']:.2f}",
                f"{s['p99_ms']:.2f}",
                str(s["errors"]),
                str(s["non2xx"]),
                "-" if s["cpu_us"] is None else f"{s['cpu_us']:.0f}",
                _ratio(s["rps"], base_nginx),
                _ratio(s["rps"], base_aiohttp),
                events,
                "yes" if row.ok else "NO",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        for failure in row.failures:
            out.append(f"FAILED {row.name}: {failure}")
        for note in row.notes:
            out.append(f"note {row.name}: {note}")
    return "\n".join(out)


def expected_documents(sent: Mapping[str, int]) -> dict[str, int]:
    """What the requests sent must have stored, by collection."""
    out: dict[str, int] = {}
    for kind, count in sent.items():
        collection, per = EVENTS_PER_KIND[kind]
        out[collection] = out.get(collection, 0) + count * per
    return out


COLLECTIONS = ("events", "push_events")


def check_accounting(stored: Mapping[str, int], accepted: Mapping[str, int], upper: Mapping[str, int], sent: Mapping[str, int], responses: int) -> str | None:
    """
    Why the stored documents do not add up, or None.

    Stored must equal what the server accepted, by collection. That must lie
    between what the answers wrk read imply and what the requests wrk sent
    imply: when a run stops, wrk drops up to one in-flight request per
    connection, answered (and recorded) by the server or not.
    """
    if dict(stored) != dict(accepted):
        return f"stored {dict(stored)}, but the server accepted {dict(accepted)}"
    unread = sum(sent.values()) - responses
    if unread < 0:
        return f"{responses} answers read but only {sum(sent.values())} requests sent"
    most = max((EVENTS_PER_KIND[k][1] for k in sent), default=1)
    for collection, high in upper.items():
        low = high - unread * most
        if not low <= stored.get(collection, 0) <= high:
            return f"{collection}: stored {stored.get(collection, 0)}, expected {low}..{high} from {sum(sent.values())} requests sent and {responses} answered"
    return None


def parse_summary(text: str, cpu_seconds: float | None) -> RunResult:
    """A RunResult from common.lua's JSON summary and the server's CPU seconds for the run."""
    data = json.loads(text)
    requests = int(data["requests"])
    seconds = data["duration_us"] / 1e6
    e = data["errors"]
    return RunResult(
        rps=requests / seconds if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=requests,
        errors=e["connect"] + e["read"] + e["write"] + e["timeout"],
        non2xx=e["status"],
        cpu_us=(cpu_seconds * 1e6 / requests) if cpu_seconds is not None and requests else None,
        sent={k: int(v) for k, v in data["sent"].items()},
    )


# --- processes -----------------------------------------------------------------------------


def pinning() -> bool:
    try:
        return shutil.which("taskset") is not None and {0, 1} <= os.sched_getaffinity(0)
    except AttributeError:
        return False


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if pinning() else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants (nginx's worker is a child)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo.extend(c for c, parent in parents.items() if parent == p)
    return total


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {(proc.stderr.read() if proc.stderr else b'').decode(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not answering within {timeout}s")


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Peer:
    """A bare server or nginx: a process on a port."""

    def __init__(self, name: str, argv: list[str], port: int, cwd: str | None = None) -> None:
        self.name, self.argv, self.port, self.cwd = name, argv, port, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(pinned(SERVER_CPU, self.argv), cwd=self.cwd or REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port, self.proc)

    def stop(self) -> None:
        stop(self.proc, signal.SIGQUIT if self.name.startswith("nginx") else signal.SIGTERM)


def nginx_peer(workdir: str) -> Peer:
    port = free_port()
    prefix = os.path.join(workdir, "nginx")
    os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
    with open(os.path.join(HERE, "nginx.conf")) as f:
        conf = f.read().replace("BENCH_PORT", str(port))
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    return Peer("nginx empty_gif", [exe, "-e", "stderr", "-p", prefix, "-c", path, "-g", f"pid {prefix}/nginx.pid;"], port)


def python_peer(name: str, module: str) -> Peer:
    port = free_port()
    return Peer(name, [sys.executable, "-m", module, str(port)], port)


class Secantus:
    """secantusd-py, the MongoDB-wire server cookiesaver's writer stores into (on the client CPU)."""

    def __init__(self, workdir: str) -> None:
        self.dir = os.path.join(workdir, "secantus")
        os.makedirs(os.path.join(self.dir, "data"), exist_ok=True)
        self.port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = os.path.join(BIN, "secantusd-py")
        config = os.path.join(self.dir, "secantusd.toml")
        open(config, "w").close()
        argv = [exe, "--config", config, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", os.path.join(self.dir, "data")]
        with open(os.path.join(self.dir, "secantusd.log"), "ab") as log:
            self.proc = subprocess.Popen(pinned(CLIENT_CPU, argv), cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        import pymongo

        deadline = time.monotonic() + 30
        while True:
            try:
                pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=1000).admin.command("ping")
                return
            except Exception:  # noqa: BLE001 -- not up yet
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("secantusd-py did not start; see " + self.dir)
                time.sleep(0.3)

    def count(self, db: str, collection: str) -> int:
        import pymongo

        client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=5000)
        try:
            return int(client[db][collection].count_documents({}))
        finally:
            client.close()

    def stop(self) -> None:
        stop(self.proc)


class Cookiesaver:
    """The real twistd cookiesaver (tests.e2e.CookiesaverProcess), pinned to the server CPU."""

    def __init__(self, workdir: str, name: str, mongo_uri: str, tls: bool, secrets_from: Cookiesaver | None = None) -> None:
        sys.path.insert(0, REPO)
        from tests.e2e import CookiesaverProcess

        directory = os.path.join(workdir, name)
        os.makedirs(directory, exist_ok=True)

        class Pinned(CookiesaverProcess):
            def command(self, *extra: str) -> list[str]:
                return pinned(SERVER_CPU, super().command(*extra))

        self.process = Pinned(directory, mongo_uri=mongo_uri, tls=tls)
        if secrets_from is not None:  # the same token key and cookie secret: KEYs and cookies stay valid
            for attr in ("token_key", "cookie_secret"):
                shutil.copyfile(getattr(secrets_from.process, attr), getattr(self.process, attr))
        self.tls = tls
        self.name = name

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.process.port}"

    def start(self) -> None:
        self.process.start(timeout=60)

    def stop(self) -> None:
        self.process.stop()

    def metrics(self) -> dict[str, float]:
        _, _, body = self.process.get("/cookiesaver/metrics")
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def accepted(self) -> dict[str, int]:
        """Documents the server handed to its writer, by collection (cookiesaver_events_accepted)."""
        m = self.metrics()
        return {c: int(m.get(f'cookiesaver_events_accepted_total{{collection="{c}"}}', 0)) for c in COLLECTIONS}

    def drain(self, timeout: float = 900.0) -> None:
        """Wait until the writer holds nothing in memory or in the spool."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if m.get("cookiesaver_writer_queue_documents", 1) == 0 and m.get("cookiesaver_spool_documents", 1) == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"writer did not drain within {timeout}s (queue {m.get('cookiesaver_writer_queue_documents')}, spool {m.get('cookiesaver_spool_documents')})")
            time.sleep(0.5)


# --- preparing traffic and checking answers ----------------------------------------------------


def make_keys(server: Cookiesaver, path: str, count: int) -> None:
    from bench.keys import generate, write_keys
    from cookiesaver.token import TokenKeys, read_key_file

    keys = TokenKeys({"t1": read_key_file(server.process.token_key)}, "t1", 30 * 86400)
    write_keys(path, generate(keys, count, int(time.time())))


def collect_cookies(server: Cookiesaver, path: str, count: int) -> int:
    """Visitor cookies from earlier responses (each a new visitor's page view, so each stores one event)."""
    cookies = []
    for n in range(count):
        status, headers, _ = server.process.get(f"/pixel?site=shop&url=https%3A%2F%2Fshop.localhost%2Fwelcome%2F{n}")
        if status != 200:
            raise RuntimeError(f"collecting cookies: status {status}")
        cookies.append(headers["set-cookie"].split(";", 1)[0])
    with open(path, "w") as f:
        f.write("\n".join(cookies) + "\n")
    return count


def check_answer(base_url: str, script: str, keys_file: str, cookies_file: str, exact_gif: bool = True) -> str | None:
    """One request like the script's, checked byte by byte where it matters; the problem, or None."""
    from bench.pixel_bytes import GIF

    tls = base_url.startswith("https")
    host, port = base_url.split("//", 1)[1].split(":")
    if tls:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, int(port), timeout=10, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
    with open(keys_file) as f:
        key = f.readline().strip()
    with open(cookies_file) as f:
        cookie = f.readline().strip()
    try:
        if script == "click.lua":
            conn.request("GET", f"/pixel?_open_pix=1&k={key}")
            r = conn.getresponse()
            r.read()
            if r.status != 302 or not (r.getheader("location") or "").startswith("https://shop.localhost/landing/"):
                return f"click: expected 302 to the KEY's URL, got {r.status} {r.getheader('location')}"
            return None
        if script in ("beacon.lua", "push_events.lua", "mix.lua"):
            return None  # 204s; wrk's non-2xx/3xx count and the stored-events check cover them
        conn.request("GET", "/pixel?site=shop&e=page_view", headers={"Cookie": cookie})
        r = conn.getresponse()
        body = r.read()
        gif_ok = body == GIF if exact_gif else (len(body) == len(GIF) and body.startswith(b"GIF89a"))
        if r.status != 200 or not gif_ok or r.getheader("content-type") != "image/gif":
            return f"pixel: expected 200 and the 43-byte GIF, got {r.status}, {len(body)} bytes, {r.getheader('content-type')}"
        if not (r.getheader("set-cookie") or "").startswith("csid="):
            return "pixel: no visitor cookie"
        return None
    except (OSError, http.client.HTTPException) as e:
        return f"{script}: {e}"
    finally:
        conn.close()


# --- wrk -------------------------------------------------------------------------------------------


def wrk(url: str, script: str, duration: float, env: Mapping[str, str], server_pid: int | None, workdir: str, extra_env: Mapping[str, str] | None = None) -> RunResult:
    summary = os.path.join(workdir, "summary.json")
    with contextlib.suppress(FileNotFoundError):
        os.remove(summary)
    run_env = dict(os.environ, **env, **(extra_env or {}), BENCH_SUMMARY=summary)
    argv = pinned(CLIENT_CPU, ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "5s", "-s", os.path.join(HERE, script), url])
    before = process_cpu_seconds(server_pid) if server_pid else None
    proc = subprocess.run(argv, check=False, env=run_env, capture_output=True, text=True, cwd=REPO)
    after = process_cpu_seconds(server_pid) if server_pid else None
    if proc.returncode != 0 or not os.path.exists(summary):
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    with open(summary) as f:
        text = f.read()
    return parse_summary(text, None if before is None or after is None else after - before)


def overload_answers(url: str) -> int | None:
    """cookiesaver's count of requests refused by backpressure (503 + Retry-After for POSTs), or None for other servers."""
    import ssl
    import urllib.request

    base = url.split("/", 3)
    try:
        context = ssl._create_unverified_context()
        with urllib.request.urlopen(f"{base[0]}//{base[2]}/cookiesaver/metrics", timeout=5, context=context) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('cookiesaver_not_recorded_total{reason="overload"}'):
                    return int(float(line.rsplit(" ", 1)[1]))
        return 0
    except OSError:
        return None


def measure(row: Row, url: str, script: str, args: argparse.Namespace, env: Mapping[str, str], pid: int, workdir: str) -> dict[str, int]:
    """Warm-up, then the measured runs; returns what was sent in all of them (warm-up included).

    A non-2xx/3xx answer is a failure unless cookiesaver counted it as designed
    backpressure (overload: POST endpoints answer 503 with Retry-After when
    memory and spool are full); those are shown in the table, not failed.
    """
    sent: dict[str, int] = {}
    responses = 0
    warm = wrk(url, script, args.warmup, env, None, workdir)
    for r in [warm]:
        responses += r.requests - r.non2xx
        for k, v in r.sent.items():
            sent[k] = sent.get(k, 0) + v
    for _ in range(args.runs):
        before = overload_answers(url) if row.name.startswith("cookiesaver") else None
        r = wrk(url, script, args.duration, env, pid, workdir)
        after = overload_answers(url) if before is not None else None
        backpressure = (after - before) if before is not None and after is not None else 0
        row.runs.append(r)
        responses += r.requests - r.non2xx
        for k, v in r.sent.items():
            sent[k] = sent.get(k, 0) + v
        if r.errors or r.non2xx > backpressure:
            row.failures.append(f"{r.errors} socket errors, {r.non2xx} non-2xx/3xx answers ({backpressure} of them designed 503 backpressure)")
        elif r.non2xx:
            row.notes.append(f"{r.non2xx} answers were 503 backpressure (writer memory and spool full)")
        print(f"  {row.name}: {r.rps:,.0f} req/s, p99 {r.p99_ms:.2f} ms, CPU {r.cpu_us or 0:.0f} us/req", flush=True)
    row.responses = responses
    return sent


# --- the sustained test ---------------------------------------------------------------------------


@dataclass
class Sustained:
    rate: float
    achieved: float
    p99_ms: float
    queue: list[float]
    spool: list[float]
    errors: int

    @property
    def keeps_up(self) -> bool:
        return writer_keeps_up(self.queue, self.spool)


def writer_keeps_up(queue: Sequence[float], spool: Sequence[float], batch: int = 500) -> bool:
    """Flat: nothing spooled, and the in-memory queue at the end no deeper than at the start (plus a batch or two)."""
    if not queue:
        return False
    third = max(1, len(queue) // 3)
    first = statistics.mean(queue[:third])
    last = statistics.mean(queue[-third:])
    return max(spool or [0]) == 0 and last <= 1.5 * first + 2 * batch


def sustained(server: Cookiesaver, rate: float, seconds: float, env: Mapping[str, str], workdir: str) -> Sustained:
    queue: list[float] = []
    spool: list[float] = []
    stop_polling = threading.Event()

    def poll() -> None:
        while not stop_polling.wait(1.0):
            with contextlib.suppress(Exception):
                m = server.metrics()
                queue.append(m.get("cookiesaver_writer_queue_documents", 0))
                spool.append(m.get("cookiesaver_spool_documents", 0))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        r = wrk(server.url, "paced.lua", seconds, env, server.pid, workdir, {"RATE": str(int(rate)), "THREADS": "1"})
    finally:
        stop_polling.set()
        poller.join()
    return Sustained(rate, r.rps, r.p99_ms, queue, spool, r.errors + r.non2xx)


# --- main --------------------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} CPUs, Linux {os.uname().release}, Python {sys.version.split()[0]}, pinning {'on' if pinning() else 'off'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run of 2 s per row, 10 s paced")
    parser.add_argument("--runs", type=int, default=None, help="measured runs per row (default 3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per row (default 3)")
    parser.add_argument("--skip-sustained", action="store_true", help="skip the paced 60-second test")
    parser.add_argument("--sustained-duration", type=float, default=None, help="seconds of the paced test (default 60)")
    parser.add_argument("--rate", type=float, default=None, help="paced rate, req/s (default: half of cookiesaver's returning-pixel median, at most 2000, what the embedded store absorbs here)")
    parser.add_argument("--only", default=None, help="comma-separated row-name substrings to run (for profiling)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 5)
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.sustained_duration = args.sustained_duration or (10 if args.quick else 60)

    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    print(f"bench: {machine()}", flush=True)
    print(f"bench: wrk -t1 -c{CONNECTIONS}, keep-alive, {args.runs} x {args.duration:g} s after {args.warmup:g} s warm-up; medians", flush=True)

    workdir = tempfile.mkdtemp(prefix="cookiesaver-bench-")
    keys_file = os.path.join(workdir, "keys.txt")
    cookies_file = os.path.join(workdir, "cookies.txt")
    env = {"KEYS_FILE": keys_file, "COOKIES_FILE": cookies_file, "SITE": "shop", "ORIGIN": "https://shop.localhost"}
    rows: list[Row] = []
    sustained_result: Sustained | None = None
    started: list[Any] = []
    failed = False

    def wanted(name: str) -> bool:
        return args.only is None or any(part in name for part in args.only.split(","))

    def start(server: Any) -> Any:
        server.start()
        started.append(server)
        return server

    def peer_row(peer: Peer) -> None:
        row = Row(peer.name)
        rows.append(row)
        try:
            start(peer)
            problem = check_answer(peer.url, "pixel_returning.lua", keys_file, cookies_file, exact_gif=not peer.name.startswith("nginx"))
            if problem:
                row.failures.append(problem)
            measure(row, peer.url + "/pixel", "pixel_returning.lua", args, env, peer.pid, workdir)
        except Exception as e:  # noqa: BLE001 -- any failure becomes the row's FAILED line
            row.failures.append(str(e))
        finally:
            peer.stop()
            started.remove(peer) if peer in started else None

    def cookiesaver_rows(server: Cookiesaver, plans: list[tuple[str, str]]) -> None:
        db = server.process.db_name
        for label, script in plans:
            name = f"cookiesaver {label}"
            if not wanted(name):
                continue
            row = Row(name)
            rows.append(row)
            try:
                problem = check_answer(server.url, script, keys_file, cookies_file)
                if problem:
                    row.failures.append(problem)
                server.drain()
                before = {c: secantus.count(db, c) for c in COLLECTIONS}
                accepted_before = server.accepted()
                sent = measure(row, server.url, script, args, env, server.pid, workdir)
                server.drain()
                after = {c: secantus.count(db, c) for c in COLLECTIONS}
                accepted_after = server.accepted()
                upper = expected_documents(sent)
                row.expected = {c: accepted_after.get(c, 0) - accepted_before.get(c, 0) for c in upper}
                row.stored = {c: after[c] - before[c] for c in upper}
                problem = check_accounting(row.stored, row.expected, upper, sent, row.responses or 0)
                if problem:
                    row.failures.append(problem)
            except Exception as e:  # noqa: BLE001 -- any failure becomes the row's FAILED line
                row.failures.append(str(e))

    try:
        secantus = Secantus(workdir)
        start(secantus)
        plain = start(Cookiesaver(workdir, "plain", secantus.uri, tls=False))
        make_keys(plain, keys_file, 20000)
        collect_cookies(plain, cookies_file, 200)

        if wanted("nginx"):
            peer_row(nginx_peer(workdir))
        if wanted("aiohttp"):
            peer_row(python_peer("bare aiohttp pixel", "bench.bare_aiohttp"))
        if wanted("twisted"):
            peer_row(python_peer("bare twisted.web pixel", "bench.bare_twisted"))
        cookiesaver_rows(
            plain,
            [
                ("pixel, returning visitor", "pixel_returning.lua"),
                ("pixel, new visitor", "pixel_new.lua"),
                ("click redirect", "click.lua"),
                ("POST beacon (5 events)", "beacon.lua"),
                ("push callback", "push_events.lua"),
                ("mix", "mix.lua"),
            ],
        )
        if not args.skip_sustained:
            base = next((summarize(r)["rps"] for r in rows if r.name == "cookiesaver pixel, returning visitor" and r.runs), None)
            # The store, not cookiesaver, bounds a sustained rate here: secantusd-py is a Python
            # MongoDB-wire server sharing CPU 0 with wrk. 2,000 req/s is what it absorbs on this
            # 2-core machine; against MongoDB, pass --rate (half the measured rate is a fair test).
            rate = args.rate or min(base / 2 if base else 2000, 2000)
            print(f"bench: sustained {args.sustained_duration:g} s at {rate:,.0f} req/s (returning pixel, paced)...", flush=True)
            plain.drain()
            sustained_result = sustained(plain, rate, args.sustained_duration, env, workdir)
        plain.stop()
        started.remove(plain)

        if wanted("TLS"):
            tls = start(Cookiesaver(workdir, "tls", secantus.uri, tls=True, secrets_from=plain))
            cookiesaver_rows(tls, [("TLS pixel, returning visitor", "pixel_returning.lua"), ("TLS click redirect", "click.lua")])
            tls.stop()
            started.remove(tls)
    except Exception as e:  # noqa: BLE001 -- any failure becomes the row's FAILED line
        print(f"bench: {e}", file=sys.stderr)
        failed = True
    finally:
        for server in reversed(started):
            with contextlib.suppress(Exception):
                server.stop()

    print()
    print(f"machine: {machine()}")
    print(format_table(rows))
    if sustained_result is not None:
        s = sustained_result
        print()
        print(
            f"sustained: {args.sustained_duration:g} s at {s.rate:,.0f} req/s paced: achieved {s.achieved:,.0f} req/s, p99 {s.p99_ms:.2f} ms, "
            f"{s.errors} errors; writer queue max {max(s.queue or [0]):.0f} docs (first third mean {_third(s.queue, 0):.0f}, last third {_third(s.queue, -1):.0f}), "
            f"spool max {max(s.spool or [0]):.0f} docs: {'writer keeps up' if s.keeps_up else 'WRITER FALLS BEHIND'}"
        )
        if s.errors:
            failed = True
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine(),
                    "rows": [{"name": r.name, "summary": summarize(r), "runs": [vars(x) for x in r.runs], "stored": r.stored, "expected": r.expected, "responses": r.responses, "failures": r.failures} for r in rows],
                    "sustained": None if sustained_result is None else vars(sustained_result),
                },
                f,
                indent=1,
            )
    if args.keep:
        print(f"bench: working directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if failed or any(not r.ok for r in rows):
        print("bench: FAILED (a server did not answer correctly, or stored events differ)", file=sys.stderr)
        return 1
    return 0


def _third(values: Sequence[float], which: int) -> float:
    if not values:
        return 0.0
    n = max(1, len(values) // 3)
    part = values[:n] if which == 0 else values[-n:]
    return float(statistics.mean(part))


if __name__ == "__main__":
    raise SystemExit(main())
