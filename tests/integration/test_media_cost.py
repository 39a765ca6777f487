"""Every media endpoint writes a usage record with its units and the cost its prices say, through a running
portway (fake upstream, real SQLite request log): prices by image size, per 1M characters, per audio
minute, and embeddings per input token, checked to the cent against hand-computed figures."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.hf_tasks import wav
from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

PRICES = {
    "p/text-embedding-3-small": {"input": 20.0},  # USD per 1M tokens
    "p/dall-e-2": {"image": {"256x256": 0.016, "1024x1024": 0.02}},
    "p/tts-1": {"characters": 15.0},  # USD per 1M characters
    "p/whisper-1": {"audio_minute": 0.006},
}


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    config: dict[str, Any] = {
        "providers": {"p": {"type": "openai", "base_url": upstream.base_url, "api_keys": ["k-p"]}},
        "models": {
            "emb": ["p/text-embedding-3-small"],
            "img": ["p/dall-e-2"],
            "tts": ["p/tts-1"],
            "stt": ["p/whisper-1"],
        },
        "pricing": PRICES,
    }
    proc = PortwayProcess(tmp_path_factory.mktemp("media-cost"), config)
    yield proc
    proc.stop()


def _row(gw: PortwayProcess, endpoint: str) -> dict[str, Any]:
    until = time.monotonic() + 10
    while True:
        con = sqlite3.connect(gw.data_dir / "portway.db")
        con.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in con.execute("SELECT * FROM request_log WHERE endpoint = ?", (endpoint,))]
        finally:
            con.close()
        if rows:
            return rows[-1]
        assert time.monotonic() < until, f"no request_log row for {endpoint}"
        time.sleep(0.05)


def test_each_media_endpoint_is_recorded_with_its_units_and_priced(gw: PortwayProcess) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=30)
    emb = client.embeddings.create(model="emb", input=["one two three", "four five"])
    client.images.generate(model="img", prompt="a lighthouse", n=2, size="256x256")
    text = "Hello from the gateway, this is a test."
    client.audio.speech.create(model="tts", voice="alloy", input=text, response_format="wav").read()
    audio = wav(seconds=2.0)
    client.audio.transcriptions.create(
        model="stt", file=("a.wav", audio, "audio/wav"), response_format="verbose_json"
    )

    row = _row(gw, "embeddings")
    assert row["prompt_tokens"] == emb.usage.prompt_tokens > 0
    assert row["cost_usd"] == pytest.approx(emb.usage.prompt_tokens * 20.0 / 1e6)

    row = _row(gw, "image_generation")
    assert row["images"] == 2 and row["cost_usd"] == pytest.approx(2 * 0.016)

    row = _row(gw, "speech")
    assert row["characters"] == len(text) and row["cost_usd"] == pytest.approx(len(text) * 15.0 / 1e6)

    row = _row(gw, "transcription")
    assert row["audio_seconds"] > 0
    assert row["cost_usd"] == pytest.approx(row["audio_seconds"] / 60 * 0.006)
    assert row["bytes_in"] >= len(audio) and row["status"] == 200
