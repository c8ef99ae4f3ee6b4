"""End to end behind a real nginx (Debian's package) configured with conf/nginx-cookiesaver.conf.

nginx terminates TLS on a free loopback port and proxies to cookiesaver in
plain mode, which trusts 127.0.0.1 (nginx's address towards it). The client
binds its socket to 127.0.0.2, a different loopback address, so "the
address stored is the client's, not nginx's" is observable.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import REPO, CookiesaverProcess, free_port, make_pair, write
from tests.test_e2e_tracking import (
    NASTY_URL,
    browser_ua,
    click_target,
    cookie_attributes,
    cookie_value,
    header_values,
    make_token,
    raw_request,
    tag,
    wait_until,
)

NGINX = "/usr/sbin/nginx"
CLIENT = "127.0.0.2"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.nginx,
    pytest.mark.skipif(
        not os.path.exists(NGINX) and os.environ.get("CI") != "true",
        reason=f"nginx is not installed ({NGINX}); apt-get install nginx (in CI this fails instead)",
    ),
]

WRAPPER = """\
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {site};
}}
"""


class Nginx:
    """A real nginx in the foreground, with conf/nginx-cookiesaver.conf made concrete."""

    def __init__(self, directory: str, upstream: str) -> None:
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.port = free_port()
        cert, key = make_pair(os.path.join(directory, "tls"), ["pxl.localhost", "127.0.0.1"])
        with open(os.path.join(REPO, "conf", "nginx-cookiesaver.conf"), encoding="utf-8") as f:
            template = f.read()
        site = template
        for placeholder, value in (("@UPSTREAM@", upstream), ("@LISTEN@", f"127.0.0.1:{self.port}"), ("@CERT@", cert), ("@KEY@", key)):
            assert placeholder in site, f"{placeholder} missing from conf/nginx-cookiesaver.conf"
            site = site.replace(placeholder, value)
        left = re.findall(r"@[A-Z_]+@", "\n".join(line for line in site.splitlines() if not line.lstrip().startswith("#")))
        assert not left, f"unsubstituted placeholders: {left}"
        self.site = write(os.path.join(directory, "cookiesaver.conf"), site)
        self.conf = write(os.path.join(directory, "nginx.conf"), WRAPPER.format(dir=directory, site=self.site))
        self.error_log = os.path.join(directory, "error.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        globals_ = f"daemon off; pid {self.dir}/nginx.pid; error_log {self.error_log} info;"
        return [NGINX, "-p", self.dir, "-c", self.conf, "-g", globals_, *extra]

    def start(self) -> None:
        check = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30, check=False)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                if raw_request(self.port, b"/cookiesaver/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"nginx not answering within 15 s: {self.log()}")

    def log(self) -> str:
        try:
            with open(self.error_log, encoding="utf-8", errors="replace") as f:
                return f.read()[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: the master waits for its workers
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mongo: Any) -> Iterator[tuple[CookiesaverProcess, Nginx, Any]]:
    tmp = tmp_path_factory.mktemp("proxy")
    server = CookiesaverProcess(tmp / "cs", mongo.uri, tls=False, config={"COOKIESAVER_TRUSTED_PROXIES": ["127.0.0.1/32"]})
    nginx = Nginx(str(tmp / "nginx"), f"127.0.0.1:{server.port}")
    client = mongo.client()
    try:
        server.start()
        nginx.start()
        yield server, nginx, client[server.db_name]
    finally:
        nginx.stop()
        server.kill()
        client.close()
        # nginx's worker may have made temp directories as another user; nothing to keep.
        shutil.rmtree(str(tmp / "nginx"), ignore_errors=True)


def click_via_nginx(stack: Any, headers: list[tuple[bytes, bytes]], url: str = "https://shop.localhost/") -> tuple[int, list[tuple[bytes, bytes]], dict[str, Any]]:
    server, nginx, db = stack
    message = "m-" + tag()
    status, response, _ = raw_request(
        nginx.port,
        click_target(make_token(server, url, profile="p-" + message, message=message)),
        [(b"User-Agent", browser_ua(tag()).encode()), *headers],
        source=CLIENT,
    )
    event = wait_until(lambda: db.events.find_one({"message": message}))
    return status, response, event


class TestBehindNginx:
    def test_stored_address_is_the_clients(self, stack):
        """Behind nginx the stored address is the client's own (127.0.0.2), not nginx's (127.0.0.1)."""
        status, _, event = click_via_nginx(stack, [])
        assert status == 302
        assert event["ip"] == CLIENT

    @pytest.mark.parametrize(
        "spoof",
        [
            [(b"X-Real-IP", b"198.51.100.7")],
            [(b"X-Forwarded-For", b"198.51.100.8")],
            [(b"X-Real-IP", b"198.51.100.7"), (b"X-Forwarded-For", b"198.51.100.8, 198.51.100.9")],
            [(b"X-Real-IP", b"127.0.0.1"), (b"X-Forwarded-For", b"127.0.0.1")],
        ],
        ids=["x-real-ip", "x-forwarded-for", "both", "claims-to-be-the-proxy"],
    )
    def test_spoofed_forwarding_headers_are_overwritten(self, stack, spoof):
        """X-Real-IP / X-Forwarded-For sent by the client are overwritten by nginx: the stored address stays the client's."""
        status, _, event = click_via_nginx(stack, spoof)
        assert status == 302
        assert event["ip"] == CLIENT

    def test_cookie_is_secure_samesite_none_and_location_exact(self, stack):
        """Through nginx (plain HTTP upstream) the cookie is still Secure; SameSite=None and Location is byte-identical."""
        status, response, event = click_via_nginx(stack, [], url=NASTY_URL)
        assert status == 302
        assert header_values(response, b"location") == [NASTY_URL.encode("utf-8")]
        (set_cookie,) = header_values(response, b"set-cookie")
        attributes = cookie_attributes(set_cookie)
        assert "Secure" in attributes and "SameSite=None" in attributes
        assert event["visitor"] == cookie_value(set_cookie)

    def test_returning_visitor_through_nginx(self, stack):
        """The cookie sent back through nginx reaches cookiesaver: the visitor keeps its id."""
        _, first, _ = click_via_nginx(stack, [])
        vid = cookie_value(header_values(first, b"set-cookie")[0])
        _, second, event = click_via_nginx(stack, [(b"Cookie", b"csid=" + vid.encode())])
        assert cookie_value(header_values(second, b"set-cookie")[0]) == vid
        assert event["visitor"] == vid

    def test_metrics_denied_from_outside(self, stack):
        """/cookiesaver/metrics is refused by nginx for a client other than 127.0.0.1 and served to 127.0.0.1."""
        _, nginx, _ = stack
        assert raw_request(nginx.port, b"/cookiesaver/metrics", source=CLIENT)[0] == 403
        status, _, body = raw_request(nginx.port, b"/cookiesaver/metrics", source="127.0.0.1")
        assert status == 200 and b"cookiesaver_not_recorded" in body

    def test_nginx_is_a_trusted_peer(self, stack):
        """Requests through nginx carrying client-sent X-Real-IP are never counted as untrusted forwarding headers."""
        server, nginx, _ = stack
        before = server.metric("cookiesaver_untrusted_forwarded_headers_total")
        for _ in range(5):
            assert raw_request(nginx.port, b"/pixel?site=shop&e=view", [(b"X-Real-IP", b"6.6.6.6")], source=CLIENT)[0] == 200
        assert server.metric("cookiesaver_untrusted_forwarded_headers_total") == before
