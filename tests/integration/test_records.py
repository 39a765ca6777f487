"""Usage records reach the database for every outcome, and survive shutdown; the master key's first start."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import httpx
import openai
import pytest

from portway.stores.sql.database import Database
from portway.usage.records import UsageRecord
from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
MSGS = [{"role": "user", "content": "count these words"}]


def rows(data_dir: Path) -> list[dict[str, object]]:
    con = sqlite3.connect(data_dir / "portway.db")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM request_log ORDER BY id")]
    finally:
        con.close()


def test_every_outcome_is_recorded_and_drained_on_shutdown(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gw = PortwayProcess(tmp_path_factory.mktemp("rec"), gateway_config(upstream))
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0)
    try:
        client.chat.completions.create(model="direct", messages=MSGS)
        list(client.chat.completions.create(model="direct", messages=MSGS, stream=True))
        upstream.script(["500", "500"], model="single-model")
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="single", messages=MSGS)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="missing", messages=MSGS)
        upstream.script(["slowchunks:0.3"], model="single-model")
        body = {"model": "single", "messages": MSGS, "stream": True}
        with HTTP.stream("POST", gw.base_url + "/chat/completions", json=body, headers=gw.headers()) as r:
            for _ in r.iter_raw():
                break
        assert upstream.wait_for(lambda rs: rs[-1].disconnected)
    finally:
        gw.stop()  # SIGTERM right away: the writer's queue must be drained, not dropped
    assert "Application shutdown complete" in gw.log()  # graceful (uvicorn then re-raises SIGTERM)
    got = rows(gw.data_dir)
    assert len(got) == 5, got
    ok, streamed, failed, unknown, gone = got
    assert ok["status"] == 200 and ok["provider"] == "up" and ok["served_model"] == "fake-model"
    assert ok["principal"] == "master" and ok["requested_model"] == "direct"
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["total_tokens"]) == (3, 4, 7)
    assert streamed["stream"] == 1 and streamed["status"] == 200 and streamed["completion_tokens"] == 4
    assert failed["status"] == 502 and failed["error_code"] == "upstream_error" and failed["attempts"] == 2
    assert unknown["status"] == 404 and unknown["error_code"] == "model_not_found"
    assert gone["status"] == 499 and gone["error_code"] == "client_disconnected"
    assert all(float(str(r["latency_ms"])) > 0 for r in got)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def _write_one(db_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{db_path}")
    try:
        await db.migrate()
        await db.write_usage([UsageRecord(1.0, "r1", "master", "m", None, None, 200, 1.0)])
        for suffix in ("", "-wal", "-shm"):  # checked while open: a clean close removes the WAL files
            assert _mode(db_path.with_name(db_path.name + suffix)) == 0o600, suffix
    finally:
        await db.aclose()


async def test_sqlite_files_are_0600_in_a_0700_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    await _write_one(data / "portway.db")
    assert _mode(data) == 0o700


async def test_sqlite_files_an_older_portway_left_readable_are_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "master.key").write_text("sk-pw-x")
    con = sqlite3.connect(data / "portway.db")  # as SQLite itself made it: 0644 under umask 022
    con.execute("CREATE TABLE t (x)")
    con.close()
    for suffix in ("", "-wal", "-shm"):  # WAL files a crash left behind (empty ones are valid)
        path = data / f"portway.db{suffix}"
        path.touch()
        os.chmod(path, 0o644)
    await _write_one(data / "portway.db")
    assert _mode(data) == 0o700  # holds only portway's files: tightened
    shared = tmp_path / "shared"  # e.g. the working directory: other files in it, left as it is
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    (shared / "notes.txt").write_text("mine")
    await _write_one(shared / "portway.db")
    assert _mode(shared) == 0o755


def test_master_key_generated_once_with_mode_0600(tmp_path: Path) -> None:
    gw = PortwayProcess(tmp_path, None, master_key=None)
    try:
        db_files = [gw.data_dir / n for n in ("portway.db", "portway.db-wal", "portway.db-shm")]
        assert [_mode(p) for p in db_files] == [0o600] * 3 and _mode(gw.data_dir) == 0o700
        key_file = gw.data_dir / "master.key"
        key = key_file.read_text().strip()
        assert key.startswith("sk-pw-") and len(key) > 40
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        assert str(key_file.resolve()) in gw.log() and key not in gw.log()  # where it is, never the key
        assert (
            HTTP.get(gw.base_url + "/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        )
    finally:
        gw.stop()
    again = PortwayProcess(tmp_path, None, master_key=None)
    try:
        assert (again.data_dir / "master.key").read_text().strip() == key
        assert HTTP.get(again.base_url + "/models", headers={"x-api-key": key}).status_code == 200
    finally:
        again.stop()
