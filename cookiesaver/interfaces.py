"""The edges of cookiesaver: what the rest of the code may ask of MongoDB and of the writer.

Request handlers only ever see L{IEventSink}; only the writer sees L{IStore}.
Both have in-memory implementations in L{cookiesaver.testing}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

import attrs
import bson
from bson.raw_bson import RawBSONDocument
from zope.interface import Attribute, Interface

Document = dict[str, Any]

#: How stored BSON reads back into dicts: timezone-aware UTC datetimes, as the handlers make them.
DECODE_OPTIONS: bson.CodecOptions[Document] = bson.CodecOptions(tz_aware=True, tzinfo=UTC)
_RAW_OPTIONS: bson.CodecOptions[RawBSONDocument] = bson.CodecOptions(document_class=RawBSONDocument, tz_aware=True, tzinfo=UTC)
_UNKNOWN: Any = object()
#: A BSON document whose first element is an ObjectId named _id: type 0x07, then "_id" and NUL.
_OBJECTID_ID_FIRST = b"\x07_id\x00"
#: The same with a string _id (type 0x02: int32 length including the NUL, the UTF-8 bytes, NUL).
_STRING_ID_FIRST = b"\x02_id\x00"


class EncodedDocument(RawBSONDocument):
    """
    A document BSON-encoded once, when it is submitted; its bytes are what the spool and MongoDB get.

    pymongo's C{bson.encode} copies a RawBSONDocument's bytes instead of
    encoding it again, so the spool (C{{"d": [documents]}}) and txmongo's
    insert embed these bytes as they are. txmongo also reads C{doc.get("_id")}
    of every document it inserts: a plain RawBSONDocument decodes itself
    whole for that (about 9 us for an event, more than the encode it saves),
    so this one answers C{_id} from the value it was encoded with. Any other
    field decodes lazily, as in RawBSONDocument; L{decoded} gives a plain dict.
    """

    __slots__ = ("_known_id",)

    def __init__(self, bson_bytes: bytes, document_id: Any = _UNKNOWN) -> None:
        super().__init__(bson_bytes, _RAW_OPTIONS)
        self._known_id = document_id

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> EncodedDocument:
        """
        Encode a document once (an encoded one is returned as it is).

        A dict without C{_id} gets an ObjectId first, so the id is fixed
        before the first attempt (txmongo cannot add one to encoded bytes).

        @raise bson.errors.InvalidDocument: (or C{OverflowError},
            C{UnicodeEncodeError}) for a document MongoDB could not store.
        """
        if isinstance(document, EncodedDocument):
            return document
        return cls.from_raw(cls.encode(document))

    @staticmethod
    def encode(document: Mapping[str, Any]) -> bytes:
        """The bytes L{of} would hold: encoded once, an C{_id} added first when missing."""
        if isinstance(document, RawBSONDocument):
            return bytes(document.raw)
        if "_id" not in document:
            document = {"_id": bson.ObjectId(), **document}
        return bson.encode(document)

    @classmethod
    def from_raw(cls, raw: bytes) -> EncodedDocument:
        """Wrap bytes from L{encode}; an ObjectId or string C{_id} stored first is read without decoding the rest."""
        first = raw[4:9]
        if first == _OBJECTID_ID_FIRST:
            return cls(raw, bson.ObjectId(raw[9:21]))
        if first == _STRING_ID_FIRST:
            length = int.from_bytes(raw[9:13], "little")
            return cls(raw, raw[13 : 12 + length].decode("utf-8"))
        return cls(raw)

    def __getitem__(self, key: str) -> Any:
        if key == "_id" and self._known_id is not _UNKNOWN:
            return self._known_id
        return super().__getitem__(key)

    def decoded(self) -> Document:
        """The document as a plain dict, nested documents included, with timezone-aware datetimes."""
        return bson.decode(self.raw, codec_options=DECODE_OPTIONS)


class StoreUnavailable(Exception):
    """
    A transient failure: network error, not-primary, timeout, reconnecting.

    The whole operation may be retried; nothing about which documents were
    written can be concluded.
    """


@attrs.frozen
class Upsert:
    """One upsert: C{update} (an update document with operators) applied to the document matching C{filter}."""

    filter: Mapping[str, Any]
    update: Mapping[str, Any]


@attrs.frozen
class Rejection:
    """One document MongoDB refused on its own merits (too large, invalid): retrying will not help."""

    index: int
    code: int
    reason: str


@attrs.frozen
class WriteOutcome:
    """
    The result of one unordered batch.

    @ivar written: documents inserted or upserted by this call.
    @ivar duplicates: indexes refused with a duplicate-key error on C{_id}:
        for our own ids this means an earlier, ambiguous attempt already
        stored them, which counts as success.
    @ivar rejected: documents refused for good.
    """

    written: int
    duplicates: tuple[int, ...] = ()
    rejected: tuple[Rejection, ...] = ()


@attrs.frozen
class IndexSpec:
    """An index the writer makes sure exists at start (idempotent)."""

    keys: tuple[tuple[str, int], ...]
    name: str
    unique: bool = False
    expire_after_seconds: int | None = None


class IStore(Interface):
    """
    The small part of MongoDB cookiesaver uses.

    Every method returns a Deferred that fires within the store's own deadline;
    transient failures errback with L{StoreUnavailable}.
    """

    def insert_many(collection: str, documents: Sequence[Mapping[str, Any]]) -> Any:
        """
        Unordered insert; fires with L{WriteOutcome}.

        The writer passes L{EncodedDocument}s (stores must not encode them
        again); plain dicts are accepted too.
        """

    def upsert_many(collection: str, operations: Sequence[Upsert]) -> Any:
        """Unordered bulk of upserts; fires with L{WriteOutcome}."""

    def ensure_indexes(collection: str, indexes: Sequence[IndexSpec]) -> Any:
        """Create the indexes if missing; fires with None."""

    def ping() -> Any:
        """Prove the write path is reachable; fires with None."""

    def find(collection: str, query: Mapping[str, Any], limit: int = 0) -> Any:
        """Read documents back (operations tools and tests, never a request's hot path)."""


class IEventSink(Interface):
    """
    Where request handlers put documents. Never blocks, never waits for MongoDB.

    The return value says whether the document was accepted. C{False} means
    backpressure: memory and spool are both full. The caller decides what that
    means for its response (interactive endpoints still answer and count the
    drop with reason C{overload}; non-interactive ones answer 503).
    """

    def submit(collection: str, document: Document | EncodedDocument) -> bool:
        """
        Queue one document for an unordered insert. C{document["_id"]} must already be set.

        A handler that already encoded the document (to prove a whole batch
        storable) passes the L{EncodedDocument}, so it is not encoded twice.
        An unencodable document raises here, in the handler that made it.
        """

    def submit_upsert(collection: str, operation: Upsert) -> bool:
        """Queue one upsert of state (visitor link, push subscription)."""

    def accepting() -> bool:
        """True when a submit would be accepted right now."""


class IReadinessProbe(Interface):
    """A part of the service that readiness checks."""

    name = Attribute("Short name used in the readiness body, e.g. C{mongodb}.")

    def ready() -> bool:
        """True while this part works."""
