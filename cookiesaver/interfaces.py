"""The edges of cookiesaver: what the rest of the code may ask of MongoDB and of the writer.

Request handlers only ever see L{IEventSink}; only the writer sees L{IStore}.
Both have in-memory implementations in L{cookiesaver.testing}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from zope.interface import Attribute, Interface

Document = dict[str, Any]


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

    def insert_many(collection: str, documents: Sequence[Document]) -> Any:
        """Unordered insert; fires with L{WriteOutcome}."""

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

    def submit(collection: str, document: Document) -> bool:
        """Queue one document for an unordered insert. C{document["_id"]} must already be set."""

    def submit_upsert(collection: str, operation: Upsert) -> bool:
        """Queue one upsert of state (visitor link, push subscription)."""

    def accepting() -> bool:
        """True when a submit would be accepted right now."""


class IReadinessProbe(Interface):
    """A part of the service that readiness checks."""

    name = Attribute("Short name used in the readiness body, e.g. C{mongodb}.")

    def ready() -> bool:
        """True while this part works."""
