"""The SQLite WAL spool: FIFO by sequence, exact BSON round trip, counters, corrupt-file recovery, its own thread."""

from __future__ import annotations

import datetime
import os
import sqlite3

import bson
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cookiesaver.interfaces import EncodedDocument, Upsert
from cookiesaver.spool import Spool, decode_items


class SpoolTests(SynchronousTestCase):
    def open(self, path: str | None = None) -> Spool:
        self.path = path or os.path.join(self.mktemp(), "spool", "spool.sqlite3")
        spool = Spool(self.path)
        self.successResultOf(spool.open())
        return spool

    def test_wal_and_full_sync(self) -> None:
        """The file is in WAL mode (the documented durability choice is synchronous=FULL)."""
        spool = self.open()
        db = sqlite3.connect(self.path)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        db.close()
        self.successResultOf(spool.close())

    def test_round_trip_keeps_types(self) -> None:
        """Encoded documents come back as the same bytes (ObjectIds, aware datetimes, nested documents exact); upserts as put."""
        spool = self.open()
        oid = bson.ObjectId()
        ts = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
        doc = {"_id": oid, "ts": ts, "props": {"a": [1, "b"], "c": {"d": None}}}
        encoded = EncodedDocument.of(doc)
        self.successResultOf(spool.put(1, "events", "insert", [encoded], 10.0))
        self.successResultOf(spool.put(2, "visitor_links", "upsert", [Upsert({"_id": "v"}, {"$set": {"p": 1}})], 11.0))
        first = self.successResultOf(spool.peek_oldest())
        self.assertEqual((first.seq, first.collection, first.kind), (1, "events", "insert"))
        [item] = first.items
        self.assertIsInstance(item, EncodedDocument)
        self.assertEqual(item.raw, encoded.raw)
        self.assertEqual(item.decoded(), doc)
        self.assertEqual(item["_id"], oid)
        self.successResultOf(spool.delete(first.id))
        second = self.successResultOf(spool.peek_oldest())
        self.assertEqual(second.items, (Upsert({"_id": "v"}, {"$set": {"p": 1}}),))

    def test_payload_embeds_encoded_documents(self) -> None:
        """A batch of encoded documents is spooled as the same BSON the old code wrote from dicts, so either replays."""
        ts = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
        docs = [{"_id": bson.ObjectId(), "ts": ts, "n": n, "nested": {"k": "v"}} for n in range(3)]
        spool = self.open()
        self.successResultOf(spool.put(1, "events", "insert", [EncodedDocument.of(d) for d in docs], 1.0))
        db = sqlite3.connect(self.path)
        [(payload,)] = db.execute("SELECT payload FROM batches").fetchall()
        db.close()
        self.assertEqual(payload, bson.encode({"d": docs}))
        self.assertEqual([item.decoded() for item in decode_items("insert", bson.encode({"d": docs}))], docs)

    def test_spool_written_by_dicts_replays(self) -> None:
        """A spool file written when batches held dicts (the previous release) reads back as the same documents."""
        spool = self.open()
        ts = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
        docs = [{"_id": bson.ObjectId(), "ts": ts, "props": {"v": 1}}, {"_id": "push:1", "type": "clicked"}]
        payload = bson.encode({"d": docs})  # exactly what encode_items made of dict items
        self.successResultOf(spool.close())
        db = sqlite3.connect(self.path)
        db.execute(
            "INSERT INTO batches (seq, collection, kind, payload, docs, bytes, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (4, "events", "insert", payload, len(docs), len(payload), 3.0),
        )
        db.commit()
        db.close()
        again = Spool(self.path)
        self.assertEqual(self.successResultOf(again.open()).docs, 2)
        batch = self.successResultOf(again.peek_oldest())
        self.assertEqual([item.decoded() for item in batch.items], docs)
        self.assertEqual([item["_id"] for item in batch.items], [d["_id"] for d in docs])

    def test_fifo_by_sequence(self) -> None:
        """The oldest batch is the lowest sequence number, even when it was put later."""
        spool = self.open()
        self.successResultOf(spool.put(7, "events", "insert", [{"_id": 7}], 1.0))
        self.successResultOf(spool.put(5, "events", "insert", [{"_id": 5}], 2.0))
        self.assertEqual(self.successResultOf(spool.peek_oldest()).seq, 5)

    def test_stats(self) -> None:
        """Counters track documents, bytes, batches and the oldest batch's time across put and delete."""
        spool = self.open()
        self.assertIsNone(self.successResultOf(spool.peek_oldest()))
        self.successResultOf(spool.put(1, "events", "insert", [{"_id": 1}, {"_id": 2}], 5.0))
        self.successResultOf(spool.put(2, "events", "insert", [{"_id": 3}], 6.0))
        stats = spool.stats()
        self.assertEqual((stats.docs, stats.batches, stats.oldest_created, stats.last_seq), (3, 2, 5.0, 2))
        self.assertGreater(stats.bytes, 0)
        self.successResultOf(spool.delete(self.successResultOf(spool.peek_oldest()).id))
        self.assertEqual((spool.stats().docs, spool.stats().oldest_created), (1, 6.0))

    def test_reopen_keeps_batches(self) -> None:
        """A closed (or killed) spool reopens with its batches and counters."""
        spool = self.open()
        self.successResultOf(spool.put(3, "events", "insert", [{"_id": 1}], 5.0))
        self.successResultOf(spool.close())
        again = Spool(self.path)
        stats = self.successResultOf(again.open())
        self.assertEqual((stats.docs, stats.last_seq), (1, 3))

    def test_corrupt_file_moved_aside(self) -> None:
        """An unreadable file is moved aside (logged) and a fresh spool starts; the service keeps running."""
        path = os.path.join(self.mktemp(), "spool.sqlite3")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(b"this is not a database" * 100)
        spool = self.open(path)
        self.assertEqual(spool.stats().docs, 0)
        self.assertTrue(spool.moved_aside and os.path.exists(spool.moved_aside))
        self.successResultOf(spool.put(1, "events", "insert", [{"_id": 1}], 1.0))
        self.flushLoggedErrors()


class ThreadedSpoolTests(TestCase):
    def test_runs_on_its_own_thread(self) -> None:
        """With a reactor, calls run on the spool's one thread and the thread stops at close."""
        from twisted.internet import reactor

        spool = Spool(os.path.join(self.mktemp(), "spool.sqlite3"), reactor)
        d = spool.open()
        d.addCallback(lambda _: spool.put(1, "events", "insert", [{"_id": 1}], 1.0))
        d.addCallback(lambda _: spool.peek_oldest())
        d.addCallback(lambda batch: self.assertEqual([item.decoded() for item in batch.items], [{"_id": 1}]))
        d.addCallback(lambda _: spool.close())
        d.addCallback(lambda _: self.assertIsNone(spool._pool))
        return d


def test_encoded_bytes_are_framed_exactly_as_bson_encodes_the_documents() -> None:
    """The writer spools its queue's bytes without wrapping them: the payload is byte for byte what bson.encode makes."""
    import datetime

    import bson

    from cookiesaver.interfaces import EncodedDocument
    from cookiesaver.spool import decode_items, encode_items

    documents = [
        {"_id": bson.ObjectId(), "n": i, "ts": datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC), "props": {"a": "é" * i}}
        for i in range(12)
    ]
    raws = [EncodedDocument.encode(d) for d in documents]
    payload = encode_items("insert", raws)
    assert payload == bson.encode({"d": documents})
    assert [d.raw for d in decode_items("insert", payload)] == raws
    assert encode_items("insert", raws[:1]) == bson.encode({"d": documents[:1]})
