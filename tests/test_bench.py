"""The benchmark tooling itself: KEY files, the Lua scripts, the table's medians, ratios and accounting (no timing)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from bench.keys import generate
from bench.run import (
    Row,
    RunResult,
    check_accounting,
    expected_documents,
    format_table,
    median,
    parse_summary,
    summarize,
    writer_keeps_up,
)
from cookiesaver.token import ClickToken, TokenKeys, verify

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
SCRIPTS = ("click.lua", "pixel_new.lua", "pixel_returning.lua", "beacon.lua", "push_events.lua", "mix.lua", "paced.lua")


def _run(rps: float, p99: float = 5.0, cpu: float | None = 70.0, errors: int = 0, non2xx: int = 0) -> RunResult:
    return RunResult(rps=rps, p50_ms=1.0, p99_ms=p99, requests=int(rps * 10), errors=errors, non2xx=non2xx, cpu_us=cpu)


class KeysTests(SynchronousTestCase):
    def test_keys_verify_and_are_distinct(self) -> None:
        """Generated KEYs verify with the server's key and name distinct URLs and profiles."""
        keys = TokenKeys({"t1": b"k" * 32}, "t1", 3600)
        tokens = generate(keys, 50, issued=1_700_000_000)
        self.assertEqual(len(set(tokens)), 50)
        results = [verify(keys, t, 1_700_000_010) for t in tokens]
        self.assertTrue(all(isinstance(r, ClickToken) for r in results))
        self.assertEqual(len({r.url for r in results}), 50)  # type: ignore[union-attr]
        self.assertEqual(len({r.profile for r in results}), 50)  # type: ignore[union-attr]


class TableTests(SynchronousTestCase):
    def test_medians_and_ratios(self) -> None:
        """The table shows each row's median req/s and its ratio to nginx and to bare aiohttp."""
        rows = [
            Row("nginx empty_gif", [_run(100000), _run(90000), _run(110000)]),
            Row("bare aiohttp pixel", [_run(12000), _run(13000), _run(12500)]),
            Row("cookiesaver pixel, returning visitor", [_run(12500), _run(25000), _run(12600)]),
        ]
        self.assertEqual(summarize(rows[2])["rps"], 12600)
        self.assertEqual(median([3.0, 1.0, 2.0, 10.0]), 2.5)
        table = format_table(rows)
        line = next(l for l in table.splitlines() if l.startswith("| cookiesaver"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        self.assertEqual(cells[1], "12.6k")
        self.assertEqual(cells[8], "0.13")  # 12600 / 100000
        self.assertEqual(cells[9], "1.01")  # 12600 / 12500
        self.assertEqual(cells[-1], "yes")

    def test_errors_fail_a_row(self) -> None:
        """A row with failures is marked and its reason printed under the table."""
        row = Row("bare twisted.web pixel", [_run(10000, non2xx=3)], failures=["3 non-2xx/3xx answers"])
        table = format_table([row])
        self.assertIn("| NO", table)
        self.assertIn("FAILED bare twisted.web pixel: 3 non-2xx/3xx answers", table)

    def test_parse_summary(self) -> None:
        """common.lua's JSON summary becomes req/s, latency in ms, error counts and CPU per request."""
        text = json.dumps({"sent": {"pixel": 1001}, "requests": 1000, "duration_us": 2_000_000, "p50_us": 1500, "p99_us": 9000, "max_us": 20000,
                           "errors": {"connect": 0, "read": 1, "write": 0, "status": 2, "timeout": 0}})
        r = parse_summary(text, cpu_seconds=0.07)
        self.assertEqual((r.rps, r.p50_ms, r.p99_ms, r.errors, r.non2xx, r.sent), (500.0, 1.5, 9.0, 1, 2, {"pixel": 1001}))
        self.assertAlmostEqual(r.cpu_us or 0, 70.0)


class AccountingTests(SynchronousTestCase):
    def test_expected_documents(self) -> None:
        """Each kind of request stores its number of documents in its collection."""
        self.assertEqual(expected_documents({"ret": 10, "beacon3": 2, "push": 4, "click": 1}), {"events": 17, "push_events": 4})

    def test_stored_must_equal_accepted(self) -> None:
        """Stored documents must equal what the server accepted, within what wrk sent and read."""
        sent = {"pixel": 1000}
        self.assertIsNone(check_accounting({"events": 999}, {"events": 999}, expected_documents(sent), sent, responses=990))
        self.assertIsNotNone(check_accounting({"events": 998}, {"events": 999}, expected_documents(sent), sent, responses=990))
        self.assertIsNotNone(check_accounting({"events": 980}, {"events": 980}, expected_documents(sent), sent, responses=990))

    def test_writer_keeps_up(self) -> None:
        """Flat queue and an empty spool keep up; a growing queue or any spooling does not."""
        self.assertTrue(writer_keeps_up([300, 500, 400, 450, 600, 350], [0] * 6))
        self.assertFalse(writer_keeps_up([300, 2000, 5000, 9000, 15000, 30000], [0] * 6))
        self.assertFalse(writer_keeps_up([300] * 6, [0, 0, 500, 0, 0, 0]))


class _NoContent(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.seen.append(f"{self.command} {self.path} host={self.headers.get('host')}")
        self.send_response(204)
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


class LuaTests(SynchronousTestCase):
    def test_scripts_run_under_wrk(self) -> None:
        """Every script loads in wrk, sends well-formed requests with a Host header, and writes its JSON summary."""
        if shutil.which("wrk") is None:
            raise self.skipTest("wrk is not installed")  # type: ignore[misc]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoContent)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        with tempfile.TemporaryDirectory() as d:
            keys = os.path.join(d, "keys.txt")
            cookies = os.path.join(d, "cookies.txt")
            with open(keys, "w") as f:
                f.write("a.b.c\n")
            with open(cookies, "w") as f:
                f.write("csid=x\n")
            for script in SCRIPTS:
                summary = os.path.join(d, script + ".json")
                env = dict(os.environ, KEYS_FILE=keys, COOKIES_FILE=cookies, RATE="100", BENCH_SUMMARY=summary)
                _NoContent.seen.clear()
                proc = subprocess.run(  # noqa: PLW1510 -- the status is asserted below
                    ["wrk", "-t1", "-c1", "-d1s", "-s", os.path.join(BENCH, script), url],
                                      env=env, capture_output=True, text=True, timeout=30)
                self.assertEqual(proc.returncode, 0, proc.stderr)
                with open(summary) as f:
                    data = json.load(f)
                self.assertGreater(data["requests"], 0, script)
                self.assertEqual(data["errors"]["status"], 0, script)
                self.assertTrue(_NoContent.seen and all("/pixel" in s or "/push/events" in s for s in _NoContent.seen), script)
                self.assertNotIn("host=None", " ".join(_NoContent.seen), script)
