"""Hypothesis strategies for hostile events: raw bytes, and records that are valid Avro but
carry values no real record has (NUL and control characters, multi-MB strings, NaN/inf,
dates far outside any survey, negative or huge durations and counts).

Records start from a good one and replace some fields, so most examples get past the first
check and exercise what lies behind it."""

from __future__ import annotations

import math
import time
from typing import Any

from hypothesis import strategies as st

from prompt.events import EventKind, ImageArrival, bundled
from prompt.events.wire import frame
from prompt.testing.traffic import next_visit_for

HOSTILE_STRINGS = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=12),
    st.sampled_from(
        [
            "",
            "\x00",
            "LSSTCam",
            "a\x00b",
            "\x1b[2J",
            "2025-05-01T23:33:14.762",
            "0001-01-01T00:00:00.000",
            "9999-12-31T23:59:59.999",
            "2025-02-30T00:00:00",
            "../../etc/passwd",
            "$(touch x)",
        ]
    ),
    st.sampled_from([200, 70_000, 3_000_000]).map(lambda n: "x" * n),
)
HOSTILE_DOUBLES = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, -1.0, 4e9, -4e9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, 1.7e9]),
)
HOSTILE_LONGS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 2, -1, 30, 31, 32, 2**31 - 1, 2**31, 2**63 - 1, -(2**63)]),
)
HOSTILE_INTS = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 30, 31]))


def _for_type(avro_type: Any) -> st.SearchStrategy[Any]:
    if avro_type == "string":
        return HOSTILE_STRINGS
    if avro_type == "double":
        return HOSTILE_DOUBLES
    if avro_type == "long":
        return HOSTILE_LONGS
    if avro_type == "int":
        return HOSTILE_INTS
    if isinstance(avro_type, dict) and avro_type.get("type") == "array":
        return st.lists(_for_type(avro_type["items"]), max_size=6)
    raise AssertionError(f"no strategy for Avro type {avro_type!r}")


# Fields the service acts on: mutated three times as often as the others.
USED = {
    "groupId",
    "instrument",
    "startTime",
    "duration",
    "nimages",
    "position",
    "cameraAngle",
    "private_efdStamp",
    "filters",
    "survey",
    "coordinateSystem",
    "snap",
    "detector",
    "uri",
    "obsId",
    "dayObs",
    "eventTime",
    "size",
}


def _mutated(base: st.SearchStrategy[dict[str, Any]], kind: EventKind) -> Any:
    fields = {f["name"]: _for_type(f["type"]) for f in bundled(kind).raw["fields"]}
    weighted = sorted(fields) + 2 * sorted(set(fields) & USED)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        record = dict(draw(base))
        names = draw(st.sets(st.sampled_from(weighted), min_size=1, max_size=4))
        for name in names:
            record[name] = draw(fields[name])
        return record

    return build()


@st.composite
def _good_next_visit(draw: st.DrawFn) -> dict[str, Any]:
    tag = draw(st.integers(0, 10**9))
    nv = next_visit_for(f"2025-05-01T23:33:14.{tag % 1000:03d}-fz{tag}", start_utc=time.time())
    return nv.to_record()


@st.composite
def _good_image(draw: st.DrawFn) -> dict[str, Any]:
    tag = draw(st.integers(0, 10**9))
    return ImageArrival(
        "LSSTCam",
        f"2025-05-01T23:33:14.000-fz{tag}",
        0,
        draw(st.integers(0, 188)),
        f"s3://rubin-summit/LSSTCam/20250501/MC_O_20250501_000001/{tag}.fits",
        obs_id="MC_O_20250501_000001",
        day_obs=20250501,
        event_time=time.time(),
    ).to_record()


def hostile_next_visits() -> st.SearchStrategy[dict[str, Any]]:
    return _mutated(_good_next_visit(), EventKind.NEXT_VISIT)  # type: ignore[no-any-return]


def hostile_images() -> st.SearchStrategy[dict[str, Any]]:
    return _mutated(_good_image(), EventKind.IMAGE_ARRIVAL)  # type: ignore[no-any-return]


def hostile_cancels() -> st.SearchStrategy[dict[str, Any]]:
    base = st.just({"groupId": "2025-05-01T23:33:14.762", "scriptSalIndex": 1})
    return _mutated(base, EventKind.NEXT_VISIT_CANCELED)  # type: ignore[no-any-return]


RAW_KEY = b'"LSSTCam/20250501/MC_O_20250501_000001/MC_O_20250501_000001_R22_S11.fits"'
RAW_BYTES = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.integers(0, 10), st.binary(max_size=300)).map(lambda t: frame(t[0], t[1])),
    st.builds(
        lambda key, extra: (
            b'{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},'
            b'"object":{"key":' + key + b"}}}]" + extra + b"}"
        ),
        st.sampled_from(
            [
                b'"LSSTCam/20250501/MC_O_20250501_000001/MC_O_20250501_000001_R22_S11.fits"',
                b'"x"',
                b"1",
                b"null",
                b'"\\u0000"',
            ]
        ),
        st.binary(max_size=20),
    ),
)
