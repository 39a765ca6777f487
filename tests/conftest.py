from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import SERVICES, missing, require, required

# The longest modules, measured under `make test`, longest first (the local-model ones, which run one at a
# time, spread among them). `make test` hands out whole files (`--dist loadfile`) in collection order: the
# longest started first, the four workers finish together instead of waiting on one late long file.
_LONGEST_FIRST = (
    "test_local_tools",
    "test_videos",
    "test_schemathesis",
    "test_limits_gateway",
    "test_local_media",
    "test_cli_server",
    "test_resilience",
    "test_media_keyless",
    "test_limits_redis",
    "test_protocol_matrix",
    "test_local_gateway",
    "test_http_server_limits",
    "test_keys",
    "test_media_api",
    "test_media_local",
    "test_poison_record",
    "test_local_model",
    "test_records",
    "test_admin",
    "test_serve_terminal",
)


def _start_rank(item: pytest.Item) -> int:
    module = item.path.stem
    return _LONGEST_FIRST.index(module) if module in _LONGEST_FIRST else len(_LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_start_rank)  # stable: every other module keeps its place
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


# Under `make test` (pytest-xdist, four workers on two cores: a third of the suite's time is spent waiting on
# sockets, timeouts and other processes) a test that runs a local model keeps a core busy for seconds. Two
# such tests at once would leave the timing bounds of the tests beside them ("falls back inside the 3 s
# deadline") measuring the models instead of portway, so those tests take one exclusive lock among
# themselves; every other test runs freely. The model libraries are held to one thread each (llama.cpp takes
# portway's default, half the cores): on a shared machine their spinning threads cost more than they give.
_HEAVY = ("local_model", "local_media")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _cpu_share(request: pytest.FixtureRequest) -> Iterator[None]:
    # Tests marked `deadline` (wall-clock bounds on portway's answers) take the lock shared: they run
    # beside each other and everything else, never beside a local-model test.
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    heavy = any(request.node.get_closest_marker(m) is not None for m in _HEAVY)
    if run is None or not (heavy or request.node.get_closest_marker("deadline") is not None):
        yield
        return
    with (Path(tempfile.gettempdir()) / f"portway-tests-{run}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if heavy else fcntl.LOCK_SH)
        yield  # closing the file releases the lock
