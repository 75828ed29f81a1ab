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
