"""End to end: several cookiesaver processes on one address and port with SO_REUSEPORT."""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e import CookiesaverProcess, free_port

pytestmark = pytest.mark.e2e


def accepted(server: CookiesaverProcess, private_port: int) -> float:
    """events accepted by this very process, read on its private listener."""
    public = server.port
    server.port = private_port
    try:
        return server.metric("cookiesaver_events_accepted_total", 'collection="events"')
    finally:
        server.port = public


def test_workers_share_port_and_each_gets_signals(tmp_path, mongo):
    """Two processes bind one port; both serve it, both answer readiness privately, both reload on SIGHUP and stop on SIGTERM."""
    shared = free_port()
    workers = []
    try:
        for name in ("w1", "w2"):
            w = CookiesaverProcess(
                tmp_path / name, mongo.uri, tls=False,
                config={"COOKIESAVER_PUBLIC_PORT": shared, "COOKIESAVER_REUSE_PORT": True, "COOKIESAVER_INSTANCE": name},
            )
            w.port = shared
            w.private = free_port()
            w.start("--listen", f"tcp:{w.private}:interface=127.0.0.1", wait=False)
            workers.append(w)
        for w in workers:
            # Readiness through the shared port may be answered by any worker: ask each privately.
            w.port = w.private
            w.wait_ready()
            w.port = shared
        ua = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0 Safari/537.36"}
        for _ in range(200):
            assert workers[0].get("/pixel?site=shop&e=page_view", headers=ua)[0] == 200
        counts = [accepted(w, w.private) for w in workers]
        assert sum(counts) == 200
        assert min(counts) > 0, counts
        for w in workers:
            w.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all("reloaded bot rules" in w.log() for w in workers):
            time.sleep(0.2)
        assert all("reloaded bot rules" in w.log() for w in workers)
        assert workers[0].stop() in (0, -signal.SIGTERM)
        for _ in range(20):
            assert workers[1].get("/cookiesaver/health")[0] == 200
        assert workers[1].stop() in (0, -signal.SIGTERM)
    finally:
        for w in workers:
            w.kill()


def test_embedded_store_refused_with_reuse_port(tmp_path):
    """The embedded store cannot be shared, so REUSE_PORT with MONGO_URI embedded is one clear error."""
    server = CookiesaverProcess(tmp_path, "embedded", tls=False, config={"COOKIESAVER_REUSE_PORT": True})
    code, stderr = server.run_to_exit()
    assert code != 0
    assert "COOKIESAVER_REUSE_PORT" in stderr and len(stderr.strip().splitlines()) == 1
