"""``--capacity-drop``: its parsing, which pilots go and when, and how visits are judged by it."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.capacity import CapacityCut, CapacityDrop, image_phases, parse_capacity_drop
from loadtest.chaos import SETTLE_S
from loadtest.plan import IMAGE, Faults, Timing, build_plan, relaxed_for_faults
from loadtest.schedule import synthetic_night
from loadtest.summary import budget_met


def test_parses_fraction_and_a_night_window() -> None:
    assert parse_capacity_drop("0.5@10m-15m") == CapacityDrop(0.5, 600.0, 900.0)
    assert parse_capacity_drop("0.25@90-1.5h") == CapacityDrop(0.25, 90.0, 5400.0)
    assert parse_capacity_drop(" 0.5@30s-45s") == CapacityDrop(0.5, 30.0, 45.0)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0.5", "FRACTION@START-END"),
        ("0.5@10m", "FRACTION@START-END"),
        ("half@1m-2m", "could not convert"),
        ("0.5@1q-2m", "not a duration"),
        ("0@1m-2m", "(0, 1)"),
        ("1@1m-2m", "(0, 1)"),
        ("0.5@2m-1m", "end after it starts"),
    ],
)
def test_bad_specs_say_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match="--capacity-drop") as err:
        parse_capacity_drop(text)
    assert why in str(err.value)


def test_the_fraction_of_pilots_taken_never_all_never_none() -> None:
    drop = CapacityDrop(0.5, 0, 1)
    assert [drop.count(n) for n in (1, 2, 3, 4, 8)] == [0, 1, 2, 2, 4]
    assert CapacityDrop(0.9, 0, 1).count(4) == 3
    assert CapacityDrop(0.1, 0, 1).count(4) == 1
    assert drop.wall_window(10) == (0.0, 0.1)


def test_the_cut_kills_at_the_start_and_restarts_the_same_pilots_at_the_end() -> None:
    killed: list[str] = []
    spawned: list[str] = []
    pilots = ["p0", "p1", "p2", "p3"]
    cut = CapacityCut(CapacityDrop(0.5, 100.0, 300.0), speed=10.0, seed=3)
    assert cut.window == (10.0, 30.0)
    assert not cut.step(9.9, pilots, killed.append, spawned.append)
    assert cut.step(10.2, pilots, killed.append, spawned.append)
    assert len(killed) == 2 and set(killed) <= set(pilots) and cut.victims == sorted(killed)
    left = [p for p in pilots if p not in killed]
    assert not cut.step(20.0, left, killed.append, spawned.append)
    assert not cut.done
    assert cut.step(30.0, left, killed.append, spawned.append)
    assert spawned == cut.victims and cut.done
    assert not cut.step(99.0, pilots, killed.append, spawned.append)
    assert len(killed) == 2 and len(spawned) == 2
    doc = cut.as_dict()
    assert doc["window_night_s"] == [100.0, 300.0] and doc["window_wall_s"] == [10.0, 30.0]
    assert (doc["dropped_wall_s"], doc["restored_wall_s"]) == (10.2, 30.0)
    again = CapacityCut(CapacityDrop(0.5, 100.0, 300.0), speed=10.0, seed=3)
    again.step(10.0, pilots, lambda _: None, lambda _: None)
    assert again.victims == cut.victims, "the same seed takes the same pilots"


def test_visits_are_judged_by_when_their_first_image_is_planned() -> None:
    night = synthetic_night(seed=0).select(12, None)
    plan = build_plan(night, list(range(4)), Timing(speed=10), Faults(), seed=1)
    window = (plan.end_wall * 0.3, plan.end_wall * 0.6)
    phases = image_phases(plan, window)
    assert set(phases) == {v.index for v in night.visits}
    assert set(phases.values()) == {"before", "during", "after"}
    first_image: dict[int, float] = {}
    for e in plan.events:
        if e.kind == IMAGE:
            first_image[e.visit.index] = min(e.wall, first_image.get(e.visit.index, e.wall))
    for v, phase in phases.items():
        wall = first_image[v]
        assert phase == (
            "before" if wall < window[0] else "during" if wall <= window[1] else "after"
        )
    first = min(v for v, p in phases.items() if p == "after")
    assert all(p == "after" for v, p in phases.items() if v > first)


def test_canceled_visits_around_the_cut_may_expire_and_others_keep_their_set() -> None:
    night = synthetic_night(seed=0).select(12, None)
    plan = build_plan(night, list(range(4)), Timing(speed=10), Faults(canceled_visits=0.4), seed=2)
    assert plan.canceled
    expected, relaxed = relaxed_for_faults(plan, [(0.0, plan.end_wall)], 10.0)
    for key in relaxed:
        if key[0] in plan.canceled:
            assert expected[key] == {"canceled", "expired"}
        else:
            assert expected[key] == {"finished", "late"}
    assert {k[0] for k in relaxed} >= plan.canceled


def _done(latency_night_s: float, status: str = "finished") -> list[dict[str, Any]]:
    return [{"latencySeconds": latency_night_s / 10, "status": status}]


def test_budget_met_counts_jobs_within_60_night_s_of_their_image() -> None:
    by_key = {
        (0, 0): _done(30),
        (0, 1): _done(59.9, "late"),
        (0, 2): _done(61),
        (0, 3): _done(5, "failed"),
    }
    keys = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]  # (0, 4): never completed
    assert budget_met(keys, by_key, speed=10) == 0.4
    assert budget_met([], by_key, speed=10) is None


def test_sends_around_the_kill_and_the_restart_are_excused_from_driver_lag() -> None:
    cut = CapacityCut(CapacityDrop(0.5, 100.0, 300.0), speed=10.0, seed=0)
    assert not cut.disturbed(5.0, 50.0), "nothing done yet"
    cut.step(10.0, ["a", "b"], lambda _: None, lambda _: None)
    assert cut.disturbed(9.9, 10.3)  # planned before the kill, sent after it
    assert cut.disturbed(10.0 + SETTLE_S - 0.1, 20.0)
    assert not cut.disturbed(10.0 + SETTLE_S + 0.1, 20.0)
    assert not cut.disturbed(5.0, 9.0)
    cut.step(30.0, ["b"], lambda _: None, lambda _: None)
    assert cut.disturbed(30.5, 30.6) and not cut.disturbed(29.0, 29.5)
