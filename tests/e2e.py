"""Support for end-to-end tests: the real ``twistd cookiesaver`` process over real sockets.

    server = CookiesaverProcess(tmpdir, mongo_uri=mongo.uri)   # TLS on a free port, dev-style secrets
    server.start()                                             # waits for readiness 200
    status, headers, body = server.get("/pixel?...")
    server.stop()                                              # SIGTERM, returns the exit status

Certificates, keys and the config file are generated per test in C{tmpdir}.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from typing import Any, Mapping

from cookiesaver.devsecrets import random_key_text, self_signed

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(path: str, data: bytes | str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def make_pair(directory: str, names: list[str]) -> tuple[str, str]:
    cert, key = self_signed(names)
    return write(os.path.join(directory, "fullchain.pem"), cert), write(os.path.join(directory, "privkey.pem"), key)


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_certificate(port: int, server_name: str | None = "pxl.localhost") -> bytes:
    """The DER certificate the server presents in a fresh handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with client_context().wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der


class CookiesaverProcess:
    """One real cookiesaver process with its own config, secrets and data directory."""

    def __init__(self, tmpdir: str, mongo_uri: str, tls: bool = True, env: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None) -> None:
        self.dir = str(tmpdir)
        self.port = free_port()
        self.tls = tls
        self.mongo_uri = mongo_uri
        self.cert_path, self.key_path = make_pair(os.path.join(self.dir, "tls"), ["pxl.localhost", "127.0.0.1"])
        self.token_key = write(os.path.join(self.dir, "secrets", "token-t1.key"), random_key_text())
        self.cookie_secret = write(os.path.join(self.dir, "secrets", "cookie-secret"), random_key_text())
        self.log_path = os.path.join(self.dir, "twistd.log")
        self.config_path = os.path.join(self.dir, "main.json")
        values: dict[str, Any] = {
            "OTHER_SERVICE_KEY": "ignored",
            "COOKIESAVER_PUBLIC_IP": "127.0.0.1",
            "COOKIESAVER_PUBLIC_PORT": self.port,
            "COOKIESAVER_PUBLIC_HOSTNAME": "pxl.localhost",
            "COOKIESAVER_SSL_ON": tls,
            "COOKIESAVER_SSL_CRT_PATH": self.cert_path,
            "COOKIESAVER_SSL_KEY_PATH": self.key_path,
            "COOKIESAVER_MONGO_URI": mongo_uri,
            "COOKIESAVER_MONGO_DB": "cs_" + os.path.basename(self.dir).replace("-", "_")[-40:],
            "COOKIESAVER_DATA_DIR": os.path.join(self.dir, "var"),
            "COOKIESAVER_COOKIE_SECRET_PATH": self.cookie_secret,
            "COOKIESAVER_TOKEN_KEYS": {"t1": self.token_key},
            "COOKIESAVER_TOKEN_CURRENT_KEY": "t1",
            "COOKIESAVER_SITES": {"shop": {"origins": ["https://shop.localhost"]}},
        }
        values.update(config or {})
        self.values = values
        self.db_name = values["COOKIESAVER_MONGO_DB"]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COOKIESAVER_")}
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config()

    def write_config(self) -> None:
        write(self.config_path, json.dumps(self.values, indent=2))

    # -- process ---------------------------------------------------------------

    def command(self, *extra: str) -> list[str]:
        return [TWISTD, "--pidfile=", "-n", "--logfile", self.log_path, "cookiesaver", "--config", self.config_path, *extra]

    def start(self, *extra: str, wait: bool = True, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(self.command(*extra), cwd=self.dir, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if wait:
            self.wait_ready(timeout)

    def run_to_exit(self, *extra: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run and expect it to exit by itself (configuration errors): exit status and stderr."""
        proc = subprocess.run(self.command(*extra), cwd=self.dir, env=self.env, capture_output=True, timeout=timeout)
        return proc.returncode, proc.stderr.decode("utf-8", "replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"cookiesaver exited with {self.proc.returncode}: {self.stderr()}\n{self.log()[-3000:]}")
            try:
                status, _, _ = self.get("/cookiesaver/readiness", timeout=2)
                if status == 200:
                    return
                last = status
            except OSError as e:
                last = e
            time.sleep(0.2)
        raise AssertionError(f"not ready within {timeout}s (last: {last})\n{self.log()[-3000:]}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("cookiesaver did not exit within the timeout after SIGTERM")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None or self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode("utf-8", "replace")

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- HTTP ------------------------------------------------------------------

    def connection(self, timeout: float = 10.0, server_name: str = "pxl.localhost") -> http.client.HTTPConnection:
        if self.tls:
            ctx = client_context()
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=ctx)
            conn._server_hostname = server_name  # type: ignore[attr-defined]
            return conn
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def get(self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> tuple[int, http.client.HTTPMessage, bytes]:
        return self.request("GET", path, headers=headers, timeout=timeout)

    def raw_socket(self) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if self.tls:
            return client_context().wrap_socket(raw, server_hostname="pxl.localhost")
        return raw

    def metric(self, name: str, labels: str = "") -> float:
        """One sample from /cookiesaver/metrics (0 when absent)."""
        _, _, body = self.get("/cookiesaver/metrics")
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in body.decode().splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0
