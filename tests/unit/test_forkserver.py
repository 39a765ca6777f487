"""The test harness's fork server (tests/integration/forkserver.py) reports what a fresh process would."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.integration import forkserver
from tests.integration.server import PortwayProcess


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PORTWAY_DATA_DIR": str(tmp_path / "data")}


def test_an_exit_code_and_the_output_come_back(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    proc = forkserver.server().spawn(["--version"], _env(tmp_path), tmp_path, log)
    assert proc.wait(30) == 0
    assert log.read_text().startswith("portway ")
    bad = forkserver.server().spawn(["serve", "--config", "missing.yaml"], _env(tmp_path), tmp_path, log)
    assert bad.wait(30) not in (0, None)


def test_a_server_is_its_own_process_and_dies_by_its_signal(tmp_path: Path) -> None:
    gw = PortwayProcess(tmp_path, None)
    assert gw.proc.pid not in (os.getpid(), forkserver.server().proc.pid)
    assert gw.stop(signal.SIGKILL) == -signal.SIGKILL
    # SIGTERM: a clean shutdown, then uvicorn re-raises the signal; the same status as a fresh process's.
    forked, fresh = PortwayProcess(tmp_path / "b", None), PortwayProcess(tmp_path / "c", None, fresh=True)
    assert forked.stop() == fresh.stop() == -signal.SIGTERM
    assert "Application shutdown complete" in forked.log()
