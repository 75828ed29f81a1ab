"""The dispatcher's engine in memory, with a fake clock: outcomes (completion, late, retry by
failure kind), expiry and cancel.

No broker, database or socket: ``engine_harness.Sim`` plays the runtime's part; the same
behaviour is checked end to end through the real processes in ``test_dispatcher*.py`` and friends.
"""

from __future__ import annotations

import pytest

from prompt.channel.frames import MAX_FRAME
from prompt.dispatcher.engine import (
    Duplicate,
    Ignore,
    JobState,
    SaveJob,
)
from tests.engine_harness import Sim, decode_frame, make_task, pushed

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
