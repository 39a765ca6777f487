"""The door treats a seed surface's routes like /v1's: its multipart routes get `server.max_upload_bytes`
(not the smaller body cap) and its requests count toward `server.max_in_flight`."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes import hf_tasks
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess
from tests.integration.test_compat_platform import config as platform_config

BODY_CAP = 16 * 1024


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    cfg = platform_config(upstream)
    cfg["server"] = {"max_body_bytes": BODY_CAP, "max_upload_bytes": 1024 * 1024, "max_in_flight": 1}
    proc = PortwayProcess(tmp_path_factory.mktemp("door"), cfg)
    yield proc
    proc.stop()


def test_a_multipart_upload_over_the_body_cap_gets_the_upload_cap(gw: PortwayProcess) -> None:
    recording = hf_tasks.wav(1.5)  # ~48 KB of audio: three times the body cap, far under the upload cap
    assert len(recording) > 2 * BODY_CAP
    files = {"audio": ("recording.wav", recording, "audio/wav")}
    r = httpx.post(gw.url + "/api/stt", files=files, data={"model": "openai/whisper-base"}, timeout=20)
    assert r.status_code == 200, r.text
    assert r.json()["text"] == f"fake transcription of {len(recording)} bytes"
    # A JSON route of the same surface keeps the body cap.
    big = {"text": "x" * (2 * BODY_CAP), "model": "sentence-transformers/all-MiniLM-L6-v2"}
    assert httpx.post(gw.url + "/api/embedding", json=big, timeout=20).status_code == 413


def test_a_surface_request_counts_toward_max_in_flight(gw: PortwayProcess, upstream: FakeUpstream) -> None:
    upstream.script(["slow:1.5"], model="sd3-tti")
    held: list[int] = []
    first = threading.Thread(
        target=lambda: held.append(
            httpx.post(gw.url + "/api/image", json={"prompt": "p"}, timeout=20).status_code
        )
    )
    first.start()
    assert upstream.wait_for(lambda reqs: any(r.path.endswith("/sd3-tti") for r in reqs))
    refused = httpx.post(gw.url + "/api/image", json={"prompt": "p"}, timeout=20)
    first.join()
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_overloaded"
    assert held == [200]
