"""A pilot's settings, built by ``prompt pilot`` from its flags and ``PROMPT_*`` settings."""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PilotConfig:
    dispatcher: str
    token: str = field(repr=False)
    pilot_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    slots: int = 2
    labels: tuple[str, ...] = ()
    heartbeat_s: float = 1.0
    reconnect_min_s: float = 0.05
    reconnect_max_s: float = 5.0
    cache_bytes: int = 2 * 1024**3
    drain_timeout_s: float = 300.0
    """On stop, wait this long at most for running, queued and unacknowledged jobs, then stop
    the workers and exit (see ``prompt.pilot.drain``)."""
    preload_concurrency: int = 8
    worker_nice: int = 5
    worker_lookahead_s: float = 0.02
    """A job may wait in a busy worker's pipe, to start the moment the job before it ends, when
    the jobs before it there are expected to take this long at most (0: never)."""
    poll_s: float | None = None
    """Ask for work this often, whatever the dispatcher's welcome says (by default a pilot
    polls only for a dispatcher that schedules by polling, as often as it says)."""
    started_notice_s: float = 0.02
    """``started`` messages leave this long after the first of a burst (0: each at once); see
    ``prompt.pilot.notices``."""
    warm_imports: tuple[str, ...] = ()
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    tls_server_name: str | None = None
    """Name expected in the dispatcher's certificate (default: the host dialled); for pilots
    that reach the dispatcher by IP address or through a Service name."""
    closed_before_welcome_limit: int = 3
    """That many connections in a row closed before the dispatcher answered: give up."""

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``dispatcher`` is ``HOST:PORT`` or several, comma-separated: a hot standby does not
        listen, so the pilot tries them in turn until the leader answers."""
        out = []
        for item in self.dispatcher.split(","):
            host, _, port = item.strip().rpartition(":")
            out.append((host or "127.0.0.1", int(port)))
        return out
