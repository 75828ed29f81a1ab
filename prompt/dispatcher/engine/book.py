"""The engine's state, in one place: visits, jobs, held images, pilots, what is closed or
canceled, the expiry queue and the ready queues (``queues.py``).

Every part of the engine reads and changes the same ``Book``; nothing outside the engine
touches it (the read model, ``snapshot.py``, copies out of it).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prompt.dispatcher.engine.config import EngineConfig
from prompt.dispatcher.engine.effects import Effect
from prompt.dispatcher.engine.held import HeldImages
from prompt.dispatcher.engine.model import Job, Visit, VisitKey
from prompt.dispatcher.engine.order import order
from prompt.dispatcher.engine.pilots import PilotRegistry
from prompt.dispatcher.engine.queues import ReadyQueues
from prompt.events import NextVisit
from prompt.metrics import DispatcherMetrics

CLOSED_MEMORY = 20_000
"""Closed visits and canceled groups remembered (to recognise repeats), newest kept."""


@dataclass(frozen=True, slots=True)
class Announced:
    """A next-visit noted by a scheduling that builds visits at their first image."""

    nv: NextVisit
    record: dict[str, Any]
    received: float


@dataclass
class Book:
    config: EngineConfig
    visits: dict[VisitKey, Visit] = field(default_factory=dict)
    jobs: dict[int, Job] = field(default_factory=dict)
    resurrecting: set[VisitKey] = field(default_factory=set)
    announced: dict[VisitKey, Announced] = field(default_factory=dict)
    closed: OrderedDict[VisitKey, str] = field(default_factory=OrderedDict)
    canceled: OrderedDict[str, float] = field(default_factory=OrderedDict)
    """Groups canceled before they were announced, with when."""
    pilots: PilotRegistry = field(default_factory=PilotRegistry)
    expiry: list[tuple[float, int, VisitKey]] = field(default_factory=list)
    withdrawing: dict[int, str | None] = field(default_factory=dict)
    """Jobs asked back from a pilot's queue -> the pilot that is to have them (None: to
    cancel them)."""
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=12))
    """The last visits done, for the operator page."""
    problems: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))
    """The last jobs that failed, were late or expired, for the operator page."""
    counts: Counter[str] = field(default_factory=Counter)
    held: HeldImages = field(init=False)
    queues: ReadyQueues = field(init=False)
    _seq: Callable[[], int] = field(default_factory=lambda: itertools.count().__next__)

    def __post_init__(self) -> None:
        c = self.config
        self.held = HeldImages(per_group=c.held_per_group, total=c.held_total, ttl_s=c.held_ttl_s)
        self.queues = ReadyQueues(order(c.dispatch_order))

    def close(self, key: VisitKey, why: str) -> None:
        self.closed[key] = why
        while len(self.closed) > CLOSED_MEMORY:
            self.closed.popitem(last=False)

    def remember_canceled(self, group: str, when: float) -> None:
        self.canceled[group] = when
        while len(self.canceled) > CLOSED_MEMORY:
            self.canceled.popitem(last=False)

    def known(self, key: VisitKey) -> bool:
        """Announced before, in any form (a repeat of it is a duplicate)."""
        return (
            key in self.visits
            or key in self.resurrecting
            or key in self.closed
            or key in self.announced
        )

    def watch_expiry(self, visit: Visit) -> None:
        heapq.heappush(self.expiry, (visit.expires_at, self._seq(), visit.key))


class Desk:
    """What every part of the engine shares: the book, settings, metrics, the clock, and the
    list of effects the current entry point is producing."""

    def __init__(
        self,
        book: Book,
        metrics: DispatcherMetrics,
        wall: Callable[[], float],
        mono: Callable[[], float],
        out: list[Effect],
    ) -> None:
        self.book = book
        self.config = book.config
        self.metrics = metrics
        self.wall = wall
        self.mono = mono
        self.out = out

    def duplicate(self, kind: str) -> None:
        self.book.counts["duplicates"] += 1
        self.metrics.ignored.labels(kind, "duplicate").inc()
