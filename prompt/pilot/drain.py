"""The bounded drain of a stopping pilot.

On ``stop`` a pilot takes no new job and waits for its running, queued and unacknowledged jobs.
It waits ``drain_timeout_s`` at most, from the moment ``stop`` is set: a dispatcher gone for
good, or a job hung until its long timeout, must not keep it up until Kubernetes kills it
without a word. What it gives up is safe: the dispatcher declares a pilot that does not come
back lost, after its heartbeat timeout, and runs that pilot's jobs again (a ``pilot_lost``
attempt is retried while the job has attempts left).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

IDS_SHOWN = 20
"""Job ids listed per kind in the warning about an abandoned drain (the counts are whole)."""


async def start_deadline_on_stop(
    stop: asyncio.Event, timeout_s: float, deadline: asyncio.Timeout
) -> None:
    """Once ``stop`` is set, ``deadline`` (the drain's ``asyncio.timeout``) expires
    ``timeout_s`` later."""
    await stop.wait()
    deadline.reschedule(asyncio.get_running_loop().time() + timeout_s)


def abandoned(
    running: Iterable[int], queued: Iterable[int], unacked: Iterable[int]
) -> dict[str, Any]:
    """Log fields for the jobs a timed-out drain leaves: how many of each kind, and the first
    ``IDS_SHOWN`` ids of each (running: started or loading calibrations; queued: not started;
    unacked: finished, the result not acknowledged)."""
    fields: dict[str, Any] = {}
    for name, ids in (("running", running), ("queued", queued), ("unacked", unacked)):
        listed = sorted(ids)
        fields[name] = len(listed)
        fields[f"{name}_jobs"] = listed[:IDS_SHOWN]
    return fields
