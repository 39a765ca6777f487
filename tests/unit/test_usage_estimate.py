"""Token estimates for usage an upstream did not report: what text a chunk carries, found without JSON."""

from __future__ import annotations

import json
import random

import orjson
import pytest

from portway.config import LimitsConfig
from portway.limits.admission import Admission
from portway.limits.memory import MemoryCounters
from portway.usage.cost import (
    Pricing,
    body_text_chars,
    completion_tokens_estimate,
    prompt_tokens_estimate,
    text_chars,
)


def chunk(delta: dict[str, object], **extra: object) -> bytes:
    obj = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        **extra,
    }
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def encoded_len(text: str) -> int:
    """What the estimate counts: the JSON-encoded length of the string, quotes excluded."""
    return len(orjson.dumps(text)) - 2


@pytest.mark.parametrize(
    ("event", "chars"),
    [
        (chunk({"content": " hello"}), 6),
        (chunk({"role": "assistant", "content": ""}), 0),
        (chunk({"content": None}), 0),
        (chunk({}, usage={"prompt_tokens": 3, "completion_tokens": 4}), 0),
        (b"data: [DONE]\n\n", 0),
        (b": keep-alive\n\n", 0),
        (chunk({"reasoning_content": "think"}), 5),
        # Azure's filter results have "content" in a key's name but no text.
        (chunk({"content": "ab"}, content_filter_results={"hate": {"filtered": False}}), 2),
        (chunk({"content": "x"}, obfuscation="padding-of-random-length"), 1),
        (
            chunk(
                {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": '{"city": "Paris"}'}}]}
            ),
            encoded_len('{"city": "Paris"}'),
        ),
        # Text that looks like a key inside the text is escaped, so it never counts twice.
        (chunk({"content": 'say "content": "x"'}), encoded_len('say "content": "x"')),
        (chunk({"content": "ends in a backslash \\"}), encoded_len("ends in a backslash \\")),
        # Pretty-printed JSON from servers using Python's default separators.
        (b"data: " + json.dumps({"choices": [{"delta": {"content": "hey"}}]}).encode() + b"\n\n", 3),
    ],
)
def test_text_chars(event: bytes, chars: int) -> None:
    assert text_chars(event) == chars


def test_text_chars_matches_a_json_decode_on_random_text() -> None:
    rng = random.Random(7)
    alphabet = 'ab "\\\n\té€😀/'
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert text_chars(chunk({"content": text})) == encoded_len(text), text


def test_body_text_chars_counts_text_and_tool_calls_of_every_choice() -> None:
    body = orjson.dumps(
        {
            "choices": [
                {"message": {"role": "assistant", "content": "abcd"}},
                {
                    "message": {
                        "content": "ef",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                    }
                },
            ],
        }
    )
    assert body_text_chars(body) == 4 + 2 + 2


def test_completion_estimate_is_chars_over_four_and_at_least_one_per_chunk() -> None:
    assert completion_tokens_estimate(0, 0) == 0
    assert completion_tokens_estimate(9, 1) == 3  # rounded up
    assert completion_tokens_estimate(8, 5) == 5  # five one-character chunks are five tokens


def test_admission_reserves_the_same_prompt_estimate() -> None:
    admission = Admission(MemoryCounters(), Pricing({}), LimitsConfig())
    prompt, _ = admission.estimate_tokens({"max_tokens": 5}, 401)
    assert prompt == prompt_tokens_estimate(401) == 101
