"""Encoded documents with unusual _ids survive the writer's queue, the spool's framing, dead letters and replay exactly."""

from __future__ import annotations

import datetime
import os
import random
import sqlite3
from typing import Any

import bson
from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.interfaces import DECODE_OPTIONS, EncodedDocument
from cookiesaver.spool import Spool, _documents_payload, decode_items, encode_items
from cookiesaver.testing import MemoryStore
from tests.test_writer import CONFIG, WriterTestsMixin

TS = datetime.datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
IDS: list[Any] = [
    bson.ObjectId(),
    "",
    "é",
    "€uro-\U0001f600",
    "a\x00b",
    "x" * 300,
    0,
    -1,
    2**40,
    bson.Int64(7),
    1.5,
    {"a": 1, "b": "ü"},
    {},
    TS,
    b"\x00\xff",
    None,
    True,
]

#: MemoryStore keys documents by _id in a dict, so it cannot store an embedded-document _id (MongoDB can).
HASHABLE_IDS = [i for i in IDS if not isinstance(i, dict)]


def stored_form(document: dict[str, Any]) -> dict[str, Any]:
    """The document as MongoDB reads it back: encoded and decoded once."""
    return bson.decode(bson.encode(document), codec_options=DECODE_OPTIONS)


def doc(i: int, _id: Any) -> dict[str, Any]:
    return {
        "_id": _id,
        "n": i,
        "ts": TS,
        "oid": bson.ObjectId(),
        "nested": {"k": [i, "x", None]},
        "s": "ß\U0001f600",
        "f": 0.1,
        "big": 2**62,
    }


class FromRawTests(SynchronousTestCase):
    def test_id_read_from_the_bytes_equals_the_decoded_id(self) -> None:
        """For every _id type, from_raw answers _id with the value and type a full decode gives."""
        for _id in IDS:
            raw = EncodedDocument.encode({"_id": _id, "n": 1})
            got = EncodedDocument.from_raw(raw)
            expected = bson.decode(raw, codec_options=DECODE_OPTIONS)["_id"]
            if isinstance(
                expected, dict
            ):  # an embedded document comes back lazily, as a RawBSONDocument
                self.assertEqual(
                    bson.decode(got["_id"].raw, codec_options=DECODE_OPTIONS), expected
                )
            else:
                self.assertEqual(got["_id"], expected, repr(_id))
                self.assertEqual(got.get("_id"), expected, repr(_id))
                self.assertIs(type(got["_id"]), type(expected), repr(_id))
            self.assertEqual(got.decoded(), stored_form({"_id": _id, "n": 1}))

    def test_id_not_first_or_missing(self) -> None:
        """An _id stored after other fields, a field named like _id, and no _id at all are read by decoding, not guessed."""
        for document in (
            {"n": 1, "_id": "late"},
            {"_idx": "no", "n": 2, "_id": 3},
            {"_i": "x"},
        ):
            raw = bson.encode(document)
            self.assertEqual(
                EncodedDocument.from_raw(raw).get("_id"), document.get("_id")
            )


class PayloadFramingTests(SynchronousTestCase):
    def test_framing_equals_bson_encode(self) -> None:
        """The spool's framing of 0, 1, 2, 1000 and 1500 encoded documents is bson.encode({'d': docs}) byte for byte."""
        rng = random.Random(3)
        for count in (0, 1, 2, 1000, 1500):
            docs = [doc(i, rng.choice(IDS)) for i in range(count)]
            raws = [EncodedDocument.encode(d) for d in docs]
            self.assertEqual(_documents_payload(raws), bson.encode({"d": docs}), count)
            payload = encode_items("insert", raws)
            self.assertEqual(payload, bson.encode({"d": docs}), count)
            back = decode_items("insert", payload)
            self.assertEqual([bytes(d.raw) for d in back], raws)
            self.assertEqual(
                [d.decoded() for d in back], [stored_form(d) for d in docs]
            )


class SpillReplayTests(WriterTestsMixin, SynchronousTestCase):
    def submit_all(self, count: int) -> list[dict[str, Any]]:
        docs = [doc(i, _id) for i, _id in enumerate(HASHABLE_IDS)] + [
            doc(len(HASHABLE_IDS) + i, f"id-{i}-\u00e9")
            for i in range(count - len(HASHABLE_IDS))
        ]
        for d in docs:
            self.assertTrue(self.writer.submit("events", d))
            self.clock.advance(0.01)
        return docs

    def test_spilled_replayed_written_exactly_once(self) -> None:
        """A batch spilled while MongoDB is down and replayed is stored once per document, fields and types identical."""
        self.store = MemoryStore()
        self.store.fail_next(1000)
        self.make()
        docs = self.submit_all(40)
        self.run_for(0.2)
        self.assertEqual(self.spool.stats().docs, len(docs))
        self.store.fail_next(0)
        self.run_for(5)
        self.assertEqual(self.store.documents("events"), [stored_form(d) for d in docs])
        self.assertEqual(self.spool.stats().docs, 0)

    def test_replay_after_restart_then_ambiguous_write(self) -> None:
        """Spooled by one process, replayed by the next whose first write lands late: still exactly once each."""
        self.store = MemoryStore()
        self.store.fail_next(1000)
        self.make()
        docs = self.submit_all(30)
        self.run_for(0.2)
        path = self.spool_path
        self.spool.close()
        self.store = MemoryStore()
        self.store.hang()
        self.make(spool_path=path)
        self.run_for(CONFIG.write_timeout + 0.5)  # the first write times out...
        self.store.release(apply=True)  # ...but lands: the retry meets duplicates
        self.run_for(10)
        self.assertEqual(self.store.documents("events"), [stored_form(d) for d in docs])
        self.assertEqual(self.spool.stats().docs, 0)

    def test_replay_of_old_dict_spool_with_unusual_ids(self) -> None:
        """A spool row written by older code from dicts, with every _id type, replays the same documents."""
        docs = [doc(i, _id) for i, _id in enumerate(HASHABLE_IDS)]
        path = os.path.join(self.mktemp(), "spool.sqlite3")
        old = Spool(path)
        self.successResultOf(old.open())
        old.close()
        db = sqlite3.connect(path)
        payload = bson.encode({"d": docs})
        db.execute(
            "INSERT INTO batches (seq, collection, kind, payload, docs, bytes, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (1, "events", "insert", payload, len(docs), len(payload), 0.0),
        )
        db.commit()
        db.close()
        self.store = MemoryStore()
        self.make(spool_path=path)
        self.run_for(0.5)
        self.assertEqual(self.store.documents("events"), [stored_form(d) for d in docs])

    def test_dead_letters_of_unusual_ids(self) -> None:
        """Refused documents with string (multi-byte, empty), int and ObjectId _ids are dead-lettered with their fields, keyed collection:_id."""
        self.store = MemoryStore()
        self.store.reject_when(
            lambda c, d: c == "events" and d["n"] % 2 == 0,
            121,
            "Document failed validation",
        )
        self.make()
        docs = [doc(i, _id) for i, _id in enumerate(HASHABLE_IDS)]
        for d in docs:
            self.writer.submit("events", d)
        self.run_for(1)
        letters = {
            letter["_id"]: letter for letter in self.store.documents("dead_letters")
        }
        refused = [d for d in docs if d["n"] % 2 == 0]
        self.assertEqual(sorted(letters), sorted(f"events:{d['_id']}" for d in refused))
        for d in refused:
            self.assertEqual(letters[f"events:{d['_id']}"]["document"], stored_form(d))
        self.assertEqual(
            self.store.documents("events"), [stored_form(d) for d in docs if d["n"] % 2]
        )

    def test_dead_letter_key_of_an_embedded_document_id(self) -> None:
        """A refused document whose _id is an embedded document is keyed 'events:' plus the id as a dict, as before fe02ac5."""
        self.store = MemoryStore()
        self.store.reject_when(
            lambda c, d: c == "events", 121, "Document failed validation"
        )
        self.make()
        self.writer.submit("events", doc(1, {"a": 1}))
        self.run_for(1)
        [letter] = self.store.documents("dead_letters")
        self.assertEqual(letter["_id"], "events:{'a': 1}")
