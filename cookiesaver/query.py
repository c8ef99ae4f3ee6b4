"""Query strings parsed the way a tracking pixel needs: never raising, never losing the raw bytes.

Pixels receive whatever a page, a mail client or a scanner put in the URL, so
parsing must survive anything and say when it had to guess.

API::

    q = parse_query(request.uri.partition(b"?")[2])   # or a form-encoded body
    q.first("u")          # decoded text of the first "u", or None
    q.values("e")         # every decoded value, in order
    q.raw_values("k")     # the bytes exactly as sent (still percent-encoded)
    q.count("k")          # to refuse a repeated k
    q.malformed           # True when anything below had to be repaired

Decoding, per name and value: C{+} is a space, C{%XX} (either case) is a
byte; a C{%} not followed by two hex digits is kept literally (C{%zz} stays
C{%zz}). The bytes are then read as UTF-8; invalid sequences become U+FFFD
(as browsers do, and valid for MongoDB's UTF-8-only strings), not C{\\xff}
escapes, which a real value could also contain. Each repair sets
C{malformed}. Names are decoded the same way and are the mapping's keys.

Parameters are separated by C{&} only (not C{;}); empty ones are skipped; a
parameter without C{=} has the empty value. Only the first L{MAX_PARAMS} pieces
between C{&}s are read; anything after them is dropped and sets C{malformed}.
"""

from __future__ import annotations

import attrs

#: Most parameters read from one query string.
MAX_PARAMS = 64

#: Decoded parameter names by their raw bytes: pages send the same few names ("site", "e", "url")
#: on every hit. Bounded, and only short names are kept, so a client cannot grow it.
_NAMES: dict[bytes, tuple[str, bool]] = {}
_NAMES_KEPT = 512
_NAME_KEPT_LEN = 32

_HEX = b"0123456789ABCDEFabcdef"
# Every two-hex-digit pair to its byte, built once (the same trick as urllib).
_HEX_PAIRS: dict[bytes, bytes] = {bytes((a, b)): bytes((int(bytes((a, b)), 16),)) for a in _HEX for b in _HEX}


@attrs.define(slots=True)
class Query:
    """Parsed parameters by decoded name, in the order they appeared."""

    raw: dict[str, list[bytes]] = attrs.Factory(dict)
    text: dict[str, list[str]] = attrs.Factory(dict)
    malformed: bool = False

    def count(self, name: str) -> int:
        """How many times C{name} appeared."""
        return len(self.raw.get(name, ()))

    def first(self, name: str, default: str | None = None) -> str | None:
        """The first decoded value of C{name}, or C{default}."""
        values = self.text.get(name)
        return values[0] if values else default

    def values(self, name: str) -> list[str]:
        """Every decoded value of C{name}."""
        return self.text.get(name, [])

    def raw_values(self, name: str) -> list[bytes]:
        """Every value of C{name} as sent, before any decoding."""
        return self.raw.get(name, [])

    def first_raw(self, name: str) -> bytes | None:
        """The first value of C{name} as sent, or None."""
        values = self.raw.get(name)
        return values[0] if values else None


def decode(raw: bytes) -> tuple[str, bool]:
    """
    Form-decode one name or value.

    @return: (text, repaired) where C{repaired} is True when an escape was
        malformed or the bytes were not UTF-8.
    """
    bad = False
    if 43 in raw:  # "+"
        raw = raw.replace(b"+", b" ")
    if 37 in raw:  # "%"
        chunks = raw.split(b"%")
        out = [chunks[0]]
        for chunk in chunks[1:]:
            byte = _HEX_PAIRS.get(chunk[:2])
            if byte is None:
                bad = True
                out.append(b"%")
                out.append(chunk)
            else:
                out.append(byte)
                out.append(chunk[2:])
        raw = b"".join(out)
    try:
        return raw.decode("utf-8"), bad
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), True


def parse_query(raw: bytes) -> Query:
    """Parse an C{application/x-www-form-urlencoded} string. Never raises."""
    query = Query()
    if not raw:
        return query
    parts = raw.split(b"&", MAX_PARAMS)
    malformed = False
    if len(parts) > MAX_PARAMS:
        rest = parts.pop()
        # Trailing empty parameters ("a=1&&&") are harmless; anything else was dropped.
        malformed = bool(rest.strip(b"&"))
    texts = query.text
    raws = query.raw
    names = _NAMES
    for part in parts:
        if not part:
            continue
        name_raw, _, value_raw = part.partition(b"=")
        decoded = names.get(name_raw)
        if decoded is None:
            decoded = decode(name_raw)
            if len(names) < _NAMES_KEPT and len(name_raw) <= _NAME_KEPT_LEN:
                names[name_raw] = decoded
        name, bad = decoded
        if 37 in value_raw or 43 in value_raw:  # "%" or "+" (int membership is the cheap check)
            value, bad_value = decode(value_raw)
            bad = bad or bad_value
        else:
            try:
                value = value_raw.decode("utf-8")
            except UnicodeDecodeError:
                value = value_raw.decode("utf-8", "replace")
                bad = True
        if bad:
            malformed = True
        if name in raws:
            raws[name].append(value_raw)
            texts[name].append(value)
        else:
            raws[name] = [value_raw]
            texts[name] = [value]
    query.malformed = malformed
    return query
