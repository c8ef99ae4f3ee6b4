"""main.json + environment + command line -> one frozen L{Config}.

The platform's main.json carries every service's keys; cookiesaver reads only
the C{COOKIESAVER_*} ones. Precedence: command-line options, then
C{COOKIESAVER_*} environment variables (lists and objects as JSON text), then
the file, then the defaults in L{KEYS}. Nothing downstream reads raw dicts or
the environment: this module is the only place that does.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Any

import attrs

PREFIX = "COOKIESAVER_"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem, as one line naming the key or file."""


# --- sections ---------------------------------------------------------------


@attrs.frozen
class ListenConfig:
    ip: str
    port: int
    hostname: str
    extra: tuple[str, ...] = ()
    reuse_port: bool = False
    instance: str = "main"


@attrs.frozen
class TLSConfig:
    enabled: bool
    cert_path: str | None
    key_path: str | None
    certs_dir: str | None


@attrs.frozen
class HTTPConfig:
    max_request_line: int
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    max_connections: int
    default_body_limit: int
    body_limits: Mapping[str, int]
    access_log: str | None

    def body_limit(self, path: bytes) -> int:
        """The body limit for a request path: the longest configured prefix wins."""
        best, best_len = self.default_body_limit, -1
        text = path.split(b"?", 1)[0].decode("latin-1")
        for prefix, limit in self.body_limits.items():
            if (text == prefix or text.startswith(prefix.rstrip("/") + "/")) and len(prefix) > best_len:
                best, best_len = limit, len(prefix)
        return best


@attrs.frozen
class CookieConfig:
    name: str
    domain: str | None
    max_age: int
    secret_path: str
    optout_name: str


@attrs.frozen
class TokenConfig:
    keys: Mapping[str, str]
    current: str | None
    max_age: int


@attrs.frozen
class MongoConfig:
    uri: str
    db: str
    timeout: float


@attrs.frozen
class WriterConfig:
    batch_size: int
    flush_interval: float
    max_queue_docs: int
    max_queue_bytes: int
    write_timeout: float
    backoff_initial: float
    backoff_max: float
    spool_max_bytes: int
    shutdown_timeout: float
    readiness_spool_docs: int
    readiness_mongo_down: float


@attrs.frozen
class PrivacyConfig:
    drop_dnt: bool


@attrs.frozen
class BotsConfig:
    ua_path: str | None
    ip_path: str | None


@attrs.frozen
class PushConfig:
    services: tuple[str, ...]


@attrs.frozen
class SiteConfig:
    id: str
    origins: tuple[str, ...]
    vapid_private_key: str | None = None
    vapid_subject: str | None = None
    icon: str | None = None
    badge: str | None = None


@attrs.frozen
class Config:
    """Everything cookiesaver was told, typed and checked."""

    source: str
    data_dir: str
    listen: ListenConfig
    tls: TLSConfig
    http: HTTPConfig
    cookie: CookieConfig
    tokens: TokenConfig
    mongo: MongoConfig
    writer: WriterConfig
    privacy: PrivacyConfig
    bots: BotsConfig
    push: PushConfig
    sites: Mapping[str, SiteConfig]
    trusted_proxies: tuple[Network, ...]
    metrics_networks: tuple[Network, ...]


# --- the key table ------------------------------------------------------------


@attrs.frozen
class Key:
    """One C{COOKIESAVER_*} key: its type, default and meaning (docs/config.md is built from these)."""

    name: str
    kind: str  # str, int, float, bool, path, list, object, networks
    default: Any
    doc: str
    optional: bool = False


DEFAULT_PUSH_SERVICES = (
    "fcm.googleapis.com",
    "jmt17.google.com",  # Chromium builds (e.g. Debian's) subscribe through this FCM front end
    "updates.push.services.mozilla.com",
    "push.services.mozilla.com",
    "web.push.apple.com",
    "notify.windows.com",
)

KEYS: tuple[Key, ...] = (
    # The platform's documented keys.
    Key("PUBLIC_IP", "str", "0.0.0.0", "Address the main listener binds."),
    Key("PUBLIC_HOSTNAME", "str", "pxl.example.com", "The pixel and push domain as browsers see it."),
    Key("PUBLIC_PORT", "int", 443, "Port the main listener binds."),
    Key("SSL_ON", "bool", True, "Terminate TLS here (true) or serve plain HTTP behind a proxy (false)."),
    Key("SSL_CRT_PATH", "path", None, "fullchain.pem: certificate then chain.", optional=True),
    Key("SSL_KEY_PATH", "path", None, "privkey.pem: the certificate's private key.", optional=True),
    Key("SSL_CERTS_DIR", "path", None, "Extra SNI certificates: one sub-directory per host name holding fullchain.pem and privkey.pem.", optional=True),
    # Storage.
    Key("MONGO_URI", "str", "embedded", "'embedded' (a supervised local secantusd-py) or a mongodb:// URI; options are passed through."),
    Key("MONGO_DB", "str", "cookiesaver", "Database name."),
    Key("MONGO_TIMEOUT", "float", 5.0, "Deadline in seconds for one MongoDB operation."),
    Key("DATA_DIR", "path", "./var", "Local state: embedded database files, the spool, generated secrets."),
    Key("REUSE_PORT", "bool", False, "Bind with SO_REUSEPORT so several processes share the address and port (one per core)."),
    Key("INSTANCE", "str", "main", "This process's name among several on one host; names its spool file."),
    # Network trust.
    Key("TRUSTED_PROXIES", "networks", [], "CIDRs whose X-Real-IP / X-Forwarded-For / X-Scheme headers are believed."),
    Key("METRICS_NETWORKS", "networks", ["127.0.0.0/8", "::1/128"], "CIDRs allowed to read /cookiesaver/metrics."),
    # HTTP limits.
    Key("HTTP_MAX_REQUEST_LINE", "int", 8192, "Longest request line or header line, in bytes (414/400 beyond)."),
    Key("HTTP_MAX_HEADER_BYTES", "int", 16384, "Request line plus all headers, in bytes."),
    Key("HTTP_MAX_HEADERS", "int", 100, "Most header lines per request."),
    Key("HTTP_HEADER_TIMEOUT", "float", 10.0, "Seconds from a request's first byte (or the connection's start) to the end of its headers."),
    Key("HTTP_BODY_TIMEOUT", "float", 30.0, "Seconds to receive a request body once the headers are in."),
    Key("HTTP_IDLE_TIMEOUT", "float", 75.0, "Keep-alive idle timeout; longer than nginx's upstream keepalive_timeout (60 s)."),
    Key("HTTP_MAX_CONNECTIONS", "int", 10000, "Concurrent connections per process; more are closed at once."),
    Key("HTTP_DEFAULT_BODY_LIMIT", "int", 4096, "Body limit in bytes for paths not in HTTP_BODY_LIMITS."),
    Key("HTTP_BODY_LIMITS", "object", {"/pixel": 65536, "/push/subscribe": 16384, "/push/unsubscribe": 16384, "/push/events": 16384}, "Body limit in bytes per path prefix."),
    Key("HTTP_ACCESS_LOG", "path", None, "Structured access log file (one JSON line per request); off when null.", optional=True),
    # Visitor cookie.
    Key("COOKIE_NAME", "str", "csid", "Visitor cookie name."),
    Key("COOKIE_DOMAIN", "str", None, "Cookie Domain attribute; host-only when null.", optional=True),
    Key("COOKIE_MAX_AGE", "int", 400 * 86400, "Cookie Max-Age in seconds, capped at 400 days."),
    Key("COOKIE_SECRET_PATH", "path", None, "File holding the cookie signing secret; generated under DATA_DIR when null (share one file across nodes).", optional=True),
    Key("OPTOUT_COOKIE_NAME", "str", "csoptout", "Opt-out cookie name."),
    # Click tokens.
    Key("TOKEN_KEYS", "object", {}, "Token keys by key id: {\"kid\": \"/path/to/key\"}; every listed key verifies."),
    Key("TOKEN_CURRENT_KEY", "str", None, "Key id used for minting.", optional=True),
    Key("TOKEN_MAX_AGE", "int", 400 * 86400, "Oldest token accepted, in seconds."),
    # Writer.
    Key("WRITER_BATCH_SIZE", "int", 500, "Flush a collection's batch at this many documents."),
    Key("WRITER_FLUSH_INTERVAL", "float", 0.1, "Flush a batch at this age in seconds."),
    Key("WRITER_MAX_QUEUE_DOCS", "int", 100000, "Documents held in memory at most (queued and in flight)."),
    Key("WRITER_MAX_QUEUE_BYTES", "int", 64 * 1024 * 1024, "Bytes held in memory at most."),
    Key("WRITER_WRITE_TIMEOUT", "float", 10.0, "Deadline for one batch write; a silent server is detected by it."),
    Key("WRITER_BACKOFF_INITIAL", "float", 0.2, "First retry delay in seconds."),
    Key("WRITER_BACKOFF_MAX", "float", 10.0, "Longest retry delay in seconds."),
    Key("WRITER_SPOOL_MAX_BYTES", "int", 1024 * 1024 * 1024, "Local spool size limit in bytes."),
    Key("WRITER_SHUTDOWN_TIMEOUT", "float", 10.0, "Seconds to flush to MongoDB at shutdown before spooling the rest."),
    Key("READINESS_SPOOL_DOCS", "int", 100000, "Readiness turns 503 when the spool holds more documents."),
    Key("READINESS_MONGO_DOWN", "float", 5.0, "Readiness turns 503 when MongoDB has been unreachable this many seconds."),
    # Privacy and bots.
    Key("PRIVACY_DROP_DNT", "bool", False, "Record nothing for visitors sending DNT: 1 or Sec-GPC: 1 (by default they are recorded with flags)."),
    Key("BOTS_UA_PATH", "path", None, "bots_ua.json; the shipped list when null.", optional=True),
    Key("BOTS_IP_PATH", "path", None, "bots_ip.json; the shipped list when null.", optional=True),
    # Push.
    Key("PUSH_SERVICES", "list", list(DEFAULT_PUSH_SERVICES), "Host names (and their sub-domains) accepted as push endpoints."),
    # Sites.
    Key("SITES", "object", {}, "Sites by id: {\"origins\": [...], \"vapid_private_key\": path, \"vapid_subject\": \"mailto:...\", \"icon\": url, \"badge\": url}."),
)

KEYS_BY_NAME = {PREFIX + k.name: k for k in KEYS}


# --- loading ------------------------------------------------------------------


@attrs.frozen
class Loaded:
    config: Config
    warnings: tuple[str, ...]


def _fail(key: str, source: str, expected: str, value: Any) -> ConfigError:
    shown = json.dumps(value) if not isinstance(value, str) else repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ConfigError(f"{key} in {source}: expected {expected}, got {shown}")


def _coerce(key: Key, raw: Any, source: str, from_env: bool) -> Any:
    full = PREFIX + key.name
    if raw is None:
        if key.optional:
            return None
        raise _fail(full, source, f"a {key.kind}", raw)
    kind = key.kind
    if from_env and isinstance(raw, str) and kind in ("list", "object", "networks"):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{full} in {source}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if kind in ("str", "path"):
        if not isinstance(raw, str) or (kind == "path" and not raw):
            raise _fail(full, source, "a string", raw)
        if kind == "path":
            return os.path.abspath(os.path.expanduser(raw))
        return raw
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if from_env and isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return raw.lower() in ("true", "1", "yes", "on")
        raise _fail(full, source, "true or false", raw)
    if kind == "int":
        if from_env and isinstance(raw, str):
            try:
                raw = int(raw)
            except ValueError:
                raise _fail(full, source, "an integer", raw) from None
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise _fail(full, source, "a non-negative integer", raw)
        return raw
    if kind == "float":
        if from_env and isinstance(raw, str):
            try:
                raw = float(raw)
            except ValueError:
                raise _fail(full, source, "a number", raw) from None
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
            raise _fail(full, source, "a non-negative number", raw)
        return float(raw)
    if kind == "list":
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise _fail(full, source, "a list of strings", raw)
        return tuple(raw)
    if kind == "object":
        if not isinstance(raw, dict):
            raise _fail(full, source, "an object", raw)
        return raw
    if kind == "networks":
        if not isinstance(raw, list):
            raise _fail(full, source, "a list of CIDRs", raw)
        nets = []
        for item in raw:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except (ValueError, TypeError):
                raise _fail(full, source, "a list of CIDRs", item) from None
        return tuple(nets)
    raise AssertionError(kind)


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory") from None
    except PermissionError:
        raise ConfigError(f"config file {path}: permission denied") from None
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"config file {path}: expected a JSON object at the top level")
    return parsed


def closest_hint(name: str) -> str:
    match = difflib.get_close_matches(name, KEYS_BY_NAME, n=1, cutoff=0.5)
    return f"; did you mean {match[0]}?" if match else ""


def _sites(raw: Mapping[str, Any], source: str) -> dict[str, SiteConfig]:
    sites = {}
    for site_id, body in raw.items():
        where = f"COOKIESAVER_SITES.{site_id} in {source}"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected an object")
        origins = body.get("origins", [])
        if not isinstance(origins, list) or not all(isinstance(o, str) and o.startswith(("https://", "http://")) for o in origins):
            raise ConfigError(f"{where}.origins: expected a list of origins like \"https://www.example.com\"")
        fields: dict[str, Any] = {}
        for name in ("vapid_private_key", "vapid_subject", "icon", "badge"):
            value = body.get(name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}.{name}: expected a string")
            fields[name] = value
        if fields["vapid_private_key"]:
            fields["vapid_private_key"] = os.path.abspath(fields["vapid_private_key"])
        subject = fields["vapid_subject"]
        if subject is not None and not subject.startswith(("mailto:", "https:")):
            raise ConfigError(f"{where}.vapid_subject: expected a mailto: or https: URL")
        sites[site_id] = SiteConfig(id=site_id, origins=tuple(o.rstrip("/") for o in origins), **fields)
    return sites


def _check_mongo_uri(uri: str, source: str) -> None:
    """Parse a mongodb:// URI the way the driver will (no DNS), never echoing its credentials."""
    from pymongo.errors import InvalidURI, PyMongoError
    from pymongo.uri_parser import parse_uri

    try:
        parse_uri(uri)
    except (InvalidURI, PyMongoError, ValueError) as e:
        reason = str(e)
        userinfo = uri[len("mongodb://"):].rpartition("@")[0]
        if userinfo:
            reason = reason.replace(userinfo, "***")
            for part in userinfo.split(":"):
                if part:
                    reason = reason.replace(part, "***")
        raise ConfigError(f"{PREFIX}MONGO_URI in {source}: not a valid MongoDB URI ({reason[:120]})") from None


def load(
    path: str | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    extra_listen: tuple[str, ...] = (),
) -> Loaded:
    """
    Build the L{Config}.

    @param path: main.json, or None for defaults and environment only.
    @param environ: the environment (C{os.environ} when None).
    @param overrides: C{COOKIESAVER_*} values from the command line, already typed.
    @raise ConfigError: one line naming the key or the file.
    """
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    warnings: list[str] = []
    file_values: dict[str, Any] = {}
    source = path or "defaults"
    if path is not None:
        for name, value in _read_file(path).items():
            if not name.startswith(PREFIX):
                continue
            if name not in KEYS_BY_NAME:
                warnings.append(f"unknown key {name} in {path}{closest_hint(name)}")
                continue
            file_values[name] = value
    for name in environ:
        if name.startswith(PREFIX) and name not in KEYS_BY_NAME and name != PREFIX + "CONFIG":
            warnings.append(f"unknown environment variable {name}{closest_hint(name)}")

    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for full, key in KEYS_BY_NAME.items():
        if full in overrides:
            where[key.name] = "the command line"
            values[key.name] = _coerce(key, overrides[full], "the command line", from_env=True)
        elif full in environ:
            where[key.name] = "the environment"
            values[key.name] = _coerce(key, environ[full], "the environment", from_env=True)
        elif full in file_values:
            where[key.name] = source
            values[key.name] = _coerce(key, file_values[full], source, from_env=False)
        else:
            where[key.name] = "defaults"
            default = key.default
            if key.kind == "path" and default is not None:
                default = os.path.abspath(default)
            elif key.kind == "networks":
                default = _coerce(key, default, "defaults", from_env=False)
            elif key.kind == "list":
                default = tuple(default)
            values[key.name] = default

    v = values
    data_dir = v["DATA_DIR"]
    if v["SSL_ON"]:
        for k in ("SSL_CRT_PATH", "SSL_KEY_PATH"):
            if not v[k]:
                raise ConfigError(f"{PREFIX}{k}: required when {PREFIX}SSL_ON is true (in {where['SSL_ON']})")
    if not 0 < v["PUBLIC_PORT"] < 65536:
        raise _fail(PREFIX + "PUBLIC_PORT", where["PUBLIC_PORT"], "a port between 1 and 65535", v["PUBLIC_PORT"])
    try:
        ipaddress.ip_address(v["PUBLIC_IP"])
    except ValueError:
        raise _fail(PREFIX + "PUBLIC_IP", where["PUBLIC_IP"], "an IP address", v["PUBLIC_IP"]) from None
    if not v["INSTANCE"] or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in v["INSTANCE"]):
        raise _fail(PREFIX + "INSTANCE", where["INSTANCE"], "letters, digits, '-', '_' or '.'", v["INSTANCE"])
    uri = v["MONGO_URI"]
    if uri != "embedded" and not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError(f"{PREFIX}MONGO_URI in {where['MONGO_URI']}: expected 'embedded' or a mongodb:// URI")
    if uri.startswith("mongodb://"):
        _check_mongo_uri(uri, where["MONGO_URI"])
    body_limits = {}
    for prefix, limit in v["HTTP_BODY_LIMITS"].items():
        if not prefix.startswith("/") or isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"{PREFIX}HTTP_BODY_LIMITS in {where['HTTP_BODY_LIMITS']}: expected {{\"/path\": bytes}}, got {prefix!r}: {limit!r}")
        body_limits[prefix] = limit
    token_keys = {}
    for kid, key_path in v["TOKEN_KEYS"].items():
        if not isinstance(key_path, str) or not key_path:
            raise ConfigError(f"{PREFIX}TOKEN_KEYS.{kid} in {where['TOKEN_KEYS']}: expected a key file path")
        if not kid or not all(c.isalnum() or c in "-_" for c in kid):
            raise ConfigError(f"{PREFIX}TOKEN_KEYS in {where['TOKEN_KEYS']}: key id {kid!r} must be letters, digits, '-' or '_'")
        token_keys[kid] = os.path.abspath(key_path)
    current = v["TOKEN_CURRENT_KEY"]
    if current is not None and current not in token_keys:
        raise ConfigError(f"{PREFIX}TOKEN_CURRENT_KEY in {where['TOKEN_CURRENT_KEY']}: {current!r} is not in {PREFIX}TOKEN_KEYS")
    if current is None and len(token_keys) == 1:
        current = next(iter(token_keys))

    config = Config(
        source=source,
        data_dir=data_dir,
        listen=ListenConfig(v["PUBLIC_IP"], v["PUBLIC_PORT"], v["PUBLIC_HOSTNAME"], tuple(extra_listen), v["REUSE_PORT"], v["INSTANCE"]),
        tls=TLSConfig(v["SSL_ON"], v["SSL_CRT_PATH"], v["SSL_KEY_PATH"], v["SSL_CERTS_DIR"]),
        http=HTTPConfig(
            max_request_line=v["HTTP_MAX_REQUEST_LINE"],
            max_header_bytes=v["HTTP_MAX_HEADER_BYTES"],
            max_headers=v["HTTP_MAX_HEADERS"],
            header_timeout=v["HTTP_HEADER_TIMEOUT"],
            body_timeout=v["HTTP_BODY_TIMEOUT"],
            idle_timeout=v["HTTP_IDLE_TIMEOUT"],
            max_connections=v["HTTP_MAX_CONNECTIONS"],
            default_body_limit=v["HTTP_DEFAULT_BODY_LIMIT"],
            body_limits=body_limits,
            access_log=v["HTTP_ACCESS_LOG"],
        ),
        cookie=CookieConfig(
            name=v["COOKIE_NAME"],
            domain=v["COOKIE_DOMAIN"],
            max_age=min(v["COOKIE_MAX_AGE"], 400 * 86400),
            secret_path=v["COOKIE_SECRET_PATH"] or os.path.join(data_dir, "secrets", "cookie-secret"),
            optout_name=v["OPTOUT_COOKIE_NAME"],
        ),
        tokens=TokenConfig(keys=token_keys, current=current, max_age=v["TOKEN_MAX_AGE"]),
        mongo=MongoConfig(uri=uri, db=v["MONGO_DB"], timeout=v["MONGO_TIMEOUT"]),
        writer=WriterConfig(
            batch_size=max(1, v["WRITER_BATCH_SIZE"]),
            flush_interval=v["WRITER_FLUSH_INTERVAL"],
            max_queue_docs=v["WRITER_MAX_QUEUE_DOCS"],
            max_queue_bytes=v["WRITER_MAX_QUEUE_BYTES"],
            write_timeout=v["WRITER_WRITE_TIMEOUT"],
            backoff_initial=v["WRITER_BACKOFF_INITIAL"],
            backoff_max=v["WRITER_BACKOFF_MAX"],
            spool_max_bytes=v["WRITER_SPOOL_MAX_BYTES"],
            shutdown_timeout=v["WRITER_SHUTDOWN_TIMEOUT"],
            readiness_spool_docs=v["READINESS_SPOOL_DOCS"],
            readiness_mongo_down=v["READINESS_MONGO_DOWN"],
        ),
        privacy=PrivacyConfig(drop_dnt=v["PRIVACY_DROP_DNT"]),
        bots=BotsConfig(ua_path=v["BOTS_UA_PATH"], ip_path=v["BOTS_IP_PATH"]),
        push=PushConfig(services=tuple(v["PUSH_SERVICES"])),
        sites=_sites(v["SITES"], where["SITES"]),
        trusted_proxies=v["TRUSTED_PROXIES"],
        metrics_networks=v["METRICS_NETWORKS"],
    )
    return Loaded(config, tuple(warnings))


def reference_markdown() -> str:
    """The config reference table for docs/config.md, generated from L{KEYS}."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in KEYS:
        default = json.dumps(key.default)
        lines.append(f"| `{PREFIX}{key.name}` | {key.kind} | `{default}` | {key.doc} |")
    return "\n".join(lines) + "\n"




if __name__ == "__main__":
    print(reference_markdown(), end="")
