"""The tracking resource: click redirect, pixels and beacons, with an in-memory sink and a fake clock."""

from __future__ import annotations

import json
import os

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from cookiesaver.bots import BotRules
from cookiesaver.clientaddr import AddressResolver
from cookiesaver.config import load
from cookiesaver.interfaces import EncodedDocument
from cookiesaver.metrics import Metrics
from cookiesaver.testing import MemorySink
from cookiesaver.token import TokenKeys, mint
from cookiesaver.visitor import VisitorCookies
from cookiesaver.web.pixel import GIF, Pixel, Tracking

NOW = 1_800_000_000.0
MODERN_UA = b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"
IOS12_UA = b"Mozilla/5.0 (iPhone; CPU iPhone OS 12_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.0 Mobile/15E148 Safari/604.1"


def make(tmp, trusted=(), bots_ua=None, **env):
    keyfile = os.path.join(tmp, "k1.key")
    os.makedirs(tmp, exist_ok=True)
    with open(keyfile, "w") as f:
        f.write("A" * 43 + "\n")
    environ = {
        "COOKIESAVER_SSL_ON": "false",
        "COOKIESAVER_TOKEN_KEYS": json.dumps({"k1": keyfile}),
        "COOKIESAVER_SITES": json.dumps({"shop": {"origins": ["https://shop.example"]}}),
        "COOKIESAVER_TRUSTED_PROXIES": json.dumps(list(trusted)),
        **env,
    }
    if bots_ua is not None:
        path = os.path.join(tmp, "bots_ua.json")
        with open(path, "w") as f:
            json.dump(bots_ua, f)
        environ["COOKIESAVER_BOTS_UA_PATH"] = path
    config = load(None, environ).config
    clock = task.Clock()
    clock.advance(NOW)
    sink = MemorySink()
    metrics = Metrics()
    visitors = VisitorCookies(config.cookie, b"s" * 32)
    tokens = TokenKeys.from_config(config.tokens)
    tracking = Tracking(
        config=config, clock=clock, sink=sink, metrics=metrics, visitors=visitors, tokens=tokens,
        resolver=AddressResolver(config.trusted_proxies, config.tls.enabled),
        bots=BotRules.from_files(config.bots.ua_path, config.bots.ip_path),
    )
    return Pixel(tracking), tracking, sink, metrics, tokens


def request(uri: bytes, method=b"GET", headers=None, peer="203.0.113.9", body=b""):
    req = DummyRequest([b"pixel"])
    req.method = method
    req.uri = uri
    req.path = uri.split(b"?")[0]
    req.client = IPv4Address("TCP", peer, 5000)
    for name, value in (headers or {}).items():
        req.requestHeaders.setRawHeaders(name, [value])
    import io

    req.content = io.BytesIO(body)
    return req


def render(resource, req):
    body = resource.render(req)
    return req.responseCode or 200, body


def not_recorded(metrics, reason):
    return metrics.not_recorded.labels(reason=reason)._value.get()


class ClickTests(SynchronousTestCase):
    def setUp(self):
        self.pixel, self.tracking, self.sink, self.metrics, self.keys = make(self.mktemp())

    def click(self, token, headers=None, method=b"GET"):
        req = request(b"/pixel?_open_pix=1&k=" + token.encode(), method=method, headers={b"user-agent": MODERN_UA, **(headers or {})})
        return req, *render(self.pixel, req)

    def test_location_is_destination_byte_for_byte(self):
        """The 302 Location is the KEY's URL exactly: escapes, plus signs, ampersands, fragment, non-ASCII."""
        url = "https://shop.example/a%20b/c?q=1+2&x=%E2%82%AC&y=é€&z=%2F#frag?x"
        req, code, body = self.click(mint(self.keys, url, account="1", profile="42", message="7", issued=int(NOW)))
        self.assertEqual(code, 302)
        self.assertEqual(req.responseHeaders.getRawHeaders(b"location"), [url.encode("utf-8")])

    def test_click_records_one_event_and_links_visitor(self):
        """A click stores one pixel_open event with the issued visitor id and upserts the visitor link."""
        req, code, _ = self.click(mint(self.keys, "https://shop.example/", account="1", profile="42", message="7", issued=int(NOW)))
        cookie = req.responseHeaders.getRawHeaders(b"set-cookie")[0]
        vid = cookie.split(b";")[0].split(b"=", 1)[1].decode()
        events = self.sink.submitted("events")
        self.assertEqual(len(events), 1)
        event = events[0]
        self.assertEqual((event["type"], event["visitor"], event["account"], event["profile"], event["message"]), ("pixel_open", vid, "1", "42", "7"))
        self.assertEqual(event["link"], "https://shop.example/")
        self.assertEqual(event["ip"], "203.0.113.9")
        self.assertEqual(event["ts"].timestamp(), NOW)
        [(collection, upsert)] = self.sink.upserts
        self.assertEqual((collection, upsert.filter), ("visitor_links", {"_id": vid}))
        self.assertEqual(upsert.update["$set"]["profile"], "42")

    def test_returning_visitor_keeps_id_and_forged_gets_new(self):
        """A valid cookie keeps its id; a forged or garbled value is replaced by a fresh id."""
        token = mint(self.keys, "https://shop.example/", profile="42", issued=int(NOW))
        first, _, _ = self.click(token)
        value = first.responseHeaders.getRawHeaders(b"set-cookie")[0].split(b";")[0]
        again, _, _ = self.click(token, {b"cookie": b"other=1; " + value})
        self.assertEqual(again.responseHeaders.getRawHeaders(b"set-cookie")[0].split(b";")[0], value)
        forged = value[:-3] + (b"AAA" if not value.endswith(b"AAA") else b"BBB")
        third, _, _ = self.click(token, {b"cookie": b"bad cookie ;; " + forged})
        self.assertNotEqual(third.responseHeaders.getRawHeaders(b"set-cookie")[0].split(b";")[0], value)
        self.assertEqual([e["visitor"] for e in self.sink.submitted("events")][:2], [value.split(b"=", 1)[1].decode()] * 2)

    def test_cookie_attributes_modern_and_legacy(self):
        """Modern browsers get Secure; SameSite=None, legacy ones (iOS 12) get no SameSite at all."""
        token = mint(self.keys, "https://shop.example/", issued=int(NOW))
        modern, _, _ = self.click(token)
        cookie = modern.responseHeaders.getRawHeaders(b"set-cookie")[0]
        for attribute in (b"; Secure", b"; HttpOnly", b"; Path=/", b"; SameSite=None", b"; Max-Age=34560000"):
            self.assertIn(attribute, cookie)
        legacy, _, _ = self.click(token, {b"user-agent": IOS12_UA})
        cookie = legacy.responseHeaders.getRawHeaders(b"set-cookie")[0]
        self.assertIn(b"; Secure", cookie)
        self.assertNotIn(b"SameSite", cookie)

    def test_bad_keys_get_400_and_nothing_recorded(self):
        """Tampered, expired, malformed, repeated and missing KEYs each get 400 without Location, counted by reason."""
        good = mint(self.keys, "https://shop.example/", issued=int(NOW))
        old = mint(self.keys, "https://shop.example/", issued=int(NOW) - 500 * 86400)
        tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
        cases = [
            (b"/pixel?_open_pix=1&k=" + tampered.encode(), "bad_token"),
            (b"/pixel?_open_pix=1&k=" + old.encode(), "expired_token"),
            (b"/pixel?_open_pix=1&k=%ff%fe", "bad_token"),
            (b"/pixel?_open_pix=1&k=" + good.encode() + b"&k=" + good.encode(), "repeated_token"),
            (b"/pixel?_open_pix=1", "missing_token"),
        ]
        for uri, reason in cases:
            req = request(uri)
            code, body = render(self.pixel, req)
            self.assertEqual(code, 400, uri)
            self.assertIsNone(req.responseHeaders.getRawHeaders(b"location"))
            self.assertLess(len(body), 100)
        counts = {r: not_recorded(self.metrics, r) for r in ("bad_token", "expired_token", "repeated_token", "missing_token")}
        self.assertEqual(counts, {"bad_token": 2, "expired_token": 1, "repeated_token": 1, "missing_token": 1})
        self.assertEqual(self.sink.documents, [])
        self.assertEqual(self.sink.upserts, [])

    def test_test_send_redirects_without_recording(self):
        """A KEY with the test flag redirects and records nothing."""
        req, code, _ = self.click(mint(self.keys, "https://shop.example/t", profile="1", test=True, issued=int(NOW)))
        self.assertEqual(code, 302)
        self.assertEqual(self.sink.documents, [])
        self.assertEqual(not_recorded(self.metrics, "test_send"), 1)

    def test_head_answers_like_get_without_recording(self):
        """HEAD on the click URL answers 302 with the same Location and records nothing."""
        req, code, _ = self.click(mint(self.keys, "https://shop.example/h", profile="1", issued=int(NOW)), method=b"HEAD")
        self.assertEqual(code, 302)
        self.assertEqual(req.responseHeaders.getRawHeaders(b"location"), [b"https://shop.example/h"])
        self.assertEqual(self.sink.documents, [])

    def test_placeholder_replaced_by_visitor_id(self):
        """{cs_vid} in the destination becomes the visitor id; every other byte stays."""
        req, _, _ = self.click(mint(self.keys, "https://shop.example/l?a=%20&v={cs_vid}#f", issued=int(NOW)))
        vid = self.sink.submitted("events")[0]["visitor"]
        self.assertEqual(req.responseHeaders.getRawHeaders(b"location"), [f"https://shop.example/l?a=%20&v={vid}#f".encode()])

    def test_overload_still_redirects_and_counts(self):
        """When the writer refuses, the click still redirects and the drop is counted as overload."""
        self.sink.refusing = True
        _, code, _ = self.click(mint(self.keys, "https://shop.example/", issued=int(NOW)))
        self.assertEqual(code, 302)
        self.assertEqual(not_recorded(self.metrics, "overload"), 1)


class AddressAndBotTests(SynchronousTestCase):
    def test_x_real_ip_only_from_trusted_proxy(self):
        """X-Real-IP from an untrusted peer is ignored (and counted); from a trusted proxy it is used."""
        pixel, tracking, sink, metrics, keys = make(self.mktemp(), trusted=["127.0.0.1/32"])
        token = mint(keys, "https://shop.example/", issued=int(NOW)).encode()
        render(pixel, request(b"/pixel?_open_pix=1&k=" + token, headers={b"x-real-ip": b"198.51.100.1"}, peer="203.0.113.9"))
        render(pixel, request(b"/pixel?_open_pix=1&k=" + token, headers={b"x-real-ip": b"198.51.100.1"}, peer="127.0.0.1"))
        self.assertEqual([e["ip"] for e in sink.submitted("events")], ["203.0.113.9", "198.51.100.1"])
        self.assertEqual(metrics.untrusted_forwarded._value.get(), 1)

    def test_event_ignore_bot_redirects_and_records_nothing(self):
        """A user agent matching an event_ignore rule still gets the redirect, nothing is stored."""
        pixel, tracking, sink, metrics, keys = make(self.mktemp(), bots_ua=[{"pattern": "LinkScanner", "action": "event_ignore"}])
        req = request(b"/pixel?_open_pix=1&k=" + mint(keys, "https://shop.example/", issued=int(NOW)).encode(), headers={b"user-agent": b"Mozilla/5.0 LinkScanner/2"})
        code, _ = render(pixel, req)
        self.assertEqual(code, 302)
        self.assertEqual(sink.documents, [])
        self.assertEqual(not_recorded(metrics, "bot"), 1)


class PixelTests(SynchronousTestCase):
    def setUp(self):
        self.pixel, self.tracking, self.sink, self.metrics, self.keys = make(self.mktemp())

    def test_behaviour_pixel(self):
        """A page view answers the 43-byte GIF uncached with the cookie and records site, url, ref and props."""
        req = request(b"/pixel?site=shop&e=goal&url=https%3A%2F%2Fshop.example%2Fp&ref=r&p.value=42")
        code, body = render(self.pixel, req)
        self.assertEqual((code, body, len(body)), (200, GIF, 43))
        self.assertEqual(req.responseHeaders.getRawHeaders(b"content-type"), [b"image/gif"])
        self.assertEqual(req.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertTrue(req.responseHeaders.getRawHeaders(b"set-cookie"))
        [event] = self.sink.submitted("events")
        self.assertEqual((event["type"], event["site"], event["url"], event["ref"], event["props"]), ("goal", "shop", "https://shop.example/p", "r", {"value": "42"}))

    def test_garbage_queries_never_fail(self):
        """Bad escapes and invalid UTF-8 still get the GIF; the event keeps a safe value and a malformed flag."""
        for query in (b"a=%b", b"url=%zz", b"url=%ff%fe", b"url=%C3%28", b"url=\xff\xfe"):
            req = request(b"/pixel?site=shop&" + query)
            code, body = render(self.pixel, req)
            self.assertEqual((code, body), (200, GIF), query)
        events = self.sink.submitted("events")
        self.assertEqual(len(events), 5)
        self.assertTrue(all(e.get("malformed") for e in events[1:]))
        self.assertEqual(events[1]["url"], "%zz")

    def test_unknown_site_not_recorded(self):
        """A pixel for an unknown site answers the GIF and counts unknown_site."""
        code, body = render(self.pixel, request(b"/pixel?site=nope"))
        self.assertEqual(body, GIF)
        self.assertEqual(self.sink.documents, [])
        self.assertEqual(not_recorded(self.metrics, "unknown_site"), 1)

    def test_open_pixel_with_key(self):
        """GET /pixel?k=KEY is an email open: the GIF and an open event for the KEY's profile."""
        code, body = render(self.pixel, request(b"/pixel?k=" + mint(self.keys, "https://x.example/", profile="9", issued=int(NOW)).encode()))
        self.assertEqual(body, GIF)
        self.assertEqual([(e["type"], e["profile"]) for e in self.sink.submitted("events")], [("open", "9")])

    def test_vid_parameter_only_when_tag_checks(self):
        """cs_vid is used as the visitor id only when its integrity tag checks."""
        good = self.tracking.visitors.new_id()
        render(self.pixel, request(b"/pixel?site=shop&cs_vid=" + good.encode()))
        forged = good[:-1] + ("x" if good[-1] != "x" else "y")
        render(self.pixel, request(b"/pixel?site=shop&cs_vid=" + forged.encode()))
        first, second = self.sink.submitted("events")
        self.assertEqual(first["visitor"], good)
        self.assertNotEqual(second["visitor"], good)

    def test_dnt_flags_and_optout(self):
        """DNT and GPC are recorded as flags; the opt-out cookie means nothing is recorded."""
        render(self.pixel, request(b"/pixel?site=shop", headers={b"dnt": b"1", b"sec-gpc": b"1"}))
        self.assertEqual({k: v for k, v in self.sink.submitted("events")[0].items() if k in ("dnt", "gpc")}, {"dnt": True, "gpc": True})
        render(self.pixel, request(b"/pixel?site=shop", headers={b"cookie": b"csoptout=1"}))
        self.assertEqual(len(self.sink.submitted("events")), 1)
        self.assertEqual(not_recorded(self.metrics, "opt_out"), 1)


class BeaconTests(SynchronousTestCase):
    def setUp(self):
        self.pixel, self.tracking, self.sink, self.metrics, self.keys = make(self.mktemp())

    def post(self, body: bytes, content_type=b"text/plain", origin=b"https://shop.example"):
        req = request(b"/pixel", method=b"POST", headers={b"content-type": content_type, b"origin": origin}, body=body)
        code, out = render(self.pixel, req)
        return req, code, out

    def test_batch_recorded_with_cors(self):
        """A text/plain JSON batch from an allowed origin is recorded, 204, origin echoed with credentials."""
        req, code, _ = self.post(json.dumps({"site": "shop", "events": [{"e": "page_view", "url": "https://shop.example/"}, {"e": "goal", "props": {"v": 1}}]}).encode())
        self.assertEqual(code, 204)
        self.assertEqual([e["type"] for e in self.sink.submitted("events")], ["page_view", "goal"])
        self.assertEqual(req.responseHeaders.getRawHeaders(b"access-control-allow-origin"), [b"https://shop.example"])

    def test_batch_handed_over_encoded(self):
        """Each beacon event is encoded once, to prove the batch storable, and the writer gets those bytes."""
        seen = []
        submit = self.sink.submit

        def recording(collection, document):
            seen.append(document)
            return submit(collection, document)

        self.sink.submit = recording
        _, code, _ = self.post(json.dumps({"site": "shop", "events": [{"e": "page_view"}, {"e": "goal", "props": {"v": 1, "w": "x"}}]}).encode())
        self.assertEqual(code, 204)
        self.assertTrue(all(isinstance(d, EncodedDocument) for d in seen))
        self.assertEqual([d.decoded() for d in seen], self.sink.submitted("events"))
        self.assertEqual(self.sink.submitted("events")[1]["props"], {"v": 1, "w": "x"})

    def test_invalid_json_names_problem(self):
        """Invalid JSON is a 400 naming line and column; nothing is recorded."""
        _, code, out = self.post(b'{"site": "shop",')
        self.assertEqual(code, 400)
        self.assertIn(b"invalid JSON", out)
        self.assertEqual(self.sink.documents, [])

    def test_bad_fields_named(self):
        """A bad member is named in the 400 message."""
        _, code, out = self.post(json.dumps({"site": "shop", "events": [{"url": 5}]}).encode())
        self.assertEqual(code, 400)
        self.assertIn(b"events[0].url", out)

    def test_overload_gets_503(self):
        """When the writer refuses, a beacon gets 503 with Retry-After."""
        self.sink.refusing = True
        req, code, _ = self.post(json.dumps({"site": "shop"}).encode())
        self.assertEqual(code, 503)
        self.assertEqual(req.responseHeaders.getRawHeaders(b"retry-after"), [b"5"])

    def test_preflight_from_allowed_origin(self):
        """A CORS preflight for POST from a site's origin is allowed (204); from another origin it is refused."""
        for origin, expected in ((b"https://shop.example", 204), (b"https://evil.example", 403)):
            req = request(b"/pixel", method=b"OPTIONS", headers={b"origin": origin, b"access-control-request-method": b"POST", b"access-control-request-headers": b"content-type"})
            code, _ = render(self.pixel, req)
            self.assertEqual(code, expected, origin)

    def test_other_origin_not_echoed(self):
        """An origin that is not allowed is not echoed."""
        req, code, _ = self.post(json.dumps({"site": "shop"}).encode(), origin=b"https://evil.example")
        self.assertIsNone(req.responseHeaders.getRawHeaders(b"access-control-allow-origin"))



class BeaconValidationTests(SynchronousTestCase):
    def setUp(self):
        self.pixel, self.tracking, self.sink, self.metrics, self.keys = make(self.mktemp())

    def post(self, body: dict):
        req = request(b"/pixel", method=b"POST", headers={b"content-type": b"application/json"}, body=json.dumps(body).encode())
        return render(self.pixel, req)

    def test_unstorable_values_refused_whole_batch(self):
        """Lone surrogates, integers beyond int64 and non-finite numbers get 400 and nothing of the batch is stored."""
        for bad in ({"url": "\ud800"}, {"e": "\udfff"}, {"props": {"k": "\ud800"}}, {"props": {"\ud800": "x"}}, {"props": {"v": 10**24}}, {"props": {"v": float("nan")}}):
            code, out = self.post({"site": "shop", "events": [{"url": "https://shop.example/ok"}, bad]})
            self.assertEqual(code, 400, (bad, out))
            self.assertIn(b"events[1]", out)
        self.assertEqual(self.sink.documents, [])

    def test_reserved_types_refused(self):
        """A page cannot write click or open events: POST gets 400, GET records nothing."""
        code, out = self.post({"site": "shop", "events": [{"e": "pixel_open"}]})
        self.assertEqual(code, 400)
        code, body = render(self.pixel, request(b"/pixel?site=shop&e=open"))
        self.assertEqual(body, GIF)
        self.assertEqual(self.sink.documents, [])

    def test_unencodable_token_field_counted_not_crashing(self):
        """A validly signed KEY carrying a lone surrogate redirects, records nothing and counts malformed."""
        from cookiesaver.token import b64url_encode

        payload = b64url_encode(json.dumps({"p": "\ud800", "u": "https://shop.example/", "t": int(NOW)}).encode())
        token = (payload + b".k1." + self.keys.mac(b"k1", payload + b".k1")).decode()

        class Strict(MemorySink):
            def submit(self, collection, document):
                import bson

                bson.encode(document)
                return super().submit(collection, document)

        self.tracking.sink = Strict()
        req = request(b"/pixel?_open_pix=1&k=" + token.encode())
        code, _ = render(self.pixel, req)
        self.assertEqual(code, 302)
        self.assertEqual(not_recorded(self.metrics, "malformed"), 1)
