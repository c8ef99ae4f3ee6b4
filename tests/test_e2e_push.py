"""End to end: /push on the real twistd process, over TLS, with a real MongoDB-wire server.

One server for the module (start-up is the slow part). Each test uses its own
endpoints, so tests do not see each other's documents. "Nothing stored" is
checked with a sentinel: the writer keeps one FIFO lane per collection, so once
a good document posted after the bad ones has landed, any bad one would have
landed too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cookiesaver.token import TokenKeys, mint, read_key_file
from cookiesaver.vapid import generate
from tests.e2e import CookiesaverProcess

pytestmark = pytest.mark.e2e

SHOP_ORIGIN = "https://shop.localhost"
OTHER_ORIGIN = "https://evil.localhost"
FCM = "https://fcm.googleapis.com/fcm/send/"
MOZILLA = "https://updates.push.services.mozilla.com/wpush/v2/"
WAIT = 10.0

SSRF_ENDPOINTS = [
    "http://fcm.googleapis.com/fcm/send/x",
    "https://127.0.0.1/fcm/send/x",
    "https://8.8.8.8/fcm/send/x",
    "https://[::1]/fcm/send/x",
    "https://[::ffff:127.0.0.1]/fcm/send/x",
    "https://[fe80::1]/fcm/send/x",
    "https://2130706433/fcm/send/x",
    "https://0x7f000001/fcm/send/x",
    "https://0x7f.1/fcm/send/x",
    "https://0177.0.0.1/fcm/send/x",
    "https://localhost/fcm/send/x",
    "https://fcm.localhost/fcm/send/x",
    "https://10.0.0.5/fcm/send/x",
    "https://192.168.1.1/fcm/send/x",
    "https://172.16.0.1/fcm/send/x",
    "https://169.254.169.254/latest/meta-data/",
    "https://user:pw@fcm.googleapis.com/fcm/send/x",
    "https://fcm.googleapis.com@169.254.169.254/fcm/send/x",
    "https://fcm.googleapis.com:8443/fcm/send/x",
    "https://fcm.googleapis.com:/fcm/send/x",
    "https://fcm.googleapis.com.evil.com/fcm/send/x",
    "https://fcm-googleapis.com/fcm/send/x",
    "https://evilfcm.googleapis.com.evil.com/fcm/send/x",
    "https://fcm.googleapis.com./fcm/send/x",
    "https://fcm.googleapis.com../fcm/send/x",
    "https://fcm.googleapis.com.:443/fcm/send/x",
    "https://fcm.googleapis.com\\@evil.com/fcm/send/x",
    "https://fcm.googleapis.com/fcm/send/x#frag",
    "https:///fcm/send/x",
    "https://evil.com/fcm/send/x",
    FCM + "a" * 2048,
]


# --- helpers -------------------------------------------------------------------


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def browser_keys() -> dict[str, str]:
    """The keys a browser makes: an ECDH P-256 public key as an uncompressed point, and a 16-byte auth secret."""
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return {"p256dh": b64url(point), "auth": b64url(os.urandom(16))}


def endpoint(base: str = FCM) -> str:
    return base + "e2e-" + uuid.uuid4().hex + ":APA91b" + b64url(os.urandom(24))


def subscription(url: str | None = None, **extra: Any) -> dict[str, Any]:
    """PushSubscription.toJSON() plus site, as subscribe.js posts it."""
    body: dict[str, Any] = {"endpoint": url or endpoint(), "expirationTime": None, "keys": browser_keys(), "site": "shop"}
    body.update(extra)
    return body


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def wait_for(probe: Callable[[], Any], timeout: float = WAIT, step: float = 0.05) -> Any:
    """The first truthy result of probe(), polled until timeout (the writer flushes every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing within {timeout}s")
        time.sleep(step)


class Push:
    """The running server plus helpers to post JSON and read MongoDB."""

    def __init__(self, server: CookiesaverProcess, db: Any, vapid_public: str, vapid_key_id: str) -> None:
        self.server = server
        self.db = db
        self.vapid_public = vapid_public
        self.vapid_key_id = vapid_key_id

    def post(self, path: str, body: Any, content_type: str = "application/json", origin: str | None = SHOP_ORIGIN, headers: Mapping[str, str] | None = None) -> tuple[int, Any, bytes]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        sent = {"Content-Type": content_type, "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) e2e"}
        if origin is not None:
            sent["Origin"] = origin
        sent.update(headers or {})
        return self.server.request("POST", path, body=raw, headers=sent)

    def subscription(self, endpoint_url: str, timeout: float = WAIT) -> dict[str, Any]:
        return wait_for(lambda: self.db.push_subscriptions.find_one({"_id": sha256(endpoint_url)}), timeout)

    def settle_subscriptions(self) -> None:
        """Post a good subscription and wait for it: everything accepted before it has been written."""
        sentinel = subscription()
        assert self.post("/push/subscribe", sentinel)[0] == 200
        self.subscription(sentinel["endpoint"])

    def settle_events(self) -> None:
        """The same for push_events."""
        event = {"type": "delivered", "message": "sentinel-" + uuid.uuid4().hex, "subscription": sha256(uuid.uuid4().hex)}
        assert self.post("/push/events", event, "text/plain")[0] == 204
        wait_for(lambda: self.db.push_events.find_one({"message": event["message"]}))


@pytest.fixture(scope="module")
def push(tmp_path_factory: pytest.TempPathFactory, mongo: Any) -> Iterator[Push]:
    tmp = tmp_path_factory.mktemp("e2e-push")
    key_path = str(tmp / "shop-vapid.pem")
    key = generate(key_path)
    sites = {
        "shop": {"origins": [SHOP_ORIGIN], "vapid_private_key": key_path, "vapid_subject": "mailto:ops@shop.localhost", "icon": "https://shop.localhost/icon.png"},
        "nopush": {"origins": ["https://nopush.localhost"]},
    }
    server = CookiesaverProcess(tmp, mongo.uri, config={"COOKIESAVER_SITES": sites})
    client = mongo.client()
    try:
        server.start()
        yield Push(server, client[server.db_name], key.public_b64url, key.key_id)
    finally:
        client.close()
        server.kill()


def padded(body: dict[str, Any], size: int) -> bytes:
    """C{body} as JSON of exactly C{size} bytes, filled with an ignored member."""
    body = dict(body, padding="")
    raw = json.dumps(body).encode("utf-8")
    body["padding"] = "x" * (size - len(raw))
    raw = json.dumps(body).encode("utf-8")
    assert len(raw) == size
    return raw


def error(body: bytes) -> dict[str, Any]:
    return json.loads(body)


# --- static pieces -----------------------------------------------------------


class TestWorkerAndPage:
    def test_service_worker_headers(self, push: Push) -> None:
        """GET /push/sw.js is JavaScript with Service-Worker-Allowed: /, an ETag and a cache lifetime of at most five minutes."""
        status, headers, body = push.server.get("/push/sw.js")
        assert status == 200
        assert headers["Content-Type"].split(";")[0].strip() == "application/javascript"
        assert headers["Service-Worker-Allowed"] == "/"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert re.fullmatch(r'"[^"]+"', headers["ETag"])
        max_age = re.search(r"max-age=(\d+)", headers["Cache-Control"])
        assert max_age is not None and 0 < int(max_age.group(1)) <= 300
        assert b"addEventListener('push'" in body

    def test_service_worker_revalidates_with_etag(self, push: Push) -> None:
        """If-None-Match with the current ETag is a 304 without a body; a stale ETag gets the script again."""
        _, headers, body = push.server.get("/push/sw.js")
        status, _, again = push.server.get("/push/sw.js", headers={"If-None-Match": headers["ETag"]})
        assert status == 304 and again == b""
        status, _, again = push.server.get("/push/sw.js", headers={"If-None-Match": '"stale"'})
        assert status == 200 and again == body

    def test_vapid_key(self, push: Push) -> None:
        """GET /push/vapid-key?site=shop gives the site's public key (65-byte point), key id and icon; a site without a key is 404."""
        status, headers, body = push.server.get("/push/vapid-key?site=shop", headers={"Origin": SHOP_ORIGIN})
        assert status == 200 and headers["Content-Type"] == "application/json"
        data = json.loads(body)
        assert data["site"] == "shop" and data["key"] == push.vapid_public and data["key_id"] == push.vapid_key_id
        assert data["icon"] == "https://shop.localhost/icon.png"
        assert len(base64.urlsafe_b64decode(data["key"] + "==")) == 65
        assert headers["Access-Control-Allow-Origin"] == SHOP_ORIGIN
        for site in ("nopush", "nosuch", ""):
            status, _, body = push.server.get(f"/push/vapid-key?site={site}")
            assert status == 404 and error(body)["field"] == "site"

    def test_subscribe_page_and_csp(self, push: Push) -> None:
        """GET /push/subscribe?site=shop renders the site's key into the page under a strict CSP framed only by the site."""
        status, headers, body = push.server.get("/push/subscribe?site=shop&origin=https://shop.localhost")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        csp = {d.strip().split(" ", 1)[0]: d.strip() for d in headers["Content-Security-Policy"].split(";")}
        assert csp["default-src"] == "default-src 'none'"
        assert csp["script-src"] == "script-src 'self'"
        assert csp["connect-src"] == "connect-src 'self'"
        assert csp["frame-ancestors"] == "frame-ancestors https://shop.localhost"
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        page = body.decode()
        assert f'data-vapid-key="{push.vapid_public}"' in page
        assert 'data-origin="https://shop.localhost"' in page
        assert "<script>" not in page and '<script src="/push/subscribe.js"' in page

    def test_subscribe_page_escapes_and_refuses(self, push: Push) -> None:
        """An unknown site or one without a key is 404; a KEY that links no profile is not rendered."""
        assert push.server.get("/push/subscribe?site=nosuch")[0] == 404
        assert push.server.get("/push/subscribe?site=nopush")[0] == 404
        status, _, body = push.server.get('/push/subscribe?site=shop&key=%22%3E%3Cscript%3Ealert(1)%3C/script%3E')
        assert status == 200 and b"<script>alert" not in body and b'data-link-key=""' in body


# --- subscriptions -------------------------------------------------------------


class TestSubscribe:
    @pytest.mark.parametrize("content_type", ["application/json", "text/plain;charset=UTF-8"])
    def test_browser_subscription_is_stored(self, push: Push, content_type: str) -> None:
        """A browser-shaped subscription (P-256 point, 16-byte auth, expirationTime null) is 200 and lands in push_subscriptions."""
        body = subscription()
        status, _, answer = push.post("/push/subscribe", body, content_type)
        assert status == 200, answer
        assert json.loads(answer) == {"ok": True, "subscription": sha256(body["endpoint"]), "key_id": push.vapid_key_id}
        doc = push.subscription(body["endpoint"])
        assert doc["endpoint"] == body["endpoint"]
        assert doc["keys"] == body["keys"]
        assert doc["site"] == "shop" and doc["key_id"] == push.vapid_key_id
        assert doc["expiration_time"] is None and doc["active"] is True
        assert doc["ua"] == "Mozilla/5.0 (X11; Linux x86_64) e2e"
        assert doc["created"] is not None and doc["last_seen"] >= doc["created"]

    def test_expiration_time_number_and_padded_keys(self, push: Push) -> None:
        """expirationTime as a number is stored as is, and padded base64url keys are stored unpadded."""
        body = subscription(MOZILLA + uuid.uuid4().hex, expirationTime=1767225600000)
        stored_keys = dict(body["keys"])
        body["keys"] = {name: value + "=" * (-len(value) % 4) for name, value in stored_keys.items()}
        assert body["keys"] != stored_keys
        assert push.post("/push/subscribe", body)[0] == 200
        doc = push.subscription(body["endpoint"])
        assert doc["expiration_time"] == 1767225600000
        assert doc["keys"] == stored_keys

    def test_extra_members_not_stored(self, push: Push) -> None:
        """Unknown members (top level and inside keys) are accepted but never stored."""
        body = subscription(contentEncoding="aes128gcm", options={"userVisibleOnly": True}, **{"$where": "1", "active": False, "visitor": "forged"})
        body["keys"]["extra"] = "x"
        body["site"] = "shop"
        assert push.post("/push/subscribe", body)[0] == 200
        doc = push.subscription(body["endpoint"])
        assert set(doc) <= {"_id", "endpoint", "keys", "key_id", "site", "expiration_time", "ua", "last_seen", "created", "active", "visitor", "profile"}
        assert set(doc["keys"]) == {"p256dh", "auth"}
        assert doc["active"] is True and doc.get("visitor") != "forged"

    def test_same_subscription_twice_is_one_record(self, push: Push) -> None:
        """The same body posted twice is two 200s with the same id and one document whose created time is kept."""
        body = subscription()
        first = push.post("/push/subscribe", body)
        second = push.post("/push/subscribe", body)
        assert first[0] == second[0] == 200 and first[2] == second[2]
        created = push.subscription(body["endpoint"])["created"]
        body["expirationTime"] = 1767225600000
        assert push.post("/push/subscribe", body)[0] == 200
        doc = wait_for(lambda: push.db.push_subscriptions.find_one({"_id": sha256(body["endpoint"]), "expiration_time": 1767225600000}))
        assert doc["created"] == created
        assert push.db.push_subscriptions.count_documents({"endpoint": body["endpoint"]}) == 1

    def test_key_links_profile(self, push: Push) -> None:
        """A valid KEY token in the body links the subscription to its profile; a bad one is ignored, not refused."""
        keys = TokenKeys({"t1": read_key_file(push.server.token_key)}, "t1", 34560000)
        token = mint(keys, "https://shop.localhost/landing", account="1", profile="42", issued=int(time.time()))
        body = subscription(key=token)
        assert push.post("/push/subscribe", body)[0] == 200
        assert push.subscription(body["endpoint"])["profile"] == "42"
        bad = subscription(key="not-a-token")
        assert push.post("/push/subscribe", bad)[0] == 200
        assert "profile" not in push.subscription(bad["endpoint"])

    @pytest.mark.parametrize("url", SSRF_ENDPOINTS)
    def test_ssrf_endpoint_refused(self, push: Push, url: str) -> None:
        """An endpoint that is not an https URL on a known push service is 400 naming endpoint, and nothing is stored."""
        status, headers, body = push.post("/push/subscribe", subscription(url))
        assert status == 400, body
        assert headers["Content-Type"] == "application/json"
        assert error(body)["field"] == "endpoint"
        push.settle_subscriptions()
        assert push.db.push_subscriptions.find_one({"_id": sha256(url)}) is None
        assert push.db.push_subscriptions.find_one({"endpoint": url}) is None

    def test_subdomain_of_push_service_accepted(self, push: Push) -> None:
        """A sub-domain of a listed service and an explicit :443 are accepted (the counterpart of the look-alike refusals)."""
        for url in ("https://jmt17.google.com.fcm.googleapis.com/fcm/send/" + uuid.uuid4().hex, "https://fcm.googleapis.com:443/fcm/send/" + uuid.uuid4().hex):
            assert push.post("/push/subscribe", subscription(url))[0] == 200
            push.subscription(url)

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            (lambda b: b.pop("endpoint"), "endpoint"),
            (lambda b: b.update(endpoint=42), "endpoint"),
            (lambda b: b.pop("keys"), "keys"),
            (lambda b: b["keys"].pop("p256dh"), "keys.p256dh"),
            (lambda b: b["keys"].update(p256dh="!!"), "keys.p256dh"),
            (lambda b: b["keys"].update(p256dh=b64url(b"\x04" + b"\x01" * 64)), "keys.p256dh"),
            (lambda b: b["keys"].update(p256dh=b64url(b"\x02" + os.urandom(32))), "keys.p256dh"),
            (lambda b: b["keys"].update(p256dh=base64.b64encode(b"\x04" + os.urandom(64)).decode() + "+/"), "keys.p256dh"),
            (lambda b: b["keys"].update(auth=b64url(os.urandom(15))), "keys.auth"),
            (lambda b: b["keys"].update(auth=b64url(os.urandom(17))), "keys.auth"),
            (lambda b: b["keys"].update(auth=None), "keys.auth"),
            (lambda b: b.update(expirationTime=-1), "expirationTime"),
            (lambda b: b.update(expirationTime="1767225600000"), "expirationTime"),
            (lambda b: b.update(expirationTime=True), "expirationTime"),
            (lambda b: b.update(site="nosuch"), "site"),
            (lambda b: b.update(site="nopush"), "site"),
            (lambda b: b.pop("site"), "site"),
        ],
        ids=lambda v: v if isinstance(v, str) else "",
    )
    def test_invalid_member_refused(self, push: Push, change: Callable[[dict[str, Any]], Any], field: str) -> None:
        """Each invalid or missing member is a 400 naming that member, and nothing is stored."""
        body = subscription()
        change(body)
        status, _, answer = push.post("/push/subscribe", body)
        assert status == 400, answer
        assert error(answer)["field"] == field
        if isinstance(body.get("endpoint"), str):
            push.settle_subscriptions()
            assert push.db.push_subscriptions.find_one({"_id": sha256(body["endpoint"])}) is None

    @pytest.mark.parametrize(
        ("raw", "content_type", "status", "field"),
        [
            (b"{not json", "application/json", 400, "body"),
            (b"[1, 2]", "application/json", 400, "body"),
            (b'{"endpoint": NaN}', "application/json", 400, "body"),
            (b"\xff\xfe{}", "text/plain", 400, "body"),
            (b"{}", "application/x-www-form-urlencoded", 415, "content-type"),
            (b"{}", "multipart/form-data; boundary=x", 415, "content-type"),
        ],
    )
    def test_bad_bodies(self, push: Push, raw: bytes, content_type: str, status: int, field: str) -> None:
        """Bodies that are not a JSON object are 400, other media types 415, each a JSON error naming the part."""
        got, _, answer = push.post("/push/subscribe", raw, content_type)
        assert got == status and error(answer)["field"] == field

    def test_body_over_16_kib_is_413(self, push: Push) -> None:
        """A body of exactly 16 KiB is accepted; one byte more is 413 and nothing is stored, even though the subscription in it is valid."""
        fits = padded(subscription(), 16 * 1024)
        assert len(fits) == 16 * 1024
        status, _, answer = push.post("/push/subscribe", fits)
        assert status == 200, answer
        too_big = subscription()
        raw = padded(too_big, 16 * 1024 + 1)
        status, _, answer = push.post("/push/subscribe", raw)
        assert status == 413, answer
        push.settle_subscriptions()
        push.subscription(json.loads(fits)["endpoint"])
        assert push.db.push_subscriptions.find_one({"_id": sha256(too_big["endpoint"])}) is None

    def test_unsubscribe_deactivates(self, push: Push) -> None:
        """POST /push/unsubscribe with the exact endpoint sets active false on the record and keeps it."""
        body = subscription()
        assert push.post("/push/subscribe", body)[0] == 200
        push.subscription(body["endpoint"])
        status, _, answer = push.post("/push/unsubscribe", {"endpoint": body["endpoint"], "site": "shop"}, "text/plain")
        assert status == 200 and json.loads(answer)["subscription"] == sha256(body["endpoint"])
        doc = wait_for(lambda: push.db.push_subscriptions.find_one({"_id": sha256(body["endpoint"]), "active": False}))
        assert doc["keys"] == body["keys"]
        status, _, answer = push.post("/push/unsubscribe", {"endpoint": "http://x/"})
        assert status == 400 and error(answer)["field"] == "endpoint"


# --- worker reports ------------------------------------------------------------


class TestEvents:
    def test_events_stored_once_each(self, push: Push) -> None:
        """delivered, clicked and closed, each sent twice (a worker retry), are one document each with the id from (message, subscription, type)."""
        sub = sha256(endpoint())
        message = "m-" + uuid.uuid4().hex
        for kind in ("delivered", "clicked", "closed"):
            body = {"type": kind, "message": message, "subscription": sub}
            if kind == "clicked":
                body["action"] = "shop"
            for _ in range(2):
                status, _, answer = push.post("/push/events", body, "text/plain;charset=UTF-8")
                assert status == 204 and answer == b""
        wait_for(lambda: push.db.push_events.count_documents({"message": message}) >= 3)
        push.settle_events()
        docs = {d["type"]: d for d in push.db.push_events.find({"message": message})}
        assert sorted(docs) == ["clicked", "closed", "delivered"]
        assert push.db.push_events.count_documents({"message": message}) == 3
        for kind, doc in docs.items():
            assert doc["_id"] == sha256(f"{message}|{sub}|{kind}")
            assert doc["subscription"] == sub and doc["ts"] is not None
        assert docs["clicked"]["action"] == "shop"

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"type": "opened"}, "type"),
            ({"type": None}, "type"),
            ({"message": None}, "message"),
            ({"message": "m" * 129}, "message"),
            ({"message": "bad\nline"}, "message"),
            ({"subscription": "ABC"}, "subscription"),
            ({"subscription": "A" * 64}, "subscription"),
            ({"action": "a" * 65}, "action"),
        ],
    )
    def test_bad_event_refused(self, push: Push, change: dict[str, Any], field: str) -> None:
        """A report with a wrong member is 400 naming it, and nothing is stored."""
        message = "bad-" + uuid.uuid4().hex
        body = {"type": "clicked", "message": message, "subscription": sha256(endpoint())}
        body.update(change)
        status, _, answer = push.post("/push/events", body, "text/plain")
        assert status == 400 and error(answer)["field"] == field
        push.settle_events()
        assert push.db.push_events.find_one({"subscription": body["subscription"]}) is None

    def test_events_from_foreign_origin_refused(self, push: Push) -> None:
        """A report posted by a page on an origin no site lists is 403 and not stored."""
        body = {"type": "delivered", "message": "foreign-" + uuid.uuid4().hex, "subscription": sha256(endpoint())}
        status, _, answer = push.post("/push/events", body, "text/plain", origin=OTHER_ORIGIN)
        assert status == 403 and error(answer)["field"] == "origin"
        push.settle_events()
        assert push.db.push_events.find_one({"message": body["message"]}) is None


# --- CORS and origins ----------------------------------------------------------


class TestCors:
    def test_site_origin_gets_cors_with_credentials(self, push: Push) -> None:
        """A POST from the site's origin is answered with its origin echoed, credentials allowed and Vary: Origin."""
        status, headers, _ = push.post("/push/subscribe", subscription(), origin=SHOP_ORIGIN)
        assert status == 200
        assert headers["Access-Control-Allow-Origin"] == SHOP_ORIGIN
        assert headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in [v.strip() for v in headers["Vary"].split(",")]

    def test_other_origin_refused(self, push: Push) -> None:
        """A POST from another origin is 403 naming origin, with no CORS headers, and nothing is stored."""
        body = subscription()
        status, headers, answer = push.post("/push/subscribe", body, "text/plain", origin=OTHER_ORIGIN)
        assert status == 403 and error(answer)["field"] == "origin"
        assert "Access-Control-Allow-Origin" not in headers
        push.settle_subscriptions()
        assert push.db.push_subscriptions.find_one({"_id": sha256(body["endpoint"])}) is None

    def test_pixel_domain_origin_allowed(self, push: Push) -> None:
        """The subscribe page's own origin (the pixel domain) may post, without CORS headers being needed."""
        host = f"pxl.localhost:{push.server.port}"
        body = subscription()
        status, headers, _ = push.post("/push/subscribe", body, origin=f"https://{host}", headers={"Host": host})
        assert status == 200
        assert "Access-Control-Allow-Origin" not in headers
        push.subscription(body["endpoint"])

    def test_preflight(self, push: Push) -> None:
        """OPTIONS from the site's origin allows POST with Content-Type; from another origin it is 403 without allow headers."""
        ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        status, headers, _ = push.server.request("OPTIONS", "/push/subscribe?site=shop", headers={"Origin": SHOP_ORIGIN, **ask})
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == SHOP_ORIGIN
        assert "POST" in headers["Access-Control-Allow-Methods"]
        assert headers["Access-Control-Allow-Headers"].lower() == "content-type"
        status, headers, _ = push.server.request("OPTIONS", "/push/subscribe?site=shop", headers={"Origin": OTHER_ORIGIN, **ask})
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
