"""In-memory fakes of cookiesaver's edges, shipped for tests (ours and other areas').

L{MemoryStore} is an L{IStore} with fault injection (transient failures,
hanging calls, per-document rejections); L{MemorySink} is an L{IEventSink}
that records what handlers submit and can be told to refuse. Neither needs
txmongo or a reactor: every Deferred they return fires synchronously unless a
test asked it to hang.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from twisted.internet import defer
from zope.interface import implementer

from cookiesaver.interfaces import (
    DECODE_OPTIONS,
    Document,
    EncodedDocument,
    IEventSink,
    IndexSpec,
    IStore,
    Rejection,
    StoreUnavailable,
    Upsert,
    WriteOutcome,
)

DUPLICATE_KEY = 11000

Predicate = Callable[[str, Any], bool]


def _get_path(doc: Mapping[str, Any], path: str) -> Any:
    """Read a dotted path; a missing step reads as C{None}, like MongoDB's equality on missing fields."""
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def plain(document: Mapping[str, Any]) -> Document:
    """
    A dict copy of a document: an encoded one (L{EncodedDocument}) is decoded, as MongoDB would read it back.

    Decoding keeps what the real store changes visible in tests too:
    datetimes at millisecond precision, tuples as lists.
    """
    if isinstance(document, RawBSONDocument):
        return bson.decode(document.raw, codec_options=DECODE_OPTIONS)
    return copy.deepcopy(dict(document))


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        doc = doc.setdefault(part, {})
    doc[parts[-1]] = copy.deepcopy(value)


def _has_path(doc: Mapping[str, Any], path: str) -> bool:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False
        value = value[part]
    return True


def matches(doc: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Equality match on (dotted) fields: enough for tests and for upsert filters."""
    return all(_get_path(doc, k) == v for k, v in query.items())


def apply_update(doc: dict[str, Any], update: Mapping[str, Any], inserting: bool) -> None:
    """Apply C{$set}, C{$setOnInsert}, C{$max}, C{$min}, C{$inc} and C{$unset} in place."""
    for op, fields in update.items():
        if op == "$set":
            for k, v in fields.items():
                _set_path(doc, k, v)
        elif op == "$setOnInsert":
            if inserting:
                for k, v in fields.items():
                    _set_path(doc, k, v)
        elif op in ("$max", "$min"):
            for k, v in fields.items():
                if not _has_path(doc, k):
                    _set_path(doc, k, v)
                    continue
                current = _get_path(doc, k)
                if (op == "$max" and v > current) or (op == "$min" and v < current):
                    _set_path(doc, k, v)
        elif op == "$inc":
            for k, v in fields.items():
                _set_path(doc, k, (_get_path(doc, k) or 0) + v)
        elif op == "$unset":
            for k in fields:
                parts = k.split(".")
                target: Any = doc
                for part in parts[:-1]:
                    target = target.get(part, {}) if isinstance(target, dict) else {}
                if isinstance(target, dict):
                    target.pop(parts[-1], None)
        else:
            raise ValueError(f"MemoryStore does not implement update operator {op}")


@implementer(IStore)
class MemoryStore:
    """
    An L{IStore} in a dict, with the faults the writer must survive.

    @ivar collections: documents per collection, keyed by C{_id}.
    @ivar indexes: the L{IndexSpec}s ensured per collection.
    @ivar calls: every call as C{(method, collection, count)}, for assertions.
    """

    def __init__(self) -> None:
        self.collections: dict[str, dict[Any, Document]] = {}
        self.indexes: dict[str, list[IndexSpec]] = {}
        self.calls: list[tuple[str, str, int]] = []
        self._fail_next = 0
        self._failure: Callable[[], Exception] = lambda: StoreUnavailable("injected failure")
        self._hanging = False
        self._hung: list[tuple[defer.Deferred[Any], Callable[[], Any]]] = []
        self._rejections: list[tuple[Predicate, int, str]] = []
        self._ids = itertools.count(1)

    # --- fault injection ------------------------------------------------------

    def fail_next(self, count: int = 1, error: Callable[[], Exception] | None = None) -> None:
        """Make the next C{count} calls errback with L{StoreUnavailable} (or C{error()}) and write nothing."""
        self._fail_next = count
        if error is not None:
            self._failure = error

    def hang(self) -> None:
        """Make calls from now on never fire until L{release}: a frozen server."""
        self._hanging = True

    def release(self, apply: bool = True) -> None:
        """
        Stop hanging and answer the hung calls.

        @param apply: True to perform the hung writes now (a slow server whose
            writes land after the client gave up: the ambiguous case); False
            to drop them (the server died without writing).
        """
        self._hanging = False
        hung, self._hung = self._hung, []
        for d, work in hung:
            if apply:
                try:
                    result = work()
                except Exception as e:  # noqa: BLE001 - any error of the work is the write's failure, as in a real store
                    if not d.called:
                        d.errback(e)
                    continue
                if not d.called:
                    d.callback(result)
            elif not d.called:
                d.errback(StoreUnavailable("released without applying"))

    @property
    def hung_calls(self) -> int:
        """Calls waiting for L{release}."""
        return len(self._hung)

    def reject_when(self, predicate: Predicate, code: int = 121, reason: str = "Document failed validation") -> None:
        """Refuse for good every document (or L{Upsert}) for which C{predicate(collection, item)} is true."""
        self._rejections.append((predicate, code, reason))

    # --- IStore ---------------------------------------------------------------

    def _call(self, method: str, collection: str, count: int, work: Callable[[], Any]) -> defer.Deferred[Any]:
        self.calls.append((method, collection, count))
        if self._fail_next > 0:
            self._fail_next -= 1
            return defer.fail(self._failure())
        if self._hanging:
            d: defer.Deferred[Any] = defer.Deferred()
            self._hung.append((d, work))
            return d
        return defer.maybeDeferred(work)

    def _rejection(self, collection: str, index: int, item: Any) -> Rejection | None:
        for predicate, code, reason in self._rejections:
            if predicate(collection, item):
                return Rejection(index, code, reason)
        return None

    def insert_many(self, collection: str, documents: Sequence[Mapping[str, Any]]) -> defer.Deferred[WriteOutcome]:
        """Unordered insert honouring the unique C{_id}; encoded documents are stored decoded, as MongoDB reads them back."""
        docs = [plain(d) for d in documents]

        def work() -> WriteOutcome:
            target = self.collections.setdefault(collection, {})
            written, duplicates, rejected = 0, [], []
            for i, doc in enumerate(docs):
                rejection = self._rejection(collection, i, doc)
                if rejection is not None:
                    rejected.append(rejection)
                    continue
                if "_id" not in doc:
                    doc["_id"] = f"memory-{next(self._ids)}"
                if doc["_id"] in target:
                    duplicates.append(i)
                    continue
                target[doc["_id"]] = doc
                written += 1
            return WriteOutcome(written, tuple(duplicates), tuple(rejected))

        return self._call("insert_many", collection, len(docs), work)

    def upsert_many(self, collection: str, operations: Sequence[Upsert]) -> defer.Deferred[WriteOutcome]:
        """Unordered upserts: filter by C{_id} or equality fields, then the update operators."""
        ops = [Upsert(copy.deepcopy(dict(o.filter)), copy.deepcopy(dict(o.update))) for o in operations]

        def work() -> WriteOutcome:
            target = self.collections.setdefault(collection, {})
            written, rejected = 0, []
            for i, op in enumerate(ops):
                rejection = self._rejection(collection, i, op)
                if rejection is not None:
                    rejected.append(rejection)
                    continue
                found = self._find_one(target, op.filter)
                if found is None:
                    doc: Document = {k: copy.deepcopy(v) for k, v in op.filter.items() if not k.startswith("$")}
                    apply_update(doc, op.update, inserting=True)
                    doc.setdefault("_id", f"memory-{next(self._ids)}")
                    target[doc["_id"]] = doc
                else:
                    apply_update(found, op.update, inserting=False)
                written += 1
            return WriteOutcome(written, (), tuple(rejected))

        return self._call("upsert_many", collection, len(ops), work)

    @staticmethod
    def _find_one(target: dict[Any, Document], query: Mapping[str, Any]) -> Document | None:
        if set(query) == {"_id"}:
            return target.get(query["_id"])
        for doc in target.values():
            if matches(doc, query):
                return doc
        return None

    def ensure_indexes(self, collection: str, indexes: Sequence[IndexSpec]) -> defer.Deferred[None]:
        """Record the indexes (idempotent: the same name is kept once)."""

        def work() -> None:
            known = self.indexes.setdefault(collection, [])
            names = {i.name for i in known}
            known.extend(i for i in indexes if i.name not in names)

        return self._call("ensure_indexes", collection, len(indexes), work)

    def ping(self) -> defer.Deferred[None]:
        """Fires with None unless a fault is injected."""
        return self._call("ping", "", 0, lambda: None)

    def find(self, collection: str, query: Mapping[str, Any], limit: int = 0) -> defer.Deferred[list[Document]]:
        """Equality query over the stored documents, in insertion order."""

        def work() -> list[Document]:
            found = [copy.deepcopy(d) for d in self.collections.get(collection, {}).values() if matches(d, query)]
            return found[:limit] if limit else found

        return self._call("find", collection, 0, work)

    # --- conveniences for assertions -------------------------------------------

    def documents(self, collection: str) -> list[Document]:
        """The stored documents of a collection, in insertion order (synchronous, ignores faults)."""
        return list(self.collections.get(collection, {}).values())


@implementer(IEventSink)
class MemorySink:
    """
    An L{IEventSink} that records submissions, for handler tests.

    Set C{refusing = True} to simulate overload: submits then return False and
    record nothing. An L{EncodedDocument} is recorded decoded, as a dict.
    """

    def __init__(self) -> None:
        self.documents: list[tuple[str, Document]] = []
        self.upserts: list[tuple[str, Upsert]] = []
        self.refusing = False

    def submit(self, collection: str, document: Document | EncodedDocument) -> bool:
        """Record the document unless refusing."""
        if self.refusing:
            return False
        self.documents.append((collection, plain(document) if isinstance(document, RawBSONDocument) else document))
        return True

    def submit_upsert(self, collection: str, operation: Upsert) -> bool:
        """Record the upsert unless refusing."""
        if self.refusing:
            return False
        self.upserts.append((collection, operation))
        return True

    def accepting(self) -> bool:
        """False while refusing."""
        return not self.refusing

    def submitted(self, collection: str) -> list[Document]:
        """The documents submitted to one collection, in order."""
        return [d for c, d in self.documents if c == collection]
