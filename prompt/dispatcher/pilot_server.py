"""Accepts pilot connections: authenticate, register, then route their messages."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time

import structlog

from prompt.channel import protocol as p
from prompt.channel.protocol import Channel, ProtocolError
from prompt.channel.tls import is_loopback
from prompt.credentials import token_matches
from prompt.dispatcher.core import Dispatcher
from prompt.dispatcher.pilots import PilotSession

log = structlog.get_logger(__name__)


class PilotServer:
    def __init__(self, dispatcher: Dispatcher, token: str, heartbeat_s: float) -> None:
        self._d = dispatcher
        self._token = token.encode()
        self._heartbeat_s = heartbeat_s
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
        session: PilotSession | None = None
        try:
            try:
                hello = await asyncio.wait_for(channel.receive(), 10)
            except ProtocolError as exc:
                log.warning("pilot connection rejected", peer=channel.peer, error=str(exc))
                return
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            session = self._register(channel, hello)
            if session is None:
                return
            d = self._d
            while True:
                msg = await channel.receive()
                session.last_seen = time.monotonic()
                kind = msg["t"]
                if kind == p.STARTED:
                    d.on_started(session, msg)
                elif kind == p.FINISHED:
                    d.on_finished(session, msg)
                elif kind == p.HEARTBEAT:
                    d.on_heartbeat(session, msg)
                elif kind == p.PRELOADED:
                    d.on_preloaded(session, msg)
                elif kind == p.POLL:
                    d.on_poll(session, msg)
                else:
                    log.warning("unknown pilot message", pilot=session.id, type=kind)
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError) as exc:
            if session is not None:
                level = log.info if session.draining else log.warning
                level("pilot connection closed", pilot=session.id, error=repr(exc))
        finally:
            self._connections.discard(channel)
            if session is not None:
                self._d.pilot_connection_closed(session, channel)
            await channel.close()

    def _register(self, channel: Channel, msg: p.Message) -> PilotSession | None:
        if msg.get("t") != p.REGISTER:
            self._refuse(channel, "the first message must be register")
            return None
        if not token_matches(str(msg.get("token", "")), self._token):
            self._refuse(channel, "bad token")
            return None
        try:
            pilot_id = str(msg["pilot"])
            slots = int(msg["slots"])
            claimed = [(int(j), int(a)) for j, a in msg.get("running", [])]
            cache = {(c[0], int(c[1]), c[2]) for c in msg.get("cache", [])}
        except (KeyError, TypeError, ValueError) as exc:
            self._refuse(channel, f"malformed register: {exc!r}")
            return None
        if slots < 1 or not pilot_id:
            self._refuse(channel, "register needs a pilot id and slots >= 1")
            return None
        pilots = self._d.pilots.pilots
        session = pilots.get(pilot_id)
        if session is None:
            session = PilotSession(pilot_id, slots, frozenset(), "", None)
            pilots[pilot_id] = session
        elif session.channel is not None and session.channel is not channel:
            log.info("pilot reconnected; old connection dropped", pilot=pilot_id)
            session.channel.abort()
        session.slots = slots
        session.labels = frozenset(str(x) for x in msg.get("labels", []))
        session.host = str(msg.get("host", ""))
        session.channel = channel
        session.draining = bool(msg.get("draining"))
        session.cache = cache
        session.last_seen = time.monotonic()
        session.disconnected_at = None
        channel.send({"t": p.WELCOME, "heartbeat_s": self._heartbeat_s})
        log.info("pilot registered", pilot=pilot_id, slots=slots, peer=channel.peer,
                 claimed=len(claimed))  # fmt: skip
        self._d.pilot_registered(session, claimed)
        return session
