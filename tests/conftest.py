from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import SERVICES, missing, require, required


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The markers postgres, redis and redis_server: a skip marker here, so the summary names each test's
    # file and line; a run that requires its services fails them in setup instead (below).
    for item in items:
        for service in SERVICES:
            if item.get_closest_marker(service) is not None and not required():
                reason = missing(service)
                if reason is not None:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for service in SERVICES:
        if required() and item.get_closest_marker(service) is not None:
            require(service)


# Under `make test` (pytest-xdist, two workers on two cores) a test that runs a local model keeps every core
# busy, and the timing bounds of the tests beside it ("falls back inside the 3 s deadline") would measure
# that instead of portway. So those tests take an exclusive lock and every other test a shared one: they
# never overlap, and everything else still runs two at a time.
_HEAVY = ("local_model", "local_media")


@pytest.fixture(autouse=True)
def _cpu_share(request: pytest.FixtureRequest) -> Iterator[None]:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        yield
        return
    heavy = any(request.node.get_closest_marker(m) is not None for m in _HEAVY)
    with (Path(tempfile.gettempdir()) / f"portway-tests-{run}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if heavy else fcntl.LOCK_SH)
        yield  # closing the file releases the lock
