"""/pixel: the click-through redirect, the open and behaviour pixels, POST beacons.

    GET  /pixel?_open_pix=1&k=KEY   click: cookie, pixel_open event, visitor link, 302 to the KEY's URL
    HEAD /pixel?_open_pix=1&k=KEY   the same answer, nothing recorded (link scanners)
    GET  /pixel?k=KEY               email open: the GIF, an "open" event
    GET  /pixel?site=ID&e=NAME...   page view or custom event: the GIF
    POST /pixel                     a JSON batch of behaviour events (text/plain for sendBeacon)
    GET  /pixel.js                  the first-party script for customer sites
    GET  /optout                    sets the opt-out cookie

Everything here answers from memory: events go to the writer's sink, which
never waits for MongoDB. Every request that records nothing is counted in
C{cookiesaver_not_recorded} with a reason.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from bson import ObjectId
from bson.errors import InvalidDocument
from twisted.web.resource import Resource

from cookiesaver.bots import BotRules
from cookiesaver.clientaddr import AddressResolver
from cookiesaver.config import Config
from cookiesaver.interfaces import EncodedDocument, IEventSink, Upsert
from cookiesaver.metrics import Metrics
from cookiesaver.query import parse_query
from cookiesaver.token import ClickToken, TokenError, TokenKeys, verify
from cookiesaver.visitor import VisitorCookies
from cookiesaver.web.cors import apply_cors, preflight
from cookiesaver.web.responses import JS, Asset, head, plain_error, static

GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
PLACEHOLDER = "{cs_vid}"
MAX_TEXT = 2000
MAX_PROPS = 20
MAX_PROP_KEY = 64
MAX_PROP_VALUE = 256
MAX_BATCH = 50
MAX_NAME = 64
#: Event types only the click and open paths write; a page may not claim them.
RESERVED_TYPES = frozenset({"pixel_open", "open"})
INT64 = 2**63

EVENTS = "events"
LINKS = "visitor_links"


def _clip(value: str | None, limit: int = MAX_TEXT) -> tuple[str | None, bool]:
    if value is None:
        return None, False
    if len(value) > limit:
        return value[:limit], True
    return value, False


class Tracking:
    """What every tracking request needs: secrets, rules and the sink. Bot rules are swapped on SIGHUP."""

    def __init__(
        self,
        *,
        config: Config,
        clock: Any,
        sink: IEventSink,
        metrics: Metrics,
        visitors: VisitorCookies,
        tokens: TokenKeys,
        resolver: AddressResolver,
        bots: BotRules,
    ) -> None:
        self.config = config
        self.clock = clock
        self.sink = sink
        self.metrics = metrics
        self.visitors = visitors
        self.tokens = tokens
        self.resolver = resolver
        self.bots = bots
        self.site_ids = frozenset(config.sites)
        self.all_origins = frozenset(o for s in config.sites.values() for o in s.origins)
        self.drop_dnt = config.privacy.drop_dnt
        self._not_recorded = metrics.not_recorded
        self._accepted = metrics.events_accepted.labels(collection=EVENTS)

    def not_recorded(self, reason: str) -> None:
        self._not_recorded.labels(reason=reason).inc()

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)

    def submit_event(self, document: dict[str, Any] | EncodedDocument) -> bool:
        try:
            accepted = self.sink.submit(EVENTS, document)
        except (InvalidDocument, OverflowError, UnicodeEncodeError):
            # Defence in depth: input checks should have refused it (a lone surrogate, an integer beyond int64).
            self.not_recorded("malformed")
            return False
        if accepted:
            self._accepted.inc()
            return True
        self.not_recorded("overload")
        return False


class Visit:
    """One request's view of the visitor: who, from where, and whether to record."""

    __slots__ = ("address", "block", "flags", "new", "skip", "ua", "visitor")

    def __init__(self, tracking: Tracking, request: Any, vid_param: str | None) -> None:
        headers = request.requestHeaders
        cookie = headers.getRawHeaders(b"cookie")
        cookie_header = b"; ".join(cookie) if cookie else None
        visitors = tracking.visitors
        vid = visitors.visitor_id_from_header(cookie_header)
        if vid is None and vid_param is not None:
            vid = visitors.verify_id(vid_param)
        self.new = vid is None
        self.visitor = vid if vid is not None else visitors.new_id()
        ua_values = headers.getRawHeaders(b"user-agent")
        self.ua: bytes | None = ua_values[0] if ua_values else None
        resolved = tracking.resolver.resolve(getattr(request.getClientAddress(), "host", "unix"), headers.getRawHeaders)
        if resolved.untrusted_headers:
            tracking.metrics.untrusted_forwarded.inc()
        self.address: str | None = resolved.address
        self.flags: dict[str, bool] = {}
        if headers.getRawHeaders(b"dnt") == [b"1"]:
            self.flags["dnt"] = True
        if headers.getRawHeaders(b"sec-gpc") == [b"1"]:
            self.flags["gpc"] = True
        self.skip: str | None = None
        self.block = False
        if visitors.is_opted_out(cookie_header):
            self.skip = "opt_out"
        elif self.flags and tracking.drop_dnt:
            self.skip = "dnt"
        action = tracking.bots.match(self.ua, resolved.address)
        if action == "block":
            self.block = True
            self.skip = "bot"
        elif action == "event_ignore":
            self.skip = self.skip or "bot"
        elif action == "ua_ignore":
            self.ua = None
        elif action == "ip_ignore":
            self.address = None

    def document(self, tracking: Tracking, kind: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"_id": ObjectId(), "type": kind, "ts": tracking.now(), "visitor": self.visitor}
        if self.address is not None:
            doc["ip"] = self.address
        if self.ua is not None:
            doc["ua"] = self.ua[:512].decode("utf-8", "backslashreplace")
        if self.flags:
            doc.update(self.flags)
        return doc

    def set_cookie(self, tracking: Tracking, request: Any) -> None:
        if self.skip == "opt_out":
            return
        request.responseHeaders.setRawHeaders(b"set-cookie", [tracking.visitors.set_cookie_header(self.visitor, self.ua)])


def _bad_request(request: Any, message: bytes) -> bytes:
    return plain_error(request, 400, message)


class Pixel(Resource):
    """GET/HEAD/POST /pixel."""

    isLeaf = True

    def __init__(self, tracking: Tracking) -> None:
        super().__init__()
        self.t = tracking

    # -- GET -----------------------------------------------------------------

    def render_GET(self, request: Any, record: bool = True) -> bytes:
        raw = request.uri.partition(b"?")[2]
        query = parse_query(raw)
        if "_open_pix" in query.raw:
            return self._click(request, query, record)
        if query.count("k"):
            return self._open(request, query, record)
        return self._behaviour(request, query, record)

    def render_HEAD(self, request: Any) -> bytes:
        return head(request, self.render_GET(request, record=False))

    def _token(self, request: Any, query: Any) -> ClickToken | bytes:
        """The verified KEY, or the 400 body (counted)."""
        count = query.count("k")
        if count == 0:
            self.t.not_recorded("missing_token")
            return _bad_request(request, b"missing k parameter")
        if count > 1:
            self.t.not_recorded("repeated_token")
            return _bad_request(request, b"k parameter given more than once")
        result = verify(self.t.tokens, query.first("k") or "", self.t.clock.seconds())
        if isinstance(result, TokenError):
            self.t.not_recorded(result.reason)
            return _bad_request(request, b"invalid or expired link" if result.reason == "expired_token" else b"invalid link")
        return result

    def _token_visit(self, request: Any, query: Any) -> tuple[ClickToken, Visit] | bytes:
        """The verified KEY and the visitor, or the refusal to answer (bad KEY 400, blocked bot 403), counted."""
        token = self._token(request, query)
        if isinstance(token, bytes):
            return token
        visit = Visit(self.t, request, None)
        if visit.block:
            self.t.not_recorded("bot")
            return self._blocked(request)
        return token, visit

    def _click(self, request: Any, query: Any, record: bool) -> bytes:
        checked = self._token_visit(request, query)
        if isinstance(checked, bytes):
            return checked
        token, visit = checked
        destination = token.url
        if PLACEHOLDER in destination:
            destination = destination.replace(PLACEHOLDER, quote(visit.visitor, safe=""))
        visit.set_cookie(self.t, request)
        request.setResponseCode(302)
        request.setHeader(b"location", destination.encode("utf-8"))
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"referrer-policy", b"no-referrer-when-downgrade")
        doc = self._token_event(visit, token, "pixel_open", record)
        if doc is not None:
            doc["link"] = token.url
            if self.t.submit_event(doc) and token.profile is not None:
                self._link(visit, token, doc["ts"])
        return b""

    def _token_event(self, visit: Visit, token: ClickToken, kind: str, record: bool) -> dict[str, Any] | None:
        """The event a KEY request records, or None after counting why it records nothing (HEAD, test send, bot, opt-out)."""
        if not record:
            self.t.not_recorded("head")
        elif token.test:
            self.t.not_recorded("test_send")
        elif visit.skip:
            self.t.not_recorded(visit.skip)
        else:
            doc = visit.document(self.t, kind)
            for name, value in (("account", token.account), ("profile", token.profile), ("message", token.message)):
                if value is not None:
                    doc[name] = value
            return doc
        return None

    def _link(self, visit: Visit, token: ClickToken, ts: datetime.datetime) -> None:
        """Record that this browser belongs to the KEY's subscriber (state, upserted)."""
        fields = {"account": token.account, "profile": token.profile, "last_seen": ts}
        update = {"$set": fields, "$setOnInsert": {"first_seen": ts}}
        if not self.t.sink.submit_upsert(LINKS, Upsert({"_id": visit.visitor}, update)):
            self.t.not_recorded("overload")

    def _open(self, request: Any, query: Any, record: bool) -> bytes:
        checked = self._token_visit(request, query)
        if isinstance(checked, bytes):
            return checked
        token, visit = checked
        doc = self._token_event(visit, token, "open", record)
        if doc is not None:
            self.t.submit_event(doc)
        return self._gif(request, visit)

    def _behaviour(self, request: Any, query: Any, record: bool) -> bytes:
        visit = Visit(self.t, request, query.first("cs_vid"))
        if visit.block:
            self.t.not_recorded("bot")
            return self._blocked(request)
        if not record:
            self.t.not_recorded("head")
            return self._gif(request, visit)
        site = query.first("site")
        if site is None or site not in self.t.site_ids:
            self.t.not_recorded("unknown_site")
            return self._gif(request, visit)
        if visit.skip:
            self.t.not_recorded(visit.skip)
            return self._gif(request, visit)
        doc = visit.document(self.t, "page_view")
        doc["site"] = site
        name = query.first("e")
        malformed = query.malformed
        if name in RESERVED_TYPES:
            self.t.not_recorded("malformed")
            return self._gif(request, visit)
        if name:
            name, cut = _clip(name, MAX_NAME)
            doc["type"] = name
            malformed |= cut
        for field in ("url", "ref"):
            value, cut = _clip(query.first(field))
            if value is not None:
                doc[field] = value
            malformed |= cut
        props: dict[str, str] = {}
        for name, values in query.text.items():
            if not name.startswith("p.") or len(name) == 2:
                continue
            key, value = name[2:], values[0]
            if len(props) >= MAX_PROPS:
                malformed = True
                break
            key, cut_k = _clip(key, MAX_PROP_KEY)
            value, cut_v = _clip(value, MAX_PROP_VALUE)
            malformed |= cut_k or cut_v
            safe = key.replace(".", "_").replace("$", "_").replace("\x00", "_")  # type: ignore[union-attr]
            malformed |= safe != key
            props[safe] = value  # type: ignore[assignment]
        if props:
            doc["props"] = props
        if malformed:
            doc["malformed"] = True
        self.t.submit_event(doc)
        return self._gif(request, visit)

    def _gif(self, request: Any, visit: Visit) -> bytes:
        visit.set_cookie(self.t, request)
        request.setHeader(b"content-type", b"image/gif")
        request.setHeader(b"cache-control", b"no-store")
        return GIF

    def _blocked(self, request: Any) -> bytes:
        request.setResponseCode(403)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"forbidden\n"

    # -- POST ----------------------------------------------------------------

    def render_OPTIONS(self, request: Any) -> bytes:
        return preflight(request, self.t.all_origins, (b"POST", b"GET"))

    def render_POST(self, request: Any) -> bytes:
        apply_cors(request, self.t.all_origins)
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type not in (b"application/json", b"text/plain", b""):
            self.t.not_recorded("malformed")
            request.setResponseCode(415)
            return b"use application/json or text/plain\n"
        try:
            body = json.loads(request.content.getvalue().decode("utf-8"))
        except UnicodeDecodeError:
            self.t.not_recorded("malformed")
            return _bad_request(request, b"body is not UTF-8")
        except json.JSONDecodeError as e:
            self.t.not_recorded("malformed")
            return _bad_request(request, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}".encode())
        except (ValueError, RecursionError):
            # Nesting deeper than the parser's recursion limit, or an integer literal past Python's digit limit.
            self.t.not_recorded("malformed")
            return _bad_request(request, b"invalid JSON: nested too deeply or a number too long")
        problem = _check_batch(body, self.t.site_ids)
        if problem:
            self.t.not_recorded("malformed")
            return _bad_request(request, problem.encode())
        if not self.t.sink.accepting():
            self.t.not_recorded("overload")
            request.setResponseCode(503)
            request.setHeader(b"retry-after", b"5")
            return b"busy, retry later\n"
        events = body.get("events", [body])
        visit = Visit(self.t, request, body.get("vid"))
        if visit.block:
            self.t.not_recorded("bot")
            return self._blocked(request)
        if visit.skip:
            self.t.not_recorded(visit.skip)
            request.setResponseCode(204)
            return b""
        documents: list[EncodedDocument] = []
        for i, event in enumerate(events):
            doc = visit.document(self.t, str(event.get("e") or "page_view"))
            doc["site"] = body["site"]
            for field in ("url", "ref"):
                if isinstance(event.get(field), str):
                    doc[field] = event[field]
            if event.get("props"):
                doc["props"] = event["props"]
            try:
                # All or nothing: prove every document storable before submitting any; the writer keeps these bytes.
                documents.append(EncodedDocument.of(doc))
            except (InvalidDocument, OverflowError, UnicodeEncodeError):
                self.t.not_recorded("malformed")
                return _bad_request(request, f"events[{i}]: contains a value that cannot be stored".encode())
        for encoded in documents:
            self.t.submit_event(encoded)
        visit.set_cookie(self.t, request)
        request.setResponseCode(204)
        return b""


def _check_batch(body: Any, site_ids: frozenset[str]) -> str | None:
    """Why a POSTed batch is refused, naming the problem; None when it is fine."""
    if not isinstance(body, dict):
        return "expected a JSON object"
    site = body.get("site")
    if not isinstance(site, str) or site not in site_ids:
        return "site: unknown site id"
    vid = body.get("vid")
    if vid is not None and (not isinstance(vid, str) or len(vid) > 64 or not vid.isascii()):
        return "vid: expected a visitor id string"
    events = body.get("events", [body])
    if not isinstance(events, list) or not events:
        return "events: expected a non-empty list"
    if len(events) > MAX_BATCH:
        return f"events: at most {MAX_BATCH} per batch"
    for i, event in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(event, dict):
            return f"{where}: expected an object"
        name = event.get("e", "page_view")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or not _encodable(name):
            return f"{where}.e: expected an event name of at most {MAX_NAME} characters"
        if name in RESERVED_TYPES:
            return f"{where}.e: {name!r} is reserved for clicks and opens"
        for field in ("url", "ref"):
            value = event.get(field)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT or not _encodable(value)):
                return f"{where}.{field}: expected a string of at most {MAX_TEXT} characters"
        props = event.get("props")
        if props is not None:
            if not isinstance(props, dict) or len(props) > MAX_PROPS:
                return f"{where}.props: expected an object with at most {MAX_PROPS} members"
            for key, value in props.items():
                if len(key) > MAX_PROP_KEY or "." in key or "\x00" in key or key.startswith("$") or not _encodable(key):
                    return f"{where}.props: member names are at most {MAX_PROP_KEY} characters of text, without '.', NUL or a leading '$'"
                if isinstance(value, bool) or value is None:
                    continue
                if isinstance(value, int):
                    if -INT64 <= value < INT64:
                        continue
                    return f"{where}.props.{key}: integers must fit in 64 bits"
                if isinstance(value, float):
                    if math.isfinite(value):
                        continue
                    return f"{where}.props.{key}: numbers must be finite"
                if not isinstance(value, str) or len(value) > MAX_PROP_VALUE or not _encodable(value):
                    return f"{where}.props.{key}: expected a string of at most {MAX_PROP_VALUE} characters, a number or a boolean"
    return None


def _encodable(text: str) -> bool:
    """False for strings MongoDB cannot store: JSON allows lone UTF-16 surrogates (\\ud800), UTF-8 does not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class OptOut(Resource):
    """GET /optout: sets the opt-out cookie and deletes the visitor cookie; the pixel then records nothing."""

    isLeaf = True

    def __init__(self, visitors: VisitorCookies) -> None:
        super().__init__()
        self.visitors = visitors

    def render_GET(self, request: Any) -> bytes:
        ua = request.getHeader(b"user-agent")
        request.responseHeaders.setRawHeaders(
            b"set-cookie", [self.visitors.optout_set_cookie_header(ua), self.visitors.expire_cookie_header(ua)]
        )
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"You are opted out: this browser will not be tracked by this domain.\n"


def tracking_resources(tracking: Tracking) -> Mapping[bytes, Resource]:
    return {
        b"pixel": Pixel(tracking),
        b"pixel.js": Asset(static("pixel.js"), JS, 300),
        b"optout": OptOut(tracking.visitors),
    }
