"""The `portway` command: --version, settings errors, the start-up summary and the logging it sets up."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from portway import __version__
from portway.cli import _hide_password, _log_config, _summary, app
from portway.config import parse_config
from portway.settings import Settings
from portway.stores.sql.database import Database


def _portway(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PORTWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "portway", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"portway {__version__}\n"


def test_a_bad_log_level_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = _portway("serve", PORTWAY_LOG_LEVEL="verbose", PORTWAY_DATA_DIR=str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "portway: PORTWAY_LOG_LEVEL: Input should be 'critical', 'error', 'warning', 'info', 'debug' or "
        "'trace' (got 'verbose')"
    ]
    assert not (tmp_path / "master.key").exists()  # refused before anything was done


def test_log_level_ignores_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTWAY_LOG_LEVEL", " DEBUG")
    assert Settings().log_level == "debug"


def test_log_config_is_quiet_but_for_portway() -> None:
    cfg = _log_config("debug")
    assert cfg["loggers"]["portway"]["level"] == logging.DEBUG
    assert cfg["root"]["level"] == logging.WARNING  # libraries' INFO stays out
    assert _log_config("error")["root"]["level"] == logging.ERROR
    assert _log_config("trace")["loggers"]["portway"]["level"] == 5
    assert "uvicorn.error" in cfg["loggers"]  # uvicorn's own logging is kept


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+asyncpg://pw:s3cret@db:5432/portway", "postgresql+asyncpg://pw:***@db:5432/portway"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("sqlite+aiosqlite:////data/portway.db", "sqlite+aiosqlite:////data/portway.db"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_passwords_are_hidden(url: str, shown: str) -> None:
    assert _hide_password(url) == shown


def test_summary(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "providers": {
                "groq": {"type": "openai", "base_url": "http://g", "api_keys": ["k-one-secret", "k-two"]},
                "hf": {"type": "huggingface", "api_keys": ["${UNSET_FOR_TEST}"]},
                "local": {"type": "local"},
            },
            "models": {"fast": ["groq/m", "local/smollm2"]},
        },
        env={},
    )
    settings = Settings(
        data_dir=tmp_path,
        port=9000,
        workers=2,
        database_url="postgresql+asyncpg://pw:s3cret@db/portway",
        redis_url="redis://cache:6379/0",
    )
    text = _summary(settings, cfg, env_key=False)
    assert text.splitlines() == [
        f"portway {__version__} on http://127.0.0.1:9000 (2 workers)",
        "  providers:  groq (2 keys), hf (disabled: no API key), local (no key needed)",
        "  aliases:    fast",
        "  database:   postgresql+asyncpg://pw:***@db/portway",
        "  counters:   redis://cache:6379/0",
        f"  master key: {(tmp_path / 'master.key').resolve()} (set PORTWAY_MASTER_KEY to choose your own)",
        "  API docs:   http://127.0.0.1:9000/docs",
    ]
    assert "master key: from PORTWAY_MASTER_KEY" in _summary(settings, cfg, env_key=True)


def test_migrations_log_no_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")

    async def migrate() -> None:
        try:
            await db.migrate()
        finally:
            await db.aclose()

    asyncio.run(migrate())
    assert not [r for r in caplog.records if r.name.startswith("alembic")]
