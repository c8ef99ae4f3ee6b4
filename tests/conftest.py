"""Shared fixtures: one secantusd-py for the session's end-to-end tests that only read and write.

Tests that stop, freeze or restart MongoDB start their own with
L{tests.mongo_fixture.start_secantus}.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.mongo_fixture import SecantusServer, start_secantus


@pytest.fixture(scope="session")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecantusServer]:
    server = start_secantus(str(tmp_path_factory.mktemp("mongo")))
    try:
        yield server
    finally:
        server.stop()
