"""The dispatcher's engine in memory: every rule, in milliseconds, with a fake clock.

No broker, database or socket: ``engine_harness.Sim`` plays the runtime's part. The same
behaviour is checked end to end through the real processes in ``test_dispatcher*.py``,
``test_resilience.py`` and friends; these tests pin the decisions themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from prompt.channel.frames import MAX_FRAME
from prompt.dispatcher.engine import (
    BuildFirst,
    Decision,
    Disconnect,
    Duplicate,
    HeldApplied,
    HeldOverflowError,
    Ignore,
    Job,
    JobState,
    Noted,
    Resurrect,
    SavedState,
    SaveJob,
    Visit,
)
from tests.engine_harness import INSTRUMENT, Sim, decode_frame, make_task

OPEN = {"defined": 0, "assigned": 0, "preloading": 0, "ready": 0, "sent": 0, "running": 0}


def pushed(sim: Sim, pilot: str, *, slots: int = 4) -> tuple[Sim, int]:
    """``sim`` with ``pilot`` registered, a visit announced and detector 0's image in:
    returns the job id, now on ``pilot``."""
    sim.register(pilot, slots=slots)
    nv = sim.nv()
    sim.next_visit(nv)
    sim.image(nv, 0)
    return sim, sim.job(nv, 0).id


def preloaded(sim: Sim, pilot: str) -> list[int]:
    """The detectors ``pilot`` was asked to preload, over all its preload frames."""
    return [item["detector"] for f in sim.sent(pilot, "preload") for item in f["items"]]


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


# ---- push scheduling ------------------------------------------------------------------------


def test_preload_goes_to_the_pilot_holding_the_detector_and_filter() -> None:
    sim = Sim([make_task(detectors="0-1")])
    sim.register("p1", slots=4)
    sim.register("p2", slots=4, cache={(INSTRUMENT, 1, "r_57"), (INSTRUMENT, 0, "g_6")})
    nv = sim.nv()
    sim.next_visit(nv)
    assert preloaded(sim, "p2") == [1]
    assert preloaded(sim, "p1") == [0]  # p2 holds detector 0 in another filter only
    (frame,) = sim.sent("p2", "preload")
    visit = sim.visit(nv)
    assert frame["items"] == [{
        "job": visit.jobs[1].id, "instrument": INSTRUMENT, "detector": 1, "filter": "r_57",
        "day_obs": 20250501, "group": nv.group_id, "ra": nv.position[0], "dec": nv.position[1],
        "valid_until": visit.expires_at + 60,
    }]  # fmt: skip
    assert visit.jobs[1].state is JobState.PRELOADING
    assert visit.jobs[1].pilot_id == "p2"


def test_preload_without_a_cache_holder_goes_to_the_least_loaded_pilot_for_its_slots() -> None:
    sim = Sim([make_task(detectors="0-3")])
    sim.register("p1", slots=1)
    sim.register("p2", slots=4)
    sim.next_visit(sim.nv())
    assert preloaded(sim, "p1") == [0]
    assert preloaded(sim, "p2") == [1, 2, 3]  # 3 of 4 slots is less loaded than 1 of 1


def test_ready_job_goes_to_its_preloading_pilot_when_it_has_a_free_slot() -> None:
    sim = Sim([make_task(detectors="0-1")])
    sim.register("p1", slots=4)
    sim.register("p2", slots=2)
    nv = sim.nv()
    sim.next_visit(nv)
    assert preloaded(sim, "p2") == [1]
    sim.image(nv, 1)
    assert sim.jobs_sent("p2") == [sim.job(nv, 1).id]  # not p1, though it has more room
    assert sim.jobs_sent("p1") == []


def affinity_setup() -> tuple[Sim, int, int]:
    """p1 preloaded detectors 0 and 2 and is busy with 0; detector 2's image has come.
    Returns the ids of the jobs of detectors 0 (running) and 2 (waiting)."""
    sim = Sim([make_task(detectors="0-2")], affinity_wait_s=10)
    sim.register("p1", slots=1)
    sim.register("p2", slots=1)
    nv = sim.nv()
    sim.next_visit(nv)
    assert (preloaded(sim, "p1"), preloaded(sim, "p2")) == ([0, 2], [1])
    sim.image(nv, 0)
    sim.image(nv, 2)
    return sim, sim.job(nv, 0).id, sim.job(nv, 2).id


def test_job_waits_for_its_busy_preloading_pilot_up_to_the_affinity_wait() -> None:
    sim, busy, job_id = affinity_setup()
    assert sim.jobs_sent("p2") == []  # p2 is free, but does not hold the calibrations
    sim.later(9.5)
    assert sim.jobs_sent("p2") == []
    sim.later(0.5)
    assert sim.jobs_sent("p2") == [job_id]
    assert sim.jobs_sent("p1") == [busy]


def test_job_waiting_for_its_preloading_pilot_goes_to_it_when_its_slot_frees() -> None:
    sim, busy, job_id = affinity_setup()
    sim.clock.advance(3)
    sim.finish("p1", busy)
    assert sim.jobs_sent("p1") == [busy, job_id]
    assert sim.jobs_sent("p2") == []


def test_job_preloaded_on_a_pilot_that_is_draining_does_not_wait_for_it() -> None:
    sim = Sim([make_task(detectors="0")], affinity_wait_s=10)
    sim.register("p1", slots=1)
    sim.register("p2", slots=1)
    nv = sim.nv()
    sim.next_visit(nv)
    assert preloaded(sim, "p1") == [0]
    sim.heartbeat("p1", draining=True)
    sim.image(nv, 0)
    assert sim.jobs_sent("p2") == [sim.job(nv, 0).id]


def test_ready_queue_hands_out_the_earliest_deadline_first() -> None:
    sim = Sim([make_task(detectors="0-3")])
    sim.register("p1", slots=1)
    nv = sim.nv()
    sim.next_visit(nv)
    now = sim.clock.now
    sim.image(nv, 0)  # runs; the others queue behind it
    for detector, arrived in ((3, now - 5), (1, now - 10), (2, now - 20)):
        sim.image(nv, detector, event_time=arrived)
    ids = {d: sim.job(nv, d).id for d in range(4)}
    for detector in (0, 2, 1):
        sim.finish("p1", ids[detector])
    assert sim.jobs_sent("p1") == [ids[0], ids[2], ids[1], ids[3]]


def test_jobs_go_only_to_pilots_with_the_labels_their_task_requires() -> None:
    sim = Sim([make_task(detectors="0-1", requirements={"labels": ["gpu"]})])
    sim.register("plain", slots=8)
    sim.register("gpu", slots=1, labels=("gpu", "big"))
    nv = sim.nv()
    sim.next_visit(nv)
    assert preloaded(sim, "plain") == []
    assert preloaded(sim, "gpu") == [0, 1]
    sim.images(nv)
    sim.later(60)  # long past the affinity wait
    assert sim.sent("plain") == []
    assert sim.jobs_sent("gpu") == [sim.job(nv, 0).id]
    sim.finish("gpu", sim.job(nv, 0).id)
    assert sim.jobs_sent("gpu") == [sim.job(nv, 0).id, sim.job(nv, 1).id]


def test_draining_pilots_get_no_preload_and_no_job() -> None:
    sim = Sim([make_task(detectors="0-1")])
    sim.register("old", slots=8, draining=True)
    sim.register("new", slots=1)
    nv = sim.nv()
    sim.next_visit(nv)
    sim.images(nv)
    sim.later(60)
    assert sim.sent("old", "preload") == sim.sent("old") == []
    assert sim.jobs_sent("new") == [sim.job(nv, 0).id]
    sim.heartbeat("old", draining=False)  # back in service: it takes the queued job
    assert sim.jobs_sent("old") == [sim.job(nv, 1).id]


def test_load_for_placement_forgets_jobs_that_ended_on_another_pilot() -> None:
    sim = Sim([make_task(detectors="0-3")])
    sim.register("p1", slots=2)
    sim.register("p2", slots=2)
    a = sim.nv(0)
    sim.next_visit(a)
    assert (preloaded(sim, "p1"), preloaded(sim, "p2")) == ([0, 2], [1, 3])
    sim.images(a)
    ids = {d: sim.job(a, d).id for d in range(4)}
    sim.finish("p2", ids[1])
    sim.finish("p2", ids[3])
    sim.finish("p1", ids[0], error="slow", failure="timeout")
    sim.finish("p1", ids[2], error="slow", failure="timeout")
    assert sim.jobs_sent("p2")[2:] == [ids[0], ids[2]]  # retried where they were not tried
    sim.finish("p2", ids[0])
    sim.finish("p2", ids[2])
    sim.next_visit(sim.nv(1))  # both pilots are idle: the next visit splits evenly
    assert [len(sim.sent(p, "preload")[-1]["items"]) for p in ("p1", "p2")] == [2, 2]


# ---- poll scheduling ------------------------------------------------------------------------


def test_poll_notes_the_next_visit_and_builds_the_visit_at_its_first_image() -> None:
    sim = Sim(scheduling="poll")
    sim.register("p1", slots=4)
    nv = sim.nv()
    assert sim.next_visit(nv) == Noted()
    assert sim.next_visit(nv) == Duplicate()
    assert sim.engine.book.visits == {}
    build = sim.deliver(sim.arrival(nv, 0))
    assert isinstance(build, BuildFirst)
    assert build.announced.nv == nv
    assert sim.job(nv, 0).state is JobState.READY
    assert sim.deliver(sim.arrival(nv, 1)) is None  # the visit exists now
    assert sim.sent("p1", "preload") == []  # poll preloads nothing
    assert sim.sent("p1") == []


def test_poll_sends_jobs_only_when_a_pilot_asks_and_only_as_many_as_it_has_room_for() -> None:
    sim = Sim(scheduling="poll")
    sim.register("p1", slots=2)
    nv = sim.nv()
    sim.next_visit(nv)
    sim.images(nv, [0, 1, 2])
    sim.later(30)
    assert sim.sent("p1") == []
    sim.poll("p1")
    assert sim.jobs_sent("p1") == [sim.job(nv, 0).id, sim.job(nv, 1).id]
    sim.finish("p1", sim.job(nv, 0).id)
    assert len(sim.jobs_sent("p1")) == 2  # a freed slot waits for the next poll
    sim.poll("p1")
    assert sim.jobs_sent("p1")[2:] == [sim.job(nv, 2).id]


def test_welcome_says_the_scheduling_and_with_poll_how_often_to_ask() -> None:
    assert Sim().engine.welcome() == {"t": "welcome", "heartbeat_s": 1.25, "scheduling": "push"}
    assert Sim(scheduling="poll", poll_s=3.0, heartbeat_s=0.5).engine.welcome() == {
        "t": "welcome", "heartbeat_s": 0.5, "scheduling": "poll", "poll_s": 3.0,
    }  # fmt: skip


def test_poll_cancel_of_a_noted_visit_stops_its_images_from_building_it() -> None:
    sim = Sim(scheduling="poll")
    sim.register("p1", slots=4)
    nv = sim.nv()
    assert sim.next_visit(nv) == Noted()
    assert sim.cancel(nv.group_id) is False  # no visit yet: the cancel is recorded
    assert sim.deliver(sim.arrival(nv, 0)) is None
    assert sim.engine.book.visits == {}
    assert sim.engine.held_groups() == []
    sim.poll("p1")
    assert sim.sent("p1") == []


# ---- outcomes -------------------------------------------------------------------------------


def test_finished_job_has_one_completion_and_its_ack_waits_for_the_commit() -> None:
    sim, job_id = pushed(Sim(), "p1")
    sim.start("p1", job_id)
    sim.clock.advance(4)
    sim.finish("p1", job_id)
    (save,) = [e for e in sim.effects if isinstance(e, SaveJob) and e.completion is not None]
    assert save.job.id == job_id
    assert save.then is not None  # the ack is sent once the row and completion are committed
    assert decode_frame(save.then.frame) == {"t": "ack", "job": job_id, "attempt": 1}
    assert sim.acks("p1") == []
    sim.commit()
    assert sim.acks("p1") == [(job_id, 1)]
    done = sim.completion(job_id)
    assert (done["status"], done["attempt"], done["failureKind"]) == ("finished", 1, None)
    assert (done["pilot"], done["counts"], done["cacheHit"]) == ("p1", {"sources": 3}, True)
    assert done["latencySeconds"] == pytest.approx(4)
    assert sim.engine.job_log(job_id) == "done"


def test_job_finished_after_its_deadline_is_late() -> None:
    sim, job_id = pushed(Sim([make_task(deadline_s=30)]), "p1")
    sim.clock.advance(30.5)
    sim.finish("p1", job_id)
    assert sim.completion(job_id)["status"] == "late"
    assert sim.engine.snapshot().problems[0]["status"] == "late"


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        ("payload_error", "payload_error"),
        ("timeout", "timeout"),
        ("pilot_lost", "pilot_lost"),
        ("gremlins", "payload_error"),  # a kind this dispatcher does not know: retriable
    ],
)
def test_retriable_failure_is_retried_elsewhere_then_fails_when_attempts_run_out(
    failure: str, kind: str
) -> None:
    sim = Sim([make_task(detectors="0", max_attempts=2)])
    sim.register("p2", slots=1)
    sim, job_id = pushed(sim, "p1", slots=1)  # p1 preloaded it (ties go by pilot id)
    assert (sim.jobs_sent("p1"), sim.jobs_sent("p2")) == ([job_id], [])
    sim.finish("p1", job_id, error="attempt 1 broke", failure=failure)
    assert sim.completions == []
    assert sim.sent("p2")[0]["attempt"] == 2  # on the pilot not yet tried
    assert sim.acks("p1") == []
    sim.commit()
    assert sim.acks("p1") == [(job_id, 1)]
    sim.finish("p2", job_id, error="attempt 2 broke", failure=failure)
    done = sim.completion(job_id)
    assert (done["status"], done["attempt"], done["failureKind"]) == ("failed", 2, kind)
    assert done["error"] == "attempt 2 broke"
    assert sim.engine.book.counts["retries"] == 1


@pytest.mark.parametrize("failure", ["rejected_input", "missing_calibration"])
def test_non_retriable_failure_fails_on_the_first_attempt_with_its_reason(failure: str) -> None:
    sim = Sim([make_task(max_attempts=5)])
    sim.register("p2", slots=4)
    sim, job_id = pushed(sim, "p1")
    sim.finish("p1", job_id, error="no WCS in the raw header", failure=failure)
    done = sim.completion(job_id)
    assert (done["status"], done["attempt"], done["failureKind"]) == ("failed", 1, failure)
    assert done["error"] == "no WCS in the raw header"
    assert len(sim.jobs_sent("p1") + sim.jobs_sent("p2")) == 1


def test_failure_after_the_deadline_is_not_retried_no_budget_left() -> None:
    sim, job_id = pushed(Sim([make_task(deadline_s=30, max_attempts=3)]), "p1")
    sim.clock.advance(31)
    sim.finish("p1", job_id, error="worker died", failure="timeout")
    done = sim.completion(job_id)
    assert (done["status"], done["attempt"], done["failureKind"]) == ("failed", 1, "timeout")
    assert done["error"] == "worker died; no budget left to retry"
    assert sim.jobs_sent("p1") == [job_id]


def test_job_of_a_pilot_lost_after_the_deadline_runs_again_and_ends_late() -> None:
    """Losing the pilot is not the job's doing: no budget left is no reason to give up."""
    sim = Sim([make_task(detectors="0", deadline_s=30, max_attempts=3)], heartbeat_timeout_s=5)
    sim.register("p2", slots=1)
    sim, job_id = pushed(sim, "p1", slots=1)
    sim.clock.advance(31)
    sim.heartbeat("p2")
    sim.sweep()  # p1 silent for 31 s: lost, after the job's deadline
    retry = sim.sent("p2")[-1]
    assert (retry["job"], retry["attempt"]) == (job_id, 2)
    sim.finish("p2", job_id)
    done = sim.completion(job_id)
    assert (done["status"], done["attempt"]) == ("late", 2)


def test_job_whose_frame_is_over_the_limit_fails_unsendable_at_once() -> None:
    payload = {"kind": "python", "entry": "pipe:run", "params": {"blob": "x" * MAX_FRAME}}
    sim, job_id = pushed(Sim([make_task(detectors="0-1", payload=payload)]), "p1")
    assert sim.jobs_sent("p1") == []
    done = sim.completion(job_id)
    assert (done["status"], done["attempt"], done["failureKind"]) == ("failed", 1, "unsendable")
    assert "the job cannot be sent" in done["error"]
    assert sim.engine.in_flight_on_pilots() == 0
    assert sim.engine.snapshot().pilots[0]["running"] == 0


def test_every_job_ends_with_exactly_one_completion() -> None:
    sim = Sim([make_task(detectors="0-4", image_timeout_s=0, max_attempts=2)])
    sim.register("p1", slots=8)
    nv = sim.nv()
    sim.next_visit(nv)
    ids = {d: sim.job(nv, d).id for d in range(5)}
    visit_id = sim.visit(nv).id
    sim.images(nv, [0, 1, 2, 3])
    sim.finish("p1", ids[0])
    sim.finish("p1", ids[0])  # the result sent again (say, the ack was lost)
    sim.finish("p1", ids[1], error="bad", failure="rejected_input")
    sim.finish("p1", ids[2], error="flaky", failure="worker_crashed")
    sim.finish("p1", ids[2])
    sim.finish("p1", ids[2], attempt=1)  # the superseded attempt reports late
    sim.finish("p1", ids[3], error="flaky", failure="timeout")
    sim.finish("p1", ids[3], error="flaky", failure="timeout")
    sim.later(62)  # detector 4's image never came
    statuses = {d: sim.completion(i)["status"] for d, i in ids.items()}
    assert statuses == {0: "finished", 1: "failed", 2: "finished", 3: "failed", 4: "expired"}
    assert len(sim.completions) == 5
    assert sim.visit_status == {visit_id: "done"}


def test_stale_results_are_acknowledged_and_ignored() -> None:
    sim = Sim([make_task(detectors="0")])
    sim.register("p2", slots=1)
    sim, job_id = pushed(sim, "p1", slots=1)
    sim.finish("p1", job_id, error="timed out", failure="timeout")  # retried on p2
    sim.commit()
    sim.finish("p1", job_id, attempt=1)  # the old attempt finished after all
    sim.finish("p2", job_id, attempt=1)  # a pilot that never had attempt 1
    assert sim.acks("p1") == [(job_id, 1), (job_id, 1)]
    assert sim.acks("p2") == [(job_id, 1)]  # acknowledged at once: nothing to commit
    assert sim.completions == []
    assert sim.engine.book.jobs[job_id].state is JobState.SENT
    sim.finish("p2", job_id)
    assert sim.completion(job_id)["attempt"] == 2


# ---- expiry ---------------------------------------------------------------------------------


def test_jobs_waiting_for_images_expire_at_the_visits_expiry_time_not_before() -> None:
    sim = Sim([make_task(detectors="0-2", image_timeout_s=10)])
    sim.register("p1", slots=4)
    nv = sim.nv(nimages=2)  # expires 2 + 2 * 30 + 10 s from now
    sim.next_visit(nv)
    ids = {d: sim.job(nv, d).id for d in range(3)}
    sim.image(nv, 0, snap=0)
    sim.image(nv, 0, snap=1)
    sim.image(nv, 1, snap=0)
    sim.later(71.5)
    assert sim.completions == []
    sim.later(0.5)
    assert {sim.completion(ids[d])["status"] for d in (1, 2)} == {"expired"}
    assert sim.completion(ids[1])["error"] == "image never arrived (1/2 snaps)"
    assert sim.completion(ids[2])["error"] == "image never arrived (0/2 snaps)"
    assert sim.engine.book.jobs[ids[0]].state is JobState.SENT  # on its pilot: not expired


def test_nothing_expires_while_the_image_intake_has_not_read_everything() -> None:
    sim = Sim([make_task(detectors="0-1", image_timeout_s=0)])
    sim.register("p1", slots=4)
    nv = sim.nv()
    sim.next_visit(nv)
    sim.later(600, images_read=False)
    assert sim.completions == []
    sim.image(nv, 0)  # read from the topic's backlog after the outage
    assert sim.jobs_sent("p1") == [sim.job(nv, 0).id]
    sim.later(0, images_read=True)
    assert sim.completion(sim.job(nv, 1).id)["status"] == "expired"


# ---- cancel ---------------------------------------------------------------------------------


def test_cancel_ends_jobs_not_yet_on_a_pilot_and_lets_running_ones_finish() -> None:
    sim = Sim([make_task(detectors="0-3")])
    sim.register("p1", slots=1)
    nv = sim.nv()
    sim.next_visit(nv)
    ids = {d: sim.job(nv, d).id for d in range(4)}
    visit_id = sim.visit(nv).id
    sim.image(nv, 0)
    sim.start("p1", ids[0])
    sim.image(nv, 1)  # queued behind it
    assert sim.cancel(nv.group_id) is True
    assert {sim.completion(ids[d])["status"] for d in (1, 2, 3)} == {"canceled"}
    assert sim.completion(ids[1])["error"] == "visit canceled"
    assert sim.engine.book.jobs[ids[0]].state is JobState.RUNNING
    sim.finish("p1", ids[0])
    assert sim.jobs_sent("p1") == [ids[0]]  # the canceled queued job never went out
    assert sim.completion(ids[0])["status"] == "finished"
    assert sim.visit_status == {visit_id: "done"}


def test_visit_whose_jobs_were_all_canceled_is_canceled() -> None:
    sim = Sim()
    nv = sim.nv()
    sim.next_visit(nv)
    visit_id = sim.visit(nv).id
    assert sim.cancel(nv.group_id) is True
    assert sim.visit_status == {visit_id: "canceled"}
    assert sim.next_visit(nv) == Duplicate()
    sim.image(nv, 0)
    assert sim.engine.held_groups() == []


def test_cancel_before_the_next_visit_is_remembered_and_drops_held_images() -> None:
    sim = Sim()
    nv = sim.nv()
    sim.image(nv, 0)
    assert sim.cancel(nv.group_id) is False  # recorded, then canceled_unannounced
    assert sim.engine.held_groups() == []
    assert sim.held_rows == {}
    assert sim.cancel(nv.group_id) is True  # already remembered: nothing more to record
    assert sim.next_visit(nv) == Ignore("canceled", "canceled")
    sim.image(nv, 1)
    assert sim.engine.held_groups() == []
    assert sim.engine.book.visits == {}


# ---- pilots ---------------------------------------------------------------------------------


def test_registration_keeps_the_jobs_a_pilot_claims_and_retries_the_others() -> None:
    sim = Sim([make_task(detectors="0-1")])
    sim.register("p1", slots=2)
    nv = sim.nv()
    sim.next_visit(nv)
    sim.images(nv)
    kept, forgotten = sim.job(nv, 0).id, sim.job(nv, 1).id
    sim.disconnect("p1")
    sim.clock.advance(2)
    sim.register("p1", slots=2, claimed=[(kept, 1)])
    assert sim.engine.book.jobs[kept].attempt == 1
    assert sim.sent("p1")[-1]["job"] == forgotten  # retried, on the only pilot there is
    assert sim.sent("p1")[-1]["attempt"] == 2
    assert sim.engine.book.jobs[forgotten].error == "pilot p1 reconnected without the job"
    sim.finish("p1", kept, attempt=1)
    assert sim.completion(kept)["status"] == "finished"


def test_silent_pilot_is_lost_disconnected_and_its_jobs_retried_elsewhere() -> None:
    sim = Sim([make_task(detectors="0")], heartbeat_timeout_s=5)
    sim.register("p2", slots=1)
    sim, job_id = pushed(sim, "p1", slots=1)
    sim.clock.advance(5)
    sim.heartbeat("p2")
    sim.sweep()
    assert sim.disconnects == []
    sim.clock.advance(0.1)
    sim.sweep()  # p1 has been silent for 5.1 s, p2 for 0.1 s
    assert sim.disconnects == ["p1"]
    assert Disconnect("p1") in sim.effects
    assert sim.pilot_rows["p1"][3] == "lost"
    retry = sim.sent("p2")[-1]
    assert (retry["job"], retry["attempt"]) == (job_id, 2)
    assert sim.engine.book.jobs[job_id].error == "pilot p1 lost (no heartbeat for 5.0 s)"


def test_disconnected_pilot_not_back_within_the_timeout_is_lost() -> None:
    sim, job_id = pushed(Sim(heartbeat_timeout_s=5), "p1")
    sim.disconnect("p1")
    sim.clock.advance(5)
    sim.sweep()
    assert sim.engine.pilots_awaited()
    sim.clock.advance(0.1)
    sim.sweep()
    assert not sim.engine.pilots_awaited()
    assert sim.disconnects == []  # its connection is already gone
    assert sim.pilot_rows["p1"][3] == "lost"
    job = sim.engine.book.jobs[job_id]
    assert (job.state, job.failure) == (JobState.READY, "pilot_lost")  # no pilot to retry on
    assert sim.engine.snapshot().ready_queue == 1


def test_pilot_that_reconnects_within_the_timeout_keeps_its_jobs() -> None:
    sim, job_id = pushed(Sim(heartbeat_timeout_s=5), "p1")
    sim.disconnect("p1")
    sim.clock.advance(4)
    sim.register("p1", slots=4, claimed=[(job_id, 1)])
    for _ in range(3):
        sim.later(4)
    sim.finish("p1", job_id)
    done = sim.completion(job_id)
    assert (done["status"], done["attempt"]) == ("finished", 1)


def test_pilot_lost_then_registering_again_gets_new_work_and_its_old_result_is_ignored() -> None:
    sim = Sim([make_task(detectors="0")], heartbeat_timeout_s=5)
    sim, job_id = pushed(sim, "p1", slots=1)
    sim.clock.advance(6)
    sim.sweep()
    assert sim.disconnects == ["p1"]
    sim.register("p1", slots=1, claimed=[(job_id, 1)])  # the attempt it had was superseded
    assert sim.sent("p1")[-1]["attempt"] == 2  # the retry, on the pilot back in service
    sim.finish("p1", job_id, attempt=1)
    assert sim.completions == []
    sim.finish("p1", job_id, attempt=2)
    assert sim.completion(job_id)["attempt"] == 2
    nv = sim.nv(1)
    sim.next_visit(nv)
    sim.image(nv, 0)
    assert sim.jobs_sent("p1")[-1] == sim.job(nv, 0).id


# ---- recovery -------------------------------------------------------------------------------


def saved_visit(sim: Sim, i: int, states: dict[int, JobState], **job_fields: object) -> Visit:
    """A visit as recovery reads it from the database: detector -> state."""
    nv = sim.nv(i)
    task = sim.tasks[0]
    now = sim.clock.now
    visit = Visit(1000 + i, nv, task, now - 5, now + 60)
    for detector, state in states.items():
        job = Job(1000 * (i + 1) + detector, visit, detector, 2, state=state)
        if state is not JobState.DEFINED:
            job.attempt = 1 if state in (JobState.SENT, JobState.RUNNING) else 0
            job.snaps_mask, job.snap_uris = 1, {0: f"s3://raw/{i}/{detector}.fits"}
            job.image_arrived = job.image_consumed = now - 2
            job.deadline = now + 58 - detector  # distinct deadlines
        if state in (JobState.SENT, JobState.RUNNING):
            job.pilot_id = str(job_fields.get("pilot", "p1"))
        if state is JobState.FINISHED:
            job.completed = now - 1
        visit.jobs[detector] = job
    return visit


def test_restore_puts_jobs_on_pilots_back_waiting_for_their_pilot_to_claim_them() -> None:
    sim = Sim([make_task(detectors="0-3")], heartbeat_timeout_s=5)
    states = {0: JobState.RUNNING, 1: JobState.SENT, 2: JobState.FINISHED, 3: JobState.DEFINED}
    visit = saved_visit(sim, 0, states)
    sim.apply(sim.engine.restore(SavedState(visits=[visit], pilots={"p1": ("host-a", 3)})))
    assert sim.engine.in_flight_on_pilots() == 2
    assert sim.engine.pilots_awaited()
    snap = sim.engine.snapshot()
    assert snap.jobs_by_state == {**OPEN, "running": 1, "sent": 1, "defined": 1}
    assert snap.pilots == [{
        "id": "p1", "host": "host-a", "connected": False, "draining": False, "slots": 3,
        "running": 2, "cache_entries": 0, "cache_stats": {},
    }]  # fmt: skip
    sim.clock.advance(4)
    sim.register("p1", slots=3, claimed=[(1000, 1), (1001, 1)])
    sim.later(4)
    assert sim.engine.in_flight_on_pilots() == 2
    assert sim.sent("p1") == []  # nothing was resent: it still has both
    sim.finish("p1", 1000, attempt=1)
    sim.finish("p1", 1001, attempt=1)
    assert [sim.completion(i)["status"] for i in (1000, 1001)] == ["finished", "finished"]
    assert visit.open_jobs == 1  # the one waiting for its image


def test_restore_retries_jobs_of_a_pilot_that_never_comes_back() -> None:
    sim = Sim([make_task(detectors="0-1")], heartbeat_timeout_s=5)
    visit = saved_visit(sim, 0, {0: JobState.SENT, 1: JobState.SENT}, pilot="gone")
    sim.apply(sim.engine.restore(SavedState(visits=[visit], pilots={"gone": ("host-g", 2)})))
    sim.register("p2", slots=4)
    assert sim.sent("p2") == []
    sim.later(5.5)
    assert sorted((f["job"], f["attempt"]) for f in sim.sent("p2")) == [(1000, 2), (1001, 2)]
    assert sim.pilot_rows["gone"][3] == "lost"


def test_restore_queues_ready_jobs_by_deadline_and_keeps_waiting_ones_waiting() -> None:
    sim = Sim([make_task(detectors="0-3")])
    visit = saved_visit(sim, 0, {d: JobState.READY for d in range(3)} | {3: JobState.DEFINED})
    sim.apply(sim.engine.restore(SavedState(visits=[visit])))
    assert sim.engine.snapshot().ready_queue == 3
    sim.register("p1", slots=2)
    assert sim.jobs_sent("p1") == [1002, 1001]  # the earliest deadlines first
    sim.image(visit.nv, 3)
    sim.finish("p1", 1002)
    assert sim.jobs_sent("p1")[2:] == [1000]
    sim.finish("p1", 1000)
    assert sim.jobs_sent("p1")[3:] == [1003]


def test_restore_remembers_closed_and_canceled_groups_and_holds_held_images() -> None:
    sim = Sim()
    done, canceled, waiting, finished = sim.nv(1), sim.nv(2), sim.nv(3), sim.nv(4)
    all_done = saved_visit(sim, 4, {0: JobState.FINISHED})
    held = [(sim.arrival(waiting, 1), sim.clock.now - 30)]
    effects = sim.engine.restore(SavedState(
        visits=[all_done], closed=[((INSTRUMENT, done.group_id), "done")],
        canceled=[(canceled.group_id, sim.clock.now - 60)], held=held,
    ))  # fmt: skip
    sim.apply(effects)
    assert sim.visit_status == {all_done.id: "done"}  # every job ended: the visit is closed
    assert sim.engine.held_groups() == [(INSTRUMENT, waiting.group_id)]
    assert sim.next_visit(done) == Duplicate()
    assert sim.next_visit(finished) == Duplicate()
    assert sim.next_visit(canceled) == Ignore("canceled", "canceled")
    sim.register("p1", slots=4)
    assert isinstance(sim.next_visit(waiting), Resurrect)
    assert sim.jobs_sent("p1") == [sim.job(waiting, 1).id]


def test_restore_leaves_out_a_held_image_beyond_the_caps_and_goes_on() -> None:
    sim = Sim(held_total=1)
    a, b = sim.nv(0), sim.nv(1)
    held = [(sim.arrival(a, 0), sim.clock.now), (sim.arrival(b, 0), sim.clock.now)]
    sim.apply(sim.engine.restore(SavedState(held=held)))
    assert sim.engine.held_groups() == [(INSTRUMENT, a.group_id)]


# ---- the read model -------------------------------------------------------------------------


def test_snapshot_counts_jobs_queues_and_pilots() -> None:
    sim = Sim([make_task(detectors="0-3")])
    sim.register("p1", slots=1, cache={(INSTRUMENT, 9, "r_57")})
    nv = sim.nv()
    sim.next_visit(nv)
    sim.image(nv, 0)
    sim.start("p1", sim.job(nv, 0).id)
    sim.image(nv, 1)  # queued
    sim.image(sim.nv(1), 0)  # held for a visit not announced
    sim.say("p1", {"t": "preloaded", "items": [{"job": sim.job(nv, 2).id, "hit": True}]})
    sim.clock.advance(10)
    snap = sim.engine.snapshot()
    assert snap.jobs_by_state == {**OPEN, "preloading": 2, "ready": 1, "running": 1}
    assert (snap.ready_queue, snap.held_images) == (1, 1)
    assert snap.oldest_budget_s == pytest.approx(50)
    (live,) = snap.visits
    assert live == {
        "group": nv.group_id, "instrument": INSTRUMENT, "task": "alerts", "filter": "r_57",
        "status": "in flight", "counts": {"running": 1, "ready": 1, "preloading": 2},
        "open": 4, "jobs": 4, "preloaded": 1,
        "detectors": {0: "running", 1: "ready", 2: "preloading", 3: "preloading"},
        "budget_s": pytest.approx(50), "first_image_s_ago": pytest.approx(10),
    }  # fmt: skip
    assert snap.pilots == [{
        "id": "p1", "host": "host-p1", "connected": True, "draining": False, "slots": 1,
        "running": 1, "cache_entries": 1, "cache_stats": {},
    }]  # fmt: skip
    assert snap.connected_pilots == snap.pilots


def test_snapshot_ready_queue_counts_only_jobs_still_ready() -> None:
    sim = Sim([make_task(detectors="0-1")])
    sim.register("p1", slots=1)
    nv = sim.nv()
    sim.next_visit(nv)
    sim.images(nv)
    assert sim.engine.snapshot().ready_queue == 1
    sim.cancel(nv.group_id)  # the queued job is canceled; the running one goes on
    snap = sim.engine.snapshot()
    assert snap.jobs_by_state["ready"] == snap.ready_queue == 0


def test_snapshot_json_has_error_texts_only_when_asked() -> None:
    sim = Sim([make_task(detectors="0")])
    sim, job_id = pushed(sim, "p1")
    sim.finish("p1", job_id, error="no WCS in header 7", failure="rejected_input")
    snap = sim.engine.snapshot()
    public = snap.to_json(with_errors=False)
    assert "problems" not in public
    assert b"no WCS" not in orjson.dumps(public, option=orjson.OPT_NON_STR_KEYS)
    (done,) = public["visits"]
    assert (done["status"], done["counts"]) == ("done", {"failed": 1})
    operator = snap.to_json(with_errors=True)
    (problem,) = operator["problems"]
    assert (problem["job"], problem["status"], problem["failure"], problem["error"]) == (
        job_id, "failed", "rejected_input", "no WCS in header 7",
    )  # fmt: skip
    assert set(public) == set(operator) - {"problems"}
