"""The deferred MongoDB writer, driven by a task.Clock against MemoryStore and a synchronous spool."""

from __future__ import annotations

import datetime
import os
import random
from typing import Any

import attrs
import bson
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cookiesaver.config import WriterConfig
from cookiesaver.interfaces import (
    EncodedDocument,
    IEventSink,
    IReadinessProbe,
    StoreUnavailable,
    Upsert,
)
from cookiesaver.metrics import Metrics
from cookiesaver.spool import Spool
from cookiesaver.testing import MemoryStore
from cookiesaver.writer import INDEXES, Writer

CONFIG = WriterConfig(
    batch_size=3,
    flush_interval=0.1,
    max_queue_docs=100,
    max_queue_bytes=1 << 20,
    write_timeout=5.0,
    backoff_initial=0.2,
    backoff_max=2.0,
    spool_max_bytes=1 << 20,
    shutdown_timeout=3.0,
    readiness_spool_docs=10,
    readiness_mongo_down=5.0,
)


def event(n: int, **extra: Any) -> dict[str, Any]:
    return {"_id": f"e{n}", "n": n, **extra}


class WriterTestsMixin:
    """Builds a writer over MemoryStore and a synchronous spool in a temporary directory."""

    def make(self, config: WriterConfig = CONFIG, start: bool = True, spool_path: str | None = None, **kwargs: Any) -> Writer:
        self.clock = task.Clock()
        self.store = getattr(self, "store", None) or MemoryStore()
        self.metrics = Metrics()
        self.spool_path = spool_path or os.path.join(self.mktemp(), "spool.sqlite3")  # type: ignore[attr-defined]
        self.spool = Spool(self.spool_path)
        self.writer = Writer(self.store, config, self.spool, self.clock, self.metrics, rng=random.Random(1), **kwargs)
        if start:
            self.writer.startService()
        return self.writer

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return value or 0.0

    def run_for(self, seconds: float, step: float = 0.05) -> None:
        """Advance the clock in small steps, so calls scheduled along the way run too."""
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)

    def events(self) -> list[int]:
        return [d["n"] for d in self.store.documents("events")]


class BatchingTests(WriterTestsMixin, SynchronousTestCase):
    def test_interfaces(self) -> None:
        """The writer is an IEventSink and its readiness an IReadinessProbe named writer."""
        w = self.make()
        verifyObject(IEventSink, w)
        verifyObject(IReadinessProbe, w.readiness)
        self.assertEqual(w.readiness.name, "writer")

    def test_flush_by_count(self) -> None:
        """A batch is written as soon as batch_size documents are queued, without waiting for the timer."""
        w = self.make()
        for n in range(3):
            self.assertTrue(w.submit("events", event(n)))
        self.assertEqual(self.events(), [0, 1, 2])
        self.assertEqual(self.store.calls[-1], ("insert_many", "events", 3))
        self.assertEqual(w.memory, (0, 0))
        self.assertEqual(self.sample("cookiesaver_writer_stored_total", {"collection": "events"}), 3)

    def test_submit_encodes_once_and_hands_the_bytes_on(self) -> None:
        """submit encodes a document once; the store gets those bytes (an EncodedDocument), with the memory budget their length."""
        self.store = MemoryStore()
        sent: list[Any] = []
        insert_many = self.store.insert_many

        def recording(collection: str, documents: Any) -> Any:
            sent.extend(documents)
            return insert_many(collection, documents)

        self.store.insert_many = recording  # type: ignore[method-assign]
        w = self.make(start=False)
        doc = event(1, ts=datetime.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=datetime.UTC), props={"a": [1, {"b": bson.ObjectId()}]})
        self.assertTrue(w.submit("events", doc))
        self.assertEqual(w.memory, (1, len(bson.encode(doc))))
        w.startService()
        self.clock.advance(0.1)
        [item] = sent
        self.assertIsInstance(item, EncodedDocument)
        self.assertEqual(item.raw, bson.encode(doc))
        self.assertEqual(self.store.documents("events"), [doc])

    def test_submit_takes_an_encoded_document_as_is(self) -> None:
        """A handler that already encoded a document hands over that EncodedDocument; it is not encoded again."""
        w = self.make()
        encoded = EncodedDocument.of(event(1))
        self.assertTrue(w.submit("events", encoded))
        self.assertEqual(w.memory, (1, len(encoded.raw)))
        self.clock.advance(0.1)
        self.assertEqual(self.store.documents("events"), [event(1)])

    def test_unencodable_document_fails_in_submit(self) -> None:
        """A document BSON cannot hold raises in submit, in the handler that made it; nothing is queued."""
        w = self.make()
        self.assertRaises(bson.errors.InvalidDocument, w.submit, "events", event(1, bad=object()))
        self.assertRaises(OverflowError, w.submit, "events", event(2, big=2**64))
        self.assertEqual(w.memory, (0, 0))

    def test_document_without_id_gets_one_at_submit(self) -> None:
        """A document submitted without _id gets an ObjectId before its first attempt, so retries keep it."""
        w = self.make()
        doc = {"n": 1}
        w.submit("events", doc)
        self.clock.advance(0.1)
        [stored] = self.store.documents("events")
        self.assertIsInstance(stored["_id"], bson.ObjectId)
        self.assertEqual(doc, {"n": 1})

    def test_flush_by_age(self) -> None:
        """A partial batch is written once it is flush_interval old, not before."""
        w = self.make()
        w.submit("events", event(1))
        self.clock.advance(0.05)
        self.assertEqual(self.events(), [])
        self.clock.advance(0.05)
        self.assertEqual(self.events(), [1])

    def test_batches_per_collection(self) -> None:
        """Each collection batches separately; upserts go through upsert_many."""
        w = self.make()
        w.submit("events", event(1))
        w.submit_upsert("visitor_links", Upsert({"_id": "v1"}, {"$set": {"profile": "p"}, "$setOnInsert": {"first": 1}}))
        self.clock.advance(0.1)
        self.assertEqual(self.events(), [1])
        self.assertEqual(self.store.documents("visitor_links"), [{"_id": "v1", "profile": "p", "first": 1}])

    def test_indexes_ensured_at_start(self) -> None:
        """Every index in the map is ensured when the service starts."""
        self.make(indexes=INDEXES)
        self.assertEqual({c: [i.name for i in specs] for c, specs in self.store.indexes.items()}, {c: [i.name for i in s] for c, s in INDEXES.items()})

    def test_indexes_retried(self) -> None:
        """A down MongoDB at start does not block writing; indexes are retried with backoff."""
        self.store = MemoryStore()
        self.store.fail_next(1)
        self.make(indexes=INDEXES)
        self.assertEqual(self.store.indexes, {})
        self.clock.advance(0.2)
        self.assertEqual(set(self.store.indexes), set(INDEXES))

    def test_submit_is_not_blocked_by_a_hanging_store(self) -> None:
        """submit returns at once while MongoDB does not answer."""
        self.store = MemoryStore()
        self.store.hang()
        w = self.make()
        for n in range(6):
            self.assertTrue(w.submit("events", event(n)))
        self.assertEqual(self.store.hung_calls, 1)


    def test_queued_documents_are_invisible_to_the_garbage_collector(self) -> None:
        """Waiting documents are bytes, which full collections never walk (tracked objects made 20-50 ms pauses)."""
        import gc

        from bson import ObjectId

        self.store = MemoryStore()
        self.store.hang()
        w = self.make(attrs.evolve(CONFIG, max_queue_docs=1000))
        for n in range(300):
            self.assertTrue(w.submit("events", {"_id": ObjectId(), "n": n, "props": {"a": "b"}}))
        queued = [item for lane in w._lanes for batch in lane.queue for item in batch.items] + [i for lane in w._lanes for i in lane.items]
        self.assertEqual(len(queued), 297)  # one batch of 3 is in flight, hanging
        self.assertFalse(any(gc.is_tracked(item) for item in queued))
        self.store.release()
        self.run_for(1)
        self.assertEqual(self.events(), list(range(300)))


class FailureTests(WriterTestsMixin, SynchronousTestCase):
    def test_fault_spools_and_retries_with_backoff(self) -> None:
        """A StoreUnavailable moves the batch to the spool and retries it with growing, capped, jittered delays."""
        self.store = MemoryStore()
        self.store.fail_next(4)
        w = self.make()
        for n in range(3):
            w.submit("events", event(n))
        self.assertTrue(w.spooling)
        self.assertEqual(self.spool.stats().docs, 3)
        attempts = lambda: sum(1 for c in self.store.calls if c[0] == "insert_many")
        # Attempt 1 failed in direct mode; the drainer's attempt 2 failed at once.
        self.assertEqual(attempts(), 2)
        delays = []
        for _ in range(3):
            delay = self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds()
            delays.append(delay)
            self.clock.advance(delay)
        self.assertTrue(0.1 <= delays[0] <= 0.2, delays)
        self.assertTrue(0.2 <= delays[1] <= 0.4, delays)
        self.assertTrue(0.4 <= delays[2] <= 0.8, delays)
        self.assertEqual(self.events(), [0, 1, 2])
        self.assertEqual(self.spool.stats().docs, 0)
        self.assertFalse(w.spooling)
        self.assertEqual(self.sample("cookiesaver_writer_retries_total", {"kind": "unavailable"}), 4)

    def test_backoff_is_capped(self) -> None:
        """The retry delay never exceeds backoff_max."""
        self.store = MemoryStore()
        self.store.fail_next(1000)
        w = self.make()
        w.submit("events", event(1))
        self.clock.advance(0.1)
        for _ in range(8):  # below the poison threshold
            delay = self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds()
            self.assertLessEqual(delay, CONFIG.backoff_max)
            self.clock.advance(delay)

    def test_write_deadline_on_hanging_store(self) -> None:
        """A silent server is detected after write_timeout; the batch is spooled and written once MongoDB answers."""
        self.store = MemoryStore()
        self.store.hang()
        w = self.make()
        for n in range(3):
            w.submit("events", event(n))
        self.clock.advance(CONFIG.write_timeout)
        self.assertTrue(w.spooling)
        self.assertEqual(self.spool.stats().docs, 3)
        self.assertEqual(self.sample("cookiesaver_writer_retries_total", {"kind": "timeout"}), 1)
        self.store.release(apply=False)
        self.clock.advance(10)
        self.assertEqual(self.events(), [0, 1, 2])
        self.assertFalse(w.spooling)

    def test_ambiguous_write_then_duplicates_are_success(self) -> None:
        """A write that landed after its deadline is retried; the duplicate-key answers count as stored, nothing is dead-lettered."""
        self.store = MemoryStore()
        self.store.hang()
        w = self.make()
        for n in range(3):
            w.submit("events", event(n))
        self.clock.advance(CONFIG.write_timeout)
        self.store.release(apply=True)  # the timed-out write lands late
        self.assertEqual(self.events(), [0, 1, 2])
        self.clock.advance(10)
        self.assertEqual(self.events(), [0, 1, 2])
        self.assertEqual(self.store.documents("dead_letters"), [])
        self.assertEqual(self.spool.stats().docs, 0)
        self.assertEqual(self.sample("cookiesaver_writer_stored_total", {"collection": "events"}), 3)

    def test_rejection_goes_to_dead_letters(self) -> None:
        """A document MongoDB refuses is dead-lettered with its reason and counted; the rest of the batch is stored."""
        self.store = MemoryStore()
        self.store.reject_when(lambda c, d: c == "events" and d.get("n") == 1, 121, "Document failed validation")
        w = self.make()
        for n in range(3):
            w.submit("events", event(n))
        self.clock.advance(0.1)
        self.assertEqual(self.events(), [0, 2])
        [letter] = self.store.documents("dead_letters")
        self.assertEqual((letter["_id"], letter["collection"], letter["code"], letter["reason"]), ("events:e1", "events", 121, "Document failed validation"))
        self.assertEqual(letter["document"], event(1))
        self.assertEqual(self.sample("cookiesaver_writer_dead_letters_total", {"collection": "events"}), 1)
        self.assertEqual(sum(1 for c in self.store.calls if c[:2] == ("insert_many", "events")), 1)

    def test_huge_rejected_document_is_truncated_in_dead_letters(self) -> None:
        """A refused document too big to keep is dead-lettered by _id and size only."""
        self.store = MemoryStore()
        self.store.reject_when(lambda c, d: c == "events", 10334, "too large")
        w = self.make()
        w.submit("events", event(1, blob="x" * 300_000))
        self.run_for(0.2)
        [letter] = self.store.documents("dead_letters")
        self.assertEqual(letter["document"]["_id"], "e1")
        self.assertGreater(letter["document"]["truncated_bytes"], 300_000)

    def test_poison_batch_is_dead_lettered(self) -> None:
        """A batch that keeps failing while the server answers pings is dead-lettered instead of retried forever."""
        self.store = MemoryStore()
        w = self.make()

        class Poison(MemoryStore):
            pass

        original = self.store.insert_many

        def insert_many(collection: str, documents: Any) -> Any:
            if collection == "events":
                self.store.calls.append(("insert_many", collection, len(documents)))
                from twisted.internet import defer

                return defer.fail(StoreUnavailable("connection reset by this document"))
            return original(collection, documents)

        self.store.insert_many = insert_many  # type: ignore[method-assign]
        w.submit("events", event(1))
        for _ in range(40):
            self.clock.advance(CONFIG.backoff_max)
        self.assertEqual(self.events(), [])
        [letter] = self.store.documents("dead_letters")
        self.assertIn("write failed", letter["reason"])
        self.assertEqual(self.spool.stats().docs, 0)
        self.assertFalse(w.spooling)


class SpoolTests(WriterTestsMixin, SynchronousTestCase):
    def test_store_down_spills_to_spool_in_order(self) -> None:
        """While MongoDB is down, sealed batches go to the spool; on recovery they drain in submission order."""
        self.store = MemoryStore()
        self.store.fail_next(1000)
        w = self.make()
        for n in range(10):
            w.submit("events", event(n))
            self.clock.advance(0.05)
        self.clock.advance(0.1)
        self.assertEqual(self.spool.stats().docs, 10)
        self.assertEqual(w.memory, (0, 0))
        self.store.fail_next(0)
        self.clock.advance(CONFIG.backoff_max)
        self.assertEqual(self.events(), list(range(10)))
        self.assertFalse(w.spooling)
        w.submit("events", event(10))
        self.clock.advance(0.1)
        self.assertEqual(self.events()[-1], 10)

    def test_upsert_order_kept_through_spool(self) -> None:
        """Later upserts of the same document win after an outage (order per collection is kept)."""
        self.store = MemoryStore()
        self.store.fail_next(1000)
        w = self.make()
        for n in range(5):
            w.submit_upsert("push_subscriptions", Upsert({"_id": "s"}, {"$set": {"active": n % 2 == 0, "n": n}}))
            self.clock.advance(0.1)
        self.store.fail_next(0)
        self.clock.advance(CONFIG.backoff_max)
        self.assertEqual(self.store.documents("push_subscriptions"), [{"_id": "s", "active": True, "n": 4}])

    def test_replay_at_start(self) -> None:
        """Batches left in the spool by an earlier process are written at start, before new ones."""
        self.store = MemoryStore()
        self.store.fail_next(1000)
        w = self.make(start=True)
        for n in range(3):
            w.submit("events", event(n))
        path = self.spool_path
        self.spool.close()  # as if the process died here; the spool is committed
        store = MemoryStore()
        self.store = store
        w2 = self.make(spool_path=path, start=False)
        w2.submit("events", event(3))
        w2.startService()
        self.clock.advance(0.1)
        self.assertEqual(self.events(), [0, 1, 2, 3])
        self.assertEqual(self.spool.stats().docs, 0)

    def test_replay_of_a_spool_written_with_dicts(self) -> None:
        """A spool left by the previous release (batches encoded from dicts) replays the same documents, types intact."""
        ts = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
        docs = [{"_id": bson.ObjectId(), "type": "page_view", "ts": ts, "props": {"v": 1}}, {"_id": "push:m:s:clicked", "type": "clicked", "ts": ts}]
        path = os.path.join(self.mktemp(), "spool.sqlite3")
        old = Spool(path)
        self.successResultOf(old.open())
        old.close()
        import sqlite3

        db = sqlite3.connect(path)
        payload = bson.encode({"d": docs})
        db.execute(
            "INSERT INTO batches (seq, collection, kind, payload, docs, bytes, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (1, "events", "insert", payload, 2, len(payload), 0.0),
        )
        db.commit()
        db.close()
        self.store = MemoryStore()
        self.make(spool_path=path)
        self.clock.advance(0.1)
        self.assertEqual(self.store.documents("events"), docs)
        self.assertEqual(self.spool.stats().docs, 0)

    def test_spooled_documents_come_back_exact(self) -> None:
        """Documents that went through the spool reach the store with the same fields and types as submitted."""
        self.store = MemoryStore()
        self.store.fail_next(1)
        w = self.make()
        ts = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
        docs = [event(n, ts=ts, oid=bson.ObjectId(), nested={"k": [n, "x"]}) for n in range(3)]
        for doc in docs:
            w.submit("events", doc)
        self.run_for(5)
        self.assertEqual(self.store.documents("events"), docs)
        self.assertFalse(w.spooling)

    def test_memory_full_spills_then_accepts(self) -> None:
        """When memory is full but the spool has room, queued batches move to disk and submits go on."""
        self.store = MemoryStore()
        self.store.hang()
        w = self.make(attrs.evolve(CONFIG, max_queue_docs=6))
        for n in range(20):
            self.assertTrue(w.submit("events", event(n)), n)
        self.assertTrue(w.spooling)
        self.assertLessEqual(w.memory[0], 6)

    def test_memory_and_spool_full_refuses(self) -> None:
        """With memory and spool both full, submit returns False and accepting() says so."""
        self.store = MemoryStore()
        self.store.hang()
        w = self.make(attrs.evolve(CONFIG, max_queue_docs=6, spool_max_bytes=0))
        results = [w.submit("events", event(n)) for n in range(7)]
        self.assertEqual(results, [True] * 6 + [False])
        self.assertFalse(w.accepting())

    def test_memory_bytes_bound(self) -> None:
        """The byte budget counts BSON sizes: a document that does not fit is refused when nothing can spill."""
        self.store = MemoryStore()
        self.store.hang()
        size = len(bson.encode(event(0, pad="x" * 100)))
        w = self.make(attrs.evolve(CONFIG, max_queue_bytes=size * 2, spool_max_bytes=0))
        self.assertTrue(w.submit("events", event(0, pad="x" * 100)))
        self.assertTrue(w.submit("events", event(1, pad="x" * 100)))
        self.assertFalse(w.submit("events", event(2, pad="x" * 100)))

    def test_spool_full_keeps_batches_in_memory(self) -> None:
        """When the spool is full, failed batches stay in memory and are still retried and written."""
        self.store = MemoryStore()
        self.store.fail_next(3)
        w = self.make(attrs.evolve(CONFIG, spool_max_bytes=0))
        for n in range(3):
            w.submit("events", event(n))
        self.assertEqual(self.spool.stats().docs, 0)
        self.assertEqual(w.memory[0], 3)
        self.run_for(CONFIG.backoff_max * 3)
        self.assertEqual(self.events(), [0, 1, 2])
        self.assertEqual(w.memory, (0, 0))


class ReadinessTests(WriterTestsMixin, SynchronousTestCase):
    def test_ready_until_mongo_down_too_long(self) -> None:
        """Readiness turns False once MongoDB has failed for longer than readiness_mongo_down, and back on success."""
        self.store = MemoryStore()
        self.store.fail_next(1000)
        w = self.make(attrs.evolve(CONFIG, readiness_spool_docs=1000))
        self.assertTrue(w.readiness.ready())
        w.submit("events", event(1))
        self.clock.advance(0.1)
        self.assertTrue(w.readiness.ready())
        self.clock.advance(CONFIG.readiness_mongo_down + 0.1)
        self.assertFalse(w.readiness.ready())
        self.store.fail_next(0)
        self.clock.advance(CONFIG.backoff_max)
        self.assertTrue(w.readiness.ready())

    def test_not_ready_when_spool_deep(self) -> None:
        """Readiness turns False when the spool holds more than readiness_spool_docs."""
        self.store = MemoryStore()
        self.store.fail_next(1000)
        w = self.make(attrs.evolve(CONFIG, readiness_spool_docs=2, readiness_mongo_down=1000))
        for n in range(3):
            w.submit("events", event(n))
        self.assertFalse(w.readiness.ready())


class ShutdownTests(WriterTestsMixin, SynchronousTestCase):
    def test_stop_flushes_partial_batches(self) -> None:
        """stopService writes partial batches at once and fires when they are stored."""
        w = self.make()
        w.submit("events", event(1))
        d = w.stopService()
        self.successResultOf(d)
        self.assertEqual(self.events(), [1])
        self.assertFalse(w.submit("events", event(2)))

    def test_stop_waits_for_in_flight_then_spools_at_deadline(self) -> None:
        """A frozen MongoDB at shutdown: the writer waits shutdown_timeout, then spools what is in memory and fires."""
        self.store = MemoryStore()
        self.store.hang()
        w = self.make()
        for n in range(4):
            w.submit("events", event(n))
        d = w.stopService()
        self.assertNoResult(d)
        self.clock.advance(CONFIG.shutdown_timeout)
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        spool = Spool(self.spool_path)
        stats = self.successResultOf(spool.open())
        self.assertEqual(stats.docs, 4)

    def test_stop_with_mongo_down_spools_quickly(self) -> None:
        """With MongoDB failing fast, shutdown spools memory without waiting for the deadline."""
        self.store = MemoryStore()
        self.store.fail_next(1000)
        w = self.make()
        w.submit("events", event(1))
        self.successResultOf(w.stopService())
        spool = Spool(self.spool_path)
        self.assertEqual(self.successResultOf(spool.open()).docs, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
