"""The order ready jobs are handed out in, as an object chosen once at start-up
(``PROMPT_DISPATCH_ORDER``).

``Feasible`` (the default) is earliest deadline first among the jobs that can still make their
deadline, then the hopeless ones (still run, and reported late): a job is hopeless when, started
when it would start, its task's recent run time takes it past its deadline. Under overload plain
earliest-deadline-first spends the capacity on jobs already lost and makes the next ones late
too; setting the hopeless aside keeps the capacity for the jobs that can still be saved.
``Fifo`` is first come first served by image arrival: the baseline it is compared with.
"""

from __future__ import annotations

from typing import Literal, Protocol

from prompt.dispatcher.engine.model import Job
from prompt.stats import MovingMeans

OrderName = Literal["feasible", "fifo"]


class Runtimes:
    """Each task's recent run time on a pilot (an exponentially weighted mean of the last
    successful runs; 0 until one finished)."""

    def __init__(self, weight: float = 0.2) -> None:
        self._means = MovingMeans[int | None](weight)
        """By task id; None: over all tasks."""

    def observe(self, job: Job) -> None:
        if job.started is None or job.finished is None:
            return
        seconds = max(0.0, job.finished - job.started)
        self._means.observe(job.visit.task.id, seconds)
        self._means.observe(None, seconds)

    def estimate(self, job: Job) -> float:
        return self._means.get(job.visit.task.id) or 0.0

    def typical(self) -> float | None:
        """Over all tasks (None: nothing has run yet)."""
        return self._means.get(None)


class Order(Protocol):
    name: OrderName
    runtimes: Runtimes

    def key(self, job: Job) -> float:
        """Smaller first (also sent to the pilot, which starts its queued jobs by it)."""

    def hopeless(self, job: Job, start_at: float) -> bool:
        """Started at ``start_at``, the job would finish past its deadline."""


class Feasible:
    name: OrderName = "feasible"

    def __init__(self, runtimes: Runtimes) -> None:
        self.runtimes = runtimes

    def key(self, job: Job) -> float:
        assert job.deadline is not None
        return job.deadline

    def hopeless(self, job: Job, start_at: float) -> bool:
        assert job.deadline is not None
        return start_at + self.runtimes.estimate(job) > job.deadline


class Fifo:
    name: OrderName = "fifo"

    def __init__(self, runtimes: Runtimes) -> None:
        self.runtimes = runtimes

    def key(self, job: Job) -> float:
        return job.image_arrived or job.image_consumed or 0.0

    def hopeless(self, job: Job, start_at: float) -> bool:
        return False


def order(name: str) -> Order:
    runtimes = Runtimes()
    if name == "feasible":
        return Feasible(runtimes)
    if name == "fifo":
        return Fifo(runtimes)
    raise ValueError(f"unknown dispatch order {name!r} (feasible, fifo)")
