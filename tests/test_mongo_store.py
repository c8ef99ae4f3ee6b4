"""MongoStore against a real MongoDB-wire server (secantusd-py), plus its error mapping in isolation."""

from __future__ import annotations

import datetime
from typing import Any

import bson
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from cookiesaver.config import MongoConfig
from cookiesaver.interfaces import (
    EncodedDocument,
    IndexSpec,
    IStore,
    Rejection,
    StoreUnavailable,
    Upsert,
    WriteOutcome,
)
from cookiesaver.store.mongo import MAX_BSON_SIZE, MongoStore, outcome_from_bulk_error
from tests.mongo_fixture import SecantusServer, start_secantus


class BulkErrorMappingTests(SynchronousTestCase):
    def test_duplicates_and_rejections(self) -> None:
        """Duplicate _id errors become duplicates, other codes rejections, mapped back to the caller's indexes."""
        details = {
            "writeErrors": [
                {"index": 0, "code": 11000, "errmsg": "E11000 dup key", "keyPattern": {"_id": 1}},
                {"index": 1, "code": 121, "errmsg": "Document failed validation"},
                {"index": 2, "code": 11000, "errmsg": "E11000 dup key", "keyPattern": {"email": 1}},
            ],
            "writeConcernErrors": [],
        }
        outcome = outcome_from_bulk_error(details, 1, [1, 3, 4])
        self.assertEqual(outcome, WriteOutcome(1, (1,), (Rejection(3, 121, "Document failed validation"), Rejection(4, 11000, "E11000 dup key"))))

    def test_write_concern_error_is_unavailable(self) -> None:
        """A write concern error is ambiguous: the whole call is retried."""
        self.assertRaises(StoreUnavailable, outcome_from_bulk_error, {"writeErrors": [], "writeConcernErrors": [{"errmsg": "timeout"}]}, 0, [])

    def test_not_running_is_unavailable(self) -> None:
        """A store that is not started fails fast with StoreUnavailable."""
        store = MongoStore(MongoConfig("mongodb://127.0.0.1:1/", "x", 1.0), task.Clock())
        self.failureResultOf(store.ping(), StoreUnavailable)


class MongoStoreTests(TestCase):
    """Runs on the real reactor against a fresh secantusd-py per test."""

    timeout = 60

    def setUp(self) -> defer.Deferred[None]:
        from twisted.internet import reactor

        self.server: SecantusServer = start_secantus(self.mktemp())
        self.addCleanup(self.server.stop)
        self.store = MongoStore(MongoConfig(self.server.uri, "cstest", 1.5), reactor, retry_delay=0.3, max_delay=1.0)
        self.store.startService()
        self.addCleanup(self.store.stopService)
        return self.wait_ping()

    @defer.inlineCallbacks
    def wait_ping(self, seconds: float = 15.0) -> Any:
        """Ping until it answers (reconnects take a moment)."""
        from twisted.internet import reactor

        for _ in range(int(seconds / 0.2)):
            try:
                yield self.store.ping()
                return
            except StoreUnavailable:
                yield task.deferLater(reactor, 0.2, lambda: None)
        yield self.store.ping()

    def stored(self, collection: str) -> list[dict[str, Any]]:
        client = self.server.client()
        try:
            return list(client["cstest"][collection].find().sort("_id", 1))
        finally:
            client.close()

    def test_provides_istore(self) -> None:
        """MongoStore implements IStore."""
        verifyObject(IStore, self.store)

    @defer.inlineCallbacks
    def test_insert_with_duplicates_and_oversized(self) -> Any:
        """Unordered insert stores the good documents, reports duplicate ids and rejects a >16 MiB document by index."""
        yield self.store.insert_many("events", [{"_id": 1}, {"_id": 2}])
        huge = {"_id": 9, "blob": "x" * (MAX_BSON_SIZE + 10)}
        outcome = yield self.store.insert_many("events", [{"_id": 1}, huge, {"_id": 3}])
        self.assertEqual(outcome.written, 1)
        self.assertEqual(outcome.duplicates, (0,))
        self.assertEqual([r.index for r in outcome.rejected], [1])
        self.assertEqual([d["_id"] for d in self.stored("events")], [1, 2, 3])

    @defer.inlineCallbacks
    def test_encoded_documents_sent_as_they_are(self) -> Any:
        """EncodedDocuments are sent without decoding or re-encoding and read back with the same types; oversized ones are refused by length."""
        ts = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
        docs = [{"_id": bson.ObjectId(), "type": "page_view", "ts": ts, "visitor": "v1", "props": {"a": 1, "b": ["x", {"c": None}]}} for _ in range(3)]
        encoded = [EncodedDocument.of(d) for d in docs]
        huge = EncodedDocument.of({"_id": 9, "blob": "x" * (MAX_BSON_SIZE + 10)})
        outcome = yield self.store.insert_many("events", [encoded[0], huge, encoded[1], encoded[2]])
        self.assertEqual((outcome.written, [r.index for r in outcome.rejected]), (3, [1]))
        # txmongo read only _id, which EncodedDocument answers without decoding.
        self.assertEqual([e._RawBSONDocument__inflated_doc for e in encoded], [None] * 3)  # type: ignore[attr-defined]
        client = self.server.client()
        try:
            stored = list(client["cstest"].get_collection("events", codec_options=bson.CodecOptions(tz_aware=True)).find().sort("_id", 1))
        finally:
            client.close()
        self.assertEqual(stored, docs)
        self.assertEqual([type(d["_id"]) for d in stored], [bson.ObjectId] * 3)
        again = yield self.store.insert_many("events", [encoded[1]])
        self.assertEqual(again.duplicates, (0,))

    @defer.inlineCallbacks
    def test_upserts(self) -> Any:
        """Bulk upserts insert then update, honouring $set, $setOnInsert and $max."""
        op1 = Upsert({"_id": "v1"}, {"$set": {"profile": "p1"}, "$setOnInsert": {"first": 1}, "$max": {"last": 5}})
        op2 = Upsert({"_id": "v1"}, {"$set": {"profile": "p2"}, "$setOnInsert": {"first": 2}, "$max": {"last": 3}})
        outcome = yield self.store.upsert_many("visitor_links", [op1])
        self.assertEqual(outcome.written, 1)
        yield self.store.upsert_many("visitor_links", [op2])
        self.assertEqual(self.stored("visitor_links"), [{"_id": "v1", "profile": "p2", "first": 1, "last": 5}])

    @defer.inlineCallbacks
    def test_ensure_indexes_idempotent(self) -> Any:
        """Indexes are created once; asking again (or with a conflicting spec) does not fail."""
        specs = [IndexSpec((("visitor", 1), ("ts", 1)), "visitor_ts")]
        yield self.store.ensure_indexes("events", specs)
        yield self.store.ensure_indexes("events", specs)
        yield self.store.ensure_indexes("events", [IndexSpec((("other", 1),), "visitor_ts")])
        client = self.server.client()
        try:
            info = client["cstest"]["events"].index_information()
        finally:
            client.close()
        self.assertEqual(info["visitor_ts"]["key"], [("visitor", 1), ("ts", 1)])

    @defer.inlineCallbacks
    def test_find(self) -> Any:
        """find reads documents back by equality."""
        yield self.store.insert_many("events", [{"_id": 1, "t": "a"}, {"_id": 2, "t": "b"}])
        found = yield self.store.find("events", {"t": "b"})
        self.assertEqual(found, [{"_id": 2, "t": "b"}])

    @defer.inlineCallbacks
    def test_frozen_server_hits_the_deadline(self) -> Any:
        """A SIGSTOPped server turns into StoreUnavailable within MONGO_TIMEOUT, and works again after SIGCONT."""
        self.server.pause()
        try:
            yield self.assertFailure(self.store.insert_many("events", [{"_id": 1}]), StoreUnavailable)
        finally:
            self.server.resume()
        yield self.wait_ping()
        outcome = yield self.store.insert_many("events", [{"_id": 1}])
        self.assertIn(outcome.written + len(outcome.duplicates), (1,))

    @defer.inlineCallbacks
    def test_reconnects_after_restart(self) -> Any:
        """A killed server is StoreUnavailable; after a restart the store reconnects within seconds."""
        self.server.kill()
        yield self.assertFailure(self.store.ping(), StoreUnavailable)
        self.server.start()
        yield self.wait_ping(10)
        outcome = yield self.store.insert_many("events", [{"_id": 7}])
        self.assertEqual(outcome.written, 1)


class WriterOnMongoTests(TestCase):
    """The writer, its threaded spool and MongoStore together against a server that freezes."""

    timeout = 60

    @defer.inlineCallbacks
    def test_frozen_server_spools_then_drains(self) -> Any:
        """While the server is SIGSTOPped events go to the spool; after SIGCONT they all reach MongoDB exactly once."""
        import os

        import attrs
        from twisted.internet import reactor

        from cookiesaver.metrics import Metrics
        from cookiesaver.spool import Spool
        from cookiesaver.writer import INDEXES, Writer
        from tests.test_writer import CONFIG

        server = start_secantus(self.mktemp())
        self.addCleanup(server.stop)
        store = MongoStore(MongoConfig(server.uri, "cstest", 1.0), reactor, retry_delay=0.3, max_delay=1.0)
        store.startService()
        self.addCleanup(store.stopService)
        spool = Spool(os.path.join(os.path.abspath(self.mktemp()), "spool.sqlite3"), reactor)
        config = attrs.evolve(CONFIG, batch_size=50, max_queue_docs=10_000, write_timeout=1.0, backoff_max=0.5)
        writer = Writer(store, config, spool, reactor, Metrics(), indexes=INDEXES)
        writer.startService()
        self.addCleanup(writer.stopService)
        for n in range(100):
            self.assertTrue(writer.submit("events", {"_id": n}))
        server.pause()
        for n in range(100, 200):
            self.assertTrue(writer.submit("events", {"_id": n}))
        yield task.deferLater(reactor, 2.0, lambda: None)
        server.resume()
        for _ in range(100):
            yield task.deferLater(reactor, 0.1, lambda: None)
            if not writer.spooling and writer.memory[0] == 0:
                break
        yield writer.stopService()
        client = server.client()
        try:
            ids = sorted(d["_id"] for d in client["cstest"]["events"].find())
        finally:
            client.close()
        self.assertEqual(ids, list(range(200)))
