"""Two judgements on a replay that are not about the service's answers:

* **validity**: did the harness keep to its schedule? Events sent later than planned beyond a
  tolerance compress the night and can make images miss their timeout: then the run is invalid
  and says so, instead of blaming the service.
* **trend**: does the service stay the same from the first tenth of the night to the last?
  Latency p99, consumer lag and the service's memory, each with its own limit.

Both are pure functions of the figures, so they are tested on synthetic samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prompt.stats import percentile


@dataclass(frozen=True)
class LagTolerance:
    """Driver lag (actual send minus planned), night seconds."""

    p99_s: float = 1.0
    """A visit whose p99 is beyond this was sent late ..."""
    late_visits: float = 0.01
    """... and more than this fraction of the visits sent late makes the run invalid (a run of
    a thousand visits on a shared machine may see a few brief stalls; each is still listed)."""
    max_s: float = 30.0
    """No event may go out later than this: half the 60 s image timeout, beyond which a late
    send could make a job expire and the service be blamed."""


def driver_lag_by_visit(
    lags: Sequence[tuple[int, float]], speed: float
) -> dict[int, dict[str, float]]:
    """``(visit index, wall lag s)`` per event -> per visit ``{"p99_s", "max_s", "events"}``
    in night seconds."""
    per: dict[int, list[float]] = {}
    for visit, lag in lags:
        per.setdefault(visit, []).append(max(0.0, lag) * speed)
    out: dict[int, dict[str, float]] = {}
    for visit, values in sorted(per.items()):
        values.sort()
        out[visit] = {
            "p99_s": round(percentile(values, 99), 3),
            "max_s": round(values[-1], 3),
            "events": len(values),
        }
    return out


def validity(
    by_visit: Mapping[int, Mapping[str, float]], tolerance: LagTolerance
) -> dict[str, Any]:
    """``{"valid", "reasons", "late_visits"}``: invalid when too many visits, or any single
    event, went out later than the tolerance allows. Late visits are listed either way."""
    over_p99 = [v for v, s in by_visit.items() if s["p99_s"] > tolerance.p99_s]
    over_max = [v for v, s in by_visit.items() if s["max_s"] > tolerance.max_s]
    reasons = []
    if len(over_p99) > tolerance.late_visits * len(by_visit):
        worst = max(over_p99, key=lambda v: by_visit[v]["p99_s"])
        reasons.append(
            f"{len(over_p99)} of {len(by_visit)} visits (over {tolerance.late_visits:.0%}) sent "
            f"with a p99 driver lag over {tolerance.p99_s} night s "
            f"(worst: visit {worst}, {by_visit[worst]['p99_s']} s)"
        )
    if over_max:
        worst = max(over_max, key=lambda v: by_visit[v]["max_s"])
        reasons.append(
            f"{len(over_max)} visit(s) had an event sent over {tolerance.max_s} night s late "
            f"(worst: visit {worst}, {by_visit[worst]['max_s']} s)"
        )
    if not by_visit:
        reasons.append("no event was sent")
    return {
        "valid": not reasons,
        "reasons": reasons,
        "late_visit_count": len(set(over_p99) | set(over_max)),
        "late_visits": sorted(set(over_p99) | set(over_max))[:50],
        "tolerance_s": {"p99": tolerance.p99_s, "max": tolerance.max_s},
        "late_visit_fraction_allowed": tolerance.late_visits,
    }


def tenths(
    values: Sequence[tuple[float, float]], start: float, end: float
) -> tuple[list[float], list[float]]:
    """``(when, value)`` pairs -> the values of the first and of the last tenth of
    ``[start, end]``."""
    span = max(end - start, 1e-9)
    first = [v for t, v in values if t <= start + span / 10]
    last = [v for t, v in values if t >= end - span / 10]
    return first, last


@dataclass(frozen=True)
class TrendLimits:
    latency_ratio: float = 1.25
    latency_slack_s: float = 2.0
    """last-tenth p99 <= first-tenth p99 * latency_ratio + latency_slack_s (night s)."""
    lag_slack: float = 189.0
    """last-tenth p95 image lag <= first-tenth p95 + this many messages (one snap's burst)."""
    rss_ratio: float = 1.15
    """last-tenth mean service memory <= first-tenth mean * rss_ratio."""


def _p(values: list[float], q: float) -> float:
    return percentile(sorted(values), q) if values else math.nan


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def trend(
    *,
    latency: tuple[list[float], list[float]],
    image_lag: tuple[list[float], list[float]],
    service_rss: tuple[list[float], list[float]],
    limits: TrendLimits,
) -> dict[str, Any]:
    """First tenth against last tenth. Each input: (first-tenth values, last-tenth values).
    A check with no data in either tenth fails: a trend that cannot be seen is not flat."""
    checks = []

    def check(name: str, first: float, last: float, limit: float, unit: str) -> None:
        ok = not (math.isnan(first) or math.isnan(last)) and last <= limit
        checks.append({
            "name": name, "unit": unit, "first": _round(first), "last": _round(last),
            "limit": _round(limit), "ok": ok,
        })  # fmt: skip

    f, la = _p(latency[0], 99), _p(latency[1], 99)
    check("latency p99", f, la, f * limits.latency_ratio + limits.latency_slack_s, "night s")
    f, la = _p(image_lag[0], 95), _p(image_lag[1], 95)
    check("image consumer lag p95", f, la, f + limits.lag_slack, "messages")
    f, la = _mean(service_rss[0]), _mean(service_rss[1])
    check("service memory (dispatcher + pilots)", f, la, f * limits.rss_ratio, "MiB")
    judged = all(c["first"] is not None and c["last"] is not None for c in checks)
    return {"ok": all(c["ok"] for c in checks), "judged": judged, "checks": checks}


def _round(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 2)
