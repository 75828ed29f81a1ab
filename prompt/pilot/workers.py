"""Warm worker processes: started once, each runs one job at a time, killed only on timeout.

The pilot talks to each worker over a pipe watched by the event loop, so handing a job over
costs a pickle and a write, not a process start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import pickle
import signal
import struct
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import orjson

from prompt.channel.messages import FailureKindName, job_result
from prompt.extras import import_optional
from prompt.pilot.payloads import run_job

# Workers fork from a forkserver that has the payload runner imported: a pilot with many slots
# starts in well under a second, and no worker inherits the pilot's event loop or sockets.
_ctx = mp.get_context("forkserver")
_ctx.set_forkserver_preload(["prompt.pilot.payloads"])


def _worker_main(conn: Connection, warm_imports: tuple[str, ...], nice: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pilot decides when workers stop
    if nice:
        os.nice(nice)
        # Payloads are batch computation: SCHED_BATCH stops a waking worker from preempting
        # the pilot, whose hand-offs and heartbeats are the latency-critical part.
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    for name in warm_imports:
        warm = getattr(import_optional(name), "warm", None)
        if callable(warm):
            warm()  # e.g. load a schema: paid once here, not by the first job
    # Every worker is forked with the same state and runs the same jobs, so without this they
    # all reach their first full garbage collection (scanning everything imported) at the same
    # job: measured as one visit per run with a 2.5-4x slower burst. Collect and freeze now.
    gc.collect()
    gc.freeze()
    conn.send_bytes(pickle.dumps({"ready": os.getpid()}))
    while True:
        try:
            frame = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not frame:
            return
        # Results go back pickled: they may carry bytes (alert packets) that JSON cannot.
        conn.send_bytes(pickle.dumps(run_job(orjson.loads(frame)), pickle.HIGHEST_PROTOCOL))


ResultCallback = Callable[[int, dict[str, Any]], None]
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class Worker:
    def __init__(self, index: int, warm_imports: tuple[str, ...], nice: int) -> None:
        self.index = index
        parent, child = _ctx.Pipe()
        self._conn: Connection = parent
        self.process = _ctx.Process(
            target=_worker_main, args=(child, warm_imports, nice), name=f"prompt-worker-{index}",
            daemon=True,
        )  # fmt: skip
        self.process.start()
        child.close()
        os.set_blocking(parent.fileno(), False)
        self._buf = bytearray()
        self.ready = asyncio.get_running_loop().create_future()
        self.job: int | None = None
        self.timer: asyncio.TimerHandle | None = None

    def fileno(self) -> int:
        return self._conn.fileno()

    def send(self, job: dict[str, Any]) -> None:
        self._conn.send_bytes(orjson.dumps(job))

    def read_messages(self) -> list[Any]:
        """Every complete message readable now, without blocking.

        The event loop may put the pipe in non-blocking mode (libuv does), so a message larger
        than the pipe buffer (a result with alert packets) arrives over several wake-ups; the
        bytes are gathered here and cut into multiprocessing's frames (4-byte big-endian
        length, or -1 and an 8-byte length).
        """
        fd = self._conn.fileno()
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                raise EOFError("worker closed its pipe")
            self._buf += chunk
            if len(chunk) < 1 << 20:
                break
        out = []
        while len(self._buf) >= 4:
            (size,) = struct.unpack("!i", self._buf[:4])
            start = 4
            if size == -1:
                if len(self._buf) < 12:
                    break
                (size,) = struct.unpack("!Q", self._buf[4:12])
                start = 12
            if len(self._buf) < start + size:
                break
            out.append(pickle.loads(self._buf[start : start + size]))
            del self._buf[: start + size]
        return out

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.process.join(5)
        self._conn.close()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.send_bytes(b"")
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()


class WorkerPool:
    """N warm workers. ``submit`` hands a job to an idle worker; results come to ``on_result``."""

    def __init__(
        self,
        size: int,
        on_result: ResultCallback,
        *,
        warm_imports: tuple[str, ...] = (),
        nice: int = 0,
    ) -> None:
        """``nice`` lowers the workers' CPU priority below the pilot's: the pilot's control
        loop (hand-offs, heartbeats) stays responsive while payloads use the rest."""
        self.size = size
        self._on_result = on_result
        self._warm = warm_imports
        self._nice = nice
        self._workers: list[Worker] = []
        self._idle: list[Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.respawns = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Each worker runs one job on one core; the slots are the parallelism. Numerical
        # libraries' own thread pools (BLAS, OpenMP) would multiply the processes contending
        # for the cores: with 8 workers on 2 cores PSF matching took 807 ms per detector, 70 ms
        # with one thread each.
        # Set before the fork server starts, so every worker inherits it.
        for var in THREAD_ENV:
            os.environ.setdefault(var, "1")
        # Modules every worker needs are imported once in the fork server and shared.
        _ctx.set_forkserver_preload(["prompt.pilot.payloads", *self._warm])
        for i in range(self.size):
            self._spawn(i)
        await asyncio.gather(*(w.ready for w in self._workers))

    def _spawn(self, index: int) -> Worker:
        assert self._loop is not None
        worker = Worker(index, self._warm, self._nice)
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

    def submit(self, job_id: int, job: dict[str, Any], timeout_s: float) -> None:
        worker = self._idle.pop()
        worker.job = job_id
        assert self._loop is not None
        worker.timer = self._loop.call_later(timeout_s, self._timeout, worker, timeout_s)
        worker.send(job)

    def _readable(self, worker: Worker) -> None:
        try:
            messages = worker.read_messages()
        except (EOFError, OSError) as exc:
            worker.process.join(0.5)  # reap it: the exit code (or signal) says why
            code = worker.process.exitcode
            why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self._replace(worker, f"worker process died ({why}; {exc!r})", "worker_crashed")
            return
        for msg in messages:
            self._handle(worker, msg)

    def _handle(self, worker: Worker, msg: Any) -> None:
        if not worker.ready.done():
            worker.ready.set_result(None)
            self._idle.append(worker)
            return
        if worker.timer:
            worker.timer.cancel()
        job_id, worker.job = worker.job, None
        self._idle.append(worker)
        if job_id is not None:
            self._on_result(job_id, msg)

    def _timeout(self, worker: Worker, timeout_s: float) -> None:
        self._replace(worker, f"job timed out after {timeout_s:.1f} s; worker killed", "timeout")

    def _replace(self, worker: Worker, error: str, failure: FailureKindName) -> None:
        assert self._loop is not None
        self._loop.remove_reader(worker.fileno())
        if worker.timer:
            worker.timer.cancel()
        worker.kill()
        self._workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        job_id = worker.job
        self.respawns += 1
        self._spawn(worker.index)
        if not worker.ready.done():
            worker.ready.set_exception(RuntimeError(error))
        if job_id is not None:
            result = job_result(started=time.time(), error=error, failure=failure)
            self._on_result(job_id, dict(result))

    async def stop(self) -> None:
        assert self._loop is not None
        for worker in self._workers:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(worker.fileno())
            if worker.timer:
                worker.timer.cancel()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self._workers))
        self._workers.clear()
        self._idle.clear()
