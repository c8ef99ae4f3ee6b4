"""The /push resource tree (cookiesaver.web.push) through treq's StubTreq."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from cookiesaver.config import load
from cookiesaver.interfaces import IEventSink
from cookiesaver.metrics import Metrics
from cookiesaver.testing import MemorySink, MemoryStore
from cookiesaver.vapid import VapidKeys, generate
from cookiesaver.web.cors import all_site_origins, apply_cors, preflight
from cookiesaver.web.push import push_resource

BASE = "https://pxl.example.com/push/"
SHOP = "https://www.shop.example"
FCM = "https://fcm.googleapis.com/fcm/send/cX1y2Z:APA91bH-example_token"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def browser_subscription(endpoint: str = FCM, **extra: Any) -> dict[str, Any]:
    """PushSubscription.toJSON() with keys made the way a browser makes them."""
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    body: dict[str, Any] = {"endpoint": endpoint, "expirationTime": None, "keys": {"p256dh": b64url(point), "auth": b64url(os.urandom(16))}}
    body.update(extra)
    return body


SSRF_ENDPOINTS = (
    "http://fcm.googleapis.com/fcm/send/x",
    "https://127.0.0.1/x",
    "https://[::1]/x",
    "https://2130706433/x",
    "https://0x7f.1/x",
    "https://localhost/x",
    "https://10.0.0.5/x",
    "https://192.168.0.1/x",
    "https://172.16.0.1/x",
    "https://169.254.169.254/latest/meta-data/",
    "https://[fe80::1]/x",
    "https://user:pw@fcm.googleapis.com/x",
    "https://fcm.googleapis.com@evil.example/x",
    "https://fcm.googleapis.com:8443/x",
    "https://fcm.googleapis.com.evil.example/x",
    "https://fcm-googleapis.com/x",
    "https://fcm.googleapis.com./x",
    "https://evil.example/x",
    "https://fcm.googleapis.com/" + "a" * 2048,
)


class PushResourceTests(SynchronousTestCase):
    """Everything under /push."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        shop_key = os.path.join(self.dir, "shop.pem")
        multi_key = os.path.join(self.dir, "multi.pem")
        generate(shop_key)
        generate(multi_key)
        sites = {
            "shop": {
                "origins": [SHOP],
                "vapid_private_key": shop_key,
                "vapid_subject": "mailto:ops@shop.example",
                "icon": "https://www.shop.example/icon.png",
                "badge": "https://www.shop.example/badge.png",
            },
            "multi": {"origins": ["https://a.multi.example", "https://b.multi.example"], "vapid_private_key": multi_key, "vapid_subject": "https://multi.example/contact"},
            "nopush": {"origins": ["https://nopush.example"]},
        }
        environ = {"COOKIESAVER_SSL_ON": "false", "COOKIESAVER_PUBLIC_HOSTNAME": "pxl.example.com", "COOKIESAVER_SITES": json.dumps(sites)}
        self.config = load(None, environ=environ).config
        self.vapid = VapidKeys.from_sites(self.config.sites)
        self.sink = MemorySink()
        self.metrics = Metrics()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.visitor: str | None = "v-123"
        self.profiles = {b"good-key": "profile-9"}
        push = push_resource(
            config=self.config,
            vapid=self.vapid,
            sink=self.sink,
            metrics=self.metrics,
            clock=self.clock,
            visitor_id_for=lambda request: self.visitor,
            profile_for_key=self.profiles.get,
        )
        root = Resource()
        root.putChild(b"push", push)
        self.treq: Any = StubTreq(root)

    # --- helpers ----------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
        d = self.treq.request(method, BASE + path, data=body, headers=headers or {})
        self.treq.flush()
        response = self.successResultOf(d)
        content = self.treq.content(response)
        self.treq.flush()
        return response, self.successResultOf(content)

    def post(self, path: str, body: Any, content_type: str = "application/json", headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        all_headers = {"Content-Type": content_type, "User-Agent": "Mozilla/5.0 Test"}
        all_headers.update(headers or {})
        return self.request("POST", path, raw, all_headers)

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None

    def not_recorded(self, reason: str) -> float:
        return self.metrics.registry.get_sample_value("cookiesaver_not_recorded_total", {"reason": reason}) or 0.0

    def accepted(self, collection: str) -> float:
        return self.metrics.registry.get_sample_value("cookiesaver_events_accepted_total", {"collection": collection}) or 0.0

    def stored(self, collection: str) -> list[dict[str, Any]]:
        """What MongoDB would hold after the writer applied every submitted upsert and insert."""
        store = MemoryStore()
        ops = [op for c, op in self.sink.upserts if c == collection]
        if ops:
            self.successResultOf(store.upsert_many(collection, ops))
        for c, doc in self.sink.documents:
            if c == collection:
                self.successResultOf(store.insert_many(collection, [doc]))
        return store.documents(collection)

    def assertFieldError(self, response: Any, content: bytes, field: str, code: int = 400) -> None:
        self.assertEqual(response.code, code, content)
        self.assertEqual(self.header(response, "Content-Type"), "application/json")
        self.assertEqual(json.loads(content)["field"], field, content)

    # --- static assets ----------------------------------------------------------

    def test_sink_fake_is_an_event_sink(self) -> None:
        """The fake used here really implements IEventSink."""
        self.assertTrue(verifyObject(IEventSink, self.sink))

    def test_service_worker(self) -> None:
        """sw.js is JavaScript, allowed at scope /, cached briefly, with an ETag."""
        response, body = self.request("GET", "sw.js")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), "application/javascript; charset=utf-8")
        self.assertEqual(self.header(response, "Service-Worker-Allowed"), "/")
        self.assertEqual(self.header(response, "Cache-Control"), "public, max-age=300")
        self.assertEqual(self.header(response, "X-Content-Type-Options"), "nosniff")
        self.assertTrue(self.header(response, "ETag"))
        for event in ("push", "notificationclick", "notificationclose", "pushsubscriptionchange", "activate"):
            self.assertIn(f"'{event}'".encode(), body)

    def test_service_worker_etag(self) -> None:
        """A matching If-None-Match is a 304 with no body."""
        response, _ = self.request("GET", "sw.js")
        etag = self.header(response, "ETag")
        assert etag is not None
        again, body = self.request("GET", "sw.js", headers={"If-None-Match": etag})
        self.assertEqual((again.code, body), (304, b""))

    def test_head_assets(self) -> None:
        """HEAD on the assets answers headers only."""
        for path in ("sw.js", "sdk.js", "subscribe.js", "subscribe.css"):
            response, body = self.request("HEAD", path)
            self.assertEqual((response.code, body), (200, b""), path)

    def test_sdk_and_page_script(self) -> None:
        """sdk.js and subscribe.js are JavaScript; sdk.js may be loaded cross-origin."""
        for path in ("sdk.js", "subscribe.js"):
            response, body = self.request("GET", path)
            self.assertEqual(response.code, 200)
            self.assertEqual(self.header(response, "Content-Type"), "application/javascript; charset=utf-8")
            self.assertIn(b"postMessage", body)
        response, _ = self.request("GET", "sdk.js")
        self.assertEqual(self.header(response, "Cross-Origin-Resource-Policy"), "cross-origin")

    def test_wrong_method_on_asset(self) -> None:
        """POST to an asset is a 405."""
        response, _ = self.request("POST", "sw.js", b"")
        self.assertEqual(response.code, 405)

    def test_unknown_paths(self) -> None:
        """Unknown children and extra segments are 404s."""
        for path in ("nope", "sw.js/x", "subscribe/x", ""):
            response, _ = self.request("GET", path)
            self.assertEqual(response.code, 404, path)

    def test_post_only_methods(self) -> None:
        """GET and HEAD on POST endpoints are 405s, not 500s."""
        for path in ("unsubscribe", "events"):
            for method in ("GET", "HEAD"):
                response, _ = self.request(method, path)
                self.assertEqual(response.code, 405, (method, path))
                self.assertIn("POST", self.header(response, "Allow") or "")

    # --- the subscribe page --------------------------------------------------------

    def test_page(self) -> None:
        """The page carries the site, its VAPID key and target origin in data attributes, under a strict CSP."""
        response, body = self.request("GET", "subscribe?site=shop")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), "text/html; charset=utf-8")
        self.assertEqual(
            self.header(response, "Content-Security-Policy"),
            "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data: https:; "
            f"style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors {SHOP}",
        )
        self.assertEqual(self.header(response, "X-Content-Type-Options"), "nosniff")
        self.assertEqual(self.header(response, "Cache-Control"), "no-store")
        text = body.decode()
        self.assertIn('data-site="shop"', text)
        self.assertIn(f'data-vapid-key="{self.vapid["shop"].public_b64url}"', text)
        self.assertIn(f'data-origin="{SHOP}"', text)
        self.assertIn('data-link-key=""', text)
        self.assertIn('<script src="/push/subscribe.js"', text)
        self.assertNotIn("{{", text)

    def test_page_has_no_inline_script_or_style(self) -> None:
        """Every script is external and there is no inline style, so the strict CSP holds."""
        _, body = self.request("GET", "subscribe?site=shop")
        text = body.decode()
        self.assertEqual(re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", text), [])
        self.assertNotIn("<style", text)
        self.assertNotIn(" style=", text)
        self.assertNotIn(" on", re.sub(r"\s+", " ", "".join(re.findall(r"<[^>]+>", text))).replace(" on ", ""))

    def test_page_accessible(self) -> None:
        """The page has a language, a heading, real buttons and a live status region."""
        _, body = self.request("GET", "subscribe?site=shop")
        text = body.decode()
        self.assertIn('<html lang="en">', text)
        self.assertIn("<h1>", text)
        self.assertIn('<button type="button" id="allow"', text)
        self.assertIn('role="status" aria-live="polite"', text)

    def test_page_multi_origin(self) -> None:
        """With several origins, only an origin= in the site's list is rendered as the postMessage target."""
        _, body = self.request("GET", "subscribe?site=multi&origin=https%3A%2F%2Fb.multi.example")
        self.assertIn(b'data-origin="https://b.multi.example"', body)
        _, body = self.request("GET", "subscribe?site=multi&origin=https%3A%2F%2Fevil.example")
        self.assertIn(b'data-origin=""', body)
        _, body = self.request("GET", "subscribe?site=multi")
        self.assertIn(b'data-origin=""', body)

    def test_page_single_origin_ignores_param(self) -> None:
        """A single-origin site always targets its own origin, whatever origin= says."""
        _, body = self.request("GET", "subscribe?site=shop&origin=https%3A%2F%2Fevil.example")
        self.assertIn(f'data-origin="{SHOP}"'.encode(), body)
        self.assertNotIn(b"evil", body)

    def test_page_frame_ancestors(self) -> None:
        """frame-ancestors lists every origin of the site."""
        response, _ = self.request("GET", "subscribe?site=multi")
        csp = self.header(response, "Content-Security-Policy") or ""
        self.assertTrue(csp.endswith("frame-ancestors https://a.multi.example https://b.multi.example"), csp)

    def test_page_link_key(self) -> None:
        """A KEY that links a profile is rendered (escaped); an unknown one is dropped."""
        _, body = self.request("GET", "subscribe?site=shop&key=good-key")
        self.assertIn(b'data-link-key="good-key"', body)
        _, body = self.request("GET", "subscribe?site=shop&key=forged")
        self.assertIn(b'data-link-key=""', body)
        self.profiles[b'"><script>alert(1)</script>'] = "p"
        _, body = self.request("GET", "subscribe?site=shop&key=%22%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        self.assertIn(b'data-link-key="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"', body)
        self.assertNotIn(b"<script>alert", body)

    def test_page_unknown_site(self) -> None:
        """An unknown site, a missing site or a site without push is a 404 page, still under the CSP."""
        for query in ("site=nope", "", "site=nopush"):
            response, _ = self.request("GET", "subscribe?" + query)
            self.assertEqual(response.code, 404, query)
            self.assertIn("frame-ancestors 'none'", self.header(response, "Content-Security-Policy") or "")

    def test_page_head(self) -> None:
        """HEAD on the page answers headers only."""
        response, body = self.request("HEAD", "subscribe?site=shop")
        self.assertEqual((response.code, body), (200, b""))

    # --- the VAPID key ---------------------------------------------------------------

    def test_vapid_key(self) -> None:
        """The application server key is a 65-byte uncompressed P-256 point, with its key id and the site's defaults."""
        response, body = self.request("GET", "vapid-key?site=shop")
        self.assertEqual(response.code, 200)
        data = json.loads(body)
        raw = base64.urlsafe_b64decode(data["key"] + "=" * (-len(data["key"]) % 4))
        self.assertEqual(len(raw), 65)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        self.assertEqual(data["key_id"], self.vapid["shop"].key_id)
        self.assertEqual((data["icon"], data["badge"]), ("https://www.shop.example/icon.png", "https://www.shop.example/badge.png"))

    def test_vapid_key_cors(self) -> None:
        """The site's pages may read the key; other origins may not."""
        response, _ = self.request("GET", "vapid-key?site=shop", headers={"Origin": SHOP})
        self.assertEqual(self.header(response, "Access-Control-Allow-Origin"), SHOP)
        self.assertEqual(self.header(response, "Vary"), "Origin")
        response, _ = self.request("GET", "vapid-key?site=shop", headers={"Origin": "https://evil.example"})
        self.assertIsNone(self.header(response, "Access-Control-Allow-Origin"))

    def test_vapid_key_unknown(self) -> None:
        """Unknown sites and sites without a key are 404s naming site."""
        for query in ("site=nope", "site=nopush", ""):
            response, body = self.request("GET", "vapid-key?" + query)
            self.assertFieldError(response, body, "site", 404)

    # --- POST /push/subscribe ---------------------------------------------------------

    def test_subscribe_stores(self) -> None:
        """A browser's subscription is one upsert keyed by the endpoint hash, with keys, key id, site, visitor, UA and times."""
        sub = browser_subscription(site="shop")
        response, body = self.post("subscribe", sub)
        self.assertEqual(response.code, 200, body)
        digest = hashlib.sha256(FCM.encode()).hexdigest()
        self.assertEqual(json.loads(body), {"ok": True, "subscription": digest, "key_id": self.vapid["shop"].key_id})
        [(collection, op)] = self.sink.upserts
        self.assertEqual(collection, "push_subscriptions")
        self.assertEqual(dict(op.filter), {"_id": digest})
        now = datetime.fromtimestamp(NOW, tz=UTC)
        self.assertEqual(
            op.update["$set"],
            {
                "keys": sub["keys"],
                "key_id": self.vapid["shop"].key_id,
                "site": "shop",
                "expiration_time": None,
                "ua": "Mozilla/5.0 Test",
                "last_seen": now,
                "active": True,
                "visitor": "v-123",
            },
        )
        self.assertEqual(op.update["$setOnInsert"], {"created": now, "endpoint": FCM})
        self.assertEqual(self.accepted("push_subscriptions"), 1)

    def test_unstorable_profile_is_400_not_500(self) -> None:
        """A KEY whose profile cannot be stored (a lone surrogate from a foreign minter) gives 400, not a 500."""
        import bson

        self.profiles[b"odd-key"] = "\ud800"
        original = self.sink.submit_upsert
        self.sink.submit_upsert = lambda collection, op: (bson.encode(dict(op.update["$set"])), original(collection, op))[1]  # type: ignore[method-assign]
        response, content = self.post("subscribe?site=shop&key=odd-key", browser_subscription())
        self.assertEqual(response.code, 400, content)
        self.assertEqual(self.sink.upserts, [])
        self.assertEqual(self.not_recorded("malformed"), 1)

    def test_subscribe_text_plain(self) -> None:
        """text/plain (no preflight) is accepted, with or without a charset."""
        for content_type in ("text/plain", "text/plain;charset=UTF-8"):
            response, body = self.post("subscribe", browser_subscription(site="shop"), content_type)
            self.assertEqual(response.code, 200, body)

    def test_subscribe_same_twice(self) -> None:
        """The same subscription twice is two 2xx answers and one record."""
        sub = browser_subscription(site="shop")
        first, _ = self.post("subscribe", sub)
        self.clock.advance(60)
        second, _ = self.post("subscribe", sub)
        self.assertEqual((first.code, second.code), (200, 200))
        [doc] = self.stored("push_subscriptions")
        self.assertEqual(doc["_id"], hashlib.sha256(FCM.encode()).hexdigest())
        self.assertEqual(doc["endpoint"], FCM)
        self.assertEqual(doc["created"], datetime.fromtimestamp(NOW, tz=UTC))
        self.assertEqual(doc["last_seen"], datetime.fromtimestamp(NOW + 60, tz=UTC))
        self.assertTrue(doc["active"])

    def test_subscribe_site_query(self) -> None:
        """The site may come as a query parameter instead of a body member."""
        response, body = self.post("subscribe?site=shop", browser_subscription())
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.sink.upserts[0][1].update["$set"]["site"], "shop")

    def test_subscribe_browser_variants(self) -> None:
        """expirationTime null, a number or missing, and extra members (ignored, not stored) are all accepted."""
        variants = [
            browser_subscription(site="shop", expirationTime=None),
            browser_subscription(site="shop", expirationTime=1767225600000),
            {k: v for k, v in browser_subscription(site="shop").items() if k != "expirationTime"},
            browser_subscription(site="shop", options={"userVisibleOnly": True}, extra="x", keys_extra=1),
        ]
        for body in variants:
            response, content = self.post("subscribe", body)
            self.assertEqual(response.code, 200, content)
        stored_keys = {k for _, op in self.sink.upserts for k in op.update["$set"]} | {k for _, op in self.sink.upserts for k in op.update["$setOnInsert"]}
        self.assertEqual(stored_keys, {"keys", "key_id", "site", "expiration_time", "ua", "last_seen", "active", "visitor", "created", "endpoint"})
        self.assertEqual(self.sink.upserts[1][1].update["$set"]["expiration_time"], 1767225600000)

    def test_subscribe_ssrf_endpoints(self) -> None:
        """SSRF-shaped endpoints are each a 400 naming endpoint, with nothing stored."""
        for endpoint in SSRF_ENDPOINTS:
            response, body = self.post("subscribe", browser_subscription(endpoint, site="shop"))
            self.assertFieldError(response, body, "endpoint")
        self.assertEqual(self.sink.upserts, [])
        self.assertEqual(self.not_recorded("malformed"), len(SSRF_ENDPOINTS))

    def test_subscribe_bad_members(self) -> None:
        """Each invalid member is a 400 naming it, with nothing stored."""
        point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        off_curve = point[:-1] + bytes([point[-1] ^ 1])
        cases: list[tuple[dict[str, Any], str]] = []
        for p256dh in (b64url(off_curve), b64url(point[:33]), "!!", 5):
            body = browser_subscription(site="shop")
            body["keys"]["p256dh"] = p256dh
            cases.append((body, "keys.p256dh"))
        for auth in (b64url(os.urandom(15)), b64url(os.urandom(32)), None):
            body = browser_subscription(site="shop")
            body["keys"]["auth"] = auth
            cases.append((body, "keys.auth"))
        cases.append((browser_subscription(site="shop", expirationTime="tomorrow"), "expirationTime"))
        cases.append((browser_subscription(site="shop", keys=None), "keys"))
        cases.append(({"site": "shop"}, "endpoint"))
        cases.append((browser_subscription(site="nope"), "site"))
        cases.append((browser_subscription(site="nopush"), "site"))
        cases.append((browser_subscription(site=7), "site"))
        cases.append((browser_subscription(), "site"))
        for body, field in cases:
            response, content = self.post("subscribe", body)
            self.assertFieldError(response, content, field)
        self.assertEqual(self.sink.upserts, [])

    def test_subscribe_bad_bodies(self) -> None:
        """Invalid JSON, non-objects, NaN and non-UTF-8 are 400s naming body; other content types are 415s."""
        for raw in (b"{", b"[]", b'"x"', b"", b"\xff\xfe", b'{"expirationTime": NaN}'):
            response, content = self.post("subscribe?site=shop", raw)
            self.assertFieldError(response, content, "body")
        for content_type in ("application/x-www-form-urlencoded", "application/xml", "application/jsonp"):
            response, content = self.post("subscribe?site=shop", browser_subscription(), content_type)
            self.assertFieldError(response, content, "content-type", 415)
        response, content = self.request("POST", "subscribe?site=shop", json.dumps(browser_subscription()).encode())
        self.assertEqual(response.code, 415)
        self.assertEqual(self.sink.upserts, [])

    def test_subscribe_too_large(self) -> None:
        """A body over 16 KiB is refused even if the channel let it through."""
        body = browser_subscription(site="shop", padding="x" * 16384)
        response, _content = self.post("subscribe", body)
        self.assertEqual(response.code, 413)
        self.assertEqual(self.not_recorded("too_large"), 1)

    def test_subscribe_link_key(self) -> None:
        """A valid KEY links the profile; an invalid one is ignored without writing profile."""
        self.post("subscribe", browser_subscription(site="shop", key="good-key"))
        self.post("subscribe?key=good-key", browser_subscription("https://fcm.googleapis.com/fcm/send/2", site="shop"))
        self.post("subscribe", browser_subscription("https://fcm.googleapis.com/fcm/send/3", site="shop", key="forged"))
        profiles = [op.update["$set"].get("profile") for _, op in self.sink.upserts]
        self.assertEqual(profiles, ["profile-9", "profile-9", None])

    def test_subscribe_resend_keeps_links(self) -> None:
        """A re-send without cookie or KEY (from the worker) does not erase the visitor or profile."""
        sub = browser_subscription(site="shop", key="good-key")
        self.post("subscribe", sub)
        self.visitor = None
        resend = dict(sub)
        del resend["key"]
        self.post("subscribe", resend)
        [doc] = self.stored("push_subscriptions")
        self.assertEqual((doc["visitor"], doc["profile"]), ("v-123", "profile-9"))

    def test_subscribe_overload(self) -> None:
        """When the sink refuses, the answer is 503 with Retry-After and the drop is counted."""
        self.sink.refusing = True
        response, _content = self.post("subscribe", browser_subscription(site="shop"))
        self.assertEqual(response.code, 503)
        self.assertEqual(self.header(response, "Retry-After"), "5")
        self.assertEqual(self.not_recorded("overload"), 1)
        self.assertEqual(self.accepted("push_subscriptions"), 0)

    def test_subscribe_cors(self) -> None:
        """A JSON post from the site's origin gets its Origin echoed with credentials."""
        response, _ = self.post("subscribe", browser_subscription(site="shop"), headers={"Origin": SHOP})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Access-Control-Allow-Origin"), SHOP)
        self.assertEqual(self.header(response, "Access-Control-Allow-Credentials"), "true")
        self.assertEqual(self.header(response, "Vary"), "Origin")

    def test_subscribe_cors_on_errors(self) -> None:
        """Errors carry CORS headers too, so the site's page can read the JSON error."""
        response, content = self.post("subscribe", browser_subscription("http://x", site="shop"), headers={"Origin": SHOP})
        self.assertFieldError(response, content, "endpoint")
        self.assertEqual(self.header(response, "Access-Control-Allow-Origin"), SHOP)

    def test_subscribe_same_origin(self) -> None:
        """The subscribe page itself (same origin as the pixel domain) may post."""
        response, _ = self.post("subscribe", browser_subscription(site="shop"), headers={"Origin": "https://pxl.example.com"})
        self.assertEqual(response.code, 200)
        self.assertIsNone(self.header(response, "Access-Control-Allow-Origin"))

    def test_subscribe_foreign_origin(self) -> None:
        """A page on another origin (or another site's) cannot write a subscription with a simple request."""
        for origin in ("https://evil.example", "https://a.multi.example", "null"):
            response, content = self.post("subscribe", browser_subscription(site="shop"), "text/plain", headers={"Origin": origin})
            self.assertFieldError(response, content, "origin", 403)
        self.assertEqual(self.sink.upserts, [])
        self.assertEqual(self.not_recorded("forbidden_origin"), 3)

    def test_subscribe_preflight(self) -> None:
        """OPTIONS answers the site's origins with the allowed method and header; others get 403."""
        headers = {"Origin": SHOP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        response, body = self.request("OPTIONS", "subscribe?site=shop", headers=headers)
        self.assertEqual((response.code, body), (204, b""))
        self.assertEqual(self.header(response, "Access-Control-Allow-Origin"), SHOP)
        self.assertEqual(self.header(response, "Access-Control-Allow-Methods"), "POST")
        self.assertEqual(self.header(response, "Access-Control-Allow-Headers"), "Content-Type")
        self.assertEqual(self.header(response, "Access-Control-Allow-Credentials"), "true")
        for bad in ({"Origin": "https://evil.example"}, {"Access-Control-Request-Method": "DELETE"}, {"Access-Control-Request-Headers": "x-custom"}):
            response, _ = self.request("OPTIONS", "subscribe?site=shop", headers={**headers, **bad})
            self.assertEqual(response.code, 403, bad)
            self.assertIsNone(self.header(response, "Access-Control-Allow-Origin"))

    # --- POST /push/unsubscribe --------------------------------------------------------

    def test_unsubscribe(self) -> None:
        """Unsubscribe deactivates by the hash of the exact endpoint."""
        self.post("subscribe", browser_subscription(site="shop"))
        self.clock.advance(5)
        response, body = self.post("unsubscribe", {"endpoint": FCM}, "text/plain")
        self.assertEqual(response.code, 200, body)
        [doc] = self.stored("push_subscriptions")
        self.assertFalse(doc["active"])
        self.assertEqual(doc["last_seen"], datetime.fromtimestamp(NOW + 5, tz=UTC))
        self.assertEqual(doc["endpoint"], FCM)

    def test_unsubscribe_exact(self) -> None:
        """A different spelling of the endpoint is a different record."""
        self.post("unsubscribe", {"endpoint": FCM + "/"})
        self.assertEqual(dict(self.sink.upserts[0][1].filter), {"_id": hashlib.sha256((FCM + "/").encode()).hexdigest()})

    def test_unsubscribe_bad(self) -> None:
        """A missing or non-https endpoint or an unknown site is a 400 naming it."""
        for body, field in (({}, "endpoint"), ({"endpoint": "http://x"}, "endpoint"), ({"endpoint": 5}, "endpoint"), ({"endpoint": FCM, "site": "nope"}, "site")):
            response, content = self.post("unsubscribe", body)
            self.assertFieldError(response, content, field)
        self.assertEqual(self.sink.upserts, [])

    def test_unsubscribe_overload(self) -> None:
        """Overload on unsubscribe is a 503 with Retry-After."""
        self.sink.refusing = True
        response, _ = self.post("unsubscribe", {"endpoint": FCM})
        self.assertEqual((response.code, self.header(response, "Retry-After")), (503, "5"))

    # --- POST /push/events ---------------------------------------------------------------

    def event(self, **change: Any) -> dict[str, Any]:
        body = {"type": "delivered", "message": "msg-1", "subscription": hashlib.sha256(FCM.encode()).hexdigest()}
        body.update(change)
        return body

    def test_event_stored(self) -> None:
        """A report is a 204 and one push_events document with a deterministic id and a UTC timestamp."""
        response, body = self.post("events", self.event(type="clicked", action="buy"), "text/plain;charset=UTF-8")
        self.assertEqual((response.code, body), (204, b""))
        [(collection, doc)] = self.sink.documents
        self.assertEqual(collection, "push_events")
        digest = hashlib.sha256(FCM.encode()).hexdigest()
        self.assertEqual(
            doc,
            {
                "_id": hashlib.sha256(f"msg-1|{digest}|clicked".encode()).hexdigest(),
                "type": "clicked",
                "message": "msg-1",
                "subscription": digest,
                "action": "buy",
                "ts": datetime.fromtimestamp(NOW, tz=UTC),
            },
        )
        self.assertEqual(self.accepted("push_events"), 1)

    def test_event_retry_dedupes(self) -> None:
        """A worker's retry is the same document id, so the writer stores it once."""
        self.post("events", self.event())
        self.clock.advance(2)
        self.post("events", self.event())
        self.assertEqual(len({d["_id"] for _, d in self.sink.documents}), 1)
        self.assertEqual(len(self.stored("push_events")), 1)

    def test_event_kinds(self) -> None:
        """delivered, clicked and closed for one message are three documents."""
        for kind in ("delivered", "clicked", "closed"):
            response, _ = self.post("events", self.event(type=kind), "text/plain")
            self.assertEqual(response.code, 204)
        self.assertEqual(len(self.stored("push_events")), 3)

    def test_event_bad(self) -> None:
        """Bad members are 400s naming them, nothing stored."""
        for change, field in (({"type": "opened"}, "type"), ({"message": ""}, "message"), ({"subscription": "x"}, "subscription"), ({"action": "a" * 100}, "action")):
            response, content = self.post("events", self.event(**change))
            self.assertFieldError(response, content, field)
        self.assertEqual(self.sink.documents, [])

    def test_event_overload(self) -> None:
        """Overload on events is a 503 with Retry-After, counted."""
        self.sink.refusing = True
        response, _ = self.post("events", self.event())
        self.assertEqual((response.code, self.header(response, "Retry-After")), (503, "5"))
        self.assertEqual(self.not_recorded("overload"), 1)

    def test_event_foreign_origin(self) -> None:
        """Reports from unrelated pages are refused."""
        response, content = self.post("events", self.event(), "text/plain", headers={"Origin": "https://evil.example"})
        self.assertFieldError(response, content, "origin", 403)


class FakeRequest:
    """Just enough of a request for the CORS helpers."""

    def __init__(self, headers: dict[bytes, bytes]) -> None:
        from twisted.web.http_headers import Headers

        self._headers = headers
        self.responseHeaders = Headers()
        self.code = 200

    def getHeader(self, name: bytes) -> bytes | None:
        return self._headers.get(name.lower())

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def setResponseCode(self, code: int) -> None:
        self.code = code


class CorsTests(SynchronousTestCase):
    """cookiesaver.web.cors on its own."""

    def test_echo_only_allowed(self) -> None:
        """Only an allowed Origin is echoed; never '*'."""
        request = FakeRequest({b"origin": SHOP.encode()})
        self.assertTrue(apply_cors(request, {SHOP}))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"access-control-allow-origin"), [SHOP.encode()])
        other = FakeRequest({b"origin": b"https://evil.example"})
        self.assertFalse(apply_cors(other, {SHOP}))
        self.assertIsNone(other.responseHeaders.getRawHeaders(b"access-control-allow-origin"))
        self.assertEqual(other.responseHeaders.getRawHeaders(b"vary"), [b"Origin"])

    def test_vary_merges(self) -> None:
        """An existing Vary is kept and Origin added once."""
        request = FakeRequest({})
        request.responseHeaders.setRawHeaders(b"vary", [b"Accept-Encoding"])
        apply_cors(request, {SHOP})
        apply_cors(request, {SHOP})
        self.assertEqual(request.responseHeaders.getRawHeaders(b"vary"), [b"Accept-Encoding, Origin"])

    def test_preflight_without_origin(self) -> None:
        """A preflight without Origin is refused."""
        request = FakeRequest({b"access-control-request-method": b"POST"})
        self.assertEqual(preflight(request, {SHOP}, [b"POST"]), b"")
        self.assertEqual(request.code, 403)

    def test_all_site_origins(self) -> None:
        """The helper for shared endpoints unions every site's origins."""
        config = load(None, environ={"COOKIESAVER_SSL_ON": "false", "COOKIESAVER_SITES": json.dumps({"a": {"origins": ["https://a.example/"]}, "b": {"origins": ["https://b.example", "https://a.example"]}})}).config
        self.assertEqual(all_site_origins(config.sites), frozenset({"https://a.example", "https://b.example"}))
