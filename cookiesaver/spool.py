"""The writer's local durable spool: batches MongoDB could not take yet, in SQLite (WAL).

One table of batches ordered by C{seq}, the writer's batch sequence number,
so a batch that failed in flight and was spooled late still drains before
the batches sealed after it. Every SQLite call runs on one dedicated thread
(a 1-thread pool owned by the spool), so request latency never waits on
disk. Durability: C{journal_mode=WAL} with C{synchronous=FULL}: a committed
L{Spool.put} survives kill -9 and power loss (see docs/writer.md).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import attrs
import bson
from bson.raw_bson import RawBSONDocument
from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from cookiesaver.interfaces import DECODE_OPTIONS, EncodedDocument, Upsert

Kind = Literal["insert", "upsert"]
T = TypeVar("T")

log = Logger()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    collection TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    docs INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_seq ON batches (seq);
"""


@attrs.frozen
class SpooledBatch:
    """One batch read back from the spool."""

    id: int
    seq: int
    collection: str
    kind: Kind
    items: tuple[Any, ...]  # EncodedDocuments for "insert", Upserts for "upsert"
    created: float
    bytes: int


@attrs.frozen
class SpoolStats:
    """What the spool holds, kept in memory so reading it costs nothing."""

    docs: int
    bytes: int
    batches: int
    oldest_created: float | None
    last_seq: int


_RAW_OPTIONS: bson.CodecOptions[RawBSONDocument] = bson.CodecOptions(document_class=RawBSONDocument)


def encode_items(kind: Kind, items: Sequence[Any]) -> bytes:
    """
    BSON keeps ObjectId, datetime and binary exact, unlike JSON.

    Inserted documents are encoded bytes (the writer's queue), L{EncodedDocument}s
    or plain dicts: encoded ones are embedded as they are, not encoded again.
    """
    if kind == "insert":
        if items and isinstance(items[0], bytes):
            return _documents_payload(items)
        return bson.encode({"d": list(items)})
    return bson.encode({"u": [{"f": dict(op.filter), "u": dict(op.update)} for op in items]})


def _documents_payload(raws: Sequence[bytes]) -> bytes:
    """C{bson.encode({"d": [documents]})} for documents already encoded: the BSON framing written around their bytes."""
    elements = b"".join(b"\x03%d\x00%s" % (i, raw) for i, raw in enumerate(raws))
    body = b"\x04d\x00" + (len(elements) + 5).to_bytes(4, "little") + elements + b"\x00"
    return (len(body) + 5).to_bytes(4, "little") + body + b"\x00"


def decode_items(kind: Kind, payload: bytes) -> tuple[Any, ...]:
    """
    The inverse of L{encode_items}.

    Inserted documents come back as L{EncodedDocument}s cut from the
    payload, without decoding their fields (the store sends those bytes);
    the format is unchanged, so a spool written when the items were dicts
    replays the same way. Upserts come back as dicts with timezone-aware
    datetimes, as the handlers make them.
    """
    if kind == "insert":
        batch = bson.decode(payload, codec_options=_RAW_OPTIONS)
        return tuple(EncodedDocument(bytes(doc.raw)) for doc in batch["d"])
    body = bson.decode(payload, codec_options=DECODE_OPTIONS)
    return tuple(Upsert(op["f"], op["u"]) for op in body["u"])


class Spool:
    """
    Batches on disk, FIFO by sequence number.

    Call L{open} before use and L{close} at the end (the writer does both in
    its start and stop). Mutating calls return Deferreds run on the spool's
    own thread; L{stats} is synchronous and kept up to date on the reactor
    thread as those Deferreds fire.

    @param path: the SQLite file, normally C{DATA_DIR/spool/spool.sqlite3}.
    @param reactor: the reactor to run the thread pool with; C{None} runs
        every call synchronously in the caller (for unit tests only).
    """

    def __init__(self, path: str, reactor: IReactorFromThreads | None = None) -> None:
        self.path = path
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._db: sqlite3.Connection | None = None
        self._docs = 0
        self._bytes = 0
        self._batches = 0
        self._oldest: float | None = None
        self._last_seq = 0
        self.moved_aside: str | None = None

    # --- running on the spool thread ---------------------------------------------

    def _run(self, f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if self._pool is None:
            return defer.maybeDeferred(f, *args)
        assert self._reactor is not None
        return deferToThreadPool(self._reactor, self._pool, f, *args)  # type: ignore[arg-type]

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"journal_mode is {mode}, not wal")
            db.execute("PRAGMA synchronous=FULL")
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {result}")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _open_sync(self) -> tuple[int, int, int, float | None, int]:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)) or ".", exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as e:
            aside = self._move_aside()
            log.error("spool {path} is unreadable ({error}); moved it to {aside} and started a new one", path=self.path, error=str(e), aside=aside)
            self._db = self._connect()
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(docs), 0), COALESCE(SUM(bytes), 0), MIN(created), COALESCE(MAX(seq), 0) FROM batches").fetchone()
        batches, docs, size, oldest, last_seq = row
        return batches, docs, size, oldest, last_seq

    def _move_aside(self) -> str:
        n = 0
        while True:
            aside = f"{self.path}.corrupt-{n}"
            if not os.path.exists(aside):
                break
            n += 1
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, aside + suffix)
        self.moved_aside = aside
        return aside

    # --- the API -------------------------------------------------------------------

    def open(self) -> defer.Deferred[SpoolStats]:
        """Start the spool thread, open (or recover) the file and load the counters."""
        if self._reactor is not None and self._pool is None:
            self._pool = ThreadPool(minthreads=1, maxthreads=1, name="cookiesaver-spool")
            self._pool.start()

        def loaded(row: tuple[int, int, int, float | None, int]) -> SpoolStats:
            self._batches, self._docs, self._bytes, self._oldest, self._last_seq = row
            return self.stats()

        return self._run(self._open_sync).addCallback(loaded)

    def put(self, seq: int, collection: str, kind: Kind, items: Sequence[Any], created: float) -> defer.Deferred[int]:
        """Append one batch; fires with its row id once committed (fsynced)."""

        def work() -> tuple[int, int]:
            payload = encode_items(kind, items)
            assert self._db is not None
            cur = self._db.execute(
                "INSERT INTO batches (seq, collection, kind, payload, docs, bytes, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, collection, kind, payload, len(items), len(payload), created),
            )
            return int(cur.lastrowid or 0), len(payload)

        def done(result: tuple[int, int]) -> int:
            row_id, size = result
            self._batches += 1
            self._docs += len(items)
            self._bytes += size
            self._last_seq = max(self._last_seq, seq)
            if self._oldest is None or created < self._oldest:
                self._oldest = created
            return row_id

        return self._run(work).addCallback(done)

    def peek_oldest(self) -> defer.Deferred[SpooledBatch | None]:
        """The batch with the lowest sequence number, or None when empty."""

        def work() -> SpooledBatch | None:
            assert self._db is not None
            row = self._db.execute("SELECT id, seq, collection, kind, payload, created, bytes FROM batches ORDER BY seq, id LIMIT 1").fetchone()
            if row is None:
                return None
            row_id, seq, collection, kind, payload, created, size = row
            return SpooledBatch(row_id, seq, collection, kind, decode_items(kind, payload), created, size)

        return self._run(work)

    def delete(self, row_id: int) -> defer.Deferred[None]:
        """Forget one batch (it is in MongoDB now)."""

        def work() -> tuple[int, int, float | None]:
            assert self._db is not None
            row = self._db.execute("SELECT docs, bytes FROM batches WHERE id = ?", (row_id,)).fetchone()
            if row is None:
                return 0, 0, self._oldest
            self._db.execute("DELETE FROM batches WHERE id = ?", (row_id,))
            head = self._db.execute("SELECT created FROM batches ORDER BY seq, id LIMIT 1").fetchone()
            return row[0], row[1], head[0] if head else None

        def done(result: tuple[int, int, float | None]) -> None:
            docs, size, oldest = result
            if docs or size:
                self._batches -= 1
                self._docs -= docs
                self._bytes -= size
            self._oldest = oldest

        return self._run(work).addCallback(done)

    def stats(self) -> SpoolStats:
        """Counters as of the last completed call."""
        return SpoolStats(self._docs, self._bytes, self._batches, self._oldest, self._last_seq)

    def close(self) -> defer.Deferred[None]:
        """Close the file (after every queued call ran) and stop the thread."""

        def work() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        def stop_pool(result: Any) -> Any:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.stop()
            return result

        return self._run(work).addBoth(stop_pool)
