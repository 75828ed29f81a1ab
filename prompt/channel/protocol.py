"""Dispatcher <-> pilot wire protocol: 4-byte big-endian length, then one JSON object.

One long-lived TCP (optionally TLS) connection per pilot. The first frame a pilot sends is
``register`` carrying the shared token; nothing else is accepted before it.

pilot -> dispatcher: register, heartbeat, preloaded, started, finished, poll, withdrawn
dispatcher -> pilot: welcome, refused, preload, job, ack, drain, withdraw
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import orjson

from prompt.channel.frames import (
    ACK,
    DRAIN,
    FINISHED,
    HEARTBEAT,
    JOB,
    LEN,
    MAX_FRAME,
    POLL,
    PRELOAD,
    PRELOADED,
    REFUSED,
    REGISTER,
    STARTED,
    WELCOME,
    WITHDRAW,
    WITHDRAWN,
    FrameTooLargeError,
    Message,
    encode,
)

__all__ = [
    "ACK", "CLOSE_WAIT_S", "DRAIN", "FINISHED", "HEARTBEAT", "JOB", "MAX_FRAME", "POLL",
    "PRELOAD", "PRELOADED", "REFUSED", "REGISTER", "STARTED", "WELCOME", "WITHDRAW",
    "WITHDRAWN", "Channel",
    "FrameTooLargeError", "Message", "ProtocolError", "encode", "read_message",
]  # fmt: skip

CLOSE_WAIT_S: Final = 2.0
"""How long ``Channel.close`` waits for the peer to finish the close (over TLS: its
close_notify). A hung or unreachable peer must not hold a shutdown for the SSL layer's 30 s."""
_TLS_RECORD_TYPES = frozenset({0x15, 0x16})  # alert, handshake; then version major 3


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection is closed."""


async def read_message(reader: asyncio.StreamReader) -> Message:
    """Next message; raises asyncio.IncompleteReadError on a clean EOF, ProtocolError if bad."""
    header = await reader.readexactly(LEN.size)
    (size,) = LEN.unpack(header)
    if size > MAX_FRAME:
        if header[0] in _TLS_RECORD_TYPES and header[1] == 3:
            raise ProtocolError("the peer speaks TLS and this side plain TCP: configure both alike")
        raise ProtocolError(
            f"the peer sent a frame of {size} bytes, over the {MAX_FRAME}-byte limit (peers"
            " never send one: the stream is corrupt or not this protocol)"
        )
    body = await reader.readexactly(size)
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ProtocolError("frame is not an object with a string 't' (message type)")
    return msg


class Channel:
    """A framed connection with corked writes.

    ``send`` never blocks and never awaits: frames queued during one event-loop step leave in a
    single write at the end of that step (or at an earlier ``flush``). A burst of jobs for one
    pilot is a few syscalls and wake-ups of the pilot, instead of one per job. ``drain`` is
    awaited off the hot path.
    """

    __slots__ = ("_flush_scheduled", "_loop", "_out", "_reader", "_writer", "peer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def send(self, msg: Message) -> None:
        self.send_frame(encode(msg))

    def send_frame(self, frame: bytes) -> None:
        """Queue an encoded frame (see ``frames.encode``) for the end of this loop step."""
        if self._writer.is_closing():
            raise ConnectionResetError("channel closed")
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and not self._writer.is_closing():
            self._writer.write(b"".join(self._out))
        self._out.clear()

    async def drain(self) -> None:
        self.flush()
        await self._writer.drain()

    async def receive(self) -> Message:
        return await read_message(self._reader)

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()

    def abort(self) -> None:
        """Close without waiting (e.g. a connection superseded by a reconnect)."""
        self._out.clear()
        if not self._writer.is_closing():
            self._writer.close()

    async def close(self) -> None:
        self.flush()
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), CLOSE_WAIT_S)
