"""One warm worker process and the pilot's end of its pipe.

The worker runs the jobs written to its pipe one after another, in order, and answers each with
its result. The pilot may write the next jobs while one runs (see ``WorkerPool``), so a worker
that finishes a short job starts the next without waiting for the pilot: the pipe is the
worker's own queue. Frames are multiprocessing's (a 4-byte big-endian length, or -1 and an
8-byte length), written and read here without blocking the pilot's event loop.
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
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import orjson

from prompt.extras import import_optional
from prompt.pilot.payloads import run_job

# Workers fork from a forkserver that has the payload runner imported: a pilot with many slots
# starts in well under a second, and no worker inherits the pilot's event loop or sockets.
_ctx = mp.get_context("forkserver")
_ctx.set_forkserver_preload(["prompt.pilot.payloads"])

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def preload_in_fork_server(modules: tuple[str, ...]) -> None:
    """Modules every worker needs, imported once in the fork server and shared."""
    _ctx.set_forkserver_preload(["prompt.pilot.payloads", *modules])


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


@dataclass(slots=True)
class InFlight:
    """A job written to a worker's pipe: the first of the worker's is running."""

    job: int
    timeout_s: float
    est_s: float | None
    """The task's recent run time (None: not known yet)."""


class Worker:
    def __init__(
        self, index: int, warm_imports: tuple[str, ...], nice: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.index = index
        self._loop = loop
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
        self._out = bytearray()
        self.ready = loop.create_future()
        self.jobs: deque[InFlight] = deque()
        """In the order written: ``jobs[0]`` runs, the others wait in the pipe."""
        self.timer: asyncio.TimerHandle | None = None

    def fileno(self) -> int:
        return self._conn.fileno()

    def ahead_s(self) -> float:
        """How long a job written now would wait to start: the run times of the jobs before
        it (infinite when one is not known)."""
        total = 0.0
        for entry in self.jobs:
            if entry.est_s is None:
                return float("inf")
            total += entry.est_s
        return total

    def send(self, job: dict[str, Any]) -> None:
        """Write one job frame; what the pipe does not take now is written when it can."""
        body = orjson.dumps(job)
        frame = struct.pack("!i", len(body)) + body
        if self._out:
            self._out += frame
            return
        written = self._write(frame)
        if written < len(frame):
            self._out += frame[written:]
            self._loop.add_writer(self.fileno(), self._flush)

    def _write(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError:  # the worker died: the reader sees its pipe close and reports it
            return len(data)

    def _flush(self) -> None:
        del self._out[: self._write(self._out)]
        if not self._out:
            self._loop.remove_writer(self.fileno())

    def read_messages(self) -> tuple[list[Any], bool]:
        """Every complete message readable now, without blocking, and whether the pipe closed
        (the messages before the close are returned all the same).

        The event loop may put the pipe in non-blocking mode (libuv does), so a message larger
        than the pipe buffer (a result with alert packets) arrives over several wake-ups; the
        bytes are gathered here and cut into frames.
        """
        fd = self._conn.fileno()
        closed = False
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
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
        return out, closed

    def detach(self) -> None:
        """Stop watching the pipe (before a kill or a stop)."""
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.fileno())
        with contextlib.suppress(Exception):
            self._loop.remove_writer(self.fileno())
        if self.timer:
            self.timer.cancel()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
        self.process.join(5)
        self._conn.close()

    def stop(self) -> None:
        """Blocking (run in a thread): the end-of-jobs frame, then wait for the exit."""
        with contextlib.suppress(Exception):
            os.set_blocking(self.fileno(), True)
            while self._out:  # jobs not yet written: the worker runs them first
                del self._out[: os.write(self.fileno(), self._out)]
            self._conn.send_bytes(b"")
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()
