"""CPU by process during bursts, for ``prompt bench dispatch --cpu``.

Nanoseconds on a CPU from ``/proc/<pid>/task/<tid>/schedstat`` (Linux; no root, no tracing),
summed per role: the dispatcher, the pilots, their workers (everything a pilot forked), the
stack's servers, and the bench itself (its process time, leaving out this reading). Read just
before a visit's images are sent and a fixed window later, so each figure is what that role
spent on one burst, whoever ran when. On a machine whose cores every process shares, the burst
cannot be shorter than the sum over the cores: this says where that sum goes.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from prompt.stats import summarize

PROC = Path("/proc")


def available() -> bool:
    return (PROC / "self" / "schedstat").exists()


class CpuSampler:
    def __init__(
        self,
        roots: dict[str, list[int]],
        with_children: dict[str, str],
        window_s: float,
        own_role: str = "bench",
    ) -> None:
        """``roots``: role -> its processes; ``with_children``: role -> the role their
        descendants count for (the same role, or another: a pilot's workers); ``window_s``:
        how long from each ``start`` a sample covers; ``own_role``: the name this process's
        own CPU is reported under."""
        self._roots = roots
        self._children = with_children
        self._own = own_role
        self.window_s = window_s
        self.samples: list[dict[str, float]] = []
        """CPU ms per role, one per window."""

    def start(self) -> tuple[float, dict[str, int]]:
        """Just before a burst: when its window starts, and the CPU so far (this process's
        own read last, after reading /proc)."""
        before = self._others()
        before[self._own] = time.process_time_ns()
        return time.monotonic(), before

    async def end(self, started: tuple[float, dict[str, int]]) -> None:
        """Once the burst is out: wait for its window to close, then take the sample (this
        process's own CPU read first, before reading /proc)."""
        at, before = started
        await asyncio.sleep(at + self.window_s - time.monotonic())
        own = time.process_time_ns()
        self.samples.append(self.delta_ms(before, {**self._others(), self._own: own}))

    def summary(self) -> dict[str, object] | None:
        """The figures of the samples taken (None: none was)."""
        return summary(self.samples, self.window_s) if self.samples else None

    def _others(self) -> dict[str, int]:
        """CPU nanoseconds so far, per role (processes that ended are no longer counted:
        a snapshot pair spans one burst, in which none of these is meant to end)."""
        kids = _children_by_parent()
        out: dict[str, int] = {}
        for role, pids in self._roots.items():
            out[role] = out.get(role, 0) + sum(_cpu_ns(pid) for pid in pids)
            under = self._children.get(role)
            if under is not None:
                found = [c for pid in pids for c in _descendants(pid, kids)]
                out[under] = out.get(under, 0) + sum(_cpu_ns(pid) for pid in found)
        return out

    @staticmethod
    def delta_ms(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
        return {role: (after.get(role, 0) - ns) / 1e6 for role, ns in before.items()}


def summary(samples: list[dict[str, float]], window_s: float) -> dict[str, object]:
    roles = sorted({role for s in samples for role in s})
    per_role = {role: summarize([s.get(role, 0.0) for s in samples], 2) for role in roles}
    totals = [sum(s.values()) for s in samples]
    return {
        "window_ms": round(window_s * 1e3, 1),
        "bursts": len(samples),
        "cores": os.cpu_count(),
        "per_role_ms": per_role,
        "total_ms": summarize(totals, 2),
    }


def cpu_line(cpu: dict[str, object], what: str = "each burst's images") -> str:
    per_role = cpu["per_role_ms"]
    assert isinstance(per_role, dict)
    parts = "  ".join(f"{role} {s['p50']}" for role, s in per_role.items())
    total = cpu["total_ms"]
    assert isinstance(total, dict)
    return (
        f"CPU in the {cpu['window_ms']} ms from {what} (ms, p50 of {cpu['bursts']}): "
        f"{parts}; all {total['p50']} on {cpu['cores']} cores"
    )


def _cpu_ns(pid: int) -> int:
    total = 0
    try:
        for task in (PROC / str(pid) / "task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended
    except OSError:
        return 0  # the process ended
    return total


def _children_by_parent() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _descendants(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], list(kids.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(kids.get(child, []))
    return out
