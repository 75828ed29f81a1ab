"""Dialling the dispatcher, and how a connection attempt can fail beyond a plain retry."""

from __future__ import annotations

import asyncio
import ssl

from prompt.channel.tls import untrusted_dispatcher
from prompt.pilot.config import PilotConfig


class PilotRefusedError(RuntimeError):
    """The dispatcher refused this pilot (bad token, malformed register, TLS it does not accept),
    or the pilot does not trust the dispatcher's certificate: retrying will not help, the pilot
    stops (under Kubernetes the restart policy then backs off and re-reads mounted files)."""


class ClosedBeforeWelcomeError(ConnectionError):
    """Connected, but the dispatcher hung up before answering register (during the TLS
    handshake or right after it): a TLS mismatch, unless the dispatcher was just going down."""


async def connect(
    config: PilotConfig, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``host:port``, TLS if ``config`` has a context."""
    ctx = config.ssl_context
    name = config.tls_server_name if ctx is not None else None
    try:
        return await asyncio.open_connection(host, port, ssl=ctx, server_hostname=name)
    except ssl.SSLCertVerificationError as exc:
        checked = name or host
        raise PilotRefusedError(untrusted_dispatcher(exc, f"{host}:{port}", checked)) from exc
    except (ssl.SSLError, ConnectionResetError) as exc:  # TCP was up: the handshake failed
        raise ClosedBeforeWelcomeError() from exc
