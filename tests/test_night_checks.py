"""The replay's validity and trend checks, the sampler's /metrics parsing and the event-loop
stall monitor, on synthetic figures (no stack)."""

from __future__ import annotations

import asyncio
import math
import time

from prometheus_client import CollectorRegistry, generate_latest

from loadtest.checks import (
    LagTolerance,
    TrendLimits,
    driver_lag_by_visit,
    tenths,
    trend,
    validity,
)
from loadtest.sampler import parse_metrics
from prompt.cli.replay_cmd import exit_code
from prompt.metrics.loop import LoopLagMonitor


def test_driver_lag_is_per_visit_in_night_seconds_and_early_sends_count_as_zero() -> None:
    lags = [(0, 0.001), (0, -0.002), (0, 0.004), (1, 0.010)]
    by_visit = driver_lag_by_visit(lags, speed=20)
    assert by_visit[0]["max_s"] == 0.08 and by_visit[0]["events"] == 3
    assert by_visit[1] == {"p99_s": 0.2, "max_s": 0.2, "events": 1}


def test_a_run_that_kept_its_schedule_is_valid() -> None:
    by_visit = driver_lag_by_visit([(v, 0.002) for v in range(100)], speed=20)
    result = validity(by_visit, LagTolerance(p99_s=1.0, max_s=10.0))
    assert result["valid"] and result["reasons"] == [] and result["late_visits"] == []


def _late(visits: int, late: list[int]) -> list[tuple[int, float]]:
    lags = [(v, 0.002) for v in range(visits) for _ in range(200)]
    return lags + [(v, 0.2) for v in late for _ in range(50)]  # a quarter 4 night s late


def test_visits_sent_late_make_the_run_invalid_and_are_named() -> None:
    lags = _late(100, [42, 43])  # 2 % of the visits
    tolerance = LagTolerance(p99_s=1.0, late_visits=0.01, max_s=30.0)
    result = validity(driver_lag_by_visit(lags, speed=20), tolerance)
    assert not result["valid"]
    assert result["late_visits"] == [42, 43]
    assert "2 of 100 visits" in result["reasons"][0] and "visit 42" in result["reasons"][0]


def test_a_few_late_visits_within_the_allowed_fraction_are_listed_not_fatal() -> None:
    lags = _late(200, [42])  # 0.5 % of the visits
    tolerance = LagTolerance(p99_s=1.0, late_visits=0.01, max_s=30.0)
    result = validity(driver_lag_by_visit(lags, speed=20), tolerance)
    assert result["valid"] and result["late_visits"] == [42]


def test_a_single_event_far_behind_schedule_is_caught_by_the_max() -> None:
    lags = [(v, 0.001) for v in range(10) for _ in range(1000)] + [(7, 2.0)]  # 40 night s
    result = validity(driver_lag_by_visit(lags, speed=20), LagTolerance(max_s=30.0))
    assert not result["valid"] and result["late_visits"] == [7]
    assert "over 30.0 night s late" in result["reasons"][0]


def test_nothing_sent_is_not_valid() -> None:
    assert not validity({}, LagTolerance())["valid"]


def test_tenths_split_by_time() -> None:
    first, last = tenths([(t, float(t)) for t in range(101)], 0, 100)
    assert first == [float(t) for t in range(11)] and last == [float(t) for t in range(90, 101)]


def _trend(lat_last: float, lag_last: float, rss_last: float) -> dict[str, object]:
    return trend(
        latency=([10.0] * 100, [lat_last] * 100),
        image_lag=([50.0] * 20, [lag_last] * 20),
        service_rss=([1000.0] * 5, [rss_last] * 5),
        limits=TrendLimits(),
    )


def test_a_flat_night_passes_the_trend_check() -> None:
    result = _trend(lat_last=14.0, lag_last=230.0, rss_last=1140.0)
    assert result["ok"] and result["judged"]


def test_latency_lag_and_memory_each_fail_the_trend_on_their_own() -> None:
    def failed(result: dict[str, object]) -> list[str]:
        checks = result["checks"]
        assert isinstance(checks, list)
        return [c["name"] for c in checks if not c["ok"]]

    assert failed(_trend(lat_last=15.0, lag_last=0.0, rss_last=1000.0)) == ["latency p99"]
    assert failed(_trend(lat_last=10.0, lag_last=400.0, rss_last=1000.0)) == [
        "image consumer lag p95"
    ]
    assert failed(_trend(lat_last=10.0, lag_last=0.0, rss_last=1200.0)) == [
        "service memory (dispatcher + pilots)"
    ]


def test_a_tenth_without_samples_fails_and_is_marked_not_judged() -> None:
    result = trend(
        latency=([10.0], [10.0]), image_lag=([], [0.0]), service_rss=([1.0], [1.0]),
        limits=TrendLimits(),
    )  # fmt: skip
    assert not result["ok"] and not result["judged"]


def test_exit_code_blames_the_harness_before_the_service() -> None:
    ok = {"valid": True, "lost": 0, "duplicates": 0, "wrong_status": 0, "trend": {"ok": True}}
    assert exit_code([ok], soak=True) == 0
    assert exit_code([{**ok, "wrong_status": 5}], soak=False) == 1
    assert exit_code([{**ok, "wrong_status": 5, "valid": False}], soak=False) == 3
    assert exit_code([{**ok, "trend": {"ok": False}}], soak=False) == 0
    assert exit_code([{**ok, "trend": {"ok": False}}], soak=True) == 4


def test_parse_metrics_keeps_lag_per_topic_kind_loop_stalls_and_commit_time() -> None:
    text = "\n".join([
        "# TYPE prompt_consumer_lag_messages gauge",
        'prompt_consumer_lag_messages{partition="0",topic="img"} 120.0',
        'prompt_consumer_lag_messages{partition="1",topic="img"} 30.0',
        'prompt_consumer_lag_messages{partition="0",topic="nv"} 2.0',
        "# TYPE prompt_event_loop_lag_max_seconds gauge",
        "prompt_event_loop_lag_max_seconds 0.012",
        "# TYPE prompt_state_commit_seconds histogram",
        'prompt_state_commit_seconds_bucket{le="+Inf"} 4.0',
        "prompt_state_commit_seconds_count 4.0",
        "prompt_state_commit_seconds_sum 0.02",
        "",
    ])  # fmt: skip
    m = parse_metrics(text, image_topic="img")
    assert m["lag_image"] == 150 and m["lag_control"] == 2
    assert math.isclose(m["loop_lag_max_s"], 0.012)
    assert (m["commit_count"], m["commit_sum_s"]) == (4, 0.02)


def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    registry = CollectorRegistry()
    monitor = LoopLagMonitor(registry, interval_s=0.01)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(monitor.run())
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # noqa: ASYNC251 -- on purpose: the loop is blocked: the monitor's wake-up comes ~0.2 s late
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())
    assert 0.15 <= monitor.recent_max() < 2.0
    page = generate_latest(registry).decode()
    assert "prompt_event_loop_lag_seconds_bucket" in page
    assert "prompt_event_loop_lag_max_seconds" in page


def test_loop_lag_window_forgets_old_stalls() -> None:
    monitor = LoopLagMonitor(CollectorRegistry(), window_s=10.0)
    monitor.observe(100.0, 0.5)
    monitor.observe(105.0, 0.01)
    assert monitor.recent_max() == 0.5
    monitor.observe(111.0, 0.02)
    assert monitor.recent_max() == 0.02
