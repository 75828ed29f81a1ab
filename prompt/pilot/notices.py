"""``started`` messages, sent a little after the hand-off instead of at once.

The dispatcher needs to know a job started (its state, the dispatch-latency metric) but nothing
waits for it, while during a burst every message it reads takes CPU from the workers that are
waking up to start the burst's last jobs. So the notices of one burst leave together,
``delay_s`` after the first, when the burst has started; a job's notice always leaves before
its result. The ``at`` each carries is the hand-off time, whenever it is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prompt.channel import protocol as p
from prompt.channel.protocol import Message

JobKey = tuple[int, int]  # (job id, attempt)


class StartedNotices:
    def __init__(self, delay_s: float, send: Callable[[Message], None]) -> None:
        self._delay_s = delay_s
        self._send = send
        self._pending: dict[JobKey, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, job: int, attempt: int, at: float) -> None:
        if self._delay_s <= 0:
            self._notice(job, attempt, at)
            return
        self._pending[(job, attempt)] = at
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self.flush)

    def before_result(self, job: int, attempt: int) -> None:
        """The job's result is about to be sent: its notice goes first."""
        at = self._pending.pop((job, attempt), None)
        if at is not None:
            self._notice(job, attempt, at)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for (job, attempt), at in pending.items():
            self._notice(job, attempt, at)

    def _notice(self, job: int, attempt: int, at: float) -> None:
        self._send({"t": p.STARTED, "job": job, "attempt": attempt, "at": at})
