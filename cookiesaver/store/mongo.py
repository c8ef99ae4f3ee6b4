"""L{IStore} over txmongo: the only module that talks the MongoDB wire protocol.

Every operation has a deadline (MONGO_TIMEOUT) on the injected clock, and
every driver or network error becomes either L{StoreUnavailable} (retry the
whole call) or a per-document L{Rejection} inside the L{WriteOutcome} (never
retry that document). Nothing here relies on behaviour a real mongod lacks:
the same code runs against SecantusDB's secantusd-py and MongoDB.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import bson
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    NetworkTimeout,
    NotPrimaryError,
    OperationFailure,
)
from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cookiesaver.config import MongoConfig
from cookiesaver.interfaces import (
    Document,
    EncodedDocument,
    IndexSpec,
    IStore,
    Rejection,
    StoreUnavailable,
    Upsert,
    WriteOutcome,
)

log = Logger()
T = TypeVar("T")

#: MongoDB's document size limit; larger documents are refused before sending.
MAX_BSON_SIZE = 16 * 1024 * 1024
DUPLICATE_KEY = 11000
TOO_LARGE = 10334
#: Server codes that mean "not now" rather than "not this": shutting down, stepping down, not primary.
TRANSIENT_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
#: Index already exists with other options: a deployment problem to log, not a reason to retry forever.
INDEX_CONFLICT_CODES = frozenset({85, 86})

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    AutoReconnect,
    ConnectionFailure,
    NotPrimaryError,
    NetworkTimeout,
    error.ConnectionLost,
    error.ConnectionDone,
    error.ConnectError,
    defer.TimeoutError,
    CancelledError,
)


def _is_duplicate_id(write_error: Mapping[str, Any]) -> bool:
    """A duplicate key on C{_id} (our own id: an earlier attempt landed), not on another unique index."""
    if write_error.get("code") != DUPLICATE_KEY:
        return False
    pattern = write_error.get("keyPattern")
    if isinstance(pattern, Mapping):
        return list(pattern) == ["_id"]
    message = str(write_error.get("errmsg", ""))
    return "_id_" in message or "_id" in message


def outcome_from_bulk_error(details: Mapping[str, Any], written: int, index_map: Sequence[int]) -> WriteOutcome:
    """
    Read a BulkWriteError's writeErrors into a L{WriteOutcome}.

    @param written: documents the server reports as written.
    @param index_map: position in the sent list -> position in the caller's list.
    """
    if details.get("writeConcernErrors"):
        raise StoreUnavailable(f"write concern error: {details['writeConcernErrors'][0].get('errmsg', '')}")
    duplicates: list[int] = []
    rejected: list[Rejection] = []
    for we in details.get("writeErrors", []):
        index = index_map[we["index"]]
        if _is_duplicate_id(we):
            duplicates.append(index)
        elif we.get("code") in TRANSIENT_CODES:
            raise StoreUnavailable(f"transient write error {we.get('code')}: {we.get('errmsg', '')}")
        else:
            rejected.append(Rejection(index, int(we.get("code") or 0), str(we.get("errmsg", ""))))
    return WriteOutcome(written, tuple(duplicates), tuple(rejected))


@implementer(IStore)
class MongoStore(service.Service):
    """
    The production L{IStore}: a txmongo ConnectionPool, connected in startService.

    @param config: URI, database name and per-operation deadline.
    @param clock: for deadlines (the reactor in production).
    @param retry_delay: first reconnect delay in seconds; txmongo also uses it as the connect timeout.
    @param max_delay: longest reconnect delay, so recovery after an outage is noticed within seconds.
    """

    def __init__(self, config: MongoConfig, clock: IReactorTime, retry_delay: float = 1.0, max_delay: float = 2.0, pool_size: int = 1) -> None:
        self.config = config
        self.clock = clock
        self.retry_delay = retry_delay
        self.max_delay = max_delay
        self.pool_size = pool_size
        self._pool: Any = None
        self._db: Any = None

    def startService(self) -> None:
        """Connect (the pool connects and reconnects by itself from here on)."""
        super().startService()
        # txmongo imports the global reactor at module level: import it only when the service runs.
        from txmongo.connection import ConnectionPool

        self._pool = ConnectionPool(self.config.uri, pool_size=self.pool_size, retry_delay=self.retry_delay, max_delay=self.max_delay)
        self._db = self._pool[self.config.db]

    def stopService(self) -> defer.Deferred[None]:
        """Disconnect; fires when the connections are closed."""
        super().stopService()
        pool, self._pool, self._db = self._pool, None, None
        if pool is None:
            return defer.succeed(None)
        d = defer.maybeDeferred(pool.disconnect)
        d.addTimeout(self.config.timeout, self.clock)

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                log.failure("MongoDB disconnect failed", result)

        return d.addBoth(done)

    # --- the deadline and the error map ------------------------------------------------

    def _call(self, what: str, f: Callable[[], Any], on_bulk_error: Callable[[BulkWriteError], T] | None = None) -> defer.Deferred[Any]:
        if self._db is None:
            return defer.fail(StoreUnavailable("MongoDB store is not running"))
        d = defer.maybeDeferred(f)
        d.addTimeout(self.config.timeout, self.clock)

        def mapped(failure: Failure) -> Any:
            if on_bulk_error is not None and failure.check(BulkWriteError):
                return on_bulk_error(failure.value)  # type: ignore[arg-type]
            if failure.check(*_UNAVAILABLE):
                raise StoreUnavailable(f"{what}: {type(failure.value).__name__}: {failure.getErrorMessage()}")
            if failure.check(OperationFailure) and getattr(failure.value, "code", None) in TRANSIENT_CODES:
                raise StoreUnavailable(f"{what}: {failure.getErrorMessage()}")
            if failure.check(Exception) and type(failure.value).__name__ == "TimeExceeded":
                raise StoreUnavailable(f"{what}: deadline exceeded")
            return failure

        return d.addErrback(mapped)

    # --- IStore ------------------------------------------------------------------------

    def insert_many(self, collection: str, documents: Sequence[Mapping[str, Any]]) -> defer.Deferred[WriteOutcome]:
        """
        Unordered insert; oversized documents are rejected here, the rest are sent.

        Documents are sent as L{EncodedDocument}s, whose bytes txmongo copies
        instead of encoding: the writer's are used as they are (the size is
        their length), a plain dict is encoded here, once.
        """
        send: list[EncodedDocument] = []
        index_map: list[int] = []
        rejected: list[Rejection] = []
        for i, doc in enumerate(documents):
            try:
                encoded = EncodedDocument.of(doc)
            except (bson.InvalidDocument, DocumentTooLarge, OverflowError, UnicodeEncodeError) as e:
                rejected.append(Rejection(i, 2, f"not encodable as BSON: {e}"))
                continue
            size = len(encoded.raw)
            if size > MAX_BSON_SIZE:
                rejected.append(Rejection(i, TOO_LARGE, f"document is {size} bytes, over the {MAX_BSON_SIZE}-byte limit"))
                continue
            send.append(encoded)
            index_map.append(i)
        if not send:
            return defer.succeed(WriteOutcome(0, (), tuple(rejected)))

        def add_rejected(outcome: WriteOutcome) -> WriteOutcome:
            return WriteOutcome(outcome.written, outcome.duplicates, tuple(rejected) + outcome.rejected)

        def on_error(e: BulkWriteError) -> WriteOutcome:
            return add_rejected(outcome_from_bulk_error(e.details, int(e.details.get("nInserted", 0)), index_map))

        def ok(result: Any) -> WriteOutcome:
            return add_rejected(WriteOutcome(len(send)))

        return self._call(f"insert into {collection}", lambda: self._db[collection].insert_many(send, ordered=False).addCallback(ok), on_error)

    def upsert_many(self, collection: str, operations: Sequence[Upsert]) -> defer.Deferred[WriteOutcome]:
        """Unordered bulk of C{UpdateOne(upsert=True)}."""
        from pymongo import UpdateOne

        requests = [UpdateOne(dict(op.filter), dict(op.update), upsert=True) for op in operations]
        if not requests:
            return defer.succeed(WriteOutcome(0))
        index_map = list(range(len(requests)))

        def ok(result: Any) -> WriteOutcome:
            return WriteOutcome(int(result.upserted_count) + int(result.matched_count))

        def on_error(e: BulkWriteError) -> WriteOutcome:
            written = int(e.details.get("nUpserted", 0)) + int(e.details.get("nMatched", 0))
            return outcome_from_bulk_error(e.details, written, index_map)

        return self._call(f"upsert into {collection}", lambda: self._db[collection].bulk_write(requests, ordered=False).addCallback(ok), on_error)

    def ensure_indexes(self, collection: str, indexes: Sequence[IndexSpec]) -> defer.Deferred[None]:
        """createIndexes is idempotent for identical specs; a conflicting existing index is logged, not retried."""
        specs = []
        for spec in indexes:
            index: dict[str, Any] = {"key": bson.SON(list(spec.keys)), "name": spec.name}
            if spec.unique:
                index["unique"] = True
            if spec.expire_after_seconds is not None:
                index["expireAfterSeconds"] = spec.expire_after_seconds
            specs.append(index)
        if not specs:
            return defer.succeed(None)

        def conflict(failure: Failure) -> Any:
            if failure.check(OperationFailure) and getattr(failure.value, "code", None) in INDEX_CONFLICT_CODES:
                log.error("index conflict on {collection}: {error}; leaving the existing index", collection=collection, error=failure.getErrorMessage())
                return None
            return failure

        d = self._call(f"createIndexes on {collection}", lambda: self._db.command("createIndexes", collection, indexes=specs))
        return d.addErrback(conflict).addCallback(lambda _: None)

    def ping(self) -> defer.Deferred[None]:
        """C{{ping: 1}} on our database."""
        return self._call("ping", lambda: self._db.command("ping")).addCallback(lambda _: None)

    def find(self, collection: str, query: Mapping[str, Any], limit: int = 0) -> defer.Deferred[list[Document]]:
        """Read documents back (tools and tests)."""
        return self._call(f"find in {collection}", lambda: self._db[collection].find(dict(query), limit=limit))
