"""Web push on the pixel domain: the worker, the subscribe page, and what browsers post back.

    GET  /push/sw.js               the service worker (stable URL, short cache, ETag)
    GET  /push/sdk.js              what a customer's page includes to open the subscribe page
    GET  /push/subscribe?site=ID   the subscribe page (popup); POST stores a subscription
    GET  /push/subscribe.js        the page's script (strict CSP: no inline script)
    GET  /push/vapid-key?site=ID   the site's applicationServerKey, key id and notification defaults
    POST /push/unsubscribe         deactivate by exact endpoint
    POST /push/events              delivered / clicked / closed reports from the worker

Handlers only validate and hand documents to the L{IEventSink}; they never
wait for MongoDB. The flow and the formats are in docs/push.md.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from bson.errors import InvalidDocument
from twisted.web import pages
from twisted.web.resource import IResource, Resource

from cookiesaver.config import Config, SiteConfig
from cookiesaver.interfaces import IEventSink, Upsert
from cookiesaver.metrics import Metrics
from cookiesaver.subscription import (
    FieldError,
    PushServices,
    endpoint_hash,
    validate_event,
    validate_subscription,
)
from cookiesaver.vapid import SiteKey
from cookiesaver.web.cors import all_site_origins, apply_cors, preflight, request_origin
from cookiesaver.web.responses import JS, NOSNIFF, Asset, NotFoundBelow, static

SUBSCRIPTIONS = "push_subscriptions"
EVENTS = "push_events"
MAX_BODY = 16 * 1024
MAX_UA = 512
MAX_LINK_KEY = 1024
MAX_ENDPOINT = 2048
RETRY_AFTER = b"5"


class SupportsSeconds(Protocol):
    """The one clock method used here (a reactor, or task.Clock in tests)."""

    def seconds(self) -> float: ...


VisitorIdFor = Callable[[Any], "str | None"]
ProfileForKey = Callable[[bytes], "str | None"]


def _now(clock: SupportsSeconds) -> datetime:
    return datetime.fromtimestamp(clock.seconds(), tz=UTC)


def _query(request: Any, name: bytes) -> str | None:
    values = request.args.get(name) if request.args else None
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _json_body(request: Any, code: int, payload: Mapping[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(*NOSNIFF)
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


class Reject(Exception):
    """A request refused: the status, the member named in the JSON error, and the not_recorded reason."""

    def __init__(self, code: int, field: str | None, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message
        self.reason = reason


class PushArea:
    """What the push resources share: config, keys, sink, clock, and the common request plumbing."""

    def __init__(
        self,
        *,
        config: Config,
        vapid: Mapping[str, SiteKey],
        sink: IEventSink,
        metrics: Metrics,
        clock: SupportsSeconds,
        visitor_id_for: VisitorIdFor,
        profile_for_key: ProfileForKey,
    ) -> None:
        self.sites: Mapping[str, SiteConfig] = config.sites
        self.vapid = vapid
        self.sink = sink
        self.metrics = metrics
        self.clock = clock
        self.visitor_id_for = visitor_id_for
        self.profile_for_key = profile_for_key
        self.services = PushServices.from_names(config.push.services)
        self.all_origins = all_site_origins(config.sites)

    # --- request plumbing ---------------------------------------------------

    def site_origins(self, site_id: str | None) -> Collection[str]:
        """The CORS origins for a request about C{site_id}: that site's, or every site's when unknown."""
        site = self.sites.get(site_id) if isinstance(site_id, str) else None
        return site.origins if site is not None else self.all_origins

    def check_origin(self, request: Any, allowed: Collection[str]) -> None:
        """
        Refuse browser posts from pages that are neither ours nor the site's.

        Text/plain posts need no preflight, so without this any web page could
        write subscriptions or events. A missing Origin (not a browser) passes:
        such clients can forge anything anyway.
        """
        origin = request_origin(request)
        if origin is None or origin in allowed:
            return
        host = request.getHeader(b"host")
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:  # e.g. "http://[" : not an origin a browser sends
            netloc = None
        if host is not None and netloc is not None and netloc.encode("ascii", "replace") == host and origin.startswith(("https://", "http://")):
            return
        raise Reject(403, "origin", "this origin may not post here", "forbidden_origin")

    def read_json(self, request: Any) -> dict[str, Any]:
        """The body as a JSON object, from application/json or text/plain (so browsers need no preflight)."""
        raw_type = request.getHeader(b"content-type") or b""
        media = raw_type.split(b";", 1)[0].strip().lower()
        if media not in (b"application/json", b"text/plain"):
            raise Reject(415, "content-type", "send application/json or text/plain", "malformed")
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(body) > MAX_BODY:
            raise Reject(413, "body", f"body larger than {MAX_BODY} bytes", "too_large")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise Reject(400, "body", "body is not UTF-8", "malformed") from None
        try:
            parsed = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as e:
            where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            raise Reject(400, "body", f"invalid JSON{where}", "malformed") from None
        if not isinstance(parsed, dict):
            raise Reject(400, "body", "must be a JSON object", "malformed")
        return parsed

    def submitted(self, ok: bool, collection: str) -> None:
        """Count an accepted document, or refuse the request as overloaded."""
        if not ok:
            raise Reject(503, None, "overloaded, retry later", "overload")
        self.metrics.events_accepted.labels(collection=collection).inc()

    def answer_post(self, request: Any, site_hint: Callable[[], str | None], handle: Callable[[], tuple[int, Mapping[str, Any] | None]]) -> bytes:
        """Run a POST handler, apply CORS for the site it is about, and turn L{Reject} into a JSON error."""
        try:
            try:
                code, payload = handle()
            except (InvalidDocument, OverflowError, UnicodeEncodeError):
                # Validation should have refused it; never let an unstorable value become a 500.
                raise Reject(400, "body", "contains a value that cannot be stored", "malformed") from None
        except Reject as r:
            apply_cors(request, self.site_origins(site_hint()))
            self.metrics.not_recorded.labels(reason=r.reason).inc()
            if r.code == 503:
                request.setHeader(b"retry-after", RETRY_AFTER)
            error: dict[str, Any] = {"error": r.message}
            if r.field is not None:
                error["field"] = r.field
            return _json_body(request, r.code, error)
        apply_cors(request, self.site_origins(site_hint()))
        if payload is None:
            request.setResponseCode(code)
            request.setHeader(*NOSNIFF)
            request.setHeader(b"cache-control", b"no-store")
            return b""
        return _json_body(request, code, payload)

    def site_for(self, site_id: Any) -> tuple[SiteConfig, SiteKey]:
        """The site and its VAPID key, or a 400 naming C{site}."""
        if site_id is None:
            raise Reject(400, "site", "is required", "malformed")
        if not isinstance(site_id, str) or site_id not in self.sites:
            raise Reject(400, "site", "unknown site", "unknown_site")
        key = self.vapid.get(site_id)
        if key is None:
            raise Reject(400, "site", "push is not configured for this site", "unknown_site")
        return self.sites[site_id], key

    def profile(self, link_key: Any) -> str | None:
        """The profile a KEY token links to, or None (a bad or expired KEY never blocks a subscription)."""
        if not isinstance(link_key, str) or not link_key or len(link_key) > MAX_LINK_KEY:
            return None
        try:
            return self.profile_for_key(link_key.encode("utf-8"))
        except UnicodeEncodeError:
            return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class PostOnly(NotFoundBelow):
    """A POST endpoint; the base class's GET-backed render_HEAD is removed so HEAD is a 405 too, not a 500."""

    render_HEAD = None  # type: ignore[assignment]
    allowedMethods: tuple[bytes, ...] = (b"POST", b"OPTIONS")

    def __init__(self, area: PushArea) -> None:
        super().__init__()
        self.area = area

    def render_OPTIONS(self, request: Any) -> bytes:
        return preflight(request, self.area.site_origins(_query(request, b"site")), (b"POST",))


class Subscribe(PostOnly):
    """GET: the subscribe page for a site. POST: store the browser's PushSubscription."""

    allowedMethods = (b"GET", b"HEAD", b"POST", b"OPTIONS")

    def __init__(self, area: PushArea, page: bytes) -> None:
        super().__init__(area)
        self._page = page.decode("utf-8")
        self._csp = {site_id: _csp(site.origins) for site_id, site in area.sites.items()}

    # --- the page -----------------------------------------------------------

    def _page_headers(self, request: Any, site_id: str | None) -> None:
        request.setHeader(b"content-security-policy", self._csp.get(site_id or "", _csp(())))
        request.setHeader(*NOSNIFF)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"referrer-policy", b"no-referrer")

    def render_GET(self, request: Any) -> bytes:
        area = self.area
        site_id = _query(request, b"site")
        site = area.sites.get(site_id) if site_id else None
        key = area.vapid.get(site_id) if site is not None and site_id else None
        if site is None or key is None:
            self._page_headers(request, None)
            area.metrics.not_recorded.labels(reason="unknown_site").inc()
            return cast(bytes, pages.errorPage(404, "Unknown site", "This site does not offer notifications here.").render(request))
        self._page_headers(request, site_id)
        wanted = _query(request, b"origin")
        if len(site.origins) == 1:
            origin = site.origins[0]
        else:
            origin = wanted if wanted in site.origins else ""
        link_key = _query(request, b"key") or _query(request, b"KEY")
        if link_key is not None and area.profile(link_key) is None:
            link_key = None
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _render(
            self._page,
            site=site.id,
            vapid_key=key.public_b64url,
            key_id=key.key_id,
            origin=origin,
            link_key=link_key or "",
        )

    def render_HEAD(self, request: Any) -> bytes:  # type: ignore[override]
        return self.render_GET(request)

    # --- the subscription ---------------------------------------------------

    def render_POST(self, request: Any) -> bytes:
        area = self.area
        seen: dict[str, Any] = {"site": _query(request, b"site")}

        def handle() -> tuple[int, Mapping[str, Any]]:
            body = area.read_json(request)
            site_id = body.get("site", seen["site"])
            seen["site"] = site_id
            site, key = area.site_for(site_id)
            area.check_origin(request, site.origins)
            try:
                sub = validate_subscription(body, area.services)
            except FieldError as e:
                raise Reject(400, e.field, e.message, "malformed") from None
            now = _now(area.clock)
            fields: dict[str, Any] = {
                "keys": {"p256dh": sub.p256dh, "auth": sub.auth},
                "key_id": key.key_id,
                "site": site.id,
                "expiration_time": sub.expiration_time,
                "ua": (request.getHeader(b"user-agent") or b"").decode("utf-8", "replace")[:MAX_UA],
                "last_seen": now,
                "active": True,
            }
            # Only known links are written: a re-send from the worker (no KEY,
            # maybe no cookie) must not erase a profile linked earlier.
            visitor = area.visitor_id_for(request)
            if visitor:
                fields["visitor"] = visitor
            profile = area.profile(body.get("key", _query(request, b"key")))
            if profile:
                fields["profile"] = profile
            update = {"$set": fields, "$setOnInsert": {"created": now, "endpoint": sub.endpoint}}
            area.submitted(area.sink.submit_upsert(SUBSCRIPTIONS, Upsert({"_id": sub.endpoint_hash}, update)), SUBSCRIPTIONS)
            return 200, {"ok": True, "subscription": sub.endpoint_hash, "key_id": key.key_id}

        return area.answer_post(request, lambda: seen["site"] if isinstance(seen["site"], str) else None, handle)


class Unsubscribe(PostOnly):
    """Deactivate a subscription by its exact endpoint (the record stays, with C{active: false})."""

    def render_POST(self, request: Any) -> bytes:
        area = self.area
        seen: dict[str, Any] = {"site": _query(request, b"site")}

        def handle() -> tuple[int, Mapping[str, Any]]:
            body = area.read_json(request)
            site_id = body.get("site", seen["site"])
            if site_id is not None:
                seen["site"] = area.site_for(site_id)[0].id
            area.check_origin(request, area.site_origins(seen["site"]))
            endpoint = body.get("endpoint")
            if not isinstance(endpoint, str) or not endpoint.startswith("https://") or len(endpoint) > MAX_ENDPOINT:
                raise Reject(400, "endpoint", f"must be an https URL of at most {MAX_ENDPOINT} characters", "malformed")
            digest = endpoint_hash(endpoint)
            update = {"$set": {"active": False, "last_seen": _now(area.clock)}}
            area.submitted(area.sink.submit_upsert(SUBSCRIPTIONS, Upsert({"_id": digest}, update)), SUBSCRIPTIONS)
            return 200, {"ok": True, "subscription": digest}

        return area.answer_post(request, lambda: seen["site"] if isinstance(seen["site"], str) else None, handle)


class Events(PostOnly):
    """Worker reports, one document per (message, subscription, event): worker retries dedupe on C{_id}."""

    def render_POST(self, request: Any) -> bytes:
        area = self.area

        def handle() -> tuple[int, None]:
            body = area.read_json(request)
            area.check_origin(request, area.all_origins)
            try:
                event = validate_event(body)
            except FieldError as e:
                raise Reject(400, e.field, e.message, "malformed") from None
            document = {
                "_id": event.id,
                "type": event.type,
                "message": event.message,
                "subscription": event.subscription,
                "action": event.action,
                "ts": _now(area.clock),
            }
            area.submitted(area.sink.submit(EVENTS, document), EVENTS)
            return 204, None

        return area.answer_post(request, lambda: None, handle)


class VapidKey(NotFoundBelow):
    """The site's applicationServerKey (and notification defaults), readable by the site's pages."""

    def __init__(self, area: PushArea) -> None:
        super().__init__()
        self.area = area
        self._bodies = {
            site_id: json.dumps(
                {"site": site_id, "key": key.public_b64url, "key_id": key.key_id, "icon": area.sites[site_id].icon, "badge": area.sites[site_id].badge},
                separators=(",", ":"),
            ).encode("utf-8")
            for site_id, key in area.vapid.items()
            if site_id in area.sites
        }

    def render_GET(self, request: Any) -> bytes:
        site_id = _query(request, b"site")
        apply_cors(request, self.area.site_origins(site_id))
        body = self._bodies.get(site_id or "")
        if body is None:
            self.area.metrics.not_recorded.labels(reason="unknown_site").inc()
            return _json_body(request, 404, {"error": "unknown site or push not configured", "field": "site"})
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"public, max-age=300")
        request.setHeader(*NOSNIFF)
        return body

    def render_HEAD(self, request: Any) -> bytes:
        return self.render_GET(request)


class PushRoot(NotFoundBelow):
    """/push itself: nothing here but children."""

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Not Found\n"

    def render_HEAD(self, request: Any) -> bytes:
        return self.render_GET(request)

    def getChild(self, path: bytes, request: Any) -> IResource:
        return self._not_found


def _csp(origins: Iterable[str]) -> bytes:
    """A strict policy: our own scripts and styles only, framed only by the site's own pages."""
    ancestors = " ".join(origins) or "'none'"
    return (
        "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data: https:; "
        f"style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}"
    ).encode("ascii")


_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def _render(template: str, **values: str) -> bytes:
    """Fill C{{{name}}} placeholders in one pass with HTML-escaped values (attribute-safe: quotes are escaped)."""
    escaped = {name: html.escape(value, quote=True) for name, value in values.items()}
    return _PLACEHOLDER.sub(lambda m: escaped[m.group(1)], template).encode("utf-8")


def push_resource(
    *,
    config: Config,
    vapid: Mapping[str, SiteKey],
    sink: IEventSink,
    metrics: Metrics,
    clock: SupportsSeconds,
    visitor_id_for: VisitorIdFor,
    profile_for_key: ProfileForKey,
) -> Resource:
    """
    The /push tree. Static assets and per-site pieces are computed here, once.

    @param vapid: the sites' keys (L{cookiesaver.vapid.VapidKeys}); sites without one have push off.
    @param visitor_id_for: the request's visitor id from its cookie, or None.
    @param profile_for_key: the profile a KEY token links to, or None when invalid or expired.
    """
    area = PushArea(
        config=config, vapid=vapid, sink=sink, metrics=metrics, clock=clock, visitor_id_for=visitor_id_for, profile_for_key=profile_for_key
    )
    root = PushRoot()
    root.putChild(b"sw.js", Asset(static("sw.js"), JS, 300, [(b"service-worker-allowed", b"/")]))
    root.putChild(b"subscribe.js", Asset(static("subscribe.js"), JS, 300))
    root.putChild(b"subscribe.css", Asset(static("subscribe.css"), b"text/css; charset=utf-8", 300))
    root.putChild(b"sdk.js", Asset(static("sdk.js"), JS, 3600, [(b"cross-origin-resource-policy", b"cross-origin")]))
    root.putChild(b"subscribe", Subscribe(area, static("subscribe.html")))
    root.putChild(b"vapid-key", VapidKey(area))
    root.putChild(b"unsubscribe", Unsubscribe(area))
    root.putChild(b"events", Events(area))
    return root
