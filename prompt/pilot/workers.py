"""The pilot's warm workers: started once, killed only on a timeout, replaced when they die.

A job goes to an idle worker (``submit``), or, when every worker is busy and the jobs are short,
behind the running job of the worker that frees first (``submit_behind``): a worker then starts
its next job the moment its last ends, with no hand-off through the pilot in between. Only jobs
whose wait there is known to be short are queued so (``lookahead_s``: a job in a worker's pipe
can no longer be given to another worker or back to the dispatcher). A worker that dies or
times out gives back the jobs behind its running one, unstarted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from prompt.channel.messages import FailureKindName, job_result
from prompt.pilot.worker import THREAD_ENV, InFlight, Worker, preload_in_fork_server

ResultCallback = Callable[[int, dict[str, Any]], None]
ReturnCallback = Callable[[int], None]


class WorkerPool:
    """N warm workers; results come to ``on_result``, jobs given back unstarted to
    ``on_returned``; ``on_ready`` is told when a replacement worker is ready for jobs."""

    def __init__(
        self,
        size: int,
        on_result: ResultCallback,
        *,
        on_returned: ReturnCallback | None = None,
        on_ready: Callable[[], None] | None = None,
        warm_imports: tuple[str, ...] = (),
        nice: int = 0,
        lookahead_s: float = 0.0,
        depth: int = 32,
    ) -> None:
        """``nice`` lowers the workers' CPU priority below the pilot's: the pilot's control
        loop (hand-offs, heartbeats) stays responsive while payloads use the rest.
        ``lookahead_s``: a job may wait in a busy worker's pipe when the jobs before it are
        expected to take at most this long in all (0: never), up to ``depth`` jobs a worker."""
        if lookahead_s > 0 and on_returned is None:
            raise ValueError("a pool that queues jobs behind others needs on_returned")
        self.size = size
        self._on_result = on_result
        self._on_returned = on_returned
        self._on_ready = on_ready
        self._warm = warm_imports
        self._nice = nice
        self.lookahead_s = lookahead_s
        self.depth = depth
        self._workers: list[Worker] = []
        self._idle: list[Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.respawns = 0
        self.queued_behind = 0
        """Jobs given to a busy worker (``submit_behind``), in all."""

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Each worker runs one job on one core; the slots are the parallelism. Numerical
        # libraries' own thread pools (BLAS, OpenMP) would multiply the processes contending
        # for the cores: with 8 workers on 2 cores PSF matching took 807 ms per detector, 70 ms
        # with one thread each.
        # Set before the fork server starts, so every worker inherits it.
        for var in THREAD_ENV:
            os.environ.setdefault(var, "1")
        preload_in_fork_server(self._warm)
        for i in range(self.size):
            self._spawn(i)
        await asyncio.gather(*(w.ready for w in self._workers))

    def _spawn(self, index: int) -> Worker:
        assert self._loop is not None
        worker = Worker(index, self._warm, self._nice, self._loop)
        self._workers.append(worker)
        self._loop.add_reader(worker.fileno(), self._readable, worker)
        return worker

    @property
    def idle(self) -> int:
        return len(self._idle)

    def alive(self) -> int:
        """Workers whose process is running (a poll, no blocking wait). One that died is
        replaced as soon as its pipe closes, so fewer than ``size`` for long means the pool
        cannot start workers."""
        return sum(1 for w in self._workers if w.process.is_alive())

    def submit(
        self, job_id: int, job: dict[str, Any], timeout_s: float, est_s: float | None = None
    ) -> None:
        """To an idle worker (there must be one)."""
        self._send(self._idle.pop(), InFlight(job_id, timeout_s, est_s), job)

    def behind(self, est_s: float | None) -> Worker | None:
        """The busy worker a job expected to take ``est_s`` would start soonest on, if it may
        wait there (see the module's docstring)."""
        if est_s is None or self.lookahead_s <= 0:
            return None
        best: Worker | None = None
        best_s = self.lookahead_s
        for worker in self._workers:
            if not worker.jobs or len(worker.jobs) >= self.depth or not worker.ready.done():
                continue
            ahead = worker.ahead_s()
            if ahead <= best_s:
                best, best_s = worker, ahead
        return best

    def submit_behind(
        self, worker: Worker, job_id: int, job: dict[str, Any], timeout_s: float, est_s: float
    ) -> None:
        """Into the pipe of ``worker`` (from ``behind``), after the jobs it has."""
        self.queued_behind += 1
        self._send(worker, InFlight(job_id, timeout_s, est_s), job)

    def _send(self, worker: Worker, entry: InFlight, job: dict[str, Any]) -> None:
        worker.jobs.append(entry)
        if len(worker.jobs) == 1:
            self._arm(worker)
        worker.send(job)

    def _arm(self, worker: Worker) -> None:
        """Time the worker's running job (from when the pilot knows it runs)."""
        assert self._loop is not None
        timeout_s = worker.jobs[0].timeout_s
        worker.timer = self._loop.call_later(timeout_s, self._timeout, worker, timeout_s)

    def _readable(self, worker: Worker) -> None:
        messages, closed = worker.read_messages()
        for msg in messages:  # a closed pipe's last results count; the worker takes no more
            self._handle(worker, msg, reuse=not closed)
        if closed and worker in self._workers:
            worker.process.join(0.5)  # reap it: the exit code (or signal) says why
            code = worker.process.exitcode
            why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self._replace(worker, f"worker process died ({why})", "worker_crashed")

    def _handle(self, worker: Worker, msg: Any, *, reuse: bool = True) -> None:
        if not worker.ready.done():
            worker.ready.set_result(None)
            if not reuse:
                return
            self._idle.append(worker)
            if self.respawns and self._on_ready is not None:
                self._on_ready()
            return
        if worker.timer:
            worker.timer.cancel()
            worker.timer = None
        if not worker.jobs:
            return
        entry = worker.jobs.popleft()
        if worker.jobs:
            self._arm(worker)
        elif reuse:
            self._idle.append(worker)
        self._on_result(entry.job, msg)

    def _timeout(self, worker: Worker, timeout_s: float) -> None:
        self._replace(worker, f"job timed out after {timeout_s:.1f} s; worker killed", "timeout")

    def _replace(self, worker: Worker, error: str, failure: FailureKindName) -> None:
        worker.detach()
        worker.kill()
        self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        self.respawns += 1
        self._spawn(worker.index)
        if not worker.ready.done():
            worker.ready.set_exception(RuntimeError(error))
        jobs = list(worker.jobs)
        worker.jobs.clear()
        if jobs:
            result = job_result(started=time.time(), error=error, failure=failure)
            self._on_result(jobs[0].job, dict(result))
        for entry in jobs[1:]:  # never started: they run on another worker
            assert self._on_returned is not None
            self._on_returned(entry.job)

    async def stop(self) -> None:
        """Idle workers are asked to exit; a worker still running a job (a pilot stopping
        after its drain timed out, or refused) is killed: its pipe is no longer read, so the
        result would be lost anyway, and a hung job would hold the stop up."""
        for worker in self._workers:
            worker.detach()
        await asyncio.gather(
            *(asyncio.to_thread(w.kill if w.jobs else w.stop) for w in self._workers)
        )
        self._workers.clear()
        self._idle.clear()
