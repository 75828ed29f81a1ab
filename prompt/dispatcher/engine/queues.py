"""Ready jobs waiting for a slot: one queue per pilot (the jobs it preloaded) and one for jobs
no live pilot holds, each in the order chosen at start-up (``order.py``).

A queue keeps two heaps: jobs that can still make their deadline, and those found hopeless
when they reached the head (they stay hopeless: time only moves on). Entries are removed
lazily: a job that left its queue (sent, canceled, moved) is skipped when it comes up.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from prompt.dispatcher.engine.model import Job, JobState
from prompt.dispatcher.engine.order import Order

UNASSIGNED = ""
"""The queue of jobs no live pilot preloaded."""

Entry = tuple[float, int, Job]
Rank = tuple[int, float, int]
"""(0 feasible / 1 hopeless, the order's key, arrival in the queue): smaller first."""


@dataclass
class _Queue:
    feasible: list[Entry] = field(default_factory=list)
    hopeless: list[Entry] = field(default_factory=list)


class ReadyQueues:
    def __init__(self, order: Order) -> None:
        self.order = order
        self._queues: dict[str, _Queue] = {}
        self._where: dict[int, tuple[str, int, Job]] = {}
        """Job id -> (its queue, its entry's sequence number, the job)."""
        self._counts: dict[str, int] = {}
        self._seq = itertools.count().__next__

    def add(self, job: Job, queue: str) -> None:
        self.discard(job)
        seq = self._seq()
        self._where[job.id] = (queue, seq, job)
        self._counts[queue] = self._counts.get(queue, 0) + 1
        q = self._queues.setdefault(queue, _Queue())
        heapq.heappush(q.feasible, (self.order.key(job), seq, job))

    def discard(self, job: Job) -> None:
        """The job leaves its queue (taken from its head, or ended)."""
        where = self._where.pop(job.id, None)
        if where is not None:
            self._counts[where[0]] -= 1

    def __len__(self) -> int:
        return len(self._where)

    def names(self) -> list[str]:
        return list(self._queues)

    def length(self, queue: str) -> int:
        return self._counts.get(queue, 0)

    def head(
        self, queue: str, start_at: float, accepts: Callable[[Job], bool]
    ) -> tuple[Rank, Job] | None:
        """The first job of ``queue`` that ``accepts``, with its rank (it stays queued)."""
        q = self._queues.get(queue)
        if q is None:
            return None
        for hopeless, heap in ((0, q.feasible), (1, q.hopeless)):
            skipped: list[Entry] = []
            found: tuple[Rank, Job] | None = None
            while heap:
                key, seq, job = heap[0]
                where = self._where.get(job.id)
                if where is None or where[:2] != (queue, seq):
                    heapq.heappop(heap)  # left this queue
                elif job.state is not JobState.READY:
                    heapq.heappop(heap)
                    self.discard(job)
                elif not accepts(job):
                    skipped.append(heapq.heappop(heap))
                elif not hopeless and self.order.hopeless(job, start_at):
                    heapq.heappush(q.hopeless, heapq.heappop(heap))
                else:
                    found = ((hopeless, key, seq), job)
                    break
            for entry in skipped:
                heapq.heappush(heap, entry)
            if found is not None:
                return found
        if not q.feasible and not q.hopeless:
            del self._queues[queue]
            self._counts.pop(queue, None)
        return None
