"""Image arrivals that came before their next-visit, waiting for it.

Images can land before the dispatcher has read the next-visit (or before it exists at all), so
they are held, per group, until the visit is resurrected or a TTL passes. Held images are
bounded: per group (no camera has more than a few hundred detector-snaps) and in total, with
O(1) duplicate checks, so a flood of unmatched images costs memory and time proportional to the
caps, never more.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Literal

from prompt.dispatcher.engine.model import VisitKey
from prompt.events import ImageArrival

Held = tuple[ImageArrival, float]  # the arrival and when it was consumed
Outcome = Literal["held", "duplicate", "group_full", "full"]


class HeldImages:
    def __init__(self, *, per_group: int, total: int, ttl_s: float) -> None:
        self.per_group = per_group
        self.total = total
        self.ttl_s = ttl_s
        # group -> (detector, snap) -> held; groups ordered by their newest image, oldest first
        self._groups: OrderedDict[VisitKey, dict[tuple[int, int], Held]] = OrderedDict()
        self._newest: dict[VisitKey, float] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        return key in self._groups

    def keys(self) -> list[VisitKey]:
        return list(self._groups)

    def add(self, arrival: ImageArrival, consumed: float) -> Outcome:
        key = (arrival.instrument, arrival.group_id)
        group = self._groups.get(key)
        slot = (arrival.detector, arrival.snap)
        if group is not None and slot in group:
            return "duplicate"
        if group is not None and len(group) >= self.per_group:
            return "group_full"
        if self._count >= self.total:
            return "full"
        if group is None:
            group = self._groups[key] = {}
        group[slot] = (arrival, consumed)
        self._groups.move_to_end(key)
        self._newest[key] = consumed
        self._count += 1
        return "held"

    def pop(self, key: VisitKey) -> list[Held]:
        group = self._groups.pop(key, None)
        self._newest.pop(key, None)
        if not group:
            return []
        self._count -= len(group)
        return list(group.values())

    def expired(self, now: float) -> Iterator[VisitKey]:
        """Groups whose newest image is older than the TTL (they are not removed here)."""
        limit = now - self.ttl_s
        for key in list(self._groups):
            if self._newest[key] >= limit:
                break
            yield key

    def of_group(self, group_id: str) -> list[VisitKey]:
        return [key for key in self._groups if key[1] == group_id]
