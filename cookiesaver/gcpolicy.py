"""Garbage collection for a long-running server: full collections must not stall the hot path.

CPython's cyclic collector pauses the whole process; a full (generation 2)
collection walks every tracked object. Under wrk a full collection of
cookiesaver took 80 ms with about 180,000 objects (measured with a
gc.callbacks hook), which is the whole of the p99 latency above 50 ms the
benchmark showed. Two measures:

- everything start-up created (modules, configuration, bot rules, TLS
  contexts: about 50,000 objects) is moved to the permanent generation with
  C{gc.freeze()} once the server is up, so full collections never walk it;
- the writer keeps queued documents as encoded BSON, which the collector does
  not track (see L{cookiesaver.writer}).

Nothing here turns the collector off: reference cycles are still collected.
"""

from __future__ import annotations

import gc

from twisted.application import service
from twisted.logger import Logger

log = Logger()


class FreezeStartupObjects(service.Service):
    """The last service to start: freezes what start-up allocated (see the module docstring)."""

    name = "gc-freeze"

    def startService(self) -> None:
        super().startService()
        gc.collect()  # what start-up left as garbage is freed, not frozen
        gc.freeze()
        log.info("garbage collector: {count} start-up objects frozen", count=gc.get_freeze_count())

    def stopService(self) -> None:
        super().stopService()
        gc.unfreeze()
