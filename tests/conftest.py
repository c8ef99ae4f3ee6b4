"""Shared fixtures: one secantusd-py for the session's end-to-end tests that only read and write.

Tests that stop, freeze or restart MongoDB start their own with
L{tests.mongo_fixture.start_secantus}.
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session", autouse=True)
def scratch_cwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run from a scratch directory: trial's mktemp() writes relative to the working directory, never into the repository."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(previous)
