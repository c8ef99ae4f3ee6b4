"""The shipped fakes behave like the interfaces they stand for."""

from __future__ import annotations

import datetime

import bson
from twisted.internet.defer import TimeoutError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cookiesaver.interfaces import (
    EncodedDocument,
    IEventSink,
    IndexSpec,
    IStore,
    Rejection,
    StoreUnavailable,
    Upsert,
    WriteOutcome,
)
from cookiesaver.testing import MemorySink, MemoryStore


class MemoryStoreTests(SynchronousTestCase):
    def test_provides_istore(self) -> None:
        """MemoryStore implements IStore."""
        verifyObject(IStore, MemoryStore())

    def test_duplicate_ids(self) -> None:
        """A second insert of the same _id is reported as a duplicate and not stored twice."""
        store = MemoryStore()
        self.successResultOf(store.insert_many("e", [{"_id": 1}]))
        outcome = self.successResultOf(store.insert_many("e", [{"_id": 2}, {"_id": 1}]))
        self.assertEqual(outcome, WriteOutcome(1, (1,), ()))
        self.assertEqual(store.documents("e"), [{"_id": 1}, {"_id": 2}])

    def test_fail_next(self) -> None:
        """fail_next makes exactly N calls fail with StoreUnavailable, writing nothing."""
        store = MemoryStore()
        store.fail_next(2)
        self.failureResultOf(store.insert_many("e", [{"_id": 1}]), StoreUnavailable)
        self.failureResultOf(store.ping(), StoreUnavailable)
        self.successResultOf(store.ping())
        self.assertEqual(store.documents("e"), [])

    def test_hang_and_release(self) -> None:
        """Hung calls never fire until released; release can apply them late (the ambiguous case)."""
        store = MemoryStore()
        store.hang()
        d = store.insert_many("e", [{"_id": 1}])
        self.assertNoResult(d)
        store.release(apply=True)
        self.assertEqual(self.successResultOf(d).written, 1)
        store.hang()
        d2 = store.insert_many("e", [{"_id": 2}])
        d2.cancel()
        self.failureResultOf(d2)
        store.release(apply=True)  # lands after the caller gave up
        self.assertEqual([d["_id"] for d in store.documents("e")], [1, 2])

    def test_reject_when(self) -> None:
        """Documents matching the predicate are rejected with code and reason; the rest are stored."""
        store = MemoryStore()
        store.reject_when(lambda c, d: d.get("bad"), 121, "invalid")
        outcome = self.successResultOf(store.insert_many("e", [{"_id": 1}, {"_id": 2, "bad": True}]))
        self.assertEqual(outcome, WriteOutcome(1, (), (Rejection(1, 121, "invalid"),)))

    def test_upsert_operators(self) -> None:
        """Upserts honour $set, $setOnInsert, $max, $min and $inc, by _id or by equality fields."""
        store = MemoryStore()
        op = Upsert({"_id": "v"}, {"$set": {"p": 1}, "$setOnInsert": {"first": 10}, "$max": {"hi": 5}, "$min": {"lo": 5}, "$inc": {"n": 1}})
        self.successResultOf(store.upsert_many("l", [op]))
        op2 = Upsert({"_id": "v"}, {"$set": {"p": 2}, "$setOnInsert": {"first": 20}, "$max": {"hi": 3}, "$min": {"lo": 3}, "$inc": {"n": 1}})
        self.successResultOf(store.upsert_many("l", [op2]))
        self.assertEqual(store.documents("l"), [{"_id": "v", "p": 2, "first": 10, "hi": 5, "lo": 3, "n": 2}])
        self.successResultOf(store.upsert_many("s", [Upsert({"site": "a", "endpoint": "e"}, {"$set": {"active": True}})]))
        self.successResultOf(store.upsert_many("s", [Upsert({"site": "a", "endpoint": "e"}, {"$set": {"active": False}})]))
        [doc] = store.documents("s")
        self.assertEqual((doc["site"], doc["endpoint"], doc["active"]), ("a", "e", False))

    def test_ensure_indexes_idempotent(self) -> None:
        """Ensuring the same index twice keeps it once."""
        store = MemoryStore()
        spec = IndexSpec((("a", 1),), "a")
        self.successResultOf(store.ensure_indexes("e", [spec]))
        self.successResultOf(store.ensure_indexes("e", [spec]))
        self.assertEqual(store.indexes, {"e": [spec]})

    def test_find(self) -> None:
        """find matches on equality and honours limit."""
        store = MemoryStore()
        self.successResultOf(store.insert_many("e", [{"_id": 1, "t": "a"}, {"_id": 2, "t": "a"}, {"_id": 3, "t": "b"}]))
        self.assertEqual(self.successResultOf(store.find("e", {"t": "a"}, limit=1)), [{"_id": 1, "t": "a"}])


class EncodedDocumentTests(SynchronousTestCase):
    def test_memory_store_keeps_encoded_documents_decoded(self) -> None:
        """MemoryStore stores an EncodedDocument as the dict MongoDB would read back: same fields and types."""
        store = MemoryStore()
        ts = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
        doc = {"_id": bson.ObjectId(), "ts": ts, "s": "é", "nested": {"a": [1, {"b": None}]}}
        self.assertEqual(self.successResultOf(store.insert_many("e", [EncodedDocument.of(doc)])), WriteOutcome(1))
        [stored] = store.documents("e")
        self.assertEqual(stored, doc)
        self.assertIs(type(stored), dict)
        self.assertIs(stored["ts"].tzinfo, datetime.UTC)

    def test_memory_store_rejects_encoded_documents_by_content(self) -> None:
        """reject_when sees an encoded document's fields, as with dicts."""
        store = MemoryStore()
        store.reject_when(lambda c, d: d.get("type") == "poison")
        outcome = self.successResultOf(store.insert_many("e", [EncodedDocument.of({"_id": 1, "type": "poison"}), EncodedDocument.of({"_id": 2})]))
        self.assertEqual((outcome.written, [r.index for r in outcome.rejected]), (1, [0]))

    def test_id_answered_without_decoding(self) -> None:
        """Reading _id (txmongo does, per inserted document) answers from the encoded value, without decoding the document."""
        oid = bson.ObjectId()
        encoded = EncodedDocument.of({"_id": oid, "n": 1})
        self.assertEqual((encoded.get("_id"), "_id" in encoded), (oid, True))
        self.assertIsNone(encoded._RawBSONDocument__inflated_doc)  # type: ignore[attr-defined]
        self.assertEqual(encoded["n"], 1)
        self.assertEqual(bson.encode(encoded), encoded.raw)


class MemorySinkTests(SynchronousTestCase):
    def test_records_encoded_documents_as_dicts(self) -> None:
        """An EncodedDocument handed to MemorySink is recorded as the dict it encodes."""
        sink = MemorySink()
        sink.submit("events", EncodedDocument.of({"_id": 1, "p": {"q": 2}}))
        self.assertEqual(sink.submitted("events"), [{"_id": 1, "p": {"q": 2}}])

    def test_records_and_refuses(self) -> None:
        """MemorySink records submissions and, when refusing, returns False and records nothing."""
        sink = MemorySink()
        verifyObject(IEventSink, sink)
        self.assertTrue(sink.submit("events", {"_id": 1}))
        self.assertTrue(sink.submit_upsert("l", Upsert({"_id": 1}, {"$set": {}})))
        sink.refusing = True
        self.assertFalse(sink.accepting())
        self.assertFalse(sink.submit("events", {"_id": 2}))
        self.assertEqual(sink.submitted("events"), [{"_id": 1}])
        self.assertEqual(len(sink.upserts), 1)


def test_encoded_document_from_raw_reads_a_leading_id_without_decoding() -> None:
    """ObjectId and string ids stored first come from their bytes; any other layout decodes, with the same answer."""
    import bson

    from cookiesaver.interfaces import _UNKNOWN, EncodedDocument

    oid = bson.ObjectId()
    cases = [
        ({"_id": oid, "n": 1}, True),
        ({"_id": "push:é:1", "n": 1}, True),
        ({"n": 1, "_id": oid}, True),  # pymongo's encoder writes a top-level _id first
        ({"_id": 7, "n": 1}, False),
    ]
    for document, read_from_bytes in cases:
        raw = EncodedDocument.encode(document)
        wrapped = EncodedDocument.from_raw(raw)
        if read_from_bytes:
            assert wrapped._known_id == document["_id"]
        else:
            assert wrapped._known_id is _UNKNOWN
        assert wrapped["_id"] == document["_id"] and type(wrapped["_id"]) is type(document["_id"])
        assert wrapped.decoded() == document
    assert EncodedDocument.encode({"n": 2})[4:9] == b"\x07_id\x00"  # a missing _id is added first
