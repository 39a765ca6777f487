"""The `portway` CLI as a subprocess against a running portway with the fake upstream behind it."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from portway import __version__
from portway.cli import app
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess, free_port

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

SLOW = 0.3  # seconds between streamed words


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    config = {
        "routing": {"deadline": 20, "first_byte_timeout": 5},
        "providers": {"up": {"type": "openai", "base_url": upstream.base_url, "api_keys": ["k-cli"]}},
        "models": {"echo": ["up/fake-model"], "slow": [f"up/fake-model@slowchunks:{SLOW}"]},
    }
    proc = PortwayProcess(tmp_path_factory.mktemp("cli"), config)
    yield proc
    proc.stop()


def _env(gw: PortwayProcess, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PORTWAY_")}
    # The data dir holds no master.key (the server took PORTWAY_MASTER_KEY): the key comes from here.
    # A wide console whatever terminal runs the suite: tables are checked for whole ids.
    base = {"PORTWAY_URL": gw.url, "PORTWAY_API_KEY": gw.master_key or "", "COLUMNS": "200"}
    return {**clean, **base, **extra}


def cli(gw: PortwayProcess, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "portway", *args],
        env=_env(gw, **env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def cli_json(gw: PortwayProcess, *args: str, **env: str) -> Any:
    """`--json` output, parsed: run in this process (the same HTTP calls, without a Python start-up each)."""
    names = {k: None for k in os.environ if k.startswith("PORTWAY_")}
    settings = {"PORTWAY_URL": gw.url, "PORTWAY_API_KEY": gw.master_key or "", **env}
    done = CliRunner().invoke(app, [*args, "--json"], env={**names, **settings})
    assert done.exit_code == 0, done.stderr
    return orjson.loads(done.stdout)


def run(gw: PortwayProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A command run in this process, for tests about what it does rather than about the program (its
    exit codes and stderr are checked as a subprocess by the chat and error tests above): a Python
    start-up and import of the CLI cost ~0.5 s of CPU each. An uncaught exception (a traceback, in a
    process) fails here."""
    names = {k: None for k in os.environ if k.startswith("PORTWAY_")}
    settings = {"PORTWAY_URL": gw.url, "PORTWAY_API_KEY": gw.master_key or "", "COLUMNS": "200", **env}
    done = CliRunner().invoke(app, list(args), env={**names, **settings})
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return subprocess.CompletedProcess(list(args), done.exit_code, done.stdout, done.stderr)


def _one_line_error(done: subprocess.CompletedProcess[str], code: int, *parts: str) -> None:
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("portway: "), done.stderr
    assert "Traceback" not in done.stderr
    for part in parts:
        assert part in lines[0]


# -- chat ------------------------------------------------------------------------------------------------


def test_chat_streams_token_by_token(gw: PortwayProcess) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "portway", "chat", "--model", "slow", "one", "two", "three"],
        env=_env(gw),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    arrivals: list[tuple[float, bytes]] = []
    while chunk := os.read(proc.stdout.fileno(), 4096):
        arrivals.append((time.monotonic(), chunk))
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    text = b"".join(c for _, c in arrivals).decode()
    assert text == "Echo: one two three\n"
    # Each word left the fake upstream SLOW apart: printed as it came, the first is out well before the last.
    first = next(t for t, _ in arrivals)
    last_word = next(t for t, c in _running(arrivals) if b"three" in c)
    assert last_word - first >= 2 * SLOW * 0.8
    assert len(arrivals) >= 3


def _running(arrivals: list[tuple[float, bytes]]) -> Iterator[tuple[float, bytes]]:
    seen = b""
    for t, chunk in arrivals:
        seen += chunk
        yield t, seen


def test_chat_takes_stdin_and_a_system_prompt(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    done = cli(gw, "chat", "--model", "echo", "--system", "be brief", stdin="hello from a pipe\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Echo: hello from a pipe\n"
    sent = upstream.requests[-1].body or {}
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["stream"] is True


def test_a_wrong_key_is_exit_1_in_one_line(gw: PortwayProcess) -> None:
    done = cli(gw, "chat", "--model", "echo", "hi", PORTWAY_API_KEY="sk-pw-not-a-key")
    _one_line_error(done, 1, "401 invalid_api_key")
    assert "sk-pw-not-a-key" not in done.stderr
    _one_line_error(cli(gw, "models", "--key", "sk-pw-not-a-key"), 1, "401 invalid_api_key")


def test_a_wrong_url_is_exit_3_in_one_line(gw: PortwayProcess) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    _one_line_error(cli(gw, "models", "--url", url), 3, "cannot reach the server at " + url)
    _one_line_error(cli(gw, "chat", "hi", PORTWAY_URL=url), 3, "cannot reach")


def test_an_unknown_model_is_the_servers_refusal(gw: PortwayProcess) -> None:
    _one_line_error(cli(gw, "chat", "--model", "nope", "hi"), 1, "404 model_not_found")


def _read_until(fd: int, pattern: str, timeout: float = 20.0) -> str:
    """The screen's text (ANSI sequences removed) once `pattern` appears on it."""
    raw, until = b"", time.monotonic() + timeout
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                raw += os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r", "", raw.decode(errors="replace"))
            if re.search(pattern, text):
                return text
    raise AssertionError(f"{pattern!r} never appeared on the screen:\n{raw.decode(errors='replace')}")


def test_interactive_chat_through_a_terminal(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a real terminal
        argv = [sys.executable, "-m", "portway", "chat", "--model", "echo"]
        os.execve(sys.executable, argv, _env(gw, TERM="xterm-256color", COLUMNS="100", LINES="30"))
    try:
        _read_until(fd, r"echo> $")
        os.write(fd, b"first question\r")
        _read_until(fd, r"Echo: first question[\s\S]*echo> $")
        os.write(fd, b"/model slow\r")
        _read_until(fd, r"model: slow[\s\S]*slow> $")
        os.write(fd, b"second\r")
        screen = _read_until(fd, r"Echo: second[\s\S]*slow> $")
        # The conversation is kept: the second request carried the first turn and its answer.
        sent = upstream.requests[-1].body or {}
        assert [m["content"] for m in sent["messages"]] == [
            "first question",
            "Echo: first question",
            "second",
        ]
        assert sent["model"] == "fake-model@slowchunks:0.3"
        os.write(fd, b"/clear\r")
        _read_until(fd, r"conversation cleared[\s\S]*slow> $")
        os.write(fd, b"/exit\r")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, screen
    finally:
        os.close(fd)
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# -- models, health, status -------------------------------------------------------------------------------


def test_models(gw: PortwayProcess) -> None:
    listed = cli_json(gw, "models")
    assert {"echo", "slow"} <= {m["id"] for m in listed["data"]}
    done = run(gw, "models")
    assert done.returncode == 0 and "echo" in done.stdout and "slow" in done.stdout


def test_health(gw: PortwayProcess) -> None:
    done = run(gw, "health", "--detailed")
    assert done.returncode == 0, done.stderr
    assert f"portway {__version__} at {gw.url}" in done.stdout and "database" in done.stdout
    answer = cli_json(gw, "health", "--detailed")
    assert answer["ready"]["ready"] is True and answer["version"] == __version__


def test_status(gw: PortwayProcess) -> None:
    answer = cli_json(gw, "status")  # the admin detail: the CLI has the master key
    assert answer["object"] == "status.detail" and answer["status"] in ("up", "degraded", "down")
    assert [p["provider"] for p in answer["providers"]] == ["up"]
    assert "k-cli" not in orjson.dumps(answer).decode()
    done = run(gw, "status")
    assert done.returncode == 0, done.stderr
    assert "portway is" in done.stdout and "key breakers" in done.stdout and "1 closed" in done.stdout
    public = cli_json(gw, "status", PORTWAY_API_KEY="", PORTWAY_DATA_DIR=str(gw.workdir / "empty"))
    assert public["object"] == "status" and [p["provider"] for p in public["providers"]] == ["up"]


# -- keys, policies, users, usage -------------------------------------------------------------------------


def test_key_round_trip(gw: PortwayProcess) -> None:
    created = cli_json(gw, "keys", "create", "--name", "cli-test", "--rpm", "100", "--model", "echo")
    key, key_id = created["key"], created["id"]
    assert created["rpm"] == 100 and created["allowed_models"] == ["echo"]
    done = run(gw, "chat", "--model", "echo", "--key", key, "hi")
    assert done.returncode == 0 and done.stdout == "Echo: hi\n", done.stderr
    _one_line_error(run(gw, "chat", "--model", "slow", "--key", key, "hi"), 1, "403 model_not_allowed")
    assert cli_json(gw, "keys", "update", key_id, "--name", "renamed")["name"] == "renamed"
    assert cli_json(gw, "keys", "show", key_id)["name"] == "renamed"
    revoked = run(gw, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and f"revoked {key_id}" in revoked.stdout
    _one_line_error(run(gw, "chat", "--model", "echo", "--key", key, "hi"), 1, "401 invalid_api_key")
    listed = cli_json(gw, "keys", "list", "--revoked")
    assert key_id in {k["id"] for k in listed["data"]}
    table = run(gw, "keys", "list")
    assert table.returncode == 0 and key_id in table.stdout and key not in table.stdout
    _one_line_error(run(gw, "keys", "show", "key_nope"), 1, "404")


def test_a_new_key_is_shown_once_and_clearly(gw: PortwayProcess) -> None:
    done = run(gw, "keys", "create", "--name", "shown")
    assert done.returncode == 0, done.stderr
    assert "copy it now, it is not shown again" in done.stdout
    key = max(re.findall(r"sk-pw-[\w-]+", done.stdout), key=len)  # the key, not its display prefix
    assert len(key) > 30
    key_id = re.search(r"key_[\w-]+", done.stdout)
    assert key_id is not None
    rotated = cli_json(gw, "keys", "rotate", key_id.group())
    assert rotated["key"] != key and rotated["key"].startswith("sk-pw-")
    assert key not in run(gw, "keys", "show", key_id.group()).stdout


def test_policies(gw: PortwayProcess) -> None:
    created = cli_json(gw, "policies", "create", "cli-pol", "--period-days", "1")
    first = created["api_key"]
    current = run(gw, "policies", "current", "cli-pol")
    assert current.returncode == 0 and current.stdout == first + "\n"
    rotated = cli_json(gw, "policies", "rotate", "cli-pol")
    assert rotated["api_key"] != first
    assert "cli-pol" in {p["name"] for p in cli_json(gw, "policies", "list")["data"]}


def test_users(gw: PortwayProcess) -> None:
    user = cli_json(gw, "users", "create", "cli@example.com", "--password", "long-enough-pw", "--rpm", "5")
    assert user["email"] == "cli@example.com" and user["is_admin"] is False and user["rpm"] == 5
    assert cli_json(gw, "users", "set-admin", "cli@example.com")["is_admin"] is True
    assert cli_json(gw, "users", "update", user["id"], "--disabled")["disabled"] is True
    listed = cli_json(gw, "users", "list", "--email", "cli@example.com")
    assert [u["id"] for u in listed["data"]] == [user["id"]]
    _one_line_error(run(gw, "users", "create", "not-an-email"), 1, "400")


def test_usage(gw: PortwayProcess) -> None:
    assert run(gw, "chat", "--model", "echo", "count me").returncode == 0
    headers = gw.headers()

    def counted() -> bool:  # the request log is written in the background (every 200 ms)
        answer = HTTP.get(gw.url + "/admin/usage", params={"group_by": "model"}, headers=headers).json()
        return bool(answer.get("totals", {}).get("requests"))

    until = time.monotonic() + 10
    while not counted() and time.monotonic() < until:
        time.sleep(0.1)
    answer = cli_json(gw, "usage", "--by", "model", "--since", "1d")
    assert answer["object"] == "usage" and answer["group_by"] == "model"
    assert answer["totals"]["requests"] >= 1 and answer["groups"]
    done = run(gw, "usage", "--by", "model")
    assert done.returncode == 0, done.stderr
    assert "total" in done.stdout and "█" in done.stdout
    _one_line_error(run(gw, "usage", "--api-key", "sk-pw-not-a-key"), 1, "401")
