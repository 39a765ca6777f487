"""Start `portway serve` processes by forking a process that has already imported portway.

The suite starts about seventy portway servers. Each `python -m portway serve` spends ~0.9 s of its ~1.4 s
of start-up CPU importing the CLI and the app (FastAPI, SQLAlchemy, pydantic models), which on a 2-core
machine was a third of `make test`. A fork server (one per test process, started on first use) imports
them once; each server is a fork of it that sets its own environment, working directory, argv and output,
and runs the CLI's `main()` as `python -m portway` would. It is a separate process with its own pid:
signals, exit statuses and several uvicorn workers (spawned fresh) behave as they do for a fresh process.

What differs from a fresh interpreter: the modules were imported under the fork server's environment (no
portway module reads its environment at import), and the process name is the fork server's.

`ForkedProcess` offers the part of `subprocess.Popen` the tests use (pid, poll, wait, send_signal, kill,
returncode). The fork server reaps its children and writes each exit status to a file the test reads.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_SERVER = r"""
import gc, os, selectors, signal, sys
import portway.app, portway.cli  # the point: imported once, before any fork
status_dir = sys.argv[1]
gc.collect()
gc.freeze()  # the children's start-up does not touch (and copy) every imported object's page

def reap(*_):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        tmp = os.path.join(status_dir, f"{pid}.tmp")
        with open(tmp, "w") as f:
            f.write(str(os.waitstatus_to_exitcode(status)))
        os.rename(tmp, os.path.join(status_dir, f"{pid}.exit"))

def child(line):
    env_file, cwd, log, *argv = line.split("\0")
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    with open(env_file, "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if item]
    os.environ.clear()
    os.environ.update({k.decode(): v.decode() for k, v in pairs})
    os.chdir(cwd)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.argv = ["portway", *argv]
    code = 0
    try:
        portway.cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)

signal.signal(signal.SIGCHLD, reap)
rfd, wfd = os.pipe()
os.set_blocking(wfd, False)
signal.set_wakeup_fd(wfd)
requests = sys.stdin.buffer
sel = selectors.DefaultSelector()
sel.register(requests, selectors.EVENT_READ)
sel.register(rfd, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj == rfd:
            os.read(rfd, 4096)
            reap()
            continue
        line = requests.readline()
        if not line:  # the test process is gone
            sys.exit(0)
        pid = os.fork()
        if pid == 0:
            sel.close()
            os.close(rfd)
            os.close(wfd)
            child(line.decode().rstrip("\n"))
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()
"""


class ForkServer:
    def __init__(self) -> None:
        self.status_dir = Path(tempfile.mkdtemp(prefix="portway-forks-"))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(self.status_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.lock = threading.Lock()

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> ForkedProcess:
        env_file = self.status_dir / f"env-{time.monotonic_ns()}"
        env_file.write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        fields = [str(env_file), str(cwd), str(log), *argv]
        assert all("\0" not in f and "\n" not in f for f in fields)
        with self.lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write("\0".join(fields).encode() + b"\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the fork server exited with {self.proc.wait()}")
        return ForkedProcess(int(answer), self.status_dir)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.status_dir, ignore_errors=True)


class ForkedProcess:
    """The subset of subprocess.Popen the tests use, for a child of the fork server."""

    def __init__(self, pid: int, status_dir: Path) -> None:
        self.pid = pid
        self._status = status_dir / f"{pid}.exit"
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self._status.exists():
            self.returncode = int(self._status.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        until = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if until is not None and time.monotonic() > until:
                raise subprocess.TimeoutExpired(["portway"], timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_server: ForkServer | None = None
_lock = threading.Lock()


def server() -> ForkServer:
    """This test process's fork server, started on first use and closed when the process exits."""
    global _server
    with _lock:
        if _server is None or _server.proc.poll() is not None:
            _server = ForkServer()
            atexit.register(_server.close)
        return _server
