"""The dispatcher's engine in memory, with a fake clock: pilots (registration, liveness,
reconnects), recovery from a saved state, and the read model.

No broker, database or socket: ``engine_harness.Sim`` plays the runtime's part; the same
behaviour is checked end to end through the real processes in ``test_dispatcher*.py`` and friends.
"""

from __future__ import annotations

import orjson
import pytest

from prompt.dispatcher.engine import (
    Disconnect,
    Duplicate,
    Ignore,
    Job,
    JobState,
    Resurrect,
    SavedState,
    Visit,
)
from tests.engine_harness import INSTRUMENT, OPEN, Sim, make_task, pushed

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


def test_restore_adopts_a_job_a_pilot_claims_with_an_attempt_newer_than_the_saved_one() -> None:
    """The previous leader pushed it, but its write of the push was lost with its term: the
    job is still waiting in the saved state. The pilot's claim is taken, its result counted
    once, and the job is not pushed (run) a second time; a stale claim is not adopted."""
    sim = Sim([make_task(detectors="0-2")], heartbeat_timeout_s=5)
    states = {0: JobState.READY, 1: JobState.DEFINED, 2: JobState.READY}
    visit = saved_visit(sim, 0, states)
    sim.apply(sim.engine.restore(SavedState(visits=[visit], pilots={})))
    ready, waiting, stale = 1000, 1001, 1002
    sim.register("p1", slots=4, claimed=[(ready, 1), (waiting, 1), (stale, 0)])
    # Adopted: the two it claims; pushed: the one whose claim was stale (attempt 0, never run).
    assert sim.engine.in_flight_on_pilots() == 3
    assert [(f["job"], f["attempt"]) for f in sim.sent("p1") if f["t"] == "job"] == [(stale, 1)]
    sim.finish("p1", ready, attempt=1)
    sim.finish("p1", waiting, attempt=1)
    sim.deliver(sim.arrival(visit.nv, 1))  # the image, read again by the new leader
    assert [sim.completion(j)["status"] for j in (ready, waiting)] == ["finished", "finished"]
    assert [f["job"] for f in sim.sent("p1") if f["t"] == "job"] == [stale]  # none run twice


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
