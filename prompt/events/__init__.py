"""Event contracts and their codecs: next-visit, image-arrival, completion."""

from prompt.events.codec import AvroCodec, Record
from prompt.events.consumed import decode_consumed
from prompt.events.errors import (
    DecodeError,
    EncodeError,
    EventError,
    FramingError,
    InvalidEventError,
    NotificationError,
    PayloadError,
    RegistryUnavailableError,
    UnknownSchemaError,
)
from prompt.events.image_reader import ImageReader
from prompt.events.image_topic import decode_image_message
from prompt.events.models import ImageArrival, NextVisit
from prompt.events.notification import RawObject, make_notification, parse_notification
from prompt.events.registry import (
    HttpSchemaRegistry,
    LocalSchemaRegistry,
    SchemaRegistry,
    make_registry,
)
from prompt.events.schemas import EventKind, Schema, bundled, parse_schema

__all__ = [
    "AvroCodec",
    "DecodeError",
    "EncodeError",
    "EventError",
    "EventKind",
    "FramingError",
    "HttpSchemaRegistry",
    "ImageArrival",
    "ImageReader",
    "InvalidEventError",
    "LocalSchemaRegistry",
    "NextVisit",
    "NotificationError",
    "PayloadError",
    "RawObject",
    "Record",
    "RegistryUnavailableError",
    "Schema",
    "SchemaRegistry",
    "UnknownSchemaError",
    "bundled",
    "decode_consumed",
    "decode_image_message",
    "make_notification",
    "make_registry",
    "parse_notification",
    "parse_schema",
]
