"""Start portway as a real server process (`python -m portway serve`) for integration tests."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.integration import forkserver
from tests.integration.forkserver import ForkedProcess

MASTER_KEY = "sk-pw-test-master-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_of_rate_window(needed: float = 10.0) -> None:
    """Wait, if need be, until the current minute has `needed` seconds left: rpm limits count in fixed
    wall-clock minutes (limits/counters.py), and a test that counts to a limit must not see its count reset
    by a minute boundary half-way."""
    left = 60.0 - time.time() % 60.0
    if left < needed:
        time.sleep(left + 0.05)


def _answers_health(port: int) -> bool:
    """One plain-HTTP probe (http.client: an httpx call builds a TLS context, ~25 ms of CPU, each poll)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class PortwayProcess:
    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any] | None,
        *,
        env: dict[str, str] | None = None,
        master_key: str | None = MASTER_KEY,
        workers: int = 1,
        fresh: bool = False,
    ) -> None:
        """`fresh`: a new interpreter (`python -m portway serve`) instead of a fork of the fork server
        (tests/integration/forkserver.py), for a test about what a fresh process does; PORTWAY_TEST_FRESH=1
        makes every server fresh."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.log_path = workdir / "portway.log"
        args = [sys.executable, "-m", "portway", "serve", "--workers", str(workers)]
        if config is not None:
            cfg_path = workdir / "gateway.yaml"
            cfg_path.write_text(yaml.safe_dump(config))
            args += ["--config", str(cfg_path)]
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PORTWAY_")
            and k not in ("GROQ_API_KEY", "OPENROUTER_API_KEY", "OPENAI_API_KEY", "HF_TOKEN")
        }
        full_env.update({"PORTWAY_DATA_DIR": str(self.data_dir), **(env or {})})
        if master_key is not None:
            full_env["PORTWAY_MASTER_KEY"] = master_key
        self.master_key = master_key
        fresh = fresh or os.environ.get("PORTWAY_TEST_FRESH") == "1"
        for attempt in range(3):
            self._log = self.log_path.open("wb")
            self.proc: subprocess.Popen[bytes] | ForkedProcess
            if fresh:
                self.proc = subprocess.Popen(
                    [*args, "--port", str(self.port)],
                    cwd=workdir,
                    env=full_env,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                )
            else:
                argv = [*args[3:], "--port", str(self.port)]  # after `python -m portway`
                self.proc = forkserver.server().spawn(argv, full_env, workdir, self.log_path)
            try:
                self._wait_ready()
                return
            except RuntimeError:
                # free_port() let the port go before portway took it, and something else (another test
                # worker's connection, say) took it first: a flake of the harness, not of portway.
                if attempt == 2 or "address already in use" not in self.log():
                    raise
                self._log.close()
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
                self.base_url = self.url + "/v1"

    def _wait_ready(self, timeout: float = 60.0) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"portway exited with {self.proc.returncode}:\n{self.log()}")
            if _answers_health(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"portway did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.master_key}"}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
