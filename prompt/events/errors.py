"""Typed event errors. Each carries a short ``reason`` (a metrics label) and where it happened.

Like aiokafka's errors, each class says whether retrying can help (``retriable``): a malformed
message never gets better and goes to the dead-letter topic; an unreachable registry may.
"""

from __future__ import annotations


class EventError(Exception):
    """Base class for everything that can go wrong with an event."""

    retriable = False
    reason = "invalid"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.topic = topic
        self.partition = partition
        self.offset = offset

    def at(self, *, topic: str | None, partition: int | None, offset: int | None) -> EventError:
        """Attach the Kafka position (the codec does not know it; the consumer does)."""
        self.topic, self.partition, self.offset = topic, partition, offset
        return self

    def where(self) -> str:
        parts = []
        if self.kind:
            parts.append(self.kind)
        if self.topic is not None:
            pos = self.topic
            if self.partition is not None:
                pos += f"[{self.partition}]"
            if self.offset is not None:
                pos += f"@{self.offset}"
            parts.append(pos)
        return " ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


class DecodeError(EventError):
    """A message value could not be decoded. Never retriable: dead-letter it."""

    reason = "undecodable"


class FramingError(DecodeError):
    """Not Confluent wire format: empty, too short, or a magic byte other than 0."""

    reason = "framing"


class UnknownSchemaError(DecodeError):
    """The schema id in the frame is known neither to the bundled schemas nor the registry."""

    reason = "unknown_schema"


class PayloadError(DecodeError):
    """The Avro body does not match its writer schema (truncated, trailing bytes, bad values)."""

    reason = "payload"


class NotificationError(DecodeError):
    """A bucket notification is not JSON, lacks the S3 structure, or its key is not a raw."""

    reason = "notification"


class InvalidEventError(EventError):
    """Decoded fine but its content is unusable (e.g. a next-visit with no groupId)."""

    reason = "invalid"


class RegistryUnavailableError(EventError):
    """The schema registry did not answer. Retriable: the message itself may be fine."""

    retriable = True
    reason = "registry_unavailable"


class RawUnavailableError(EventError):
    """A notified raw's header could not be read (its store unreachable, or refusing).
    Retriable: the notification itself may be fine."""

    retriable = True
    reason = "raw_unavailable"


class EncodeError(EventError):
    """A record does not fit its schema."""

    reason = "encode"
