"""The image topic carries two forms: compact Avro (framed) and bucket-notification JSON."""

from __future__ import annotations

from prompt.events.codec import AvroCodec
from prompt.events.errors import DecodeError, FramingError
from prompt.events.models import ImageArrival
from prompt.events.notification import RawObject, parse_notification
from prompt.events.schemas import EventKind
from prompt.events.wire import MAGIC


async def decode_image_message(
    codec: AvroCodec, value: bytes | None
) -> list[ImageArrival | RawObject]:
    """Images announced by one message of the image topic.

    Avro gives a complete ImageArrival; JSON gives RawObjects whose group/snap come from the
    raw's metadata (see RawMetadataResolver).
    """
    if not value:
        raise FramingError("empty message value", kind=str(EventKind.IMAGE_ARRIVAL))
    try:
        if value[0] == MAGIC:
            return [ImageArrival.from_record(await codec.decode(value))]
        return list(parse_notification(value))
    except DecodeError as exc:
        exc.kind = str(EventKind.IMAGE_ARRIVAL)
        raise
