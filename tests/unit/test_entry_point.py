"""The `portway` script a worker process re-runs must not load the CLI.

uvicorn starts each of several workers with multiprocessing's spawn, which re-runs the parent's main script
as `__mp_main__` (multiprocessing.spawn._fixup_main_from_path). Importing the CLI there cost every worker
~11 MB of Typer, Rich and command modules it never uses.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "portway"

PROBE = """
import runpy, sys
runpy.run_path(sys.argv[1], run_name="__mp_main__")  # what spawn does with the parent's script
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("typer", "rich") or m.startswith("portway.cli"))
print(",".join(loaded))
"""


def test_a_spawned_worker_re_running_the_script_loads_no_cli() -> None:
    assert SCRIPT.exists(), f"{SCRIPT}: the venv's portway script (pip install -e .)"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(SCRIPT)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_the_script_still_runs_the_cli() -> None:
    done = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("portway ")


def test_python_m_portway_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "portway", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("portway ")
