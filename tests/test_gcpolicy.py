"""Start-up objects are frozen out of full collections while the server runs, and released at stop."""

from __future__ import annotations

import gc
import weakref

from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.gcpolicy import FreezeStartupObjects


class FreezeStartupObjectsTests(SynchronousTestCase):
    def tearDown(self) -> None:
        gc.unfreeze()

    def test_start_freezes_live_objects_and_stop_releases_them(self) -> None:
        gc.unfreeze()
        kept = [[i] for i in range(1000)]  # tracked objects alive at start-up
        service = FreezeStartupObjects()
        service.startService()
        self.assertGreaterEqual(gc.get_freeze_count(), len(kept))
        self.assertNotIn(kept[0], gc.get_objects(generation=2))  # a full collection no longer walks them
        service.stopService()
        self.assertEqual(gc.get_freeze_count(), 0)

    def test_garbage_is_collected_before_freezing(self) -> None:
        """A cycle start-up dropped is freed, not frozen for the life of the process."""
        gc.unfreeze()
        node = Node()
        node.me = node
        gone = weakref.ref(node)
        del node
        FreezeStartupObjects().startService()
        self.assertIsNone(gone())


class Node:
    me: object = None
