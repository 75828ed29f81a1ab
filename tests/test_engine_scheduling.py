"""The dispatcher's engine in memory, with a fake clock: push scheduling (preload placement,
affinity, deadlines, labels, draining) and poll scheduling.

No broker, database or socket: ``engine_harness.Sim`` plays the runtime's part; the same
behaviour is checked end to end through the real processes in ``test_dispatcher*.py`` and friends.
"""

from __future__ import annotations

from prompt.dispatcher.engine import (
    BuildFirst,
    Duplicate,
    JobState,
    Noted,
)
from tests.engine_harness import INSTRUMENT, Sim, make_task, preloaded

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


def test_poll_builds_a_visit_whose_images_came_before_its_next_visit() -> None:
    """The image consumer may read a visit's images before the control consumer reads its
    next-visit: they are held, and the next-visit builds the visit at once."""
    sim = Sim(scheduling="poll")
    sim.register("p1", slots=4)
    nv = sim.nv()
    for detector in (0, 1):
        assert sim.deliver(sim.arrival(nv, detector)) is None
    assert sim.engine.held_groups() != []
    build = sim.next_visit(nv)
    assert isinstance(build, BuildFirst) and build.announced.nv == nv
    assert sim.engine.held_groups() == []
    assert [sim.job(nv, d).state for d in (0, 1)] == [JobState.READY] * 2
    sim.poll("p1")
    assert sorted(sim.jobs_sent("p1")) == sorted(sim.job(nv, d).id for d in (0, 1))
    assert sim.next_visit(nv) == Duplicate()


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
