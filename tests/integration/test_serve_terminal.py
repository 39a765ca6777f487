"""`portway serve` on a real terminal (a pty): the Rich start-up summary, a spinner until the workers answer,
then while the local model loads (GET /ready lists it under `loading`), and one line once all is in."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.integration.server import free_port

pytest.importorskip("llama_cpp", reason="needs the local extra: pip install portway[local]")
pytestmark = pytest.mark.local_model

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def _screen_until(fd: int, pattern: str, seen: bytes, timeout: float) -> tuple[str, bytes]:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        text = _ANSI.sub("", seen.decode(errors="replace"))
        if re.search(pattern, text):
            return text, seen
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
    raise AssertionError(f"{pattern!r} never appeared:\n{_ANSI.sub('', seen.decode(errors='replace'))}")


def test_serve_shows_the_local_model_loading_then_loaded(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTWAY_") and not k.endswith("_API_KEY")}
    env.pop("HF_TOKEN", None)
    env.update(PORTWAY_DATA_DIR=str(tmp_path / "data"), TERM="xterm-256color", COLUMNS="120", LINES="40")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the server on a terminal, no config: the keyless default with the local model
        os.chdir(tmp_path)
        argv = [sys.executable, "-m", "portway", "serve", "--port", str(port)]
        os.execve(sys.executable, argv, env)
    try:
        # The model may be in before the workers answer (it loads in well under a second): then the one
        # line has no "loaded" part. tests/unit/test_cli_serve_progress.py pins the loading phase itself.
        pattern = r"ready on http://127\.0\.0\.1:\d+(; local models loaded in \d+\.\d s)?\n"
        text, _ = _screen_until(fd, pattern, b"", 60)
        assert f":{port}" in text and "providers:" in text  # the start-up summary came first
        assert "starting workers" in text  # what the spinner said while it waited
        if "loaded in" in text:
            assert re.search(r"loading [^\n]*local", text), text
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
