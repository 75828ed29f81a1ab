"""The dispatcher's engine: every decision, no I/O (in the style of h11).

Events and the clock go in; effects come out (``effects.py``) for the adapters to carry out:
rows to write behind, frames for pilots, connections to close. Decisions that need the
database before they can go on (a resurrection, an ignored visit, a cancel of a group not
announced yet) are returned as values; the adapter reports their outcome back. The engine
imports no asyncio, asyncpg, aiokafka or aiohttp (a lint rule keeps it so), so every rule is
testable in memory, in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prompt.dispatcher.engine.arrivals import Arrivals, BuildFirst, Decision, Ignore
from prompt.dispatcher.engine.book import Book
from prompt.dispatcher.engine.config import EngineConfig
from prompt.dispatcher.engine.dispatch import Dispatch
from prompt.dispatcher.engine.effects import Effect
from prompt.dispatcher.engine.lifecycle import Lifecycle
from prompt.dispatcher.engine.model import Visit
from prompt.dispatcher.engine.pilot_events import PilotEvents
from prompt.dispatcher.engine.pilots import PilotState
from prompt.dispatcher.engine.restore import SavedState, restore
from prompt.dispatcher.engine.scheduling import Scheduling, scheduling
from prompt.dispatcher.engine.snapshot import Snapshot, snapshot
from prompt.events import AvroCodec, ImageArrival, NextVisit
from prompt.metrics import DispatcherMetrics
from prompt.tasks import Task

Effects = list[Effect]


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        scheduling_name: str,
        codec: AvroCodec,
        metrics: DispatcherMetrics,
        tasks: list[Task],
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.book = Book(config)
        self.wall = wall
        self._out: Effects = []
        parts = (self.book, metrics, wall, mono, self._out)
        self.dispatch = Dispatch(*parts)
        self.lifecycle = Lifecycle(*parts)
        self.arrivals = Arrivals(*parts)
        self.pilot_events = PilotEvents(*parts)
        self.scheduling: Scheduling = scheduling(
            scheduling_name, self.dispatch, config.poll_s, config.backlog_per_pilot
        )
        self.dispatch.fail = self.lifecycle.fail_now
        self.lifecycle.scheduling = self.scheduling
        self.lifecycle.codec = codec
        self.arrivals.scheduling = self.scheduling
        self.arrivals.dispatch = self.dispatch
        self.pilot_events.dispatch = self.dispatch
        self.arrivals.lifecycle = self.lifecycle
        self.arrivals.tasks = tasks
        self.pilot_events.scheduling = self.scheduling
        self.pilot_events.lifecycle = self.lifecycle
        events = self.pilot_events
        self._handlers: dict[str, Callable[[PilotState, dict[str, Any]], None]] = {
            "started": events.started,
            "finished": events.finished,
            "heartbeat": events.heartbeat,
            "preloaded": events.preloaded,
            "withdrawn": events.withdrawn,
            "poll": lambda pilot, _msg: events.poll(pilot),
        }

    def _effects(self) -> Effects:
        out = list(self._out)
        self._out.clear()
        return out

    @property
    def tasks(self) -> list[Task]:
        return self.arrivals.tasks

    @tasks.setter
    def tasks(self, tasks: list[Task]) -> None:
        self.arrivals.tasks = tasks

    # ---- the observatory --------------------------------------------------------------------

    def announce(
        self, nv: NextVisit, record: dict[str, Any], consumed: float
    ) -> Decision | BuildFirst:
        return self.arrivals.announce(nv, record, consumed)

    def decide(self, nv: NextVisit, consumed: float, tasks: list[Task]) -> Decision:
        """A noted visit's decision, against the tasks as they are in the database now."""
        return self.arrivals.decide(nv, consumed, tasks)

    def ignored(self, nv: NextVisit, decision: Ignore) -> Effects:
        self.arrivals.ignored(nv, decision)
        return self._effects()

    def resurrect_failed(self, nv: NextVisit) -> None:
        self.arrivals.resurrect_failed(nv)

    def resurrected(
        self,
        nv: NextVisit,
        task: Task,
        visit_id: int | None,
        jobs: list[tuple[int, int]],
        consumed: float,
        expires_at: float,
    ) -> tuple[Visit | None, Effects]:
        visit = self.arrivals.resurrected(nv, task, visit_id, jobs, consumed, expires_at)
        return visit, self._effects()

    def cancel(self, group: str) -> tuple[bool, Effects]:
        """(False: record the cancel of a group not announced, then ``canceled_unannounced``)."""
        done = self.arrivals.cancel(group)
        return done, self._effects()

    def canceled_unannounced(self, group: str, when: float) -> Effects:
        self.arrivals.canceled_unannounced(group, when)
        return self._effects()

    def image(self, arrival: ImageArrival, consumed: float) -> tuple[BuildFirst | None, Effects]:
        """Raises HeldOverflowError (nothing changed) if the image can be neither applied
        nor held."""
        build = self.arrivals.image(arrival, consumed)
        return build, self._effects()

    # ---- pilots -----------------------------------------------------------------------------

    def welcome(self) -> dict[str, Any]:
        return dict(self.scheduling.welcome(self.config.heartbeat_s))

    def registered(self, pilot_id: str, **details: Any) -> Effects:
        self.pilot_events.registered(pilot_id, **details)
        return self._effects()

    def disconnected(self, pilot_id: str) -> Effects:
        self.pilot_events.disconnected(pilot_id)
        return self._effects()

    def pilot_message(self, pilot_id: str, msg: dict[str, Any]) -> Effects:
        """A message from a registered pilot (its type is ``msg["t"]``)."""
        pilot = self.book.pilots.pilots.get(pilot_id)
        if pilot is None:
            return []  # declared lost; its connection is being closed
        pilot.last_seen = self.pilot_events.mono()
        handler = self._handlers.get(msg["t"])
        if handler is not None:
            handler(pilot, msg)
        return self._effects()

    # ---- time -------------------------------------------------------------------------------

    def sweep(self, *, images_read: bool) -> Effects:
        """Declare silent pilots lost, expire visits whose images never came (only once the
        image intake has read everything: after an outage, images may still wait in the
        topic), drop stale held images, and hand ready jobs to pilots with room."""
        now = self.wall()
        self.pilot_events.check_liveness()
        if images_read:
            self.lifecycle.expire(now)
        for key in list(self.book.held.expired(now)):
            self.arrivals.drop_held(key, "next_visit_never_came")
        book = self.book
        limit = now - self.config.held_ttl_s
        while book.canceled and next(iter(book.canceled.values())) < limit:
            book.canceled.popitem(last=False)
        self.scheduling.sweep()
        return self._effects()

    # ---- state ------------------------------------------------------------------------------

    def restore(self, saved: SavedState) -> Effects:
        """Take over the state a previous term committed (see ``restore.py``)."""
        restore(self, saved, self._out)
        return self._effects()

    def job_log(self, job_id: int) -> str | None:
        """The payload output of an open job, if it reported one (else look in the database)."""
        job = self.book.jobs.get(job_id)
        if job is None or job.result is None:
            return None
        return str(job.result.get("log", ""))

    def held_groups(self) -> list[tuple[str, str]]:
        """Groups with images held for a next-visit not yet seen."""
        return self.book.held.keys()

    def snapshot(self) -> Snapshot:
        return snapshot(self.book, self.wall(), self.scheduling.name)

    def channel_open(self) -> None:
        """The pilot channel listens now: pilots that held jobs when the previous term ended
        get their heartbeat timeout from now to reconnect and claim them (not from when the
        state was read: reading it may have taken a while)."""
        now = self.pilot_events.mono()
        for pilot in self.book.pilots.pilots.values():
            if not pilot.connected and pilot.disconnected_at is not None:
                pilot.disconnected_at = now

    def pilots_awaited(self) -> bool:
        """Some pilot that held jobs has not reconnected (yet)."""
        return any(not p.connected and p.running for p in self.book.pilots.pilots.values())

    def in_flight_on_pilots(self) -> int:
        return sum(len(p.running) for p in self.book.pilots.pilots.values())
