"""Decoded records become domain values only within limits that every real record meets.

A record can be valid Avro and still be poison: a NUL byte that PostgreSQL refuses, a 10 MB
group id, NaN in a time that orders the expiry heap, a date that overflows ``datetime``, a
snap count no camera has. Such a record raises InvalidEventError here, before anything acts
on it, and goes to the dead-letter topic with the reason; the message names the field and
shows a short preview of the value, never the value itself.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from typing import Any, Final

from prompt.bounds import has_control, preview
from prompt.events.errors import InvalidEventError
from prompt.events.models import ImageArrival, NextVisit

INSTRUMENT_LIMIT: Final = 32
GROUP_ID_LIMIT: Final = 128
FILTER_LIMIT: Final = 64
SURVEY_LIMIT: Final = 256
URI_LIMIT: Final = 4096
OBS_ID_LIMIT: Final = 256
TEXT_LIMIT: Final = 1024
"""Any other string field of a next-visit (``private_identity`` …): stored with the visit."""
MAX_SNAPS: Final = 31
"""Snaps per visit the job state can hold (a bit mask in a 32-bit column); cameras take 1-2."""
MAX_DETECTORS: Final = 10_000
MAX_DURATION_S: Final = 3600.0
# Times are unix (UTC) or TAI seconds; 0 means "not given". Anything outside these years is
# not an observation of a survey this service runs.
EARLIEST: Final = dt.datetime(1990, 1, 1, tzinfo=dt.UTC).timestamp()
LATEST: Final = dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp()
_INSTRUMENT = re.compile(r"[A-Za-z0-9_.\-]*")
_ISO_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)T")
_REMEMBERED = 4096
"""Distinct valid group ids (and instrument names) whose pattern checks are remembered: an
image burst repeats one group id per detector. Only valid values are kept (a check that
raises is not cached), and only after their length is checked, so memory stays bounded."""


def _bad(field: str, why: str, value: object) -> InvalidEventError:
    return InvalidEventError(f"{field} {why}: {preview(value)}")


def text(field: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise _bad(field, "is not a string", value)
    if len(value) > limit:
        raise InvalidEventError(f"{field} is {len(value)} characters long (limit {limit})")
    if has_control(value):
        raise _bad(field, "holds a control character", value)
    return value


def number(field: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(field, "is not a number", value)
    result = float(value)
    if not math.isfinite(result) or not low <= result <= high:
        raise _bad(field, f"is not a finite number in [{low:g}, {high:g}]", value)
    return result


def integer(field: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(field, f"is not an integer in [{low}, {high}]", value)
    return value


def timestamp(field: str, value: object) -> float:
    """Seconds since 1970 (UTC or TAI) within the survey era, or 0 for "not given"."""
    result = number(field, value, -math.inf, math.inf) if value != 0 else 0.0
    if result and not EARLIEST <= result <= LATEST:
        raise _bad(field, "is not a time between 1990 and 2100", value)
    return result


def group_id(value: object) -> str:
    """A group id: bounded text; when it starts with an ISO date, a date of the survey era."""
    return _dated(text("groupId", value, GROUP_ID_LIMIT))


@functools.lru_cache(maxsize=_REMEMBERED)
def _dated(gid: str) -> str:
    m = _ISO_DATE.match(gid)
    if m is not None:
        try:
            day = dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            raise _bad("groupId", "starts with an impossible date", gid) from None
        if not 1990 <= day.year < 2100:
            raise _bad("groupId", "starts with a date outside 1990-2099", gid)
    return gid


def instrument(value: object) -> str:
    return _instrument_name(text("instrument", value, INSTRUMENT_LIMIT))


@functools.lru_cache(maxsize=_REMEMBERED)
def _instrument_name(name: str) -> str:
    if not _INSTRUMENT.fullmatch(name):
        raise _bad("instrument", "is not a name of letters, digits, '_', '.' or '-'", name)
    return name


def next_visit(record: dict[str, Any]) -> NextVisit:
    """The domain value of a decoded ``logevent_nextVisit`` record, or InvalidEventError."""
    for key, value in record.items():
        if isinstance(value, str):
            text(key, value, TEXT_LIMIT)
    position = record.get("position")
    if not isinstance(position, list) or len(position) > 3:
        raise _bad("position", "is not a list of at most 3 numbers", position)
    coords = [number(f"position[{i}]", v, -360.0, 360.0) for i, v in enumerate(position)]
    if record.get("coordinateSystem") == 2 and len(coords) >= 2 and not -90 <= coords[1] <= 90:
        raise _bad("position[1]", "is not a declination in [-90, 90]", coords[1])
    nv = NextVisit(
        instrument=instrument(record.get("instrument")),
        group_id=group_id(record.get("groupId")),
        survey=text("survey", record.get("survey"), SURVEY_LIMIT),
        filters=text("filters", record.get("filters"), FILTER_LIMIT),
        position=(coords[0], coords[1]) if len(coords) >= 2 else (0.0, 0.0),
        coordinate_system=integer("coordinateSystem", record.get("coordinateSystem"), 0, 99),
        camera_angle=number("cameraAngle", record.get("cameraAngle"), -720.0, 720.0),
        rotation_system=integer("rotationSystem", record.get("rotationSystem"), 0, 99),
        start_time=timestamp("startTime", record.get("startTime")),
        duration=number("duration", record.get("duration"), 0.0, MAX_DURATION_S),
        nimages=integer("nimages", record.get("nimages"), 0, MAX_SNAPS),
        dome=integer("dome", record.get("dome"), -(2**63), 2**63 - 1),
        sal_index=integer("salIndex", record.get("salIndex"), -(2**63), 2**63 - 1),
        script_sal_index=integer(
            "scriptSalIndex", record.get("scriptSalIndex"), -(2**63), 2**63 - 1
        ),
        efd_stamp=timestamp("private_efdStamp", record.get("private_efdStamp")),
    )
    if nv.instrument and not nv.group_id:
        raise InvalidEventError("next-visit for an observation has no groupId")
    return nv


def cancel_group(record: dict[str, Any]) -> str:
    """The group a ``nextVisitCanceled`` record cancels ('' if none)."""
    return group_id(record.get("groupId"))


def image_arrival(arrival: ImageArrival) -> ImageArrival:
    """The arrival itself if it is within limits (from Avro or a bucket notification)."""
    return arrival if _plainly_valid(arrival) else _checked_image(arrival)


def _checked_image(arrival: ImageArrival) -> ImageArrival:
    instrument(arrival.instrument)
    if not arrival.instrument:
        raise InvalidEventError("image-arrival has no instrument")
    if not group_id(arrival.group_id):
        raise InvalidEventError("image-arrival has no groupId")
    integer("snap", arrival.snap, 0, MAX_SNAPS - 1)
    integer("detector", arrival.detector, 0, MAX_DETECTORS - 1)
    if not text("uri", arrival.uri, URI_LIMIT):
        raise InvalidEventError("image-arrival has no uri")
    text("obsId", arrival.obs_id, OBS_ID_LIMIT)
    integer("dayObs", arrival.day_obs, 0, 99_991_231)
    timestamp("eventTime", arrival.event_time)
    integer("size", arrival.size, 0, 2**50)
    return arrival


def _plainly_valid(a: ImageArrival) -> bool:
    """One quick pass over an image that accepts only what ``_checked_image`` accepts (exact
    types, printable ASCII text, a remembered visit key); anything else is left to them, and
    they name what is wrong. An image of a burst costs about a microsecond here."""
    uri, obs_id, t = a.uri, a.obs_id, a.event_time
    return (
        type(a.snap) is int and 0 <= a.snap < MAX_SNAPS
        and type(a.detector) is int and 0 <= a.detector < MAX_DETECTORS
        and type(a.day_obs) is int and 0 <= a.day_obs <= 99_991_231
        and type(a.size) is int and 0 <= a.size <= 2**50
        and type(t) is float and (t == 0.0 or EARLIEST <= t <= LATEST)
        and type(uri) is str and 0 < len(uri) <= URI_LIMIT and uri.isascii() and uri.isprintable()
        and type(obs_id) is str and len(obs_id) <= OBS_ID_LIMIT
        and obs_id.isascii() and obs_id.isprintable()
        and type(a.instrument) is str and 0 < len(a.instrument) <= INSTRUMENT_LIMIT
        and type(a.group_id) is str and 0 < len(a.group_id) <= GROUP_ID_LIMIT
        and _valid_visit_key(a.instrument, a.group_id)
    )  # fmt: skip


@functools.lru_cache(maxsize=_REMEMBERED)
def _valid_visit_key(name: str, gid: str) -> bool:
    try:
        instrument(name)
        group_id(gid)
    except InvalidEventError:
        return False
    return True
