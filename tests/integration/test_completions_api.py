"""POST /v1/completions through a running portway with the `openai` SDK's `completions.create`, against the
fake upstream speaking chat completions: plain and streamed answers, what the upstream was sent, the
request-log row (tokens and cost) of each, the refusals, and a stream that breaks mid-way."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.conftest import gateway_config
from tests.integration.server import PortwayProcess

PROMPT = "Say this is a test"
ANSWER = "Echo: Say this is a test"
PRICE = 1000.0  # USD per 1M tokens: $0.001 a token, so a cost is easy to check


def wait_row(gw: PortwayProcess, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The request's request-log row, once the batched writer has flushed it."""
    until = time.monotonic() + timeout
    while True:
        con = sqlite3.connect(Path(gw.data_dir) / "portway.db")
        con.row_factory = sqlite3.Row
        try:
            row = con.execute("SELECT * FROM request_log WHERE request_id = ?", (request_id,)).fetchone()
        except sqlite3.OperationalError:  # the table is created at start; the file may be that young
            row = None
        finally:
            con.close()
        if row is not None:
            return dict(row)
        assert time.monotonic() < until, f"no request_log row for {request_id}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    cfg = gateway_config(upstream)
    cfg["pricing"] = {"up/*": {"input": PRICE, "output": PRICE}}
    proc = PortwayProcess(tmp_path_factory.mktemp("completions"), cfg)
    yield proc
    proc.stop()


@pytest.fixture
def sdk(gw: PortwayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, max_retries=0, timeout=20)


def _chat_requests(upstream: FakeUpstream) -> list[Any]:
    return [r for r in upstream.requests if r.path == "/v1/chat/completions"]


def test_completion_is_the_chat_answer_as_text(
    sdk: openai.OpenAI, gw: PortwayProcess, upstream: FakeUpstream, direct: openai.OpenAI
) -> None:
    raw = sdk.completions.with_raw_response.create(
        model="direct", prompt=PROMPT, max_tokens=7, temperature=0, extra_headers={"x-request-id": "c-plain"}
    )
    got = raw.parse()
    assert got.object == "text_completion" and got.model == "fake-model"
    assert [(c.index, c.text, c.finish_reason, c.logprobs) for c in got.choices] == [
        (0, ANSWER, "stop", None)
    ]
    assert got.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens, got.usage.total_tokens) == (5, 6, 11)
    assert raw.headers["x-portway-provider"] == "up" and raw.headers["x-portway-model"] == "fake-model"

    (sent,) = _chat_requests(upstream)
    assert sent.body == {
        "model": "fake-model",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 7,
        "temperature": 0,
    }
    chat = direct.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": PROMPT}], max_tokens=7, temperature=0
    )
    assert got.id == "cmpl-" + chat.id.removeprefix("chatcmpl-")

    row = wait_row(gw, "c-plain")
    assert row["status"] == 200 and row["requested_model"] == "direct" and row["provider"] == "up"
    assert row["endpoint"] == "completions" and row["bytes_in"] > 0
    assert (row["prompt_tokens"], row["completion_tokens"], row["stream"]) == (5, 6, 0)
    assert row["cost_usd"] == pytest.approx(11 * PRICE / 1e6)
    assert row["usage_estimated"] == 0


def test_streamed_completion(sdk: openai.OpenAI, gw: PortwayProcess, upstream: FakeUpstream) -> None:
    chunks = list(
        sdk.completions.create(
            model="direct",
            prompt=PROMPT,
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": "c-stream"},
        )
    )
    assert {c.object for c in chunks} == {"text_completion"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ANSWER
    assert len([c for c in chunks if c.choices and c.choices[0].text]) == 6  # word by word, as it came
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.total_tokens == 11
    assert _chat_requests(upstream)[0].body["stream"] is True

    row = wait_row(gw, "c-stream")
    assert row["status"] == 200 and row["stream"] == 1 and row["usage_estimated"] == 0
    assert row["endpoint"] == "completions"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 6)
    assert row["cost_usd"] == pytest.approx(11 * PRICE / 1e6)


def test_stream_without_usage_is_still_counted(sdk: openai.OpenAI, gw: PortwayProcess) -> None:
    chunks = list(
        sdk.completions.create(
            model="direct", prompt=PROMPT, stream=True, extra_headers={"x-request-id": "c-nousage"}
        )
    )
    assert all(c.usage is None for c in chunks)  # the client did not ask for it
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ANSWER
    row = wait_row(gw, "c-nousage")  # ...but portway did, for the log
    assert (row["prompt_tokens"], row["completion_tokens"], row["usage_estimated"]) == (5, 6, 0)
    assert row["cost_usd"] > 0


def test_max_tokens_defaults_to_16(sdk: openai.OpenAI, upstream: FakeUpstream) -> None:
    prompt = " ".join(f"w{i}" for i in range(30))
    got = sdk.completions.create(model="direct", prompt=prompt)
    assert _chat_requests(upstream)[0].body["max_tokens"] == 16
    assert len(got.choices[0].text.split()) == 16 and got.choices[0].finish_reason == "length"


def test_a_prompt_list_of_one_is_that_prompt(sdk: openai.OpenAI) -> None:
    got = sdk.completions.create(model="direct", prompt=[PROMPT], max_tokens=10)
    assert got.choices[0].text == ANSWER


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [1212, 318]}, "prompt"),
        ({"prompt": PROMPT, "suffix": "the end"}, "suffix"),
        ({"prompt": PROMPT, "echo": True}, "echo"),
        ({"prompt": PROMPT, "logprobs": 2}, "logprobs"),
        ({"prompt": PROMPT, "best_of": 2}, "best_of"),
    ],
)
def test_what_chat_cannot_do_is_refused(
    sdk: openai.OpenAI, upstream: FakeUpstream, kwargs: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(model="direct", **kwargs)
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "unsupported_parameter" and body["param"] == param
    assert _chat_requests(upstream) == []


def test_unknown_model(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk.completions.create(model="no-such-model", prompt=PROMPT)
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_found"


def test_a_stream_that_breaks_ends_in_an_error(
    sdk: openai.OpenAI, gw: PortwayProcess, upstream: FakeUpstream
) -> None:
    upstream.script(["cut"], model="fake-model")
    got: list[str] = []
    with pytest.raises(openai.APIError, match="interrupted"):
        for chunk in sdk.completions.create(
            model="direct", prompt=PROMPT, stream=True, extra_headers={"x-request-id": "c-cut"}
        ):
            got.extend(c.text for c in chunk.choices)
    assert "".join(got) == "Echo: Say "  # what came before the break, then the error
    row = wait_row(gw, "c-cut")
    assert row["status"] == 502 and row["error_code"] == "upstream_error"
    assert row["completion_tokens"] > 0 and row["usage_estimated"] == 1  # charged for what was sent
