"""What the engine asks the world to do: values, carried out by the adapters in order.

The engine never writes a row, a frame or a Kafka record itself. Each of its entry points
returns these effects; ``dispatcher/runtime.py`` turns them into write-behind records, frames
on pilot connections and disconnects. Frames are encoded by the engine (a pure function), so a
job too large to send is known, and failed, before it is handed over.

``Send`` and ``SaveJob`` are named tuples: every push builds one of each, and a frozen
dataclass sets each field through ``object.__setattr__`` (about twice the cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from prompt.dispatcher.engine.model import Job, VisitKey


class Send(NamedTuple):
    """A frame for a pilot, if it is connected."""

    pilot: str
    frame: bytes


class SaveJob(NamedTuple):
    """The job's row; with ``completion``, its completion event into the outbox; ``then``
    is sent to its pilot once that is committed (the acknowledgement of a result)."""

    job: Job
    completion: bytes | None = None
    then: Send | None = None


@dataclass(frozen=True, slots=True)
class SaveHeld:
    """An image held for a group not yet announced: instrument, group, detector, snap, uri,
    event time, consumed time."""

    row: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class HeldApplied:
    """The group's held images are done with (applied to its visit, or dropped): their rows
    can go."""

    key: VisitKey


@dataclass(frozen=True, slots=True)
class SaveVisitStatus:
    visit_id: int
    status: str


@dataclass(frozen=True, slots=True)
class SaveResurrectedAt:
    visit_id: int
    at: float


@dataclass(frozen=True, slots=True)
class SavePilot:
    """(id, host, slots, state, cache summary, registered at, last seen)."""

    row: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class AfterCommit:
    """Send this once everything recorded before it is committed."""

    send: Send


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the pilot's connection (it was declared lost; it may register again)."""

    pilot: str


Effect = (
    Send | SaveJob | SaveHeld | HeldApplied | SaveVisitStatus | SaveResurrectedAt | SavePilot
    | AfterCommit | Disconnect
)  # fmt: skip
