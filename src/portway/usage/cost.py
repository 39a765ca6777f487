"""Prices per model and the cost of a request. Prices are USD per million tokens, from the config for now;
the model catalog's pricing plugs in here later. A model without a price costs $0 (and counts nothing
toward budgets); so does every model of a provider that declares itself free (the local model), unless the
config prices it.

Also the token estimates for usage an upstream did not report (see the end of this module).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping, Sequence

Price = tuple[float, float]  # (input, output) USD per 1M tokens
_FREE: Price = (0.0, 0.0)


class Pricing:
    def __init__(self, prices: Mapping[str, Price], free_providers: Collection[str] = ()) -> None:
        self._free = frozenset(free_providers)
        self._exact = {k: v for k, v in prices.items() if not _is_glob(k)}
        self._globs = [(k, v) for k, v in prices.items() if _is_glob(k)]
        self._cache: dict[str, Price | None] = {}

    def price(self, target_id: str) -> Price | None:
        if target_id in self._cache:
            return self._cache[target_id]
        found = self._exact.get(target_id)
        if found is None:
            found = next((p for pat, p in self._globs if fnmatch.fnmatchcase(target_id, pat)), None)
        if found is None and target_id.partition("/")[0] in self._free:
            found = _FREE
        if len(self._cache) < 10_000:  # direct provider/model ids are client-chosen: keep the cache bounded
            self._cache[target_id] = found
        return found

    def cost(self, target_id: str, prompt_tokens: int, completion_tokens: int) -> float:
        inp, out = self.price(target_id) or _FREE
        return (prompt_tokens * inp + completion_tokens * out) / 1_000_000

    def estimate(self, target_ids: Sequence[str], prompt_tokens: int, completion_tokens: int) -> float:
        """The most any of the targets could cost: fallbacks may land on the dearest one."""
        if len(target_ids) == 1:
            return self.cost(target_ids[0], prompt_tokens, completion_tokens)
        return max((self.cost(t, prompt_tokens, completion_tokens) for t in target_ids), default=0.0)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


# -- estimates, for usage the upstream did not report ------------------------------------------------------
# An upstream that received a prompt may bill it even if it never said so (a client that hung up before the
# usage chunk, a cut stream, a provider asked for no stream usage): such usage is estimated, recorded as
# estimated and settled into limits and budgets like real usage, never counted as $0.

BYTES_PER_TOKEN = 4

# `content":` also finds "reasoning_content" (billed as completion); `\"` inside a JSON string never matches.
_CONTENT = b'content":'
_CONTENT_LEN = len(_CONTENT)
_ARGUMENTS = b'arguments":'
_BACKSLASH = 92


def prompt_tokens_estimate(body_bytes: int) -> int:
    """The prompt's tokens from the size of the request body (what admission reserves, too)."""
    return body_bytes // BYTES_PER_TOKEN + 1


def completion_tokens_estimate(chars: int, chunks: int) -> int:
    """Completion tokens from delivered text: characters / 4, and at least one per chunk that had text."""
    return max(-(-chars // BYTES_PER_TOKEN), chunks)


def _string_end(data: bytes, quote: int) -> int:
    """Index of the quote that ends the JSON string whose opening quote is at `quote` (-1: unterminated)."""
    end = data.find(b'"', quote + 1)
    while end != -1 and data[end - 1] == _BACKSLASH:
        run = end - 1
        while data[run] == _BACKSLASH:
            run -= 1
        if (end - 1 - run) % 2 == 0:  # an even run of backslashes escapes itself, not the quote
            break
        end = data.find(b'"', end + 1)
    return end


def _marker_chars(data: bytes, marker: bytes, i: int) -> int:
    """Total length of the JSON string values after each `marker` from `i` on (null and numbers: 0)."""
    total = 0
    skip = len(marker)
    while i != -1:
        i += skip
        if data[i : i + 1] == b" ":  # `"key": "value"` from servers that pretty-print
            i += 1
        if data[i : i + 1] == b'"':
            end = data.find(b'"', i + 1)
            if end != -1 and data[end - 1] == _BACKSLASH:
                end = _string_end(data, i)
            if end == -1:
                break
            total += end - i - 1
            i = end
        i = data.find(marker, i)
    return total


def text_chars(event: bytes) -> int:
    """Characters of generated text (content, reasoning, tool-call arguments) in one SSE chunk, found by
    searching bytes: it runs for every relayed event, where decoding JSON and walking the result costs
    several times as much. Escapes count as their encoded length (errs towards charging more).
    """
    i = event.find(_CONTENT)
    if i != -1:
        start = i + _CONTENT_LEN
        if event[start : start + 1] == b'"':  # the common chunk: one text field, its end not escaped
            end = event.find(b'"', start + 1)
            if end != -1 and event[end - 1] != _BACKSLASH and event.find(_CONTENT, end) == -1:
                return end - start - 1
        n = _marker_chars(event, _CONTENT, i)
        if n:
            return n
    # A chunk with text has no tool-call arguments: they are searched for only when there is none.
    i = event.find(_ARGUMENTS)
    return 0 if i == -1 else _marker_chars(event, _ARGUMENTS, i)


def body_text_chars(body: bytes) -> int:
    """Characters of generated text in a whole chat.completion body (its messages may hold both text and
    tool calls)."""
    n = 0
    for marker in (_CONTENT, _ARGUMENTS):
        i = body.find(marker)
        if i != -1:
            n += _marker_chars(body, marker, i)
    return n
