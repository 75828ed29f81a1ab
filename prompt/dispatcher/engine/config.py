"""What the engine's decisions depend on, frozen once built from the settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    heartbeat_timeout_s: float = 5.0
    """No heartbeat (or no reconnect after a disconnect) for this long: the pilot is lost."""
    stale_after_s: float = 3600.0
    """next-visits older than this (by private_efdStamp) are ignored, as Rubin does."""
    held_ttl_s: float = 3600.0
    """How long an image waits for its next-visit before it is dropped."""
    held_per_group: int = 4096
    """Images held for one group at most (LSSTCam: 205 detectors x 2 snaps)."""
    held_total: int = 50_000
    """Images held for all groups at most; beyond it they are dead-lettered."""
    affinity_wait_s: float = 10.0
    """A ready job whose pilot (the one that preloaded it) is busy waits this long for it
    before it goes to a free pilot without its calibrations, which would load them again."""
    heartbeat_s: float = 1.25
    """How often pilots heartbeat (told in the welcome)."""
    poll_s: float = 2.0
    """Poll scheduling: how often pilots ask for work (told in the welcome)."""
    pilot_row_refresh_s: float = 5.0
    """How often a pilot's row in the pilots table is refreshed from its heartbeats."""
    dispatch_order: str = "feasible"
    """The order ready jobs go out in: ``feasible`` or ``fifo`` (see ``order.py``)."""
    backlog_per_pilot: int = 0
    """Jobs a pilot may hold beyond its slots at most, queued, to start the moment a worker
    frees (no round trip to the dispatcher between jobs); the dispatcher can take them back."""
    backlog_cover_s: float = 0.1
    """Below the cap, a pilot's backlog covers this much of its work (a round trip with
    margin), from the jobs' recent run times: short jobs get a deep backlog, long ones a
    shallow one that keeps the rest free to go where a slot frees first."""
