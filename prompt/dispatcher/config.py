"""Dispatcher tunables, frozen once built from Settings."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DispatcherConfig:
    name: str = "dispatcher"
    """Consumer name under which offsets are stored (one per dispatcher role)."""
    token: str = field(default="", repr=False)
    """The pilots' shared token."""
    operator_token: str = field(default="", repr=False)
    """Bearer token of the operator HTTP endpoints; empty: they answer 403."""
    pilot_tls: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    """The pilot channel's server context; None: plain TCP."""
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
    tai_minus_utc_s: float = 37.0
    drain_timeout_s: float = 30.0
    sweep_interval_s: float = 0.1
    mode: str = "warm"
    """warm: resurrection + preload + push. cold (baseline for comparison): the task is looked
    up and its jobs created when the first image arrives, no preload, pilots poll for work."""
    affinity_wait_s: float = 10.0
    """A ready job whose pilot (the one that preloaded it) is busy waits this long for it
    before it goes to a free pilot without its calibrations, which would load them again."""
    dependency_retry_s: float = 60.0
    """How long an event or a state commit waits for an unreachable database or broker before
    the term ends (the leader steps down; nothing is lost: the event is read again)."""
    start_from: str = "latest"
    """Where to start on partitions with no stored offset: latest or earliest."""
