"""Shared fixtures: one secantusd-py for the session's end-to-end tests that only read and write.

Tests that stop, freeze or restart MongoDB start their own with
L{tests.mongo_fixture.start_secantus}.
"""

from __future__ import annotations

import os
import sys
import threading
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


def pytest_unconfigure(config: pytest.Config) -> None:
    """
    Exit even if a failed test leaked a non-daemon thread (a thread pool left running).

    Otherwise the interpreter waits for it forever after printing the summary,
    and CI hangs instead of failing. The exit status pytest computed is kept.
    """
    leaked = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if leaked:
        print(f"conftest: exiting despite {len(leaked)} leaked non-daemon thread(s): {[t.name for t in leaked]}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(getattr(config, "_cookiesaver_exitstatus", 1))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._cookiesaver_exitstatus = int(exitstatus)  # type: ignore[attr-defined]
