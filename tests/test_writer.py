"""The state writer's batching with a fake connection: what one transaction stores.

The same writer runs against the real database in every ``test_dispatcher*``/``test_db_faults``
test; the ordering below is hard to hit there on purpose (a commit that fails after the one
before it took a changing job), so it is pinned here, step by step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from prompt.dispatcher.batch import JOB_UPDATE, OUTBOX_INSERT
from prompt.dispatcher.engine import JobState
from prompt.dispatcher.writer import StateWriter
from tests.engine_harness import Sim, pushed


class _Conn:
    def __init__(self, log: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        self._log = log

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._log.append((sql, list(rows)))


class _GatedFence:
    """Each transaction waits at its start (as one waits for a pooled connection and the fence
    check) until the test opens the gate; its statements go to ``committed`` only if the
    transaction ends without error."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.committed: list[list[tuple[str, list[tuple[Any, ...]]]]] = []

    @contextlib.asynccontextmanager
    async def transaction(self, pool: object) -> AsyncIterator[_Conn]:
        self.entered.set()
        await self.gate.wait()
        self.gate.clear()
        statements: list[tuple[str, list[tuple[Any, ...]]]] = []
        yield _Conn(statements)
        self.committed.append(statements)

    async def release(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """Let the waiting transaction through; its statements once it has committed."""
        n = len(self.committed)
        self.gate.set()
        async with asyncio.timeout(5):
            while len(self.committed) == n:
                await asyncio.sleep(0)
        return self.committed[n]


def _rows(statements: list[tuple[str, list[tuple[Any, ...]]]], sql: str) -> list[tuple[Any, ...]]:
    return [row for s, rows in statements if s == sql for row in rows]


async def test_a_job_that_ends_while_its_batch_waits_for_a_connection_keeps_its_completion() -> (
    None
):
    """The batch with the job ``running`` is taken; before its transaction gets a connection the
    job finishes (its completion and ack go to the next batch). The first transaction must store
    the job as it was when taken (``running``), not ``finished`` without its outbox row: if the
    next batch then never commits (the database restarts, leadership is lost), a finished row
    without an outbox row is a completion nobody publishes."""
    sim, job_id = pushed(Sim(), "p1")
    sim.start("p1", job_id)
    visits = sim.engine.book.visits.values()
    job = next(j for v in visits for j in v.jobs.values() if j.id == job_id)
    assert job.state is JobState.RUNNING
    fence = _GatedFence()
    published: list[dict[int, bytes]] = []
    writer = StateWriter(None, "c", fence, published.append, coalesce_s=0)  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    try:
        writer.job(job)
        await fence.entered.wait()  # batch 1 taken, waiting for its connection
        job.state = JobState.FINISHED
        writer.job(job, completion=b"done")
        first = await fence.release()
        assert [r[1] for r in _rows(first, JOB_UPDATE)] == ["running"]
        assert _rows(first, OUTBOX_INSERT) == []
        second = await fence.release()
        assert [r[1] for r in _rows(second, JOB_UPDATE)] == ["finished"]
        assert [r[0] for r in _rows(second, OUTBOX_INSERT)] == [job_id]
        assert published == [{job_id: b"done"}]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_commit_waits_for_a_burst_of_images_to_pass_then_lands() -> None:
    """While the intake says a burst is in progress the batch is held (asked again and again,
    no transaction begun); once it has passed the batch commits, with what came meanwhile."""
    sim, job_id = pushed(Sim(), "p1")
    job = next(j for v in sim.engine.book.visits.values() for j in v.jobs.values())
    fence = _GatedFence()
    fence.gate.set()
    writer = StateWriter(None, "c", fence, lambda _o: None, coalesce_s=0)  # type: ignore[arg-type]
    busy, asked = True, asyncio.Event()
    calls = 0

    def busy_for() -> float:
        nonlocal calls
        calls += 1
        if calls >= 3:
            asked.set()
        return 0.001 if busy else 0.0

    writer.defer_while(busy_for, at_most_s=60)
    task = asyncio.create_task(writer.run())
    try:
        writer.job(job)
        await asyncio.wait_for(asked.wait(), 5)
        assert not fence.entered.is_set() and fence.committed == []
        writer.offset("images", 0, 7)  # arrives while held: goes in the same transaction
        busy = False
        await asyncio.wait_for(writer.flush(), 5)
        assert len(fence.committed) == 1
        assert [r[0] for r in _rows(fence.committed[0], JOB_UPDATE)] == [job_id]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_burst_that_never_ends_holds_a_commit_only_so_long() -> None:
    sim, _ = pushed(Sim(), "p1")
    job = next(j for v in sim.engine.book.visits.values() for j in v.jobs.values())
    fence = _GatedFence()
    fence.gate.set()
    writer = StateWriter(None, "c", fence, lambda _o: None, coalesce_s=0)  # type: ignore[arg-type]
    writer.defer_while(lambda: 10.0, at_most_s=0.02)
    task = asyncio.create_task(writer.run())
    try:
        writer.job(job)
        await asyncio.wait_for(writer.flush(), 5)  # the guard: held for 10 s a time it fails
        assert len(fence.committed) == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
