"""What the live operator page shows: a snapshot of the dispatcher, cheap to build once a second."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from prompt.dispatcher.core import Dispatcher
from prompt.dispatcher.model import TERMINAL


def operator_snapshot(d: Dispatcher) -> dict[str, Any]:
    now = time.time()
    live = []
    for visit in sorted(d.visits.values(), key=lambda v: v.received_at, reverse=True):
        jobs = list(visit.jobs.values())
        deadlines = [j.deadline for j in jobs if j.deadline is not None and not j.terminal]
        arrived = [j.image_arrived for j in jobs if j.image_arrived is not None]
        live.append(
            {
                "group": visit.nv.group_id,
                "instrument": visit.nv.instrument,
                "task": visit.task.name,
                "filter": visit.nv.filters,
                "status": "in flight",
                "counts": dict(Counter(j.state.value for j in jobs)),
                "open": sum(1 for j in jobs if j.state not in TERMINAL),
                "detectors": {j.detector: j.state.value for j in jobs},
                "budget_s": (min(deadlines) - now) if deadlines else None,
                "first_image_s_ago": (now - min(arrived)) if arrived else None,
            }
        )
    pilots = [
        {
            "id": p.id,
            "host": p.host,
            "connected": p.connected,
            "draining": p.draining,
            "slots": p.slots,
            "running": len(p.running),
            "cache_entries": len(p.cache),
            "cache_stats": p.cache_stats,
        }
        for p in sorted(d.pilots.pilots.values(), key=lambda p: p.id)
    ]
    return {
        "now": now,
        "visits": live + list(d.recent),
        "pilots": pilots,
        "problems": list(reversed(d.problems))[:30],
        "ready_queue": len(d._ready),
        "held_images": len(d.held),
    }
