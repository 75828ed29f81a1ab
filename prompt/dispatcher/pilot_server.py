"""Accepts pilot connections: authenticate, register, then route their messages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any

import structlog

from prompt.bounds import clean_text, has_control
from prompt.channel import protocol as p
from prompt.channel.protocol import Channel, ProtocolError
from prompt.channel.tls import is_loopback
from prompt.credentials import token_matches
from prompt.dispatcher.runtime import Runtime

log = structlog.get_logger(__name__)


ID_LIMIT = 128
CACHE_LIMIT = 100_000
"""Cache entries a pilot may announce (the cache summary is a list of keys)."""
_PILOT_MESSAGES = frozenset({p.STARTED, p.FINISHED, p.HEARTBEAT, p.PRELOADED, p.POLL, p.WITHDRAWN})


class PilotServer:
    """Accepts pilot connections: authenticates, registers them with the engine (through the
    runtime, which keeps their channels), and hands it their messages."""

    def __init__(self, runtime: Runtime, token: str) -> None:
        self._rt = runtime
        self._token = token.encode()
        self._server: asyncio.Server | None = None
        self._connections: set[Channel] = set()

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, ssl=ssl_context)
        bound: int = self._server.sockets[0].getsockname()[1]
        tls = "off" if ssl_context is None else "on"
        if ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED:
            tls = "mutual"
        log.info("pilot channel listening", host=host, port=bound, tls=tls)
        if ssl_context is None and not is_loopback(host):
            log.warning(
                "pilot channel is plain TCP on a non-loopback address: the token and jobs cross "
                "the network in clear; set PROMPT_PILOT_TLS_CERT and PROMPT_PILOT_TLS_KEY",
                host=host,
            )
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(channel.close() for channel in list(self._connections)))
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def _refuse(self, channel: Channel, reason: str) -> None:
        log.warning("pilot refused", peer=channel.peer, reason=reason)
        with contextlib.suppress(ConnectionError):
            channel.send({"t": p.REFUSED, "reason": reason})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = Channel(reader, writer)
        self._connections.add(channel)
        pilot_id: str | None = None
        rt = self._rt
        try:
            try:
                hello = await asyncio.wait_for(channel.receive(), 10)
            except ProtocolError as exc:
                log.warning("pilot connection rejected", peer=channel.peer, error=str(exc))
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            pilot_id = self._register(channel, hello)
            if pilot_id is None:
                return
            while True:
                msg = await channel.receive()
                if msg["t"] not in _PILOT_MESSAGES:
                    log.warning("unknown pilot message", pilot=pilot_id, type=msg["t"][:40])
                    continue
                try:
                    rt.apply(rt.engine.pilot_message(pilot_id, msg))
                except (KeyError, TypeError, ValueError) as exc:
                    # Our pilots never send these; a foreign or broken one is told off, once
                    # per message, and the connection stays.
                    log.warning("malformed pilot message", pilot=pilot_id, type=msg["t"],
                                error=repr(exc)[:200])  # fmt: skip
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError) as exc:
            if pilot_id is not None:
                log.info("pilot connection closed", pilot=pilot_id, error=repr(exc))
        finally:
            self._connections.discard(channel)
            if pilot_id is not None and rt.channels.get(pilot_id) is channel:
                del rt.channels[pilot_id]
                rt.apply(rt.engine.disconnected(pilot_id))
            await channel.close()

    def _register(self, channel: Channel, msg: p.Message) -> str | None:
        """The pilot's id once registered; None if refused (and told why)."""
        if msg.get("t") != p.REGISTER:
            self._refuse(channel, "the first message must be register")
            return None
        if not token_matches(str(msg.get("token", "")), self._token):
            self._refuse(channel, "bad token")
            return None
        try:
            details = _registration(msg)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            self._refuse(channel, f"malformed register: {repr(exc)[:200]}")
            return None
        pilot_id: str = details.pop("pilot_id")
        rt = self._rt
        old = rt.channels.get(pilot_id)
        if old is not None and old is not channel:
            log.info("pilot reconnected; old connection dropped", pilot=pilot_id)
            old.abort()
        rt.channels[pilot_id] = channel
        channel.send(rt.engine.welcome())
        log.info("pilot registered", pilot=pilot_id, slots=details["slots"], peer=channel.peer,
                 claimed=len(details["claimed"]))  # fmt: skip
        rt.apply(rt.engine.registered(pilot_id, **details))
        return pilot_id


def _registration(msg: p.Message) -> dict[str, Any]:
    """What a register message says, checked: it comes from the network."""
    pilot_id = str(msg["pilot"])
    slots = int(msg["slots"])
    if not pilot_id or len(pilot_id) > ID_LIMIT or has_control(pilot_id):
        raise ValueError(f"a pilot id is 1-{ID_LIMIT} printable characters")
    if not 1 <= slots <= 10_000:
        raise ValueError("slots must be between 1 and 10000")
    cache = msg.get("cache") or []
    if len(cache) > CACHE_LIMIT:
        raise ValueError(f"a cache summary of more than {CACHE_LIMIT} entries")
    return {
        "pilot_id": pilot_id,
        "slots": slots,
        "labels": frozenset(clean_text(str(x))[:ID_LIMIT] for x in msg.get("labels") or []),
        "host": clean_text(str(msg.get("host", "")))[:ID_LIMIT],
        "cache": {(str(c[0]), int(c[1]), str(c[2])) for c in cache},
        "draining": bool(msg.get("draining")),
        "claimed": [(int(j), int(a)) for j, a in msg.get("running") or []],
    }
