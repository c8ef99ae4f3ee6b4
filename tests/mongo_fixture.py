"""A real MongoDB-wire server (SecantusDB's secantusd-py) for integration and end-to-end tests.

Usage::

    from tests.mongo_fixture import start_secantus

    def test_something(tmp_path):
        server = start_secantus(str(tmp_path))
        try:
            ...  # connect to server.uri (mongodb://127.0.0.1:PORT/)
            server.pause()    # SIGSTOP: a frozen server (connections stay open, nothing answers)
            server.resume()   # SIGCONT
            server.kill()     # SIGKILL: the server dies; data written so far stays on disk
            server.restart()  # start again on the same port and storage directory
        finally:
            server.stop()     # always: SIGTERM, then SIGKILL after a bounded wait

or as a pytest fixture: ``secantus`` below (import it into your test module or
conftest: ``from tests.mongo_fixture import secantus``). Tests are skipped when
secantusd-py is not installed. Start-up waits for a pymongo ping with a bounded
timeout and fails with the server's output if it does not come up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest

STARTUP_TIMEOUT = 30.0


def _binary() -> str | None:
    candidate = os.path.join(os.path.dirname(sys.executable), "secantusd-py")
    return candidate if os.path.exists(candidate) else None


def free_port() -> int:
    """A loopback port nobody listens on right now (bind port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SecantusServer:
    """A running secantusd-py: its URI, port and process controls."""

    def __init__(self, binary: str, directory: str, port: int) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.uri = f"mongodb://127.0.0.1:{port}/"
        self.storage = os.path.join(directory, "data")
        self.log_path = os.path.join(directory, "secantusd.log")
        self.config_path = os.path.join(directory, "secantusd.toml")
        self.process: subprocess.Popen[bytes] | None = None
        os.makedirs(self.storage, exist_ok=True)
        with open(self.config_path, "w"):
            pass  # an empty config: no auto-discovered ~/.secantus settings

    def start(self) -> None:
        """Start the process and wait until it answers a ping."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [self.binary, "--config", self.config_path, "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", self.storage],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        self.wait_ready()

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll with pymongo until a ping answers; fail with the server log otherwise."""
        import pymongo

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            client = pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
            try:
                client.admin.command("ping")
                return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last = e
            finally:
                client.close()
            time.sleep(0.1)
        with open(self.log_path, "rb") as f:
            output = f.read()[-4000:].decode("utf-8", "replace")
        self.stop()
        raise RuntimeError(f"secantusd-py did not answer a ping on port {self.port} ({last}); log:\n{output}")

    def client(self) -> "pymongo.MongoClient":  # type: ignore[name-defined]  # noqa: F821
        """A short-timeout pymongo client for setup and verification (close it)."""
        import pymongo

        return pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=3000, connectTimeoutMS=3000)

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets open (a frozen server)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after L{pause}."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, and reap the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (after SIGCONT, in case it was paused), SIGKILL after C{timeout}. Safe to call twice."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same port and storage."""
        self.stop()
        self.start()


def start_secantus(tmpdir: str, port: int | None = None) -> SecantusServer:
    """Start secantusd-py on a free loopback port (or C{port}) with storage under C{tmpdir}; skips the test if it is not installed."""
    binary = _binary()
    if binary is None:
        pytest.skip("secantusd-py is not installed")
    directory = os.path.abspath(os.path.join(str(tmpdir), "secantus"))
    os.makedirs(directory, exist_ok=True)
    server = SecantusServer(binary, directory, port or free_port())
    server.start()
    return server


@pytest.fixture
def secantus(tmp_path: "os.PathLike[str]") -> Iterator[SecantusServer]:
    """A running server for one test, always stopped afterwards."""
    server = start_secantus(str(tmp_path))
    try:
        yield server
    finally:
        server.stop()
