"""The engine's ready queues in memory: a queue per pilot (own work first, stealing only at the
tail), the pilot's bounded backlog and taking jobs back from it, and the order chosen at start-up
(feasible before hopeless, or first come first served)."""

from __future__ import annotations

from typing import Any

import pytest

from prompt.dispatcher.engine import JobState
from prompt.dispatcher.engine.order import order
from prompt.events import NextVisit
from prompt.pilot.backlog import Backlog
from tests.engine_harness import Sim, make_task, preloaded


def two_pilots(detectors: str, *, slots: int = 1, **config: Any) -> tuple[Sim, NextVisit]:
    """p1 and p2 registered, a visit announced (its jobs preloaded, alternately), no image."""
    sim = Sim([make_task(detectors=detectors)], affinity_wait_s=10, **config)
    sim.register("p1", slots=slots)
    sim.register("p2", slots=slots)
    nv = sim.nv()
    sim.next_visit(nv)
    return sim, nv


def say_withdrawn(sim: Sim, pilot: str, job_id: int, *, withdrawn: bool) -> None:
    attempt = sim.attempt_on(pilot, job_id)
    sim.say(pilot, {"t": "withdrawn", "job": job_id, "attempt": attempt, "withdrawn": withdrawn})


def withdraws(sim: Sim, pilot: str) -> list[int]:
    return [f["job"] for f in sim.sent(pilot, "withdraw")]


# ---- a queue per pilot --------------------------------------------------------------------


def test_a_freed_slot_takes_its_own_job_before_an_earlier_deadline_of_another_pilot() -> None:
    sim, nv = two_pilots("0-3")
    assert (preloaded(sim, "p1"), preloaded(sim, "p2")) == ([0, 2], [1, 3])
    now = sim.clock.now
    sim.image(nv, 0)
    sim.image(nv, 1)
    sim.image(nv, 2, event_time=now - 5)
    sim.image(nv, 3, event_time=now - 30)  # the earliest deadline of all, but p2's
    ids = {d: sim.job(nv, d).id for d in range(4)}
    sim.clock.advance(11)  # past affinity_wait_s: the old rule let p1 take detector 3
    sim.finish("p1", ids[0])
    assert sim.jobs_sent("p1") == [ids[0], ids[2]]
    sim.finish("p2", ids[1])
    assert sim.jobs_sent("p2") == [ids[1], ids[3]]


def test_an_idle_pilot_steals_at_the_tail_once_the_holder_would_keep_the_job_too_long() -> None:
    sim, nv = two_pilots("0-3")
    sim.images(nv, [1, 3])  # p2's two: one runs, one waits for it; p1 has nothing of its own
    waiting = sim.job(nv, 3).id
    assert sim.jobs_sent("p1") == []
    sim.later(9.5)
    assert sim.jobs_sent("p1") == []
    sim.later(0.5)
    assert sim.jobs_sent("p1") == [waiting]


def test_an_idle_pilot_steals_at_once_when_the_holders_queue_will_take_too_long() -> None:
    sim, nv = two_pilots("0-9")
    first = sim.job(nv, 1).id
    sim.image(nv, 1)
    sim.start("p2", first)
    sim.clock.advance(4)
    sim.finish("p2", first)  # the task's jobs take 4 s
    sim.images(nv, [3, 5, 7, 9])  # p2 runs 3; with 3 queued behind it, the last waits 12 s
    stolen = sim.jobs_sent("p1")
    assert len(stolen) == 1
    assert sim.engine.book.jobs[stolen[0]].visit is sim.visit(nv)
    assert len(sim.jobs_sent("p2")) == 2  # its own: the first, then the next of its queue


def test_jobs_waiting_for_a_draining_holder_go_to_the_others() -> None:
    sim, nv = two_pilots("0-3")
    sim.images(nv, [1])
    sim.images(nv, [3])  # waits in p2's queue
    sim.heartbeat("p2", draining=True)
    sim.sweep()
    assert sim.jobs_sent("p1") == [sim.job(nv, 3).id]


def test_affinity_is_kept_on_the_second_visit_under_overload() -> None:
    """Issue #13: 2 pilots x 1 slot, 6 jobs a visit, slots freeing every 11 s (past
    affinity_wait_s): every job of the second visit runs where its calibrations were
    preloaded, as on the first."""
    sim, first = two_pilots("0-5")
    ran: dict[str, list[int]] = {"p1": [], "p2": []}
    for nv in (first, sim.nv(1)):
        if nv is not first:
            sim.next_visit(nv)
        before = {p: len(sim.jobs_sent(p)) for p in ran}
        now = sim.clock.now
        for detector in range(6):  # p2's jobs have the earlier deadlines
            sim.image(nv, detector, event_time=now - 10 * (detector % 2))
        for _ in range(6):
            for pilot in ("p1", "p2"):
                running = [j for j in sim.engine.book.pilots.pilots[pilot].running.values()]
                if running:
                    sim.clock.advance(11)
                    sim.finish(pilot, running[0].id)
        cache = [[nv.instrument, d, nv.filters] for d in preloaded(sim, "p1")]
        sim.heartbeat("p1", cache=cache)
        cache = [[nv.instrument, d, nv.filters] for d in preloaded(sim, "p2")]
        sim.heartbeat("p2", cache=cache)
        for pilot in ran:
            ids = sim.jobs_sent(pilot)[before[pilot] :]
            ran[pilot] = sorted(sim.completion(i)["detector"] for i in ids)
        assert ran == {"p1": [0, 2, 4], "p2": [1, 3, 5]}
    assert preloaded(sim, "p1") == [0, 2, 4, 0, 2, 4]


# ---- the backlog ----------------------------------------------------------------------------


def backlogged(cap: int = 3, slots: int = 2, detectors: str = "0-9") -> tuple[Sim, NextVisit]:
    sim = Sim([make_task(detectors=detectors)], affinity_wait_s=10, backlog_per_pilot=cap)
    sim.register("p1", slots=slots)
    nv = sim.nv()
    sim.next_visit(nv)
    return sim, nv


def test_the_backlog_is_bounded_by_the_cap_and_shallow_for_long_jobs() -> None:
    sim, nv = backlogged(cap=3, slots=2)
    sim.images(nv)
    running = sim.engine.book.pilots.pilots["p1"].running
    assert len(sim.jobs_sent("p1")) == 4  # no run time known yet: one job queued per slot
    first = sim.jobs_sent("p1")[0]
    sim.start("p1", first)
    sim.clock.advance(0.01)
    sim.finish("p1", first)  # short jobs: the cap
    assert len(running) == 2 + 3
    assert sim.engine.snapshot().ready_queue == 10 - 1 - 5
    second = sim.jobs_sent("p1")[1]
    sim.start("p1", second)
    sim.clock.advance(30)
    sim.finish("p1", second)  # long jobs now (the recent mean): one queued at most
    assert len(running) == 4  # (what was sent stays)
    for _ in range(2):
        job_id = next(iter(running))
        sim.start("p1", job_id)
        sim.clock.advance(30)
        sim.finish("p1", job_id)
        assert len(running) == 2 + 1


def test_the_backlog_goes_out_in_deadline_order_with_its_rank() -> None:
    sim = Sim([make_task(detectors="0-5")], backlog_per_pilot=4)
    nv = sim.nv()
    sim.next_visit(nv)  # no pilot yet: nothing preloaded, the jobs queue unassigned
    now = sim.clock.now
    for detector, age in ((0, 5), (1, 20), (2, 1), (3, 40), (4, 10), (5, 30)):
        sim.image(nv, detector, event_time=now - age)
    sim.register("p1", slots=2)  # 2 slots + 2 queued (no run time known yet)
    frames = sim.sent("p1")
    assert [sim.engine.book.jobs[f["job"]].detector for f in frames] == [3, 5, 1, 4]
    assert [f["rank"] for f in frames] == sorted(f["deadline"] for f in frames)


def test_the_pilot_starts_its_queued_jobs_by_rank_and_gives_back_one_not_started() -> None:
    backlog = Backlog()
    for job, rank in ((1, 9.0), (2, 3.0), (3, 3.0), (4, 1.0)):
        backlog.add({"job": job, "attempt": 1, "rank": rank})
    assert (4, 1) in backlog and (4, 2) not in backlog
    assert backlog.remove((4, 1)) is True
    assert backlog.remove((4, 1)) is False
    assert [backlog.pop()["job"] for _ in range(3)] == [2, 3, 1]
    assert len(backlog) == 0


# ---- taking jobs back -----------------------------------------------------------------------


def test_cancel_takes_back_a_queued_job_and_lets_a_started_one_finish() -> None:
    sim, nv = backlogged(cap=1, slots=1, detectors="0-1")
    sim.images(nv)
    run, queued = sim.jobs_sent("p1")
    sim.start("p1", run)
    assert sim.cancel(nv.group_id) is True
    assert withdraws(sim, "p1") == [queued]  # not the one it said it started
    say_withdrawn(sim, "p1", queued, withdrawn=True)
    assert sim.completion(queued)["status"] == "canceled"
    sim.finish("p1", run)
    assert sim.completion(run)["status"] == "finished"


def test_a_lost_pilot_gives_back_its_backlog_and_every_job_ends_once() -> None:
    sim, nv = backlogged(cap=2, slots=2, detectors="0-5")
    sim.register("p2", slots=2)
    sim.images(nv)
    ids = [sim.job(nv, d).id for d in range(6)]
    on_p1 = set(sim.engine.book.pilots.pilots["p1"].running)
    assert len(on_p1) > 2  # some queued in its backlog
    sim.channels.discard("p1")  # it stops heartbeating
    sim.later(3)
    sim.later(3)
    assert "p1" not in sim.engine.book.pilots.pilots
    for _ in range(6):
        for job_id in list(sim.engine.book.pilots.pilots["p2"].running):
            sim.finish("p2", job_id)
    assert {sim.completion(job_id)["status"] for job_id in ids} == {"finished"}
    assert on_p1 <= set(sim.jobs_sent("p2"))


def idle_beside_a_backlog() -> tuple[Sim, list[int]]:
    """p1 holds all four jobs (two running, two queued); p2 registers once they waited 10 s.
    Returns p1's jobs in the order sent."""
    sim, nv = backlogged(cap=2, slots=2, detectors="0-3")
    now = sim.clock.now
    for detector in range(4):  # later detectors, later deadlines
        sim.image(nv, detector, event_time=now - 10 + detector)
    sent = sim.jobs_sent("p1")
    assert len(sent) == 4
    for job_id in sent[:2]:
        sim.start("p1", job_id)
    sim.clock.advance(10)
    sim.register("p2", slots=1)
    return sim, sent


def test_an_idle_pilot_gets_a_job_taken_back_from_anothers_backlog() -> None:
    sim, sent = idle_beside_a_backlog()
    assert withdraws(sim, "p1") == [sent[3]]  # one for p2's one slot: the last p1 would start
    say_withdrawn(sim, "p1", sent[3], withdrawn=True)
    assert sim.jobs_sent("p2") == [sent[3]]
    assert sim.attempt_on("p2", sent[3]) == 2
    sim.finish("p2", sent[3])
    record = sim.completion(sent[3])
    assert (record["status"], record["attempt"]) == ("finished", 2)
    assert sim.engine.book.counts["retries"] == 0  # given back unstarted: no try was used


def test_a_withdraw_that_races_a_start_leaves_the_job_where_it_started() -> None:
    sim, _ = idle_beside_a_backlog()
    job_id = withdraws(sim, "p1")[0]
    sim.start("p1", job_id)  # the pilot started it before the withdraw reached it
    say_withdrawn(sim, "p1", job_id, withdrawn=False)
    assert sim.jobs_sent("p2") == []
    sim.finish("p1", job_id)
    assert (sim.completion(job_id)["status"], sim.completion(job_id)["attempt"]) == (
        "finished", 1,
    )  # fmt: skip


def test_a_withdrawn_attempt_that_reports_anyway_is_fenced_by_its_attempt() -> None:
    """Exactly once: a pilot that gave an attempt back never runs it; even one that did (a
    broken pilot) reports an attempt that is no longer the job's, which is acknowledged and
    dropped. The next attempt's result is the one completion."""
    sim, _ = idle_beside_a_backlog()
    job_id = withdraws(sim, "p1")[0]
    say_withdrawn(sim, "p1", job_id, withdrawn=True)
    sim.finish("p1", job_id, attempt=1)
    assert sim.engine.book.jobs[job_id].state is JobState.SENT
    sim.finish("p2", job_id)
    sim.commit()
    assert (sim.completion(job_id)["attempt"], sim.completion(job_id)["pilot"]) == (2, "p2")
    assert (job_id, 1) in sim.acks("p1")


# ---- the order ------------------------------------------------------------------------------


def overloaded(dispatch_order: str) -> tuple[Sim, dict[str, int]]:
    """p1 (1 slot) has run one job of 20 s; three wait, one of them now hopeless (its deadline
    is 10 s away). Returns their ids, by name."""
    sim = Sim([make_task(detectors="0-3")], dispatch_order=dispatch_order)
    sim.register("p1", slots=1)
    nv = sim.nv()
    sim.next_visit(nv)
    sim.image(nv, 0)
    first = sim.job(nv, 0).id
    sim.start("p1", first)
    sim.clock.advance(20)
    now = sim.clock.now
    for detector, age in ((1, 50), (2, 30), (3, 10)):  # 60 s budgets: 10, 30 and 50 s left
        sim.image(nv, detector, event_time=now - age)
    sim.finish("p1", first)
    return sim, {name: sim.job(nv, d).id for d, name in ((1, "hopeless"), (2, "b"), (3, "c"))}


@pytest.mark.parametrize(
    ("name", "expected"), [("feasible", ["b", "c", "hopeless"]), ("fifo", ["hopeless", "b", "c"])]
)
def test_the_order_chosen_at_start_up(name: str, expected: list[str]) -> None:
    sim, ids = overloaded(name)
    for _ in range(2):
        sim.finish("p1", sim.jobs_sent("p1")[-1])
    by_id = {v: k for k, v in ids.items()}
    assert [by_id[j] for j in sim.jobs_sent("p1")[1:]] == expected
    assert sim.engine.book.queues.order.name == name


def test_a_hopeless_job_still_runs_and_is_reported_late() -> None:
    sim, ids = overloaded("feasible")
    for _ in range(3):
        sim.clock.advance(20)
        sim.finish("p1", sim.jobs_sent("p1")[-1])
    assert sim.completion(ids["hopeless"])["status"] == "late"
    assert sim.completion(ids["b"])["status"] == "finished"


def test_an_unknown_order_is_refused() -> None:
    with pytest.raises(ValueError, match="feasible, fifo"):
        order("random")
