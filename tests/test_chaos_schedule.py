"""The chaos schedule (deterministic by seed, spaced, every kind) and the statuses relaxed around
faults: pure functions, no stack."""

from __future__ import annotations

import itertools

import pytest

from loadtest.chaos import KINDS, ChaosConfig, FaultRecord, chaos_schedule, failover_s
from loadtest.plan import FAULT_MARGIN_S, Faults, Timing, build_plan, relaxed_for_faults
from loadtest.schedule import synthetic_night


@pytest.mark.parametrize("end_wall", [12.0, 30.0, 75.0, 400.0])
def test_schedule_is_deterministic_spaced_and_holds_every_kind(end_wall: float) -> None:
    config = ChaosConfig(seed=3, gap_s=7.0)
    faults = chaos_schedule(end_wall, config)
    assert faults == chaos_schedule(end_wall, config)
    assert faults != chaos_schedule(end_wall, ChaosConfig(seed=4, gap_s=7.0))
    kinds = [f.kind for f in faults]
    assert len(kinds) % len(KINDS) == 0
    for i in range(0, len(kinds), len(KINDS)):  # each round: one of each kind
        assert sorted(kinds[i : i + len(KINDS)]) == sorted(KINDS)
    walls = [f.wall for f in faults]
    assert walls == sorted(walls) and walls[0] > 0
    gaps = [b - a for a, b in itertools.pairwise(walls)]
    assert all(g >= 0.7 * config.gap_s for g in gaps), gaps
    if end_wall >= 4 * config.gap_s / 0.85 + 2:  # room for the spacing: all before the end
        assert walls[-1] < 0.85 * end_wall + config.gap_s
    for f in faults:
        low, high = (1.0, 1.0) if f.kind == "pilot" else config.down_s
        assert low <= f.down_s <= high and 0 <= f.pick < 1


def test_a_long_replay_gets_several_rounds() -> None:
    faults = chaos_schedule(600.0, ChaosConfig(seed=0, gap_s=7.0))
    assert len(faults) >= 4 * 10


def test_jobs_in_flight_around_a_fault_are_relaxed_and_no_others() -> None:
    night = synthetic_night(seed=1).select(12)
    speed = 20.0
    plan = build_plan(
        night, list(range(4)), Timing(speed=speed), Faults(canceled_visits=0.3), seed=2
    )
    assert plan.canceled, "the seed must cancel a visit"
    window = (5.0, 6.5)
    expected, relaxed = relaxed_for_faults(plan, [window], speed)
    margin = FAULT_MARGIN_S / speed
    near = {
        (e.visit.index, e.detector)
        for e in plan.events
        if e.kind == "image" and window[0] - margin <= e.wall <= window[1] + margin
    }
    assert near and near <= relaxed
    for key, allowed in expected.items():
        assert "failed" not in allowed
        if key not in relaxed:
            assert allowed == plan.expected[key]
        elif key[0] in plan.canceled:
            assert allowed == {"canceled", "expired"}
        else:
            assert allowed == {"finished", "late"}
    assert relaxed_for_faults(plan, [], speed) == (plan.expected, set())


def test_failover_is_the_slowest_dispatcher_recovery() -> None:
    def record(kind: str, recovery: float | None) -> FaultRecord:
        return FaultRecord(kind, "x", 1.0, 1.0, 0.0, 20.0, 1.0, recovery_s=recovery)

    assert failover_s([record("broker", 9.0)]) is None
    assert failover_s([record("dispatcher", 2.5), record("dispatcher", 3.1)]) == 3.1
    assert failover_s([record("dispatcher", None), record("pilot", 8.0)]) is None
