"""Bucket notifications on the image topic, raw keys and raw metadata."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from prompt.events import (
    AvroCodec,
    EventKind,
    ImageArrival,
    LocalSchemaRegistry,
    NotificationError,
    RawObject,
    decode_image_message,
    make_notification,
    parse_notification,
)
from prompt.events.notification import parse_raw_key
from prompt.events.raw_metadata import RawMetadataResolver, read_fits_header
from prompt.instruments import detector_name, raw_key

KEY = "LSSTCam/20250501/MC_O_20250501_000042/MC_O_20250501_000042_R22_S11.fits"


@pytest.mark.parametrize(
    ("name", "number"),
    [("R01_S00", 0), ("R22_S11", 94), ("R43_S22", 188), ("R00_SG0", 189), ("R44_SW1", 204)],
)
def test_lsstcam_detector_numbers(name: str, number: int) -> None:
    key = f"LSSTCam/20250501/MC_O_20250501_000001/MC_O_20250501_000001_{name}.fits"
    assert parse_raw_key(key)[3] == number
    assert detector_name("LSSTCam", number) == name


def test_raw_key_round_trip() -> None:
    assert raw_key("LSSTCam", 20250501, 42, 94) == KEY
    assert parse_raw_key(KEY) == ("LSSTCam", 20250501, "MC_O_20250501_000042", 94)


def test_notification_parses_to_raw_object() -> None:
    raws = parse_notification(make_notification("rubin-summit", KEY, event_time=1746142431.5))
    assert raws == [
        RawObject(
            "rubin-summit", KEY, "LSSTCam", 20250501, "MC_O_20250501_000042", 94, 1746142431.5, 0
        )
    ]
    assert raws[0].uri == f"s3://rubin-summit/{KEY}"


def test_notification_skips_deletes_and_sidecars() -> None:
    doc = orjson.loads(make_notification("b", KEY, event_time=0))
    delete = {**doc["Records"][0], "eventName": "ObjectRemoved:Delete"}
    sidecar = orjson.loads(make_notification("b", KEY.replace(".fits", ".json"), event_time=0))
    doc["Records"] += [delete, sidecar["Records"][0]]
    assert len(parse_notification(orjson.dumps(doc))) == 1


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"{not json", "not JSON"),
        (b'{"foo": 1}', "Records"),
        (b'{"Records": [{"eventName": "ObjectCreated:Put"}]}', "s3.bucket.name"),
        (
            orjson.dumps(
                {
                    "Records": [
                        {
                            "eventName": "ObjectCreated:Put",
                            "s3": {"bucket": {"name": "b"}, "object": {"key": "x/y.fits"}},
                        }
                    ]
                }
            ),
            "not a raw",
        ),
        (make_notification("b", KEY.replace("R22_S11", "R99_S11"), event_time=0), "no detector"),
    ],
)
async def test_bad_notifications_raise(value: bytes, words: str) -> None:
    codec = AvroCodec(EventKind.IMAGE_ARRIVAL, LocalSchemaRegistry())
    with pytest.raises(NotificationError, match=words) as info:
        await decode_image_message(codec, value)
    assert info.value.kind == "image-arrival"


async def test_image_topic_accepts_avro_and_json() -> None:
    codec = AvroCodec(EventKind.IMAGE_ARRIVAL, LocalSchemaRegistry())
    arrival = ImageArrival("LSSTCam", "2025-05-01T23:33:14.762", 1, 94, f"s3://b/{KEY}")
    assert await decode_image_message(codec, codec.encode(arrival.to_record())) == [arrival]
    got = await decode_image_message(codec, make_notification("b", KEY, event_time=5.0))
    assert isinstance(got[0], RawObject)


def _write_fits_header(path: Path, cards: dict[str, object]) -> None:
    lines = ["SIMPLE  =                    T", "BITPIX  =                   16", "NAXIS   =  0"]
    for key, value in cards.items():
        text = f"'{value}'" if isinstance(value, str) else str(value)
        lines.append(f"{key:<8}= {text:>20} / comment")
    lines.append("END")
    raw = "".join(line.ljust(80) for line in lines).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw.ljust(2880 * ((len(raw) + 2879) // 2880), b" "))


async def test_resolver_reads_sidecar_then_caches_per_exposure(tmp_path: Path) -> None:
    sidecar = tmp_path / "rubin-summit" / KEY.replace(".fits", ".json")
    sidecar.parent.mkdir(parents=True)
    sidecar.write_bytes(orjson.dumps({"GROUPID": "2025-05-01T23:33:14.762", "CURINDEX": 2}))
    resolver = RawMetadataResolver(tmp_path)
    (raw,) = parse_notification(make_notification("rubin-summit", KEY, event_time=9.0))
    arrival = await resolver.resolve(raw)
    assert (arrival.group_id, arrival.snap, arrival.detector) == ("2025-05-01T23:33:14.762", 1, 94)
    sidecar.unlink()
    other = KEY.replace("R22_S11", "R22_S12")
    (raw2,) = parse_notification(make_notification("rubin-summit", other, event_time=9.0))
    assert resolver.cached(raw2) is not None  # same exposure: no second read


async def test_resolver_falls_back_to_fits_header(tmp_path: Path) -> None:
    _write_fits_header(
        tmp_path / "b" / KEY,
        {
            "INSTRUME": "LSSTCam",
            "GROUPID": "2025-05-01T23:33:14.762",
            "CURINDEX": 1,
            "EXPTIME": 30.0,
        },
    )
    header = read_fits_header(tmp_path / "b" / KEY)
    assert header["EXPTIME"] == 30.0
    (raw,) = parse_notification(make_notification("b", KEY, event_time=9.0))
    arrival = await RawMetadataResolver(tmp_path).resolve(raw)
    assert (arrival.group_id, arrival.snap) == ("2025-05-01T23:33:14.762", 0)


async def test_resolver_reports_missing_metadata(tmp_path: Path) -> None:
    (raw,) = parse_notification(make_notification("b", KEY, event_time=9.0))
    with pytest.raises(NotificationError, match="neither the raw nor its sidecar"):
        await RawMetadataResolver(tmp_path).resolve(raw)


def test_replay_placeholder_raw_is_a_header_the_resolver_reads() -> None:
    from loadtest.images import placeholder_raw
    from prompt.events.raw_metadata import parse_fits_header

    data = placeholder_raw("2025-05-01T23:33:14.762-abcd", 1, 4201, 20250501)
    assert len(data) == 2 * 2880
    header = parse_fits_header(data)
    assert header is not None
    assert (header["GROUPID"], header["CURINDEX"]) == ("2025-05-01T23:33:14.762-abcd", 2)
    assert header["OBSID"] == "MC_O_20250501_004201"
    assert parse_fits_header(data[:80]) is None, "no END yet: read more"
    with pytest.raises(ValueError, match="not a FITS file"):
        parse_fits_header(b"NOTFITS =                    T".ljust(80))


async def test_replay_avro_arrivals_name_each_snap_as_the_s3_path_writes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The two snaps of a two-snap visit are two exposures: the Avro path gives each its own
    obs_id and uri (both used to be the visit's), the same the S3 path PUTs and notifies."""
    from dataclasses import replace
    from typing import Any, cast

    from loadtest.images import AvroImages, S3Images
    from loadtest.schedule import synthetic_night
    from prompt.config import S3Settings
    from prompt.events.raw_metadata import parse_fits_header
    from prompt.testing.traffic import EventSender

    class Sender:
        def __init__(self) -> None:
            self.images: list[ImageArrival] = []
            self.notes: list[tuple[bytes, bytes]] = []

        async def image(self, arrival: ImageArrival) -> None:
            self.images.append(arrival)

        async def notification(self, value: bytes, key: bytes) -> None:
            self.notes.append((value, key))

    class Store:
        def __init__(self) -> None:
            self.objects: dict[str, bytes] = {}

        async def put_async(self, key: str, data: bytes) -> Any:
            self.objects[key] = data

    v = replace(synthetic_night(seed=1, visits=1).visits[0], seq_num=97, n_snaps=2)
    group, detector = "2025-05-01T23:33:14.762-abcd", 94
    avro_sender, s3_sender, store = Sender(), Sender(), Store()
    avro = AvroImages(cast(EventSender, avro_sender), "s3://rubin-summit")
    s3 = S3Images(cast(EventSender, s3_sender), S3Settings(), raws_from=None)
    monkeypatch.setattr(s3, "_store", store)
    for snap in range(v.n_snaps):
        await avro.publish(v, group, detector, snap)
        await s3.publish(v, group, detector, snap)
    await s3.drain()

    first, second = avro_sender.images
    assert first.obs_id != second.obs_id and first.uri != second.uri
    assert (first.snap, second.snap) == (0, 1)
    for arrival, (note, kafka_key) in zip(avro_sender.images, s3_sender.notes, strict=True):
        (raw,) = parse_notification(note)
        assert (arrival.uri, arrival.obs_id) == (raw.uri, raw.obs_id)
        assert kafka_key == arrival.obs_id.encode()
        header = parse_fits_header(store.objects[raw.key])
        assert header is not None
        assert (header["OBSID"], header["CURINDEX"]) == (arrival.obs_id, arrival.snap + 1)
