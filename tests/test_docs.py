"""The documentation that is generated from code stays current."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.config import reference_markdown

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DocsTests(SynchronousTestCase):
    def test_config_reference_is_current(self):
        """docs/config.md carries the key table exactly as cookiesaver.config generates it."""
        with open(os.path.join(REPO, "docs", "config.md"), encoding="utf-8") as f:
            self.assertIn(reference_markdown(), f.read())
