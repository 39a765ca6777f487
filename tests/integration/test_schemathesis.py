"""Property-based fuzzing of portway's own OpenAPI document with schemathesis: no input may cause a 5xx.

Regression for out-of-range input reaching the database (integers past 64 bits, NUL bytes, timestamps
past year 9999...): schemathesis found 11 distinct 500s on /admin/*. The run is bounded (a fixed seed so CI is
reproducible, one worker; the coverage phase's boundary cases, every one the schema defines, then 15 fuzzed
and 30 stateful examples per operation) and authenticated with the master key, so the
admin API is fuzzed for real. The chat-shaped routes are left out (UPSTREAM_PATHS): they call upstreams, and
their validation has its own tests (tests/unit/test_validation.py, tests/conformance/).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

SEED = 20_240_311
# Per phase (a --max-examples would override both). Fuzzing is the costly phase, and at 15 it still reaches
# all 50 operations; the stateful phase needs its 30 to reach every linked operation (26; 20 at 15).
PHASES_TOML = """
[phases.fuzzing]
generation.max-examples = 15

[phases.stateful]
generation.max-examples = 30
"""
# Routes whose every request goes to an upstream (a fuzzed fallback list can name a faulty fake target, and
# its 502 is the right answer); their validation has conformance and unit tests of its own.
UPSTREAM_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses")


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    proc = PortwayProcess(tmp_path_factory.mktemp("fuzz"), gateway_config(upstream))
    yield proc
    proc.stop()


@pytest.mark.timeout(180)
def test_no_operation_answers_a_server_error(gw: PortwayProcess, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    config = tmp_path / "schemathesis.toml"
    config.write_text(PHASES_TOML)
    args = [
        str(st),
        "--config-file",
        str(config),
        "run",
        f"{gw.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {gw.master_key}",
        "--checks",
        "not_a_server_error",
        "--seed",
        str(SEED),
        *(arg for path in UPSTREAM_PATHS for arg in ("--exclude-path", path)),
        "--workers",
        "1",
        "--continue-on-failure",
        "--generation-database",
        ":memory:",
        "--no-color",
    ]
    # cwd: schemathesis writes nothing into the work tree (reports, example databases).
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=170)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-8000:]
    assert "passed" in output and "Server error" not in output
    selected, tested = re.search(r"Selected: (\d+)/\d+\s+Tested: (\d+)", output).groups()  # type: ignore[union-attr]
    assert tested == selected, output[-8000:]  # every operation was reached, with fewer fuzzed examples too
    assert "unhandled error" not in gw.log()
