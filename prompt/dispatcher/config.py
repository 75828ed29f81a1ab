"""Dispatcher tunables, frozen once built from Settings."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from prompt.dispatcher.engine.config import EngineConfig


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
    engine: EngineConfig = field(default_factory=EngineConfig)
    """What the engine's decisions depend on."""
    scheduling: str = "push"
    """push (resurrection, preload, push) or poll (the cold baseline: visits built at their
    first image, no preload, pilots ask for work)."""
    drain_timeout_s: float = 30.0
    sweep_interval_s: float = 0.1
    dependency_retry_s: float = 60.0
    """How long an event or a state commit waits for an unreachable database or broker before
    the term ends (the leader steps down; nothing is lost: the event is read again)."""
    start_from: str = "latest"
    """Where to start on partitions with no stored offset: latest or earliest."""
