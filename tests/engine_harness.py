"""The dispatcher's engine in memory: a fake clock, and the runtime's part played by a few lines.

``Sim`` drives an ``Engine`` as ``dispatcher/runtime.py`` does, without a database, broker or
socket: a ``Resurrect`` becomes ``resurrected(...)`` with made-up visit and job ids, frames are
decoded as a pilot would read them, rows and completions are kept as the writer would commit
them, and whatever waits for a commit (acknowledgements, ``AfterCommit``) is sent only when the
test calls ``commit()``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from typing import Any

import orjson

from prompt.channel.frames import LEN
from prompt.dispatcher.engine import (
    AfterCommit,
    BuildFirst,
    Decision,
    Disconnect,
    Effect,
    Effects,
    Engine,
    EngineConfig,
    HeldApplied,
    Ignore,
    Job,
    Resurrect,
    SaveHeld,
    SaveJob,
    SavePilot,
    SaveResurrectedAt,
    SaveVisitStatus,
    Send,
    Visit,
)
from prompt.events import AvroCodec, EventKind, ImageArrival, LocalSchemaRegistry, NextVisit
from prompt.metrics import DispatcherMetrics
from prompt.tasks import Task, TaskSpec
from prompt.timescale import TAI_MINUS_UTC_S
from tests.conftest import make_next_visit

INSTRUMENT = "LSSTCam"
T0 = 1_746_142_400.0
"""The fake wall clock starts at 2025-05-01T23:33:20Z."""
MONO_OFFSET = 1_746_000_000.0
"""The monotonic clock runs on its own origin, so a wall/monotonic mix-up shows."""


class Clock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def wall(self) -> float:
        return self.now

    def mono(self) -> float:
        return self.now - MONO_OFFSET

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_task(
    name: str = "alerts",
    *,
    task_id: int = 1,
    detectors: str = "0-3",
    payload: dict[str, Any] | None = None,
    **spec: Any,
) -> Task:
    model = TaskSpec.model_validate(
        {
            "name": name,
            "instrument": INSTRUMENT,
            "detectors": {"include": detectors},
            "payload": payload or {"kind": "sleep"},
            **spec,
        }
    )
    return Task(task_id, 1, task_id, model, tuple(model.detectors.resolve()))


def decode_frame(frame: bytes) -> dict[str, Any]:
    """A frame as the pilot reads it: the length prefix, then one JSON object."""
    (length,) = LEN.unpack_from(frame)
    assert length == len(frame) - LEN.size
    message: dict[str, Any] = orjson.loads(frame[LEN.size :])
    return message


class Sim:
    """One engine, its clock, and everything it asked the world to do."""

    def __init__(
        self,
        tasks: list[Task] | None = None,
        *,
        scheduling: str = "push",
        **config: Any,
    ) -> None:
        self.clock = Clock()
        self.codec = AvroCodec(EventKind.COMPLETION, LocalSchemaRegistry())
        self.metrics = DispatcherMetrics()
        self.tasks = [make_task()] if tasks is None else tasks
        """The active tasks "in the database" (poll scheduling reads them at the first image)."""
        self.engine = Engine(
            EngineConfig(**config),
            scheduling_name=scheduling,
            codec=self.codec,
            metrics=self.metrics,
            tasks=self.tasks,
            wall=self.clock.wall,
            mono=self.clock.mono,
        )
        self._ids = itertools.count(100)
        self.effects: list[Effect] = []
        self.frames: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        """Frames each pilot received, decoded, in order."""
        self.channels: set[str] = set()
        """Pilots with an open connection."""
        self.uncommitted: list[Send] = []
        self.saved: list[tuple[int, str]] = []
        """(job id, state) of every job row written, in order."""
        self.completions: list[dict[str, Any]] = []
        self.visit_status: dict[int, str] = {}
        self.held_rows: dict[tuple[str, str, int, int], tuple[Any, ...]] = {}
        self.pilot_rows: dict[str, tuple[Any, ...]] = {}
        self.disconnects: list[str] = []
        self.resurrected_at: dict[int, float] = {}

    # ---- the runtime's part -----------------------------------------------------------------

    def apply(self, effects: Effects) -> None:
        for effect in effects:
            self.effects.append(effect)
            match effect:
                case Send():
                    self._send(effect)
                case SaveJob(job=job, completion=completion, then=then):
                    self.saved.append((job.id, job.state.value))
                    if completion is not None:
                        record = self.codec.decode_cached(completion)
                        assert record is not None
                        self.completions.append(record)
                    if then is not None:
                        self.uncommitted.append(then)
                case AfterCommit(send=send):
                    self.uncommitted.append(send)
                case SaveHeld(row=row):
                    self.held_rows[(row[0], row[1], row[2], row[3])] = row
                case HeldApplied(key=key):
                    for held in [k for k in self.held_rows if k[:2] == key]:
                        del self.held_rows[held]
                case SaveVisitStatus(visit_id=visit_id, status=status):
                    self.visit_status[visit_id] = status
                case SaveResurrectedAt(visit_id=visit_id, at=at):
                    self.resurrected_at[visit_id] = at
                case SavePilot(row=row):
                    self.pilot_rows[row[0]] = row
                case Disconnect(pilot=pilot):
                    self.disconnects.append(pilot)
                    self.channels.discard(pilot)

    def _send(self, send: Send) -> None:
        if send.pilot not in self.channels:  # as the runtime: no connection = disconnected
            self.apply(self.engine.disconnected(send.pilot))
            return
        self.frames[send.pilot].append(decode_frame(send.frame))

    def commit(self) -> None:
        """The write-behind transaction commits: what waited for it is sent."""
        waiting, self.uncommitted = self.uncommitted, []
        for send in waiting:
            self._send(send)

    # ---- the observatory --------------------------------------------------------------------

    def nv(self, i: int = 0, **changes: Any) -> NextVisit:
        """The test suite's next-visit for group ``i``, starting 2 s from now (start times
        are TAI) and stamped now."""
        now = self.clock.wall()
        nv = NextVisit.from_record(make_next_visit(i))
        return dataclasses.replace(
            nv, **{"start_time": now + TAI_MINUS_UTC_S + 2.0, "efd_stamp": now, **changes}
        )

    def next_visit(self, nv: NextVisit) -> Decision | BuildFirst:
        """Announce, then carry out the decision as the runtime does."""
        consumed = self.clock.wall()
        decision = self.engine.announce(nv, nv.to_record(), consumed)
        if isinstance(decision, BuildFirst):
            built = self.engine.decide(nv, consumed, self.tasks)
            self._carry_out(built, nv, consumed)
            return decision
        self._carry_out(decision, nv, consumed)
        return decision

    def _carry_out(self, decision: Decision, nv: NextVisit, consumed: float) -> None:
        if isinstance(decision, Ignore):
            self.apply(self.engine.ignored(nv, decision))
        elif isinstance(decision, Resurrect):
            visit_id = next(self._ids)
            jobs = [(next(self._ids), d) for d in decision.task.detectors]
            _, effects = self.engine.resurrected(
                nv, decision.task, visit_id, jobs, consumed, decision.expires_at
            )
            self.apply(effects)

    def arrival(self, nv: NextVisit, detector: int, snap: int = 0, **changes: Any) -> ImageArrival:
        arrival = ImageArrival(
            instrument=nv.instrument,
            group_id=nv.group_id,
            snap=snap,
            detector=detector,
            uri=f"s3://raw/{nv.group_id}/{detector}/{snap}.fits",
            obs_id=f"MC_O_20250501_{nv.script_sal_index:06d}_{snap}",
            event_time=self.clock.wall(),
        )
        return arrival._replace(**changes)

    def image(self, nv: NextVisit, detector: int, snap: int = 0, **changes: Any) -> None:
        self.deliver(self.arrival(nv, detector, snap, **changes))

    def deliver(self, arrival: ImageArrival) -> BuildFirst | None:
        """An image, as the runtime handles it (poll: build the visit first, then again)."""
        consumed = self.clock.wall()
        build, effects = self.engine.image(arrival, consumed)
        self.apply(effects)
        if isinstance(build, BuildFirst):
            noted = build.announced
            decision = self.engine.decide(noted.nv, noted.received, self.tasks)
            self._carry_out(decision, noted.nv, noted.received)
            _, effects = self.engine.image(arrival, consumed)
            self.apply(effects)
        return build

    def images(self, nv: NextVisit, detectors: list[int] | None = None) -> None:
        for detector in list(self.visit(nv).jobs) if detectors is None else detectors:
            self.image(nv, detector)

    def cancel(self, group: str) -> bool:
        done, effects = self.engine.cancel(group)
        self.apply(effects)
        if not done:
            self.apply(self.engine.canceled_unannounced(group, self.clock.wall()))
        return done

    def sweep(self, *, images_read: bool = True) -> None:
        self.apply(self.engine.sweep(images_read=images_read))

    def later(self, seconds: float, *, images_read: bool = True) -> None:
        """Time passes with every connected pilot heartbeating, as live ones do; then the
        sweep runs."""
        self.clock.advance(seconds)
        pilots = self.engine.book.pilots.pilots
        for pilot in sorted(self.channels):
            self.heartbeat(pilot, draining=pilots[pilot].draining)
        self.sweep(images_read=images_read)

    # ---- pilots -----------------------------------------------------------------------------

    def register(
        self,
        pilot: str,
        *,
        slots: int = 2,
        labels: tuple[str, ...] = (),
        cache: set[tuple[str, int, str]] | None = None,
        draining: bool = False,
        claimed: list[tuple[int, int]] | None = None,
    ) -> None:
        self.channels.add(pilot)
        self.frames[pilot].append(self.engine.welcome())
        self.apply(
            self.engine.registered(
                pilot,
                slots=slots,
                labels=frozenset(labels),
                host=f"host-{pilot}",
                cache=set(cache or ()),
                draining=draining,
                claimed=list(claimed or ()),
            )
        )

    def disconnect(self, pilot: str) -> None:
        self.channels.discard(pilot)
        self.apply(self.engine.disconnected(pilot))

    def say(self, pilot: str, msg: dict[str, Any]) -> None:
        self.apply(self.engine.pilot_message(pilot, msg))

    def heartbeat(self, pilot: str, **fields: Any) -> None:
        self.say(pilot, {"t": "heartbeat", "draining": False, **fields})

    def poll(self, pilot: str) -> None:
        self.say(pilot, {"t": "poll"})

    def start(self, pilot: str, job_id: int, attempt: int | None = None) -> None:
        attempt = self.attempt_on(pilot, job_id) if attempt is None else attempt
        self.say(pilot, {"t": "started", "job": job_id, "attempt": attempt,
                         "at": self.clock.wall()})  # fmt: skip

    def finish(
        self,
        pilot: str,
        job_id: int,
        attempt: int | None = None,
        *,
        error: str | None = None,
        failure: str | None = None,
    ) -> None:
        """The pilot reports the result of the job (ok unless ``error``)."""
        attempt = self.attempt_on(pilot, job_id) if attempt is None else attempt
        self.say(pilot, {
            "t": "finished", "job": job_id, "attempt": attempt, "ok": error is None,
            "error": error, "failure": failure, "started": None, "finished": self.clock.wall(),
            "counts": {"sources": 3}, "stages": {"run": 0.5}, "log": "done", "cache_hit": True,
        })  # fmt: skip

    # ---- what happened ----------------------------------------------------------------------

    def sent(self, pilot: str, kind: str = "job") -> list[dict[str, Any]]:
        return [f for f in self.frames[pilot] if f["t"] == kind]

    def jobs_sent(self, pilot: str) -> list[int]:
        return [f["job"] for f in self.sent(pilot)]

    def attempt_on(self, pilot: str, job_id: int) -> int:
        """The attempt of the last job frame for ``job_id`` that ``pilot`` received."""
        attempts = [f["attempt"] for f in self.sent(pilot) if f["job"] == job_id]
        assert attempts, f"{pilot} never received job {job_id}"
        return int(attempts[-1])

    def visit(self, nv: NextVisit) -> Visit:
        return self.engine.book.visits[(nv.instrument, nv.group_id)]

    def job(self, nv: NextVisit, detector: int) -> Job:
        return self.visit(nv).jobs[detector]

    def completion(self, job_id: int) -> dict[str, Any]:
        """The job's one completion event (a second one is a failure of the test)."""
        found = [c for c in self.completions if c["jobId"] == job_id]
        assert len(found) == 1, f"job {job_id} has {len(found)} completions"
        return found[0]

    def acks(self, pilot: str) -> list[tuple[int, int]]:
        return [(f["job"], f["attempt"]) for f in self.sent(pilot, "ack")]

    def ignored(self, kind: str, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "prompt_events_ignored_total", {"kind": kind, "reason": reason}
        )
        return value or 0.0


OPEN = {"defined": 0, "assigned": 0, "preloading": 0, "ready": 0, "sent": 0, "running": 0}


def pushed(sim: Sim, pilot: str, *, slots: int = 4) -> tuple[Sim, int]:
    """``sim`` with ``pilot`` registered, a visit announced and detector 0's image in:
    returns the job id, now on ``pilot``."""
    sim.register(pilot, slots=slots)
    nv = sim.nv()
    sim.next_visit(nv)
    sim.image(nv, 0)
    return sim, sim.job(nv, 0).id


def preloaded(sim: Sim, pilot: str) -> list[int]:
    """The detectors ``pilot`` was asked to preload, over all its preload frames."""
    return [item["detector"] for f in sim.sent(pilot, "preload") for item in f["items"]]
