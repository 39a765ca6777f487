"""Percentiles and small summaries (nearest-rank on sorted data; no numpy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def pct(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile q (0-100) of already sorted values; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of values, each multiplied by scale (e.g. 1000 for s -> ms)."""
    data = sorted(values)
    if not data:
        return {"n": 0}
    out = {f"p{q:g}": round(pct(data, q) * scale, digits) for q in (50, 90, 99)}
    out["max"] = round(data[-1] * scale, digits)
    out["mean"] = round(sum(data) / len(data) * scale, digits)
    return {"n": len(data), **out}


def median(values: Sequence[float]) -> float:
    data = sorted(values)
    if not data:
        return math.nan
    mid = len(data) // 2
    return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2


def rss_trend(points: Sequence[tuple[float, float]], seconds: float) -> dict[str, Any]:
    """Is RSS flat across a soak? `points` are (seconds since start, MB).

    The first min(60 s, a quarter of the soak) are warm-up (caches, pools, allocator arenas fill up) and
    are reported but not judged: flat means the median of the last fifth of the remaining samples is at
    most max(5 MB, 5 %) above the median of their first fifth."""
    if not points:
        return {}
    warmup = min(60.0, seconds / 4)
    after = [mb for t, mb in points if t >= warmup] or [mb for _, mb in points]
    k = max(1, len(after) // 5)
    start, end = median(after[:k]), median(after[-k:])
    return {
        "initial_mb": points[0][1],
        "warmup_s": warmup,
        "start_mb": start,
        "end_mb": end,
        "max_mb": max(mb for _, mb in points),
        "growth_mb": round(end - start, 1),
        "growth_incl_warmup_mb": round(end - points[0][1], 1),
        "flat": end - start <= max(5.0, 0.05 * start),
    }
