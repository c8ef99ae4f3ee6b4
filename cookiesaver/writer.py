"""The deferred MongoDB writer: the only path from request handlers to MongoDB.

    submit() -> lane (per collection and kind) -> sealed batch (count or age)
        direct mode: write with deadline, one in flight per lane
        spool mode:  spool.put -> drainer writes the oldest batch -> spool.delete

Handlers call L{Writer.submit} / L{Writer.submit_upsert}, which only append to
memory and never wait. The writer leaves direct mode for spool mode when a
write fails (MongoDB down or silent) or memory runs out; in spool mode every
sealed batch goes to the local SQLite spool and one drainer writes batches
back in sequence order with capped, jittered backoff, so order per
collection survives outages and restarts. When the spool is empty again the
writer returns to direct mode. See docs/writer.md.
"""

from __future__ import annotations

import bisect
import random
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import attrs
import bson
from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cookiesaver.config import WriterConfig
from cookiesaver.interfaces import (
    Document,
    EncodedDocument,
    IEventSink,
    IndexSpec,
    IReadinessProbe,
    IStore,
    Rejection,
    StoreUnavailable,
    Upsert,
    WriteOutcome,
)
from cookiesaver.metrics import Metrics
from cookiesaver.spool import Spool, SpooledBatch

Kind = Literal["insert", "upsert"]

log = Logger()

#: The collections the handlers write and the indexes made at start; pass to L{Writer}.
INDEXES: Mapping[str, Sequence[IndexSpec]] = {
    "events": (
        IndexSpec(keys=(("visitor", 1), ("ts", 1)), name="visitor_ts"),
        IndexSpec(keys=(("account", 1), ("profile", 1), ("ts", 1)), name="account_profile_ts"),
        IndexSpec(keys=(("type", 1), ("ts", 1)), name="type_ts"),
    ),
    "visitor_links": (IndexSpec(keys=(("account", 1), ("profile", 1)), name="account_profile"),),
    "push_subscriptions": (
        IndexSpec(keys=(("site", 1), ("active", 1)), name="site_active"),
        IndexSpec(keys=(("visitor", 1),), name="visitor"),
    ),
    "push_events": (IndexSpec(keys=(("message", 1),), name="message"),),
    "dead_letters": (IndexSpec(keys=(("collection", 1), ("at", 1)), name="collection_at"),),
}

#: Faults of the same head batch, while the server answers pings, before it is dead-lettered.
POISON_ATTEMPTS = 10

#: Dead letters keep the refused document up to this size; beyond, only its _id and size.
DEAD_LETTER_MAX_DOC = 256 * 1024

#: Errors that mean "the store did not answer": retry, keep the batch.
FAULTS = (StoreUnavailable, TimeoutError, CancelledError)


@attrs.define(eq=False)
class _Batch:
    """A sealed batch: the unit written, retried, spooled and dead-lettered."""

    seq: int
    collection: str
    kind: Kind
    items: list[Any]  # encoded bytes for "insert" (see L{_documents}), Upserts for "upsert"
    bytes: int
    created: float
    spool_id: int | None = None


def _documents(batch: _Batch) -> list[Any]:
    """
    A batch's items as the store and the spool take them.

    Insert documents wait as their encoded bytes, not as objects: the
    garbage collector does not track bytes, and a full collection walks
    every tracked object, so a queue of 40,000 documents held as
    EncodedDocuments (with their ObjectIds) made full collections of
    20-50 ms under load. They are wrapped only when written (the spool
    frames the bytes as they are).
    """
    if batch.kind == "insert":
        return [EncodedDocument.from_raw(raw) for raw in batch.items]
    return list(batch.items)


@attrs.define(eq=False)
class _Lane:
    """Documents for one collection and kind, waiting to become a batch."""

    collection: str
    kind: Kind
    items: list[Any] = attrs.Factory(list)
    bytes: int = 0
    timer: IDelayedCall | None = None
    queue: deque[_Batch] = attrs.Factory(deque)
    in_flight: bool = False


@implementer(IReadinessProbe)
class WriterReadiness:
    """Readiness of the write path: spool not too deep, MongoDB not down too long."""

    name = "writer"

    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    def ready(self) -> bool:
        """False when the spool holds too much or MongoDB has been unreachable too long."""
        return self._writer.healthy()


@implementer(IEventSink)
class Writer(service.Service):
    """
    Batches documents per collection and writes them to an L{IStore}, spooling when it cannot.

    @param store: where documents go (L{cookiesaver.store.mongo.MongoStore} in production).
    @param spool: the local durable spool; the writer opens and closes it.
    @param clock: time source and scheduler (the reactor in production).
    @param indexes: indexes to ensure per collection at start (normally L{INDEXES}).
    @param dead_letter_collection: where documents MongoDB refused are kept, with the reason.
    @param max_in_flight: direct writes in flight at once across collections.
    @param rng: jitter source (seeded in tests).
    """

    def __init__(
        self,
        store: IStore,
        config: WriterConfig,
        spool: Spool,
        clock: IReactorTime,
        metrics: Metrics,
        indexes: Mapping[str, Sequence[IndexSpec]] = {},
        dead_letter_collection: str = "dead_letters",
        max_in_flight: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.spool = spool
        self.clock = clock
        self.metrics = metrics
        self.indexes = dict(indexes)
        self.dead_letter_collection = dead_letter_collection
        self.max_in_flight = max(1, max_in_flight)
        self.readiness = WriterReadiness(self)
        self._rng = rng or random.Random()
        self._insert_lanes: dict[str, _Lane] = {}
        self._upsert_lanes: dict[str, _Lane] = {}
        self._lanes: list[_Lane] = []
        # Everything in memory: pending, queued, in flight, held, being spooled.
        self._mem_docs = 0
        self._mem_bytes = 0
        self._putting_bytes = 0
        self._puts = 0
        self._seq = 0
        self._in_flight = 0
        self._writes: set[defer.Deferred[Any]] = set()
        self._held: list[_Batch] = []
        self._spooling = False
        self._opened = False
        self._spool_broken = False
        self._draining = False
        self._retry_call: IDelayedCall | None = None
        self._backoff_attempt = 0
        self._head_seq = -1
        self._head_faults = 0
        self._down_since: float | None = None
        self._index_call: IDelayedCall | None = None
        self._index_attempt = 0
        self._state = "new"  # new, running, stopping, forcing, stopped
        self._stop_d: defer.Deferred[None] | None = None
        self._force_call: IDelayedCall | None = None
        metrics.queue_docs.set_function(lambda: self._mem_docs)
        metrics.queue_bytes.set_function(lambda: self._mem_bytes)
        metrics.spool_docs.set_function(lambda: spool.stats().docs)
        metrics.spool_bytes.set_function(lambda: spool.stats().bytes)
        metrics.spool_age.set_function(self._spool_age)

    # --- IEventSink: the hot path ----------------------------------------------------

    def submit(self, collection: str, document: Document | EncodedDocument) -> bool:
        """
        Queue one document for an unordered insert; never waits.

        The document is BSON-encoded here, once (an L{EncodedDocument} is
        taken as it is): the length is the exact size for the memory budget,
        an unencodable document fails here, in the handler that made it,
        rather than poisoning a batch later, and the spool and the store use
        these bytes without encoding again.
        """
        raw = EncodedDocument.encode(document)
        lane = self._insert_lanes.get(collection)
        if lane is None:
            lane = self._insert_lanes[collection] = self._new_lane(collection, "insert")
        return self._accept(lane, raw, len(raw))

    def submit_upsert(self, collection: str, operation: Upsert) -> bool:
        """
        Queue one upsert of state; upserts must be idempotent (they may be replayed).

        Encoded here only for the size: txmongo builds the update command
        from the filter and update as dicts.
        """
        size = len(bson.encode({"f": operation.filter, "u": operation.update}))
        lane = self._upsert_lanes.get(collection)
        if lane is None:
            lane = self._upsert_lanes[collection] = self._new_lane(collection, "upsert")
        return self._accept(lane, operation, size)

    def accepting(self) -> bool:
        """True while memory has room; the spool frees memory as fast as it commits."""
        return self._state != "stopped" and self._mem_docs < self.config.max_queue_docs and self._mem_bytes < self.config.max_queue_bytes

    def _accept(self, lane: _Lane, item: Any, size: int) -> bool:
        if not self._room(size):
            self._make_room()
            if not self._room(size):
                return False
        self._mem_docs += 1
        self._mem_bytes += size
        lane.items.append(item)
        lane.bytes += size
        if len(lane.items) >= self.config.batch_size:
            self._seal(lane)
        elif lane.timer is None:
            lane.timer = self.clock.callLater(self.config.flush_interval, self._seal, lane)
        return True

    def _room(self, size: int) -> bool:
        return (
            self._state != "stopped"
            and self._mem_docs + 1 <= self.config.max_queue_docs
            and self._mem_bytes + size <= self.config.max_queue_bytes
        )

    def _new_lane(self, collection: str, kind: Kind) -> _Lane:
        lane = _Lane(collection, kind)
        self._lanes.append(lane)
        return lane

    # --- batches -----------------------------------------------------------------------

    def _seal(self, lane: _Lane) -> None:
        """Turn a lane's pending documents into a batch (count reached, age reached, or shutdown)."""
        if lane.timer is not None:
            if lane.timer.active():
                lane.timer.cancel()
            lane.timer = None
        if not lane.items:
            return
        self._seq += 1
        batch = _Batch(self._seq, lane.collection, lane.kind, lane.items, lane.bytes, self.clock.seconds())
        lane.items, lane.bytes = [], 0
        if self._spooling:
            self._spill(batch)
        else:
            lane.queue.append(batch)
            self._pump()

    def _make_room(self) -> None:
        """Memory is full: go to spool mode so queued batches move to disk."""
        if not self._spooling and self._can_spool(0):
            log.warn("writer memory full ({docs} documents); spooling", docs=self._mem_docs)
            self._enter_spool_mode()

    def _enter_spool_mode(self) -> None:
        """From now on sealed batches go to the spool; queued ones follow them there, oldest first."""
        self._spooling = True
        for lane in self._lanes:
            while lane.queue:
                self._spill(lane.queue.popleft())
        for lane in self._lanes:
            self._seal(lane)
        self._kick_drain()

    def _write(self, batch: _Batch) -> defer.Deferred[WriteOutcome]:
        """One attempt at writing a batch, with the write deadline."""
        self.metrics.batch_size.observe(len(batch.items))
        if batch.kind == "insert":
            d = defer.maybeDeferred(self.store.insert_many, batch.collection, _documents(batch))
        else:
            d = defer.maybeDeferred(self.store.upsert_many, batch.collection, list(batch.items))
        d.addTimeout(self.config.write_timeout, self.clock)
        self._writes.add(d)

        def forget(result: Any) -> Any:
            self._writes.discard(d)
            return result

        return d.addBoth(forget)

    def _outcome(self, batch: _Batch, outcome: WriteOutcome, started: float) -> None:
        """Count what was stored and dead-letter what MongoDB refused for good."""
        self.metrics.batch_latency.observe(self.clock.seconds() - started)
        self.metrics.stored.labels(batch.collection).inc(outcome.written + len(outcome.duplicates))
        for rejection in outcome.rejected:
            self._dead_letter(batch, rejection)

    def _fault(self, batch: _Batch, failure: Failure) -> None:
        """Log and count a failed attempt; unexpected errors are treated as faults too, with a traceback."""
        kind = "timeout" if failure.check(TimeoutError, CancelledError) else "unavailable"
        if not failure.check(*FAULTS):
            kind = "error"
            log.failure("unexpected error writing {n} documents to {collection}", failure, n=len(batch.items), collection=batch.collection)
        else:
            log.warn("writing {n} documents to {collection} failed ({kind}): {error}", n=len(batch.items), collection=batch.collection, kind=kind, error=failure.getErrorMessage())
        self.metrics.retries.labels(kind).inc()
        if self._down_since is None:
            self._down_since = self.clock.seconds()

    def _dead_letter(self, batch: _Batch, rejection: Rejection) -> None:
        """Keep a refused document with the reason; dead letters never block or fail the batch."""
        if not 0 <= rejection.index < len(batch.items):
            log.error("store rejected index {i} of a {n}-item batch", i=rejection.index, n=len(batch.items))
            return
        item = batch.items[rejection.index]
        if batch.kind == "insert":
            item = EncodedDocument.from_raw(item)
        if batch.collection == self.dead_letter_collection:
            log.error("dead letter refused too ({code}: {reason}); dropped", code=rejection.code, reason=rejection.reason)
            self.metrics.dropped.labels("dead_letter_refused").inc()
            return
        self.metrics.dead_letters.labels(batch.collection).inc()
        log.warn("{collection}: document refused ({code}: {reason}); dead-lettered", collection=batch.collection, code=rejection.code, reason=rejection.reason)
        if batch.kind == "insert":
            key = f"{batch.collection}:{item.decoded().get('_id')}"  # decoded: an embedded-document _id reads as the dict, not RawBSONDocument's repr
            # Embedded as its bytes: the letter holds the document's fields, as they were submitted.
            body: Any = item
            size = len(item.raw)
        else:
            key = f"{batch.collection}:upsert:{batch.seq}:{rejection.index}"
            body = {"filter": dict(item.filter), "update": dict(item.update)}
            size = len(bson.encode(body))
        if size > DEAD_LETTER_MAX_DOC:
            body = {"_id": item.get("_id") if batch.kind == "insert" else None, "truncated_bytes": size}
        letter = {
            "_id": key,
            "collection": batch.collection,
            "kind": batch.kind,
            "code": rejection.code,
            "reason": rejection.reason,
            "at": datetime.fromtimestamp(self.clock.seconds(), UTC),
            "document": body,
        }
        lane = self._insert_lanes.get(self.dead_letter_collection)
        if lane is None:
            lane = self._insert_lanes[self.dead_letter_collection] = self._new_lane(self.dead_letter_collection, "insert")
        # Past the memory budget on purpose: at most one batch's worth, and dropping it would be silent loss.
        encoded = EncodedDocument.encode(letter)
        size = len(encoded)
        self._mem_docs += 1
        self._mem_bytes += size
        lane.items.append(encoded)
        lane.bytes += size
        if len(lane.items) >= self.config.batch_size:
            self._seal(lane)
        elif lane.timer is None:
            lane.timer = self.clock.callLater(self.config.flush_interval, self._seal, lane)

    def _release(self, batch: _Batch) -> None:
        self._mem_docs -= len(batch.items)
        self._mem_bytes -= batch.bytes

    # --- direct mode -------------------------------------------------------------------

    def _pump(self) -> None:
        """Start direct writes: one per lane, at most C{max_in_flight} in all."""
        if not self._opened or self._spooling or self._state in ("forcing", "stopped"):
            return
        for lane in self._lanes:
            if self._in_flight >= self.max_in_flight:
                return
            if lane.queue and not lane.in_flight:
                self._write_direct(lane, lane.queue.popleft())

    def _write_direct(self, lane: _Lane, batch: _Batch) -> None:
        lane.in_flight = True
        self._in_flight += 1
        started = self.clock.seconds()

        def written(outcome: WriteOutcome) -> None:
            self._down_since = None
            self._outcome(batch, outcome, started)
            self._release(batch)

        def failed(failure: Failure) -> None:
            self._fault(batch, failure)
            # Spool it before this write counts as finished, so the drainer sees it in seq order.
            if not self._spooling:
                self._enter_spool_mode()
            self._spill(batch)

        def finished(_: Any) -> None:
            lane.in_flight = False
            self._in_flight -= 1
            self._pump()
            self._kick_drain()
            self._check_stop()

        self._write(batch).addCallbacks(written, failed).addBoth(finished).addErrback(self._log_failure, "direct write")

    # --- spool mode ----------------------------------------------------------------------

    def _can_spool(self, size: int) -> bool:
        if not self._opened or self._spool_broken or self._state == "stopped":
            return False
        return self.spool.stats().bytes + self._putting_bytes + size <= self.config.spool_max_bytes

    def _spill(self, batch: _Batch) -> None:
        """Send a batch to the spool; if the spool cannot take it, keep it in memory for the drainer."""
        if batch.spool_id is not None:
            return
        if not self._can_spool(batch.bytes):
            self._hold(batch)
            return
        self._puts += 1
        self._putting_bytes += batch.bytes

        def put(row_id: int) -> None:
            self._release(batch)

        def failed(failure: Failure) -> None:
            log.failure("spool put of {n} documents failed; keeping them in memory", failure, n=len(batch.items))
            self._hold(batch)

        def finished(_: Any) -> None:
            self._puts -= 1
            self._putting_bytes -= batch.bytes
            self._kick_drain()
            self._check_stop()

        self.spool.put(batch.seq, batch.collection, batch.kind, batch.items, batch.created).addCallbacks(put, failed).addBoth(finished).addErrback(
            self._log_failure, "spool put"
        )

    def _hold(self, batch: _Batch) -> None:
        bisect.insort(self._held, batch, key=lambda b: b.seq)

    def _kick_drain(self) -> None:
        """Write the oldest batch (spool head or held in memory) unless a write or retry is pending."""
        if (
            not self._spooling
            or self._draining
            or self._in_flight
            or (self._retry_call is not None and self._retry_call.active())
            or self._state in ("forcing", "stopped")
        ):
            return
        self._draining = True
        if self.spool.stats().batches or self._puts:
            d: defer.Deferred[SpooledBatch | None] = self.spool.peek_oldest()
        else:
            d = defer.succeed(None)
        d.addCallback(self._drain_head).addErrback(self._drain_failed)

    def _drain_head(self, spooled: SpooledBatch | None) -> defer.Deferred[None] | None:
        batch: _Batch | None = None
        if spooled is not None:
            items = [doc.raw for doc in spooled.items] if spooled.kind == "insert" else list(spooled.items)
            batch = _Batch(spooled.seq, spooled.collection, spooled.kind, items, spooled.bytes, spooled.created, spooled.id)
        if self._held and (batch is None or self._held[0].seq < batch.seq):
            batch = self._held[0]
        if batch is None:
            self._draining = False
            if not self._puts:
                self._spooling = False
                self._backoff_attempt = 0
                log.info("spool drained; writing directly again")
                self._pump()
                self._check_stop()
            return None
        started = self.clock.seconds()
        return self._write(batch).addCallbacks(self._drained, self._drain_fault, callbackArgs=(batch, started), errbackArgs=(batch,))

    def _drained(self, outcome: WriteOutcome, batch: _Batch, started: float) -> defer.Deferred[None] | None:
        self._down_since = None
        self._backoff_attempt = 0
        self._head_faults = 0
        self._outcome(batch, outcome, started)
        return self._forget(batch)

    def _forget(self, batch: _Batch) -> defer.Deferred[None] | None:
        """Remove a finished batch from wherever it was kept, then drain on."""

        def next_one(_: Any = None) -> None:
            self._draining = False
            self._kick_drain()
            self._check_stop()

        if batch.spool_id is not None:
            return self.spool.delete(batch.spool_id).addCallback(next_one)
        self._held.remove(batch)
        self._release(batch)
        next_one()
        return None

    def _drain_fault(self, failure: Failure, batch: _Batch) -> defer.Deferred[None] | None:
        self._fault(batch, failure)
        if self._state in ("forcing", "stopped"):
            self._draining = False
            self._check_stop()
            return None
        if batch.seq != self._head_seq:
            self._head_seq, self._head_faults = batch.seq, 0
        self._head_faults += 1
        if self._head_faults >= POISON_ATTEMPTS:
            return self._maybe_poison(batch, failure)
        self._retry_later()
        return None

    def _maybe_poison(self, batch: _Batch, failure: Failure) -> defer.Deferred[None]:
        """A batch that keeps failing while the server answers is poison: dead-letter it rather than retry forever."""

        def answered(_: Any) -> defer.Deferred[None] | None:
            log.error("batch {seq} of {collection} failed {n} times while MongoDB answers pings; dead-lettering it", seq=batch.seq, collection=batch.collection, n=self._head_faults)
            self._head_faults = 0
            reason = f"write failed {POISON_ATTEMPTS} times: {failure.getErrorMessage()}"
            for i in range(len(batch.items)):
                self._dead_letter(batch, Rejection(i, 0, reason))
            return self._forget(batch)

        def silent(_: Failure) -> None:
            self._retry_later()

        d = defer.maybeDeferred(self.store.ping)
        d.addTimeout(self.config.write_timeout, self.clock)
        return d.addCallbacks(answered, silent)

    def _retry_later(self) -> None:
        """Capped exponential backoff with jitter (between half and all of the step)."""
        step = min(self.config.backoff_max, self.config.backoff_initial * (2**self._backoff_attempt))
        self._backoff_attempt = min(self._backoff_attempt + 1, 62)
        delay = step * self._rng.uniform(0.5, 1.0)
        self._draining = False
        self._retry_call = self.clock.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_call = None
        self._kick_drain()

    def _drain_failed(self, failure: Failure) -> None:
        """The spool itself failed (read or delete): log, back off, try again."""
        log.failure("spool drain step failed", failure)
        if self._state in ("forcing", "stopped"):
            self._draining = False
            self._check_stop()
            return
        self._retry_later()

    # --- indexes ---------------------------------------------------------------------------

    def _ensure_indexes(self) -> None:
        """Create the indexes, retrying in the background: a down MongoDB must not block start."""
        self._index_call = None
        if self._state != "running" or not self.indexes:
            return

        def ensure(_: object, collection: str, specs: Sequence[IndexSpec]) -> defer.Deferred[Any]:
            return defer.maybeDeferred(self.store.ensure_indexes, collection, list(specs)).addTimeout(self.config.write_timeout, self.clock)

        def each() -> defer.Deferred[None]:
            d: defer.Deferred[Any] = defer.succeed(None)
            for collection, specs in self.indexes.items():
                d.addCallback(ensure, collection, specs)
            return d

        def done(_: Any) -> None:
            log.info("indexes ensured on {n} collections", n=len(self.indexes))

        def failed(failure: Failure) -> None:
            log.warn("ensuring indexes failed ({error}); will retry", error=failure.getErrorMessage())
            step = min(self.config.backoff_max, self.config.backoff_initial * (2**self._index_attempt))
            self._index_attempt = min(self._index_attempt + 1, 62)
            if self._state == "running":
                self._index_call = self.clock.callLater(step * self._rng.uniform(0.5, 1.0), self._ensure_indexes)

        each().addCallbacks(done, failed).addErrback(self._log_failure, "ensure indexes")

    # --- lifecycle -------------------------------------------------------------------------

    def startService(self) -> None:
        """Open the spool (replaying what it holds), start writing, ensure indexes."""
        super().startService()
        self._state = "running"
        self._ensure_indexes()
        self.spool.open().addCallbacks(self._spool_opened, self._spool_failed).addErrback(self._log_failure, "spool open")

    def _spool_opened(self, stats: Any) -> None:
        # Batches sealed before the spool opened were numbered from 0: move them after the spooled ones.
        for lane in self._lanes:
            for batch in lane.queue:
                batch.seq += stats.last_seq
        self._seq += stats.last_seq
        self._opened = True
        if stats.batches:
            log.info("spool holds {docs} documents in {batches} batches; replaying", docs=stats.docs, batches=stats.batches)
            self._enter_spool_mode()
        else:
            self._pump()
        self._check_stop()

    def _spool_failed(self, failure: Failure) -> None:
        log.failure("spool unusable; running without it (outages now cost memory, then submits)", failure)
        self._spool_broken = True
        self._opened = True
        self._pump()
        self._check_stop()

    def stopService(self) -> defer.Deferred[None]:
        """Flush memory to MongoDB within shutdown_timeout, spool the rest, close the spool; fires when done."""
        super().stopService()
        if self._stop_d is not None:
            return self._stop_d
        self._stop_d = defer.Deferred()
        self._state = "stopping"
        if self._index_call is not None and self._index_call.active():
            self._index_call.cancel()
        self._force_call = self.clock.callLater(self.config.shutdown_timeout, self._force)
        for lane in self._lanes:
            self._seal(lane)
        self._check_stop()
        return self._stop_d

    def _force(self) -> None:
        """Shutdown deadline: give up on MongoDB, spool everything still in memory."""
        self._force_call = None
        if self._state != "stopping":
            return
        log.warn("shutdown deadline: spooling {docs} documents still in memory", docs=self._mem_docs)
        self._state = "forcing"
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        for d in list(self._writes):
            d.cancel()
        self._spooling = True
        for lane in self._lanes:
            while lane.queue:
                self._spill(lane.queue.popleft())
        for held in list(self._held):
            if held.spool_id is None and self._can_spool(held.bytes):
                self._held.remove(held)
                self._spill(held)
        self._check_stop()

    def _check_stop(self) -> None:
        """Finish stopping once nothing is in memory, in flight or on its way to disk."""
        if self._state not in ("stopping", "forcing") or not self._opened:
            return
        if self._in_flight or self._puts or any(lane.queue or lane.items for lane in self._lanes):
            return
        if self._state == "stopping" and self._held:
            return  # the drainer may still get them to MongoDB before the deadline
        if self._state == "forcing" and self._draining:
            return  # a spool step (delete) is finishing
        if self._held:
            docs = sum(len(b.items) for b in self._held)
            log.error("shutdown: spool full or broken; dropping {docs} documents", docs=docs)
            self.metrics.dropped.labels("shutdown").inc(docs)
            for b in self._held:
                self._release(b)
            self._held.clear()
        self._finish()

    def _finish(self) -> None:
        if self._state == "stopped":
            return
        self._state = "stopped"
        if self._force_call is not None and self._force_call.active():
            self._force_call.cancel()
        self._force_call = None
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        for d in list(self._writes):
            d.cancel()
        stop_d = self._stop_d
        assert stop_d is not None

        def closed(result: Any) -> None:
            if isinstance(result, Failure):
                log.failure("closing the spool failed", result)
            stop_d.callback(None)

        self.spool.close().addBoth(closed).addErrback(self._log_failure, "spool close")

    # --- readiness and introspection ------------------------------------------------------

    def healthy(self) -> bool:
        """The readiness rule: spool not deeper than readiness_spool_docs, MongoDB not down longer than readiness_mongo_down."""
        if self.spool.stats().docs > self.config.readiness_spool_docs:
            return False
        down_too_long = self._down_since is not None and self.clock.seconds() - self._down_since > self.config.readiness_mongo_down
        return not down_too_long

    @property
    def spooling(self) -> bool:
        """True while batches go through the spool (MongoDB failed, or memory ran out)."""
        return self._spooling

    @property
    def memory(self) -> tuple[int, int]:
        """Documents and approximate bytes in memory."""
        return self._mem_docs, self._mem_bytes

    def _spool_age(self) -> float:
        oldest = self.spool.stats().oldest_created
        return 0.0 if oldest is None else max(0.0, self.clock.seconds() - oldest)

    @staticmethod
    def _log_failure(failure: Failure, what: str) -> None:
        log.failure("writer: {what} chain failed", failure, what=what)
