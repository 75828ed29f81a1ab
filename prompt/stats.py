"""Percentile summaries, as every report of this project prints them, and moving means."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class MovingMeans(Generic[K]):
    """An exponentially weighted mean per key: each value moves its key's mean by ``weight``
    of the difference; the first value is the mean (None before it)."""

    def __init__(self, weight: float = 0.2) -> None:
        self._weight = weight
        self._mean: dict[K, float] = {}

    def observe(self, key: K, value: float) -> None:
        mean = self._mean.get(key)
        self._mean[key] = value if mean is None else mean + self._weight * (value - mean)

    def get(self, key: K) -> float | None:
        return self._mean.get(key)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """``{"p50", "p95", "p99", "max"}`` rounded to ``digits``."""
    s = sorted(values)
    out = {
        "p50": percentile(s, 50),
        "p95": percentile(s, 95),
        "p99": percentile(s, 99),
        "max": s[-1] if s else float("nan"),
    }
    return {k: round(v, digits) for k, v in out.items()}
