"""The same gateway on Postgres (the replicas' database): migrations, keys, request log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx

from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess


def test_keys_and_request_log_on_postgres(upstream: FakeUpstream, tmp_path: Path, pg_url: str) -> None:
    gw = PortwayProcess(tmp_path, gateway_config(upstream), env={"PORTWAY_DATABASE_URL": pg_url})
    try:
        assert httpx.get(gw.url + "/ready").json()["ready"] is True
        made = httpx.post(gw.url + "/admin/keys", json={"name": "pg", "rpm": 5}, headers=gw.headers())
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        r = httpx.post(
            gw.base_url + "/chat/completions",
            json={"model": "direct", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200
        revoked = httpx.post(gw.url + f"/admin/keys/{made.json()['id']}/revoke", headers=gw.headers())
        assert revoked.status_code == 200
        after = httpx.get(gw.base_url + "/models", headers={"Authorization": f"Bearer {key}"})
        assert after.status_code == 401
    finally:
        gw.stop()

    async def check() -> None:
        con = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
        try:
            rows = await con.fetch("SELECT principal, status, total_tokens FROM request_log")
            dumped = await con.fetchval("SELECT string_agg(key_hash || display_prefix, ',') FROM api_keys")
        finally:
            await con.close()
        assert [(r["status"], r["total_tokens"] > 0) for r in rows] == [(200, True)]
        assert rows[0]["principal"].startswith("key:")
        assert key not in (dumped or "")

    asyncio.run(check())
