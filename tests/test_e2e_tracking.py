"""End to end for the tracking area: the real twistd process, real TLS, a real secantusd-py.

One server per module (tests tell their requests apart by a tag in the
User-Agent or the token's message id). It trusts 127.0.0.2 as a proxy, so a
client bound to 127.0.0.1 is an untrusted peer and one bound to 127.0.0.2 a
trusted one; its bot rules are a small generated file.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

from cookiesaver.token import TokenKeys, b64url_encode, mint, read_key_file
from tests.e2e import REPO, CookiesaverProcess, client_context, write

pytestmark = pytest.mark.e2e

BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
NASTY_URL = "https://shop.localhost/p/caf%C3%A9%20au%20lait?q=a+b&r=%2B%26%3D&x=1&y=na\u00efve \u65e5\u672c#frag/%41?z=1&w"
WAIT = 10.0


# --- helpers shared with the proxy and browser suites ---------------------------------------------


def tag() -> str:
    return uuid.uuid4().hex[:12]


def browser_ua(marker: str) -> str:
    return f"{BROWSER_UA} cse2e{marker}"


def raw_request(
    port: int,
    target: bytes,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    method: bytes = b"GET",
    tls: bool = True,
    source: str | None = None,
    host: str = "127.0.0.1",
    body: bytes = b"",
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One HTTP/1.1 request over a fresh socket, target and headers sent byte for byte; raw response headers."""
    raw = socket.create_connection((host, port), timeout=10, source_address=(source, 0) if source else None)
    sock: socket.socket = client_context().wrap_socket(raw, server_hostname="pxl.localhost") if tls else raw
    try:
        lines = [method + b" " + target + b" HTTP/1.1", b"Host: pxl.localhost", b"Connection: close"]
        lines += [name + b": " + value for name, value in headers]
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    status = int(status_line.split(b" ")[1])
    parsed = []
    for line in header_lines:
        name, _, value = line.partition(b":")
        parsed.append((name.strip().lower(), value.strip()))
    return status, parsed, body


def header_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def cookie_value(set_cookie: bytes, name: bytes = b"csid") -> str:
    first = set_cookie.split(b";")[0]
    assert first.startswith(name + b"="), set_cookie
    return first[len(name) + 1 :].decode("ascii")


def cookie_attributes(set_cookie: bytes) -> list[str]:
    return [part.strip().decode() for part in set_cookie.split(b";")[1:]]


def token_keys(server: CookiesaverProcess) -> TokenKeys:
    return TokenKeys({"t1": read_key_file(server.token_key)}, "t1", 34560000)


def make_token(server: CookiesaverProcess, url: str, issued: int | None = None, **fields: Any) -> str:
    return mint(token_keys(server), url, issued=int(time.time()) if issued is None else issued, **fields)


def click_target(token: str, extra: bytes = b"") -> bytes:
    return b"/pixel?_open_pix=1&k=" + token.encode("ascii") + extra


def wait_until(probe: Callable[[], Any], timeout: float = WAIT, step: float = 0.1) -> Any:
    """probe()'s first truthy result; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing within {timeout}s")
        time.sleep(step)


def events_with(db: Any, marker: str) -> list[dict[str, Any]]:
    """Events whose User-Agent carries the marker, oldest first."""
    return [e for e in db.events.find({}).sort("_id", 1) if marker in e.get("ua", "")]


def sentinel_click(server: CookiesaverProcess, db: Any, marker: str, source: str | None = None) -> None:
    """Send one recorded click with the marker and wait until it is stored: everything sent before it is flushed too."""
    message = "sentinel-" + tag()
    status, _, _ = raw_request(
        server.port,
        click_target(make_token(server, "https://shop.localhost/", message=message)),
        [(b"User-Agent", browser_ua(marker).encode())],
        source=source,
    )
    assert status == 302
    wait_until(lambda: db.events.find_one({"message": message}))


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mongo: Any) -> Iterator[CookiesaverProcess]:
    tmp = tmp_path_factory.mktemp("tracking")
    bots_ua = write(
        str(tmp / "bots" / "bots_ua.json"),
        json.dumps([
            {"pattern": "cse2e-scanner", "action": "event_ignore", "comment": "a link scanner"},
            {"pattern": "cse2e-evil", "action": "block"},
        ]),
    )
    bots_ip = write(str(tmp / "bots" / "bots_ip.json"), json.dumps([{"pattern": "127.0.0.3", "action": "event_ignore"}]))
    s = CookiesaverProcess(
        tmp,
        mongo.uri,
        config={
            "COOKIESAVER_TRUSTED_PROXIES": ["127.0.0.2/32"],
            "COOKIESAVER_BOTS_UA_PATH": bots_ua,
            "COOKIESAVER_BOTS_IP_PATH": bots_ip,
        },
    )
    s.start()
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture(scope="module")
def db(server: CookiesaverProcess, mongo: Any) -> Iterator[Any]:
    client = mongo.client()
    try:
        yield client[server.db_name]
    finally:
        client.close()


# --- the click -------------------------------------------------------------------------------------


class TestClick:
    def test_location_is_byte_identical_and_one_event_stored(self, server, db):
        """A destination full of %xx, +, &, a fragment and non-ASCII comes back byte-identical in Location; one pixel_open with the issued id is stored."""
        marker = tag()
        message = "m-" + marker
        token = make_token(server, NASTY_URL, account="acme", profile="p-" + marker, message=message)
        status, headers, _ = raw_request(server.port, click_target(token), [(b"User-Agent", browser_ua(marker).encode())])
        assert status == 302
        assert header_values(headers, b"location") == [NASTY_URL.encode("utf-8")]
        (set_cookie,) = header_values(headers, b"set-cookie")
        vid = cookie_value(set_cookie)
        stored = wait_until(lambda: list(db.events.find({"message": message})))
        time.sleep(0.5)  # a duplicate would have been flushed by now (flush interval 0.1 s)
        stored = list(db.events.find({"message": message}))
        assert len(stored) == 1
        event = stored[0]
        assert event["type"] == "pixel_open"
        assert event["visitor"] == vid
        assert event["link"] == NASTY_URL
        assert (event["account"], event["profile"]) == ("acme", "p-" + marker)
        assert event["ip"] == "127.0.0.1"
        assert set(event) == {"_id", "type", "ts", "visitor", "ip", "ua", "account", "profile", "message", "link"}
        link = wait_until(lambda: db.visitor_links.find_one({"_id": vid}))
        assert (link["account"], link["profile"]) == ("acme", "p-" + marker)

    def test_head_redirects_and_records_nothing(self, server, db):
        """HEAD on a click link answers the same 302 and Location but stores no event (link scanners probe with HEAD)."""
        marker = tag()
        token = make_token(server, NASTY_URL, profile="p-" + marker)
        status, headers, _ = raw_request(server.port, click_target(token), [(b"User-Agent", browser_ua(marker).encode())], method=b"HEAD")
        assert status == 302
        assert header_values(headers, b"location") == [NASTY_URL.encode("utf-8")]
        sentinel_click(server, db, marker)
        assert [e["message"].startswith("sentinel-") for e in events_with(db, marker)] == [True]

    def test_placeholder_is_replaced_by_the_visitor_id(self, server, db):
        """{cs_vid} in the destination becomes the visitor id the cookie carries."""
        marker = tag()
        token = make_token(server, "https://shop.localhost/land?cs_vid={cs_vid}&x=%41#top")
        status, headers, _ = raw_request(server.port, click_target(token), [(b"User-Agent", browser_ua(marker).encode())])
        vid = cookie_value(header_values(headers, b"set-cookie")[0])
        assert status == 302
        assert header_values(headers, b"location") == [f"https://shop.localhost/land?cs_vid={vid}&x=%41#top".encode()]


class TestVisitorCookie:
    def click(self, server: CookiesaverProcess, marker: str, cookie: bytes | None = None, ua: str | None = None) -> tuple[str, str, list[tuple[bytes, bytes]]]:
        message = "m-" + tag()
        headers = [(b"User-Agent", (ua or browser_ua(marker)).encode())]
        if cookie is not None:
            headers.append((b"Cookie", cookie))
        status, response, _ = raw_request(server.port, click_target(make_token(server, "https://shop.localhost/", message=message)), headers)
        assert status == 302
        return message, cookie_value(header_values(response, b"set-cookie")[0]), response

    def test_returning_visitor_keeps_its_id(self, server, db):
        """A browser sending the cookie back keeps its visitor id, in Set-Cookie and in the stored event."""
        marker = tag()
        _, first, _ = self.click(server, marker)
        message, second, _ = self.click(server, marker, b"other=1; csid=" + first.encode() + b"; x=\"y\"")
        assert second == first
        assert wait_until(lambda: db.events.find_one({"message": message}))["visitor"] == first

    @pytest.mark.parametrize(
        "garble",
        [
            pytest.param(lambda vid: vid[:-1] + ("A" if vid[-1] != "A" else "B"), id="forged-tag"),
            pytest.param(lambda vid: ("B" if vid[0] != "B" else "C") + vid[1:], id="forged-id"),
            pytest.param(lambda vid: "garbage", id="garbage"),
            pytest.param(lambda vid: vid + "x", id="too-long"),
            pytest.param(lambda vid: vid.replace(".", "!"), id="bad-separator"),
            pytest.param(lambda vid: "", id="empty"),
        ],
    )
    def test_forged_or_garbled_cookie_gets_a_new_id(self, server, db, garble):
        """A cookie value this server did not issue is ignored: the visitor gets a fresh, valid id."""
        marker = tag()
        _, issued, _ = self.click(server, marker)
        bad = garble(issued)
        message, got, _ = self.click(server, marker, b"csid=" + bad.encode())
        assert got not in (issued, bad)
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{16}", got)
        assert wait_until(lambda: db.events.find_one({"message": message}))["visitor"] == got
        # and the fresh id is one the server accepts back
        _, again, _ = self.click(server, marker, b"csid=" + got.encode())
        assert again == got

    @pytest.mark.parametrize(
        "ua",
        [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/60.0.3112.113 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 12_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.0 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Safari/605.1.15",
            "Mozilla/5.0 (Linux; U; Android 8.0.0; en-US; Pixel XL Build/OPR3.170623.007) AppleWebKit/534.30 (KHTML, like Gecko) Version/4.0 UCBrowser/12.10.8.1172 Mobile Safari/534.30",
        ],
        ids=["chrome60", "ios12", "macos10.14-safari", "ucbrowser12.10"],
    )
    def test_legacy_agents_get_no_samesite(self, server, ua):
        """Clients that mishandle SameSite=None get the cookie without SameSite (still Secure and HttpOnly)."""
        _, _, response = self.click(server, tag(), ua=ua)
        attributes = cookie_attributes(header_values(response, b"set-cookie")[0])
        assert not [a for a in attributes if a.lower().startswith("samesite")]
        assert "Secure" in attributes and "HttpOnly" in attributes

    @pytest.mark.parametrize(
        "ua",
        [
            BROWSER_UA,
            "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Linux; U; Android 10; en-US; SM-G973F) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/78.0.3904.108 UCBrowser/13.4.0.1306 Mobile Safari/537.36",
        ],
        ids=["chrome124", "firefox125", "safari17", "ios17", "ucbrowser13.4"],
    )
    def test_modern_agents_get_secure_samesite_none(self, server, ua):
        """Modern browsers get the cookie with Secure; SameSite=None (SameSite after Secure), HttpOnly, Path=/."""
        _, _, response = self.click(server, tag(), ua=ua)
        attributes = cookie_attributes(header_values(response, b"set-cookie")[0])
        assert "SameSite=None" in attributes and "Secure" in attributes and "HttpOnly" in attributes and "Path=/" in attributes
        assert attributes.index("Secure") < attributes.index("SameSite=None")


# --- the other event shapes (docs/events.md) ------------------------------------------------------

COMMON = {"_id", "type", "ts", "visitor", "ip", "ua"}


class TestEventSchema:
    def test_open_event(self, server, db):
        """GET /pixel?k=KEY answers the GIF and stores an open event with the KEY's account, profile and message, no link."""
        marker = tag()
        token = make_token(server, NASTY_URL, account="acme", profile="p-" + marker, message="m-" + marker)
        status, headers, body = raw_request(server.port, b"/pixel?k=" + token.encode(), [(b"User-Agent", browser_ua(marker).encode())])
        assert status == 200 and body.startswith(b"GIF89a") and header_values(headers, b"content-type") == [b"image/gif"]
        (event,) = wait_until(lambda: events_with(db, marker))
        assert event["type"] == "open" and set(event) == COMMON | {"account", "profile", "message"}
        assert (event["account"], event["profile"], event["message"]) == ("acme", "p-" + marker, "m-" + marker)
        assert event["visitor"] == cookie_value(header_values(headers, b"set-cookie")[0])

    def test_custom_event_by_get(self, server, db):
        """A GET custom event stores type, site, url, ref, props (dots in names replaced) and malformed after a bad escape; DNT adds dnt."""
        marker = tag()
        target = b"/pixel?site=shop&e=signup&url=https%3A%2F%2Fshop.localhost%2Fa%3Fb%3D1&ref=r&p.plan=pro&p.a.b=%C3%A9&junk=%zz"
        status, _, _ = raw_request(server.port, target, [(b"User-Agent", browser_ua(marker).encode()), (b"DNT", b"1")])
        assert status == 200
        (event,) = wait_until(lambda: events_with(db, marker))
        assert set(event) == COMMON | {"site", "url", "ref", "props", "malformed", "dnt"}
        assert (event["type"], event["site"], event["url"], event["ref"]) == ("signup", "shop", "https://shop.localhost/a?b=1", "r")
        assert event["props"] == {"plan": "pro", "a_b": "\u00e9"}
        assert event["malformed"] is True and event["dnt"] is True

    def test_page_view_by_get_with_page_visitor_id(self, server, db):
        """A GET page view without a cookie takes the visitor id from a valid cs_vid; no optional field is invented."""
        marker = tag()
        _, headers, _ = raw_request(server.port, click_target(make_token(server, "https://shop.localhost/")), [(b"User-Agent", BROWSER_UA.encode())])
        vid = cookie_value(header_values(headers, b"set-cookie")[0])
        status, _, _ = raw_request(server.port, b"/pixel?site=shop&cs_vid=" + vid.encode(), [(b"User-Agent", browser_ua(marker).encode())])
        assert status == 200
        (event,) = wait_until(lambda: events_with(db, marker))
        assert event["type"] == "page_view" and event["visitor"] == vid
        assert set(event) == COMMON | {"site"}

    def test_beacon_batch(self, server, db):
        """A POSTed batch stores one event per member with the body's valid vid, props as sent."""
        marker = tag()
        _, headers, _ = raw_request(server.port, click_target(make_token(server, "https://shop.localhost/")), [(b"User-Agent", BROWSER_UA.encode())])
        vid = cookie_value(header_values(headers, b"set-cookie")[0])
        body = json.dumps({
            "site": "shop", "vid": vid,
            "events": [{"url": "https://shop.localhost/p/1"}, {"e": "goal", "props": {"value": 42, "ok": True, "plan": "pro"}}],
        }).encode()
        status, _, _ = raw_request(
            server.port, b"/pixel", [(b"User-Agent", browser_ua(marker).encode()), (b"Content-Type", b"text/plain"), (b"Content-Length", str(len(body)).encode())],
            method=b"POST", body=body,
        )
        assert status == 204
        events = wait_until(lambda: len(events_with(db, marker)) == 2 and events_with(db, marker))
        by_type = {e["type"]: e for e in events}
        assert set(by_type) == {"page_view", "goal"}
        assert set(by_type["page_view"]) == COMMON | {"site", "url"}
        assert set(by_type["goal"]) == COMMON | {"site", "props"}
        assert by_type["goal"]["props"] == {"value": 42, "ok": True, "plan": "pro"}
        assert {e["visitor"] for e in events} == {vid}

    def test_unknown_site_stores_nothing(self, server, db):
        """A page view for a site not in COOKIESAVER_SITES still gets the GIF and stores nothing."""
        marker = tag()
        status, _, body = raw_request(server.port, b"/pixel?site=nope&e=x", [(b"User-Agent", browser_ua(marker).encode())])
        assert status == 200 and body.startswith(b"GIF89a")
        sentinel_click(server, db, marker)
        assert len(events_with(db, marker)) == 1

    def test_opted_out_browser_is_redirected_without_cookie_or_event(self, server, db):
        """After /optout, a click still redirects but sets no visitor cookie and stores nothing."""
        marker = tag()
        status, headers, _ = raw_request(server.port, b"/optout", [(b"User-Agent", BROWSER_UA.encode())])
        set_cookies = header_values(headers, b"set-cookie")
        assert status == 200 and any(c.startswith(b"csoptout=1;") for c in set_cookies)
        assert any(c.startswith(b"csid=;") and b"Max-Age=0" in c for c in set_cookies)
        token = make_token(server, NASTY_URL, profile="p-" + marker)
        status, headers, _ = raw_request(
            server.port, click_target(token), [(b"User-Agent", browser_ua(marker).encode()), (b"Cookie", b"csoptout=1")]
        )
        assert status == 302 and header_values(headers, b"location") == [NASTY_URL.encode()]
        assert header_values(headers, b"set-cookie") == []
        sentinel_click(server, db, marker)
        assert len(events_with(db, marker)) == 1


# --- beacons BSON cannot encode ------------------------------------------------------------------

UNENCODABLE = {
    "int-beyond-int64": {"props": {"v": 10**23}},
    "lone-surrogate-url": {"url": "\ud800"},
    "lone-surrogate-name": {"e": "\udfff"},
    "lone-surrogate-prop-value": {"props": {"k": "\ud800"}},
    "lone-surrogate-prop-name": {"props": {"\ud800": "x"}},
}


def post_beacon(server: CookiesaverProcess, marker: str, body: dict[str, Any]) -> tuple[int, bytes]:
    data = json.dumps(body).encode("ascii")  # json escapes lone surrogates as \ud800, as a browser's JSON.stringify does
    status, _, answer = raw_request(
        server.port,
        b"/pixel",
        [(b"User-Agent", browser_ua(marker).encode()), (b"Content-Type", b"text/plain"), (b"Content-Length", str(len(data)).encode())],
        method=b"POST",
        body=data,
    )
    return status, answer


class TestUnencodableBeacons:
    @pytest.mark.parametrize("variant", sorted(UNENCODABLE))
    def test_unencodable_beacon_is_refused_not_500(self, server, variant):
        """A beacon with a lone surrogate escape or an integer beyond int64 is refused (4xx), never a 500."""
        status, answer = post_beacon(server, tag(), {"site": "shop", "events": [UNENCODABLE[variant]]})
        assert status < 500, answer[:200]

    def test_batch_is_all_or_nothing(self, server, db):
        """A batch whose second event cannot be stored stores none of it."""
        marker = tag()
        post_beacon(server, marker, {"site": "shop", "events": [{"url": "https://shop.localhost/first"}, {"url": "\ud800"}]})
        sentinel_click(server, db, marker)
        assert [e["type"] for e in events_with(db, marker)] == ["pixel_open"]


# --- refused KEYs ----------------------------------------------------------------------------------


def _bad_keys(server: CookiesaverProcess) -> dict[str, bytes]:
    now = int(time.time())
    good = make_token(server, "https://shop.localhost/ok", profile="p-bad")
    payload, kid, mac = good.split(".")
    tampered = b64url_encode(json.dumps({"p": "p-bad", "u": "https://evil.example/", "t": now}).encode()).decode()
    other_key = TokenKeys({"t1": base64.urlsafe_b64decode(b"A" * 43 + b"=")}, "t1", 34560000)
    return {
        "missing": b"/pixel?_open_pix=1",
        "empty": b"/pixel?_open_pix=1&k=",
        "repeated": b"/pixel?_open_pix=1&k=" + good.encode() + b"&k=" + good.encode(),
        "garbage": b"/pixel?_open_pix=1&k=not-a-token",
        "two-parts": b"/pixel?_open_pix=1&k=" + f"{payload}.{kid}".encode(),
        "bad-mac": b"/pixel?_open_pix=1&k=" + f"{payload}.{kid}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}".encode(),
        "unknown-kid": b"/pixel?_open_pix=1&k=" + f"{payload}.t9.{mac}".encode(),
        "tampered-payload": b"/pixel?_open_pix=1&k=" + f"{tampered}.{kid}.{mac}".encode(),
        "other-key": b"/pixel?_open_pix=1&k=" + mint(other_key, "https://shop.localhost/ok", profile="p-bad", issued=now).encode(),
        "expired": click_target(make_token(server, "https://shop.localhost/ok", profile="p-bad", issued=now - 34560000 - 60)),
        "future": click_target(make_token(server, "https://shop.localhost/ok", profile="p-bad", issued=now + 3600)),
        "non-ascii": b"/pixel?_open_pix=1&k=%C3%A9" + good.encode(),
        "percent-escaped": b"/pixel?_open_pix=1&k=" + good.replace(".", "%2E", 1).encode() + b"%zz",
        "long-garbage": b"/pixel?_open_pix=1&k=" + b"A.t1." * 1620,
    }


BAD_KEY_NAMES = [
    "missing", "empty", "repeated", "garbage", "two-parts", "bad-mac", "unknown-kid", "tampered-payload",
    "other-key", "expired", "future", "non-ascii", "percent-escaped", "long-garbage",
]


class TestBadKeys:
    @pytest.mark.parametrize("variant", BAD_KEY_NAMES)
    def test_bad_key_gives_400_without_location_and_stores_nothing(self, server, db, variant):
        """Each refused KEY variant answers 400 with no Location and no cookie, and nothing is stored."""
        marker = tag()
        target = _bad_keys(server)[variant]
        links_before = db.visitor_links.count_documents({})
        status, headers, body = raw_request(server.port, target, [(b"User-Agent", browser_ua(marker).encode())])
        assert status == 400, body
        assert header_values(headers, b"location") == []
        assert header_values(headers, b"set-cookie") == []
        sentinel_click(server, db, marker)
        assert [e["message"].startswith("sentinel-") for e in events_with(db, marker)] == [True]
        assert db.visitor_links.count_documents({"profile": "p-bad"}) == 0
        assert db.visitor_links.count_documents({}) == links_before  # the sentinel has no profile

    def test_test_send_redirects_and_stores_nothing(self, server, db):
        """A test-send KEY (x=1) redirects to its URL but records nothing."""
        marker = tag()
        token = make_token(server, NASTY_URL, profile="p-test", test=True)
        status, headers, _ = raw_request(server.port, click_target(token), [(b"User-Agent", browser_ua(marker).encode())])
        assert status == 302 and header_values(headers, b"location") == [NASTY_URL.encode()]
        sentinel_click(server, db, marker)
        assert len(events_with(db, marker)) == 1


# --- client address --------------------------------------------------------------------------------


class TestClientAddress:
    SPOOF: ClassVar[list[tuple[bytes, bytes]]] = [(b"X-Real-IP", b"198.51.100.7"), (b"X-Forwarded-For", b"198.51.100.8")]

    def stored_ip(self, server: CookiesaverProcess, db: Any, source: str, headers: list[tuple[bytes, bytes]]) -> str | None:
        message = "m-" + tag()
        status, _, _ = raw_request(
            server.port,
            click_target(make_token(server, "https://shop.localhost/", message=message)),
            [(b"User-Agent", BROWSER_UA.encode()), *headers],
            source=source,
        )
        assert status == 302
        return wait_until(lambda: db.events.find_one({"message": message})).get("ip")

    def test_x_real_ip_from_untrusted_peer_is_ignored(self, server, db):
        """From a peer outside COOKIESAVER_TRUSTED_PROXIES, X-Real-IP and X-Forwarded-For are ignored and counted."""
        before = server.metric("cookiesaver_untrusted_forwarded_headers_total")
        assert self.stored_ip(server, db, "127.0.0.1", self.SPOOF) == "127.0.0.1"
        assert server.metric("cookiesaver_untrusted_forwarded_headers_total") == before + 1

    def test_x_real_ip_from_trusted_peer_is_used(self, server, db):
        """From a trusted proxy, X-Real-IP is the stored address."""
        assert self.stored_ip(server, db, "127.0.0.2", [(b"X-Real-IP", b"203.0.113.9")]) == "203.0.113.9"

    def test_x_forwarded_for_from_trusted_peer_is_walked(self, server, db):
        """From a trusted proxy without X-Real-IP, the rightmost untrusted X-Forwarded-For hop is stored."""
        assert self.stored_ip(server, db, "127.0.0.2", [(b"X-Forwarded-For", b"10.9.9.9, 203.0.113.10, 127.0.0.2")]) == "203.0.113.10"

    def test_junk_x_real_ip_from_trusted_peer_falls_back_to_peer(self, server, db):
        """A junk X-Real-IP from a trusted proxy is not stored: the peer address is."""
        assert self.stored_ip(server, db, "127.0.0.2", [(b"X-Real-IP", b"not-an-ip")]) == "127.0.0.2"


# --- bots ------------------------------------------------------------------------------------------


class TestBots:
    def test_event_ignore_ua_rule_redirects_and_stores_nothing(self, server, db):
        """A User-Agent matching an event_ignore rule still gets the 302 to the destination, and nothing is stored."""
        marker = tag()
        ua = f"{BROWSER_UA} cse2e-scanner {marker}"
        token = make_token(server, NASTY_URL, profile="p-bot-" + marker)
        status, headers, _ = raw_request(server.port, click_target(token), [(b"User-Agent", ua.encode())])
        assert status == 302 and header_values(headers, b"location") == [NASTY_URL.encode()]
        status, headers, body = raw_request(server.port, b"/pixel?site=shop&url=x", [(b"User-Agent", ua.encode())])
        assert status == 200 and body.startswith(b"GIF89a")
        sentinel_click(server, db, marker)
        assert [e.get("message", "").startswith("sentinel-") for e in events_with(db, marker)] == [True]
        assert db.visitor_links.find_one({"profile": "p-bot-" + marker}) is None

    def test_event_ignore_ip_rule_redirects_and_stores_nothing(self, server, db):
        """A client address matching an event_ignore IP rule still gets the 302, and nothing is stored."""
        marker = tag()
        token = make_token(server, NASTY_URL, profile="p-bot-" + marker)
        status, headers, _ = raw_request(server.port, click_target(token), [(b"User-Agent", browser_ua(marker).encode())], source="127.0.0.3")
        assert status == 302 and header_values(headers, b"location") == [NASTY_URL.encode()]
        sentinel_click(server, db, marker)
        assert len(events_with(db, marker)) == 1

    def test_block_rule_gets_403_without_location(self, server, db):
        """A User-Agent matching a block rule gets 403, no redirect and no cookie."""
        token = make_token(server, NASTY_URL)
        status, headers, _ = raw_request(server.port, click_target(token), [(b"User-Agent", b"cse2e-evil/1.0")])
        assert status == 403
        assert header_values(headers, b"location") == [] and header_values(headers, b"set-cookie") == []


# --- garbage in the query string -------------------------------------------------------------------

GARBAGE = [b"a=%b", b"%zz", b"%ff%fe", b"%C3%28", b"\xff", b"a=\xff\xfe", b"%", b"&&==&", b"p.%ff=%C3%28", b"url=%zz%ff"]


class TestQueryGarbage:
    @pytest.mark.parametrize("junk", GARBAGE, ids=lambda b: repr(b)[2:-1])
    @pytest.mark.parametrize("area", ["click", "open", "behaviour", "bare"])
    def test_garbage_never_gives_5xx(self, server, area, junk):
        """Malformed escapes, invalid UTF-8 and raw 0xff bytes in the query string never give a 5xx."""
        token = make_token(server, NASTY_URL).encode()
        prefix = {
            "click": b"/pixel?_open_pix=1&k=" + token + b"&",
            "open": b"/pixel?k=" + token + b"&",
            "behaviour": b"/pixel?site=shop&e=view&",
            "bare": b"/pixel?",
        }[area]
        status, headers, _ = raw_request(server.port, prefix + junk, [(b"User-Agent", BROWSER_UA.encode())])
        assert status < 500
        if area == "click" and status == 302:
            assert header_values(headers, b"location") == [NASTY_URL.encode()]

    def test_server_still_healthy_after_garbage(self, server):
        """After every garbage request the process still answers health checks."""
        for junk in GARBAGE:
            raw_request(server.port, b"/pixel?" + junk)
        assert server.proc.poll() is None
        assert server.get("/cookiesaver/health")[0] == 200


# --- docs/click-check.sh ---------------------------------------------------------------------------


class TestClickCheckScript:
    def test_click_check_script_prints_the_destination(self, tmp_path, mongo):
        """docs/click-check.sh mints a KEY with the CLI, runs wget and shows the destination in a Location: line; wget (a shipped bot rule) records nothing."""
        server = CookiesaverProcess(tmp_path, mongo.uri)
        server.start()
        client = mongo.client()
        try:
            self.check(server, client[server.db_name])
        finally:
            client.close()
            server.kill()

    def check(self, server: CookiesaverProcess, db: Any) -> None:
        destination = "https://shop.localhost/landing?utm_source=mail&utm_campaign=spring%20sale&id=42#offer"
        env = {k: v for k, v in os.environ.items() if not k.startswith("COOKIESAVER_")}
        env.update({"PORT": str(server.port), "CONFIG": server.config_path, "PYTHON": sys.executable})
        before = db.events.count_documents({})
        proc = subprocess.run(
            ["sh", os.path.join(REPO, "docs", "click-check.sh"), destination, "--profile", "42", "--message", "check"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        locations = [line for line in proc.stdout.splitlines() if line.startswith("Location:")]
        assert locations == [f"Location: {destination} [following]"] or locations == [f"Location: {destination}"], proc.stdout
        time.sleep(0.5)
        assert db.events.count_documents({"message": "check"}) == 0
        assert db.events.count_documents({}) >= before
