"""Rubin alert packets: the latest schema shipped by ``lsst-alert-packet``, framed in the
Confluent wire format of ``prompt/events/wire.py``.

The schema is loaded and parsed once per process (workers import this module at start-up);
per alert there is only a dict to fill and one schemaless Avro write.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import fastavro
import numpy as np

from prompt.calib.fitsio import write_image
from prompt.events.wire import frame, unframe
from prompt.pipeline.detect import DiaSource
from prompt.timescale import MJD_UNIX_EPOCH, TAI_MINUS_UTC_S

CUTOUT_SIZE = 30
"""Pixels on a side (Rubin's cutouts are 30-102 px)."""
WCS_KEYS = ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2")


@dataclass(frozen=True)
class AlertSchema:
    version: str
    schema_id: int
    parsed: Any
    dia_source_fields: tuple[tuple[str, bool], ...]
    """(name, nullable) of every diaSource field, in schema order."""


@cache
def alert_schema() -> AlertSchema:
    from lsst.alert.packet import Schema, get_latest_schema_version

    major, minor = get_latest_schema_version()
    schema = Schema.from_file()
    definition: dict[str, Any] = schema.definition
    parsed: Any = fastavro.parse_schema(definition)
    source: Any = next(f for f in definition["fields"] if f["name"] == "diaSource")["type"]
    if isinstance(source, str):  # a named reference: resolve from the parsed schema
        source = parsed["__named_schemas"][source]
    fields = tuple(
        (f["name"], isinstance(f["type"], list) and "null" in f["type"]) for f in source["fields"]
    )
    return AlertSchema(f"{major}.{minor}", int(schema.get_schema_id()), parsed, fields)


def encode(record: dict[str, Any]) -> bytes:
    schema = alert_schema()
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema.parsed, record)
    return frame(schema.schema_id, out.getvalue())


def decode(value: bytes) -> dict[str, Any]:
    """The inverse of :func:`encode`; raises FramingError (not Confluent wire format) or
    ValueError (another schema id)."""
    schema = alert_schema()
    schema_id, body = unframe(value)
    if schema_id != schema.schema_id:
        raise ValueError(f"schema id {schema_id}, expected {schema.schema_id}")
    record: Any = fastavro.schemaless_reader(io.BytesIO(body), schema.parsed)
    return dict(record)


def validate(record: dict[str, Any]) -> bool:
    return bool(fastavro.validate(record, alert_schema().parsed, raise_errors=True))


def dia_source_id(visit: int, detector: int, index: int) -> int:
    """Unique per (visit, detector, source): fits a signed 64-bit long for 13-digit visits."""
    return (visit * 200 + detector) * 10_000 + index


def exposure_id(day_obs: int, seq_num: int) -> int:
    """Rubin's visit/exposure id: day_obs * 100000 + sequence number."""
    return day_obs * 100_000 + seq_num


def now_mjd_tai() -> float:
    return (time.time() + TAI_MINUS_UTC_S) / 86400.0 + MJD_UNIX_EPOCH


def cutout(image: np.ndarray, x: float, y: float, wcs: dict[str, Any], unit: str) -> bytes:
    """A CUTOUT_SIZE^2 FITS image centred on (x, y), zero-padded off the edge, with the WCS."""
    half = CUTOUT_SIZE // 2
    x0, y0 = round(x) - half, round(y) - half
    out = np.zeros((CUTOUT_SIZE, CUTOUT_SIZE), np.float32)
    ny, nx = image.shape
    xs, ys, xe, ye = max(0, x0), max(0, y0), min(nx, x0 + CUTOUT_SIZE), min(ny, y0 + CUTOUT_SIZE)
    out[ys - y0 : ye - y0, xs - x0 : xe - x0] = image[ys:ye, xs:xe]
    header: dict[str, Any] = {k: wcs[k] for k in WCS_KEYS if k in wcs}
    if "CRPIX1" in wcs:
        header.update(CRPIX1=wcs["CRPIX1"] - x0, CRPIX2=wcs["CRPIX2"] - y0)
    header.update(BUNIT=unit, LTV1=-x0, LTV2=-y0)
    return write_image(out, header)


def _f(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def build_alert(
    source: DiaSource, *, source_id: int, visit: int, detector: int, band: str, exptime: float,
    midpoint_mjd: float, ra: float, dec: float, pixel_scale_deg: float,
    cutouts: tuple[bytes, bytes, bytes], observation_reason: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One alert for one DIA source (no association: no diaObject, no history)."""
    schema = alert_schema()
    dia: dict[str, Any] = {name: None for name, nullable in schema.dia_source_fields if nullable}
    err_deg = source.x_err * pixel_scale_deg
    dia.update(
        diaSourceId=source_id, visit=visit, detector=detector, midpointMjdTai=midpoint_mjd,
        exposureTime=exptime, ra=ra, dec=dec, raErr=_f(err_deg), decErr=_f(err_deg),
        x=float(source.x), y=float(source.y), xErr=_f(source.x_err), yErr=_f(source.y_err),
        centroid_flag=False, isNegative=source.is_negative, snr=_f(source.snr),
        psfFlux=_f(source.flux), psfFluxErr=_f(source.flux_err), psfNdata=source.ndata,
        psfFlux_flag=False, scienceFlux=_f(source.science_flux),
        templateFlux=_f(source.template_flux), band=band, trailNdata=0, dipoleNdata=0,
        timeProcessedMjdTai=now_mjd_tai(), bboxSize=CUTOUT_SIZE, pixelFlags=False,
        pixelFlags_edge=False,
    )  # fmt: skip
    diff, science, template = cutouts
    return {
        "diaSourceId": source_id,
        "observation_reason": observation_reason,
        "target_name": None,
        "diaSource": dia,
        "prvDiaSources": None,
        "prvDiaForcedSources": None,
        "diaObject": None,
        "ssSource": None,
        "mpc_orbits": None,
        "cutoutDifference": diff,
        "cutoutScience": science,
        "cutoutTemplate": template,
    }
