"""How jobs reach pilots, as an object chosen once at start-up.

``Push`` is what prompt is built on: a next-visit resurrects the task at once, the chosen
pilots preload the calibrations, and a job is pushed the moment its images are in (cache
affinity, the chosen order), to a slot or to the pilot's small backlog. ``Poll`` is the cold
baseline it is compared with: a next-visit is only noted, the visit is built when its first
image arrives, nothing is preloaded, and pilots ask for work every ``poll_s`` (no backlog).
The dispatcher tells pilots which one in its welcome, so either works with a plain
``prompt pilot``.
"""

from __future__ import annotations

from typing import Literal, Protocol

from prompt.channel.messages import Welcome
from prompt.dispatcher.engine.dispatch import Dispatch
from prompt.dispatcher.engine.model import Job
from prompt.dispatcher.engine.pilots import PilotState
from prompt.dispatcher.engine.queues import UNASSIGNED


class Scheduling(Protocol):
    name: Literal["push", "poll"]
    resurrects_on_announce: bool
    """True: a next-visit resurrects its task; False: it is noted until the first image."""
    preloads: bool

    def welcome(self, heartbeat_s: float) -> Welcome: ...

    def ready(self, job: Job) -> None:
        """A job has all its images (or is to be retried)."""

    def capacity(self, pilot: PilotState) -> None:
        """The pilot may have free slots (registered, a job ended, a heartbeat)."""

    def poll(self, pilot: PilotState) -> None:
        """The pilot asks for work."""

    def sweep(self) -> None:
        """Periodically: what waits may go now."""


class Push:
    name: Literal["push", "poll"] = "push"
    resurrects_on_announce = True
    preloads = True

    def __init__(self, dispatch: Dispatch, backlog: int) -> None:
        self._d = dispatch
        dispatch.backlog = backlog

    def welcome(self, heartbeat_s: float) -> Welcome:
        return {"t": "welcome", "heartbeat_s": heartbeat_s, "scheduling": "push"}

    def ready(self, job: Job) -> None:
        self._d.place(job)

    def capacity(self, pilot: PilotState) -> None:
        self._d.fill(pilot)

    def poll(self, pilot: PilotState) -> None:
        self.capacity(pilot)

    def sweep(self) -> None:
        self._d.fill_all()


class Poll:
    name: Literal["push", "poll"] = "poll"
    resurrects_on_announce = False
    preloads = False

    def __init__(self, dispatch: Dispatch, poll_s: float) -> None:
        self._d = dispatch
        self._poll_s = poll_s

    def welcome(self, heartbeat_s: float) -> Welcome:
        return {
            "t": "welcome", "heartbeat_s": heartbeat_s, "scheduling": "poll",
            "poll_s": self._poll_s,
        }  # fmt: skip

    def ready(self, job: Job) -> None:
        self._d.book.queues.add(job, UNASSIGNED)  # until a pilot asks

    def capacity(self, pilot: PilotState) -> None:
        pass

    def poll(self, pilot: PilotState) -> None:
        self._d.fill(pilot)

    def sweep(self) -> None:
        pass  # jobs wait for a pilot to ask


def scheduling(name: str, dispatch: Dispatch, poll_s: float, backlog: int) -> Scheduling:
    if name == "push":
        return Push(dispatch, backlog)
    if name == "poll":
        return Poll(dispatch, poll_s)
    raise ValueError(f"unknown scheduling {name!r} (push, poll)")
