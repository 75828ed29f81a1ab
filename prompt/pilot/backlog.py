"""The jobs a pilot holds beyond its free workers: started lowest rank first (the dispatcher's
order), found by (job, attempt) in constant time (a repeated push, a withdraw)."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator

from prompt.channel.protocol import Message

JobKey = tuple[int, int]  # (job id, attempt)


class Backlog:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, JobKey]] = []
        self._jobs: dict[JobKey, Message] = {}
        self._seq = itertools.count().__next__

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Message]:
        return iter(self._jobs.values())

    def __contains__(self, key: JobKey) -> bool:
        return key in self._jobs

    def add(self, msg: Message) -> None:
        key = (msg["job"], msg["attempt"])
        self._jobs[key] = msg
        heapq.heappush(self._heap, (float(msg.get("rank", math.inf)), self._seq(), key))

    def remove(self, key: JobKey) -> bool:
        """False: not here (started, or never came)."""
        return self._jobs.pop(key, None) is not None

    def peek(self) -> Message:
        """What ``pop`` would return, left in place (IndexError if empty)."""
        while True:
            key = self._heap[0][2]
            msg = self._jobs.get(key)
            if msg is not None:
                return msg
            heapq.heappop(self._heap)

    def pop(self) -> Message:
        """The lowest rank, the first come of equals (IndexError if empty)."""
        msg = self.peek()
        heapq.heappop(self._heap)
        del self._jobs[(msg["job"], msg["attempt"])]
        return msg
