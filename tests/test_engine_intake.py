"""The dispatcher's engine in memory, with a fake clock: next-visits (resurrect, ignore,
duplicate) and images (hold, apply, snaps, caps).

No broker, database or socket: ``engine_harness.Sim`` plays the runtime's part; the same
behaviour is checked end to end through the real processes in ``test_dispatcher*.py`` and friends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from prompt.dispatcher.engine import (
    Decision,
    Duplicate,
    HeldApplied,
    HeldOverflowError,
    Ignore,
    JobState,
    Resurrect,
)
from tests.engine_harness import INSTRUMENT, Sim, make_task, pushed

# ---- next-visit -----------------------------------------------------------------------------


def test_next_visit_resurrects_one_job_per_detector_expiring_after_its_images_are_due() -> None:
    sim = Sim([make_task(detectors="0-3,7", image_timeout_s=50)])
    nv = sim.nv()  # starts in 2 s, lasts 30 s
    decision = sim.next_visit(nv)
    assert isinstance(decision, Resurrect)
    assert decision.task.name == "alerts"
    assert decision.expires_at == pytest.approx(sim.clock.now + 2 + 2 * 30 + 50)
    visit = sim.visit(nv)
    assert sorted(visit.jobs) == [0, 1, 2, 3, 7]
    assert visit.open_jobs == 5
    assert {j.state for j in visit.jobs.values()} == {JobState.DEFINED}  # no pilot to preload


def test_repeated_next_visit_is_a_duplicate_while_resurrecting_and_once_in_flight() -> None:
    sim = Sim()
    nv = sim.nv()
    now = sim.clock.now
    first = sim.engine.announce(nv, nv.to_record(), now)
    assert isinstance(first, Resurrect)
    assert sim.engine.announce(nv, nv.to_record(), now) == Duplicate()  # not committed yet
    visit, _ = sim.engine.resurrected(nv, first.task, 1, [(10, 0)], now, first.expires_at)
    assert visit is not None
    assert sim.engine.announce(nv, nv.to_record(), now) == Duplicate()
    assert list(sim.engine.book.visits) == [(INSTRUMENT, nv.group_id)]
    assert sim.engine.book.counts["duplicates"] == 2
    assert sim.ignored("next-visit", "duplicate") == 2


def test_repeated_next_visit_after_the_visit_is_done_is_a_duplicate() -> None:
    sim = Sim([make_task(detectors="0")])
    sim, job_id = pushed(sim, "p1")
    sim.finish("p1", job_id)
    assert sim.engine.book.visits == {}
    assert sim.next_visit(sim.nv()) == Duplicate()
    assert sim.engine.book.visits == {}
    assert len(sim.completions) == 1


def test_visit_another_instance_already_made_is_a_duplicate_not_a_second_visit() -> None:
    sim = Sim()
    nv = sim.nv()
    decision = sim.engine.announce(nv, nv.to_record(), sim.clock.now)
    assert isinstance(decision, Resurrect)
    visit, effects = sim.engine.resurrected(nv, decision.task, None, [], sim.clock.now, 0.0)
    assert (visit, effects) == (None, [])
    assert sim.engine.book.visits == {}
    assert sim.engine.book.counts["duplicates"] == 1


@pytest.mark.parametrize(
    ("changes", "reason", "repeat"),
    [
        # Not an observation: nothing is recorded, so a repeat is judged the same way again.
        (lambda now: {"instrument": ""}, "not_observation", Ignore("not_observation", "ignored")),
        (lambda now: {"filters": "g_6"}, "no_task", Duplicate()),
        (lambda now: {"efd_stamp": now - 3600.5}, "stale", Duplicate()),  # the limit is 3600 s
    ],
    ids=["not_observation", "no_task", "stale"],
)
def test_next_visit_not_to_run_is_ignored_with_its_reason(
    changes: Callable[[float], dict[str, Any]], reason: str, repeat: Decision
) -> None:
    sim = Sim([make_task(selectors={"filters": ["r"]})])
    nv = sim.nv(**changes(sim.clock.now))
    assert sim.next_visit(nv) == Ignore(reason, "ignored")
    assert sim.engine.book.visits == {}
    assert sim.ignored("next-visit", reason) == 1
    assert sim.next_visit(nv) == repeat


def test_next_visit_just_inside_the_staleness_limit_is_resurrected() -> None:
    sim = Sim()
    nv = sim.nv(efd_stamp=sim.clock.now - 3599.5)
    assert isinstance(sim.next_visit(nv), Resurrect)


def test_images_held_for_a_visit_that_is_then_ignored_are_dropped() -> None:
    sim = Sim([make_task(selectors={"filters": ["g"]})])
    nv = sim.nv()
    sim.image(nv, 0)
    assert len(sim.held_rows) == 1
    assert isinstance(sim.next_visit(nv), Ignore)
    assert sim.engine.held_groups() == []
    assert sim.held_rows == {}  # their rows can go
    assert sim.ignored("image-arrival", "visit_closed") == 1
    sim.image(nv, 1)  # later images of the ignored visit are not held
    assert sim.engine.held_groups() == []
    assert sim.ignored("image-arrival", "visit_closed") == 2


# ---- images ---------------------------------------------------------------------------------


def test_image_before_its_next_visit_is_held_then_applied_on_resurrection() -> None:
    sim = Sim()
    sim.register("p1", slots=4)
    nv = sim.nv()
    arrived = sim.clock.now
    sim.image(nv, 2)
    key = (INSTRUMENT, nv.group_id)
    assert sim.engine.held_groups() == [key]
    assert sim.held_rows == {
        (*key, 2, 0): (*key, 2, 0, f"s3://raw/{nv.group_id}/2/0.fits", arrived, arrived)
    }
    sim.clock.advance(3)
    sim.next_visit(nv)
    assert HeldApplied(key) in sim.effects
    assert sim.held_rows == {}
    assert sim.engine.held_groups() == []
    job = sim.job(nv, 2)
    assert job.state is JobState.SENT
    assert job.deadline == arrived + 60  # the budget runs from the image's arrival
    assert sim.jobs_sent("p1") == [job.id]


def test_duplicate_images_are_ignored_held_or_applied() -> None:
    sim = Sim()
    sim.register("p1", slots=4)
    nv = sim.nv()
    sim.image(nv, 0)
    sim.image(nv, 0)  # held twice
    assert len(sim.engine.book.held) == 1
    sim.next_visit(nv)
    sim.image(nv, 0)  # after it was applied and sent
    sim.image(nv, 1)
    sim.image(nv, 1, uri="s3://raw/elsewhere.fits")  # same detector and snap
    assert sim.jobs_sent("p1") == [sim.job(nv, 0).id, sim.job(nv, 1).id]
    assert sim.job(nv, 1).uris == [f"s3://raw/{nv.group_id}/1/0.fits"]
    assert sim.engine.book.counts["duplicates"] == 3
    assert sim.ignored("image-arrival", "duplicate") == 3


def test_image_of_a_detector_not_in_the_task_is_ignored() -> None:
    sim = Sim([make_task(detectors="0-3")])
    nv = sim.nv()
    sim.next_visit(nv)
    before = len(sim.effects)
    sim.image(nv, 7)
    assert sim.effects[before:] == []
    assert sim.ignored("image-arrival", "detector_not_in_task") == 1
    assert sorted(sim.visit(nv).jobs) == [0, 1, 2, 3]


def test_image_of_a_visit_already_done_is_not_held() -> None:
    sim = Sim([make_task(detectors="0")])
    sim, job_id = pushed(sim, "p1")
    sim.finish("p1", job_id)
    sim.image(sim.nv(), 0, snap=1)
    assert sim.engine.held_groups() == []
    assert sim.ignored("image-arrival", "visit_closed") == 1


def test_multi_snap_job_is_ready_only_with_all_snaps_in_snap_order_with_first_obs_id() -> None:
    sim = Sim()
    sim.register("p1", slots=4)
    nv = sim.nv(nimages=2)
    sim.next_visit(nv)
    sim.image(nv, 0, snap=1, obs_id="MC_O_20250501_000002")
    assert sim.job(nv, 0).state is JobState.PRELOADING
    assert sim.sent("p1") == []
    sim.clock.advance(15)
    sim.image(nv, 0, snap=0, obs_id="MC_O_20250501_000001")
    (frame,) = sim.sent("p1")
    fields = frame["fields"]
    assert fields["uris"] == [
        f"s3://raw/{nv.group_id}/0/0.fits",
        f"s3://raw/{nv.group_id}/0/1.fits",
    ]
    assert fields["uri"] == f"s3://raw/{nv.group_id}/0/0.fits"
    assert fields["obs_id"] == fields["visit"] == "MC_O_20250501_000001"
    assert fields["nimages"] == 2
    assert frame["deadline"] == sim.clock.now + 60  # from the last snap to arrive


def test_held_images_per_group_are_capped_and_the_overflow_changes_nothing() -> None:
    sim = Sim(held_per_group=2, held_total=10)
    a, b = sim.nv(0), sim.nv(1)
    sim.image(a, 0)
    sim.image(a, 1)
    rows = dict(sim.held_rows)
    with pytest.raises(HeldOverflowError, match="its group holds the 2 images"):
        sim.image(a, 2)
    assert sim.held_rows == rows
    assert len(sim.engine.book.held) == 2
    assert sim.engine.book.counts["held"] == 2
    assert sim.engine.sweep(images_read=False) == []  # no effect left behind
    sim.image(a, 1)  # a duplicate is still a duplicate, not an overflow
    sim.image(b, 0)  # other groups still have room
    assert len(sim.engine.book.held) == 3


def test_held_images_in_total_are_capped_and_the_overflow_changes_nothing() -> None:
    sim = Sim(held_per_group=10, held_total=3)
    a, b = sim.nv(0), sim.nv(1)
    sim.image(a, 0)
    sim.image(a, 1)
    sim.image(b, 0)
    with pytest.raises(HeldOverflowError, match="all groups hold the 3 images"):
        sim.image(b, 1)
    assert len(sim.engine.book.held) == 3
    assert len(sim.held_rows) == 3
    sim.register("p1", slots=4)
    sim.next_visit(b)  # what was held is applied, nothing more
    assert len(sim.jobs_sent("p1")) == 1


def test_held_images_are_dropped_after_their_ttl_not_before() -> None:
    sim = Sim(held_ttl_s=100)
    nv = sim.nv()
    sim.image(nv, 0)
    sim.clock.advance(100)
    sim.sweep()
    assert sim.engine.held_groups() == [(INSTRUMENT, nv.group_id)]
    sim.clock.advance(0.5)
    sim.sweep()
    assert sim.engine.held_groups() == []
    assert sim.held_rows == {}  # their rows go too, or every restart would hold them again
    assert sim.ignored("image-arrival", "next_visit_never_came") == 1
