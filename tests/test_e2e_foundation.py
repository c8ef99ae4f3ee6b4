"""End to end: the real twistd cookiesaver process, real TLS, a real secantusd-py, real sockets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
from cryptography import x509

from tests.e2e import CookiesaverProcess, make_pair, peer_certificate, write
from tests.mongo_fixture import start_secantus

pytestmark = pytest.mark.e2e


def san_names(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def wait_for(predicate, timeout: float, step: float = 0.2) -> float:
    """Seconds until predicate() was true; fails after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def readiness(server: CookiesaverProcess) -> int:
    try:
        return server.get("/cookiesaver/readiness", timeout=3)[0]
    except OSError:
        return -1


@pytest.fixture
def server(tmp_path, mongo):
    s = CookiesaverProcess(tmp_path, mongo.uri)
    yield s
    s.kill()


class TestTLS:
    def test_handshake_presents_configured_certificate(self, server):
        """The TLS handshake presents the certificate from COOKIESAVER_SSL_CRT_PATH, with ALPN http/1.1."""
        server.start()
        with open(server.cert_path, "rb") as f:
            expected = x509.load_pem_x509_certificate(f.read())
        der = peer_certificate(server.port)
        assert x509.load_der_x509_certificate(der) == expected
        status, headers, body = server.get("/cookiesaver/health")
        assert status == 200 and b"alive" in body

    def test_sighup_swaps_certificate_keeping_old_connections(self, server):
        """After new files and SIGHUP the next handshake sees the new certificate; an earlier keep-alive connection still works."""
        server.start()
        old = peer_certificate(server.port)
        kept = server.connection()
        kept.request("GET", "/cookiesaver/health")
        assert kept.getresponse().read()
        make_pair(os.path.dirname(server.cert_path), ["renewed.localhost"])
        server.signal(signal.SIGHUP)
        wait_for(lambda: peer_certificate(server.port) != old, 10)
        assert san_names(peer_certificate(server.port)) == ["renewed.localhost"]
        kept.request("GET", "/cookiesaver/health")
        response = kept.getresponse()
        assert response.status == 200 and b"alive" in response.read()
        kept.close()

    @pytest.mark.parametrize("breakage", ["garbage", "mismatched_key"])
    def test_broken_replacement_keeps_old_certificate(self, server, tmp_path, breakage):
        """A broken renewal leaves the old certificate served, logs one error naming the file, and the process lives."""
        server.start()
        old = peer_certificate(server.port)
        if breakage == "garbage":
            write(server.cert_path, b"this is not a certificate")
            named = server.cert_path
        else:
            _, other_key = make_pair(str(tmp_path / "other"), ["other.localhost"])
            shutil.copy(other_key, server.key_path)
            named = server.key_path
        server.signal(signal.SIGHUP)
        wait_for(lambda: "reload of certificates failed" in server.log(), 10)
        errors = [line for line in server.log().splitlines() if "reload of certificates failed" in line]
        assert len(errors) == 1 and named in errors[0]
        assert peer_certificate(server.port) == old
        assert server.proc.poll() is None
        assert server.get("/cookiesaver/health")[0] == 200

    def test_sighup_storm_during_load_fails_no_request(self, server):
        """50 SIGHUPs while clients send requests cause no failed request."""
        server.start()
        failures: list[str] = []
        done = threading.Event()
        counts = [0]

        def client():
            conn = server.connection()
            while not done.is_set():
                try:
                    conn.request("GET", "/cookiesaver/health")
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        failures.append(str(r.status))
                    counts[0] += 1
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    failures.append(repr(e))
                    conn.close()
                    conn = server.connection()
            conn.close()

        def fresh_connections():
            while not done.is_set():
                try:
                    status, _, _ = server.get("/cookiesaver/health")
                    if status != 200:
                        failures.append(str(status))
                    counts[0] += 1
                except Exception as e:  # noqa: BLE001
                    failures.append(repr(e))

        threads = [threading.Thread(target=client) for _ in range(3)] + [threading.Thread(target=fresh_connections) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(50):
            server.signal(signal.SIGHUP)
            time.sleep(0.02)
        time.sleep(1.0)
        done.set()
        for t in threads:
            t.join(30)
        assert failures == []
        assert counts[0] > 50
        assert server.proc.poll() is None

    def test_sni_picks_certificate_per_host(self, tmp_path, mongo):
        """With COOKIESAVER_SSL_CERTS_DIR, each SNI host name gets its certificate and no SNI gets the default."""
        sni = tmp_path / "sni"
        make_pair(str(sni / "one.localhost"), ["one.localhost"])
        make_pair(str(sni / "two.localhost"), ["two.localhost"])
        server = CookiesaverProcess(tmp_path, mongo.uri, config={"COOKIESAVER_SSL_CERTS_DIR": str(sni)})
        try:
            server.start()
            assert san_names(peer_certificate(server.port, "one.localhost")) == ["one.localhost"]
            assert san_names(peer_certificate(server.port, "two.localhost")) == ["two.localhost"]
            assert san_names(peer_certificate(server.port, None)) == ["pxl.localhost"]
        finally:
            server.kill()


class TestPlainAndLimits:
    def test_plain_mode(self, tmp_path, mongo):
        """With COOKIESAVER_SSL_ON false the listener speaks plain HTTP, and robots.txt disallows everything."""
        server = CookiesaverProcess(tmp_path, mongo.uri, tls=False)
        try:
            server.start()
            status, headers, body = server.get("/robots.txt")
            assert status == 200 and body == b"User-agent: *\nDisallow: /\n"
            assert server.request("HEAD", "/cookiesaver/health")[0] == 200
        finally:
            server.kill()

    def test_slow_clients_cut_off_while_others_served(self, tmp_path, mongo):
        """A header dripper and a silent connection are closed within the deadline while other clients are served."""
        server = CookiesaverProcess(tmp_path, mongo.uri, tls=False, config={"COOKIESAVER_HTTP_HEADER_TIMEOUT": 2})
        try:
            server.start()
            silent = socket.create_connection(("127.0.0.1", server.port))
            dripper = socket.create_connection(("127.0.0.1", server.port))
            start = time.monotonic()
            closed_at = {}
            request = b"GET /cookiesaver/health HTTP/1.1\r\nHost: x\r\n" + b"X-Drip: " + b"a" * 200
            for i in range(40):
                try:
                    dripper.send(request[i : i + 1])
                except OSError:
                    closed_at.setdefault("dripper", time.monotonic() - start)
                    break
                assert server.get("/cookiesaver/health", timeout=2)[0] == 200
                time.sleep(0.1)
            silent.settimeout(5)
            answer = b""
            while chunk := silent.recv(1000):
                answer += chunk
            closed_at["silent"] = time.monotonic() - start
            assert answer.startswith(b"HTTP/1.1 408"), answer
            dripper.settimeout(5)
            try:
                while dripper.recv(1000):
                    pass
            except ConnectionResetError:
                pass
            closed_at.setdefault("dripper", time.monotonic() - start)
            assert closed_at["silent"] < 4.5
            assert closed_at["dripper"] < 4.5
        finally:
            server.kill()

    def test_oversized_bodies_get_413_without_memory_growth(self, tmp_path, mongo):
        """A 10 GB Content-Length and a streamed 50 MB body get 413 and RSS does not grow."""
        server = CookiesaverProcess(tmp_path, mongo.uri, tls=False)
        try:
            server.start()
            rss_before = rss_kib(server.proc.pid)
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"POST /pixel HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 413")
            s.close()
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"POST /pixel HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n")
            chunk = b"x" * 65536
            sent = 0
            try:
                while sent < 52428800:
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
            s.settimeout(5)
            try:
                answer = s.recv(100)
            except OSError:
                answer = b""
            s.close()
            assert answer.startswith(b"HTTP/1.1 413") or sent < 52428800
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"POST /pixel HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                for _ in range(800):
                    s.sendall(b"10000\r\n" + chunk + b"\r\n")
            except OSError:
                pass
            s.close()
            assert server.get("/cookiesaver/health")[0] == 200
            assert rss_kib(server.proc.pid) - rss_before < 20 * 1024
        finally:
            server.kill()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class TestConfigErrors:
    def one_line_failure(self, server, *extra):
        code, stderr = server.run_to_exit(*extra)
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        assert code != 0, stderr
        assert len(lines) == 1, stderr
        assert "Traceback" not in stderr
        return lines[0]

    def test_missing_config_file(self, tmp_path, mongo):
        """A missing config file is one line naming it."""
        server = CookiesaverProcess(tmp_path, mongo.uri)
        os.remove(server.config_path)
        assert server.config_path in self.one_line_failure(server)

    def test_invalid_json(self, tmp_path, mongo):
        """Invalid JSON is one line with line and column."""
        server = CookiesaverProcess(tmp_path, mongo.uri)
        write(server.config_path, '{\n "COOKIESAVER_SSL_ON": tru\n}')
        line = self.one_line_failure(server)
        assert "line 2 column" in line and server.config_path in line

    def test_wrong_type(self, tmp_path, mongo):
        """A wrong type is one line naming the key."""
        server = CookiesaverProcess(tmp_path, mongo.uri, config={"COOKIESAVER_PUBLIC_PORT": "eighty"})
        assert "COOKIESAVER_PUBLIC_PORT" in self.one_line_failure(server)

    def test_unreadable_certificate(self, tmp_path, mongo):
        """A missing certificate is one line naming the file."""
        server = CookiesaverProcess(tmp_path, mongo.uri)
        os.remove(server.cert_path)
        assert server.cert_path in self.one_line_failure(server)

    def test_key_not_matching(self, tmp_path, mongo):
        """A key that does not match the certificate is one line naming it."""
        server = CookiesaverProcess(tmp_path, mongo.uri)
        _, other_key = make_pair(str(tmp_path / "other"), ["other.localhost"])
        shutil.copy(other_key, server.key_path)
        assert "does not match" in self.one_line_failure(server)

    def test_address_in_use(self, tmp_path, mongo):
        """A port already in use is one line saying so."""
        server = CookiesaverProcess(tmp_path, mongo.uri)
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", server.port))
        blocker.listen()
        try:
            assert "address already in use" in self.one_line_failure(server)
        finally:
            blocker.close()

    def test_permission_denied_on_port(self, mongo):
        """Binding a privileged port as an unprivileged user is one line saying permission denied."""
        tmp = tempfile.mkdtemp(prefix="cs-perm-")
        os.chmod(tmp, 0o755)
        try:
            server = CookiesaverProcess(tmp, mongo.uri, config={"COOKIESAVER_PUBLIC_PORT": 1})
            os.makedirs(os.path.join(tmp, "var"), mode=0o777)
            os.chmod(os.path.join(tmp, "var"), 0o777)
            server.log_path = os.path.join(tmp, "var", "twistd.log")
            for root, dirs, files in os.walk(tmp):
                for name in dirs:
                    if name != "var":
                        os.chmod(os.path.join(root, name), 0o755)
                for name in files:
                    os.chmod(os.path.join(root, name), 0o644)
            if os.geteuid() == 0:
                setpriv = shutil.which("setpriv")
                if setpriv is None:
                    pytest.fail("setpriv (util-linux) is needed to run as an unprivileged user")
                cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *server.command()]
            else:
                cmd = server.command()
            proc = subprocess.run(cmd, cwd=tmp, env=server.env, capture_output=True, timeout=30)
            stderr = proc.stderr.decode()
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            assert proc.returncode != 0
            assert len(lines) == 1 and "permission denied" in lines[0], stderr
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class TestMongoAndShutdown:
    def test_readiness_follows_mongodb(self, tmp_path):
        """Readiness is 503 while MongoDB was never reachable, 200 within 10 s once it is, 503 within 10 s after it goes, 200 again."""
        from tests.e2e import free_port

        port = free_port()
        server = CookiesaverProcess(tmp_path / "cs", f"mongodb://127.0.0.1:{port}")
        mongo = None
        try:
            server.start(wait=False)
            wait_for(lambda: readiness(server) == 503, 20)
            status, _, body = server.get("/cookiesaver/readiness")
            assert json.loads(body)["failing"] == ["mongodb"]
            assert str(port) not in body.decode() and "127.0.0.1" not in body.decode()
            mongo = start_secantus(str(tmp_path / "mongo"), port=port)
            assert wait_for(lambda: readiness(server) == 200, 10) < 10
            mongo.stop()
            assert wait_for(lambda: readiness(server) == 503, 10) < 10
            mongo.restart()
            assert wait_for(lambda: readiness(server) == 200, 10) < 10
            mongo.pause()
            assert wait_for(lambda: readiness(server) == 503, 10) < 10
            mongo.resume()
        finally:
            server.kill()
            if mongo is not None:
                mongo.stop()

    def test_sigterm_embedded_leaves_no_child(self, tmp_path):
        """With the embedded store, SIGTERM shuts down cleanly and no secantusd-py is left behind.

        twistd re-raises the signal that stopped it once shutdown is complete, so
        the exit status is "terminated by SIGTERM", which service managers count
        as a clean stop.
        """
        server = CookiesaverProcess(tmp_path, "embedded")
        server.start(timeout=60)
        children = child_pids(server.proc.pid)
        assert children, "the embedded server should be a child process"
        assert server.stop() in (0, -signal.SIGTERM)
        log = server.log()
        assert "Main loop terminated" in log
        assert "Traceback" not in log and "Unhandled" not in log
        time.sleep(0.5)
        assert [pid for pid in children if alive(pid)] == []


def test_embedded_store_restarted_after_it_dies(tmp_path):
    """When the embedded secantusd-py is killed, cookiesaver restarts it on the same port and readiness returns to 200."""
    server = CookiesaverProcess(tmp_path, "embedded")
    try:
        server.start(timeout=60)
        [child] = child_pids(server.proc.pid)
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: "restarting" in server.log(), 10)
        wait_for(lambda: readiness(server) == 200 and child_pids(server.proc.pid) not in ([], [child]), 30)
        assert server.stop() in (0, -signal.SIGTERM)
    finally:
        server.kill()


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
