"""Prices per model and the cost of a request. Prices are USD per million tokens, from the config for now;
the model catalog's pricing plugs in here later. A model without a price costs $0 (and counts nothing
toward budgets), except that `local/*` is always free.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

Price = tuple[float, float]  # (input, output) USD per 1M tokens
_FREE: Price = (0.0, 0.0)


class Pricing:
    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._exact = {k: v for k, v in prices.items() if not _is_glob(k)}
        self._globs = [(k, v) for k, v in prices.items() if _is_glob(k)]
        self._cache: dict[str, Price | None] = {}

    def price(self, target_id: str) -> Price | None:
        if target_id in self._cache:
            return self._cache[target_id]
        found = self._exact.get(target_id)
        if found is None:
            found = next((p for pat, p in self._globs if fnmatch.fnmatchcase(target_id, pat)), None)
        if found is None and target_id.startswith("local/"):
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
