"""Each task's recent run time on this pilot's workers, to know which jobs are short enough to
wait in a busy worker's pipe (see ``WorkerPool.behind``)."""

from __future__ import annotations

from typing import Any

from prompt.stats import MovingMeans


class RunTimes:
    """An exponentially weighted mean of each task's successful runs (None until one ran)."""

    def __init__(self, weight: float = 0.2) -> None:
        self._means = MovingMeans[str](weight)

    @staticmethod
    def task(msg: dict[str, Any]) -> str:
        fields = msg.get("fields") or {}
        return str(fields.get("task") or (msg.get("payload") or {}).get("kind"))

    def observe(self, msg: dict[str, Any], result: dict[str, Any]) -> None:
        started, finished = result.get("started"), result.get("finished")
        if not (result.get("ok") and isinstance(started, float) and isinstance(finished, float)):
            return
        self._means.observe(self.task(msg), max(0.0, finished - started))

    def estimate(self, msg: dict[str, Any]) -> float | None:
        return self._means.get(self.task(msg))
