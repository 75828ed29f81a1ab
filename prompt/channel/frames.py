"""The pilot channel's frames without any I/O: message types, the frame limit, encoding.

A frame is a 4-byte big-endian length, then one JSON object with a string ``t`` (its type).
Both the dispatcher's engine (which builds frames but never sends them) and the connection
code use this module; ``messages.py`` types each message.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import orjson

MAX_FRAME: Final = 8 * 1024 * 1024
LEN = struct.Struct(">I")

# pilot -> dispatcher
REGISTER: Final = "register"
HEARTBEAT: Final = "heartbeat"
PRELOADED: Final = "preloaded"
STARTED: Final = "started"
FINISHED: Final = "finished"
POLL: Final = "poll"  # pilots of a dispatcher that schedules by polling
WITHDRAWN: Final = "withdrawn"  # the answer to withdraw
# dispatcher -> pilot
WELCOME: Final = "welcome"
REFUSED: Final = "refused"
PRELOAD: Final = "preload"
JOB: Final = "job"
ACK: Final = "ack"
DRAIN: Final = "drain"
WITHDRAW: Final = "withdraw"  # give back a queued job not started

Message = dict[str, Any]
"""A decoded frame as received; ``messages.py`` has the typed shape of each kind."""


class FrameTooLargeError(ValueError):
    """A message would not fit in one frame. Raised to the sender, which must shrink or fail
    what it sends: the peer would refuse the frame and the connection with it."""

    def __init__(self, kind: object, size: int) -> None:
        super().__init__(
            f"a {kind!s} message of {size} bytes exceeds the pilot channel's {MAX_FRAME}-byte"
            " frame limit"
        )
        self.size = size


def encode(msg: Any) -> bytes:
    """One message as a frame; FrameTooLargeError if it would not fit."""
    body = orjson.dumps(msg)
    if len(body) > MAX_FRAME:
        raise FrameTooLargeError(msg.get("t"), len(body))
    return LEN.pack(len(body)) + body
