"""S3/Ceph bucket notifications (JSON) on the image topic, and what a raw's key tells."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from prompt.events.errors import NotificationError
from prompt.instruments import detector_number

_RAW_KEY = re.compile(
    r"^(?P<instrument>[A-Za-z][A-Za-z0-9]*)/(?P<day_obs>\d{8})/(?P<obs_id>[A-Z]{2}_[A-Z]_\d{8}_\d{6})/"
    r"(?P=obs_id)_(?P<det>R\d\d_S(?:\d\d|[GW]\d)|\d{1,3})\.(?:fits|fz|fits\.fz)$"
)


@dataclass(frozen=True, slots=True)
class RawObject:
    """A raw that landed in the bucket; group and snap still to be read from its metadata."""

    bucket: str
    key: str
    instrument: str
    day_obs: int
    obs_id: str
    detector: int
    event_time: float
    size: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_raw_key(key: str) -> tuple[str, int, str, int]:
    """(instrument, day_obs, obs_id, detector) from a raw's object key."""
    m = _RAW_KEY.match(key)
    if m is None:
        raise NotificationError(
            f"object key {key!r} is not a raw "
            "(expected {instrument}/{day_obs}/{obs_id}/{obs_id}_{RNN_SNN|detector}.fits)"
        )
    instrument, det = m["instrument"], m["det"]
    detector = int(det) if det.isdigit() else detector_number(instrument, det)
    if detector is None:
        raise NotificationError(f"object key {key!r}: {instrument} has no detector {det}")
    return instrument, int(m["day_obs"]), m["obs_id"], detector


def _event_time(record: dict[str, Any]) -> float:
    stamp = record.get("eventTime")
    if not isinstance(stamp, str):
        return 0.0
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError as exc:
        raise NotificationError(f"eventTime {stamp!r} is not an ISO timestamp") from exc


def parse_notification(value: bytes | str) -> list[RawObject]:
    """Raws created, from one bucket-notification message.

    Records for other events (deletes) and non-raw keys (sidecars) are skipped; a message that
    is not a bucket notification at all raises NotificationError.
    """
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise NotificationError(
            f"neither Confluent-framed Avro (magic byte 0) nor bucket-notification JSON: "
            f"not JSON ({exc})"
        ) from exc
    records = doc.get("Records") if isinstance(doc, dict) else None
    if not isinstance(records, list):
        raise NotificationError("bucket notification has no 'Records' list")
    raws: list[RawObject] = []
    for i, rec in enumerate(records):
        try:
            if not str(rec.get("eventName", "")).startswith(("ObjectCreated", "s3:ObjectCreated")):
                continue
            s3 = rec["s3"]
            bucket = str(s3["bucket"]["name"])
            key = str(s3["object"]["key"])
            size = int(s3["object"].get("size") or 0)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise NotificationError(f"Records[{i}] lacks s3.bucket.name / s3.object.key") from exc
        if key.endswith(".json"):
            continue  # a sidecar: the raw's own notification carries the image
        instrument, day_obs, oid, detector = parse_raw_key(key)
        raws.append(
            RawObject(bucket, key, instrument, day_obs, oid, detector, _event_time(rec), size)
        )
    return raws


def make_notification(bucket: str, key: str, *, event_time: float, size: int = 0) -> bytes:
    """A minimal S3 event-structure 2.x notification, as Ceph RGW publishes it."""
    stamp = datetime.fromtimestamp(event_time).astimezone().isoformat(timespec="milliseconds")
    return orjson.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.2",
                    "eventSource": "ceph:s3",
                    "eventTime": stamp,
                    "eventName": "ObjectCreated:Put",
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "configurationId": "prompt",
                        "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                        "object": {"key": key, "size": size},
                    },
                }
            ]
        }
    )
