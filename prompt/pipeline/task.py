"""The alert pipeline as a pilot payload: ``python`` payload entry ``prompt.pipeline.task:run``.

Calibrations and the template come from the pilot's cache (shared memory, loaded before the
raw existed); the raws are read from their URIs. Alerts are returned to the pilot, which
publishes them to the alert topic before it reports the job finished.

Task parameters (``payload.params``): ``threshold`` (detection S/N, default 5), ``max_sources``
(per detector, default 200), ``cutouts`` (default true).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from prompt.calib.fitsio import read_image
from prompt.calib.objectstore import read_uri
from prompt.pilot.payloads import JobContext, PayloadFailed
from prompt.pipeline.alerts import (
    alert_schema,
    build_alert,
    cutout,
    dia_source_id,
    encode,
    exposure_id,
)
from prompt.pipeline.process import Calibs, process
from prompt.pipeline.psfmatch import PsfMatchError, warm_psfmatch
from prompt.wcs import pixel_to_sky

REQUIRED = ("bias", "dark", "flat", "template")


def _array(ctx: JobContext, calib_type: str) -> np.ndarray:
    meta = ctx.calibs[calib_type]["meta"]
    return np.ndarray(tuple(meta["shape"]), np.float32, buffer=ctx.calib_buffer(calib_type))


def _calibs(ctx: JobContext) -> Calibs:
    missing = [t for t in REQUIRED if t not in ctx.calibs]
    if missing:
        raise PayloadFailed(f"calibrations missing from the pilot cache: {', '.join(missing)}")
    bias_meta = ctx.calibs["bias"]["meta"]
    template_meta = ctx.calibs["template"]["meta"]
    return Calibs(
        bias=_array(ctx, "bias"), dark=_array(ctx, "dark"), flat=_array(ctx, "flat"),
        gain=float(bias_meta["gain"]), read_noise_adu=float(bias_meta["rdnoise"]),
        template=_array(ctx, "template"), template_psf=float(template_meta["psfsig"]),
        template_noise=float(template_meta["noise"]),
    )  # fmt: skip


def _visit_id(header: dict[str, Any]) -> int:
    day_obs, seq = header.get("DAYOBS"), header.get("SEQNUM")
    if day_obs is None or seq is None:
        raise PayloadFailed("raw header lacks DAYOBS/SEQNUM: cannot number the visit")
    return exposure_id(int(day_obs), int(seq))


def run(ctx: JobContext) -> dict[str, Any]:
    fields = ctx.fields
    uris = list(fields.get("uris") or ([fields["uri"]] if fields.get("uri") else []))
    if not uris:
        raise PayloadFailed("job has no raw URI")
    t0 = time.perf_counter()
    raws = []
    header: dict[str, Any] = {}
    for uri in uris:
        array, header = read_image(read_uri(uri))
        raws.append((array, float(header.get("EXPTIME", 0.0))))
    calibs = _calibs(ctx)
    if raws[0][0].shape != calibs.bias.shape or calibs.template.shape != calibs.bias.shape:
        raise PayloadFailed(
            f"raw {raws[0][0].shape}, bias {calibs.bias.shape} and template "
            f"{calibs.template.shape} differ in shape"
        )
    read_s = time.perf_counter() - t0
    params = ctx.params
    try:
        result = process(
            raws, calibs, threshold=float(params.get("threshold", 5.0)),
            max_sources=int(params.get("max_sources", 200)),
        )  # fmt: skip
    except PsfMatchError as exc:
        raise PayloadFailed(f"image difference failed: {exc}") from exc
    t = time.perf_counter()
    visit = _visit_id(header)
    detector = int(fields["detector"])
    exptime = sum(e for _, e in raws)
    midpoint = float(header.get("MJD-OBS", 0.0)) + exptime / 2 / 86400.0
    scale = math.hypot(float(header.get("CD1_1", 0.0)), float(header.get("CD2_1", 0.0)))
    band = str(fields.get("band") or header.get("BAND", ""))
    with_cutouts = bool(params.get("cutouts", True))
    alerts = []
    for i, source in enumerate(result.sources):
        ra, dec = pixel_to_sky(header, source.x, source.y)
        cutouts = (
            (cutout(result.difference, source.x, source.y, header, "electron"),
             cutout(result.science.image, source.x, source.y, header, "electron"),
             cutout(result.matched.template, source.x, source.y, header, "electron"))
            if with_cutouts else (b"", b"", b"")
        )  # fmt: skip
        record = build_alert(
            source, source_id=dia_source_id(visit, detector, i), visit=visit, detector=detector,
            band=band, exptime=exptime, midpoint_mjd=midpoint, ra=ra, dec=dec,
            pixel_scale_deg=scale, cutouts=cutouts, observation_reason=fields.get("survey"),
        )  # fmt: skip
        alerts.append(encode(record))
    stages = {"read": read_s, **result.stages, "alerts": time.perf_counter() - t}
    return {
        "counts": {"dia_sources": len(result.sources), "alerts": len(alerts)},
        "stages": stages,
        "alerts": alerts,
        "log": (
            f"psf_sigma={result.psf_sigma:.3f} kernel_sum={result.matched.kernel_sum:.4f} "
            f"stamps={result.matched.stamps} dia_sources={len(result.sources)} "
            f"schema={alert_schema().version}"
        ),
    }


def warm() -> None:
    """Pay at worker start what the first job would otherwise pay: the alert schema, the PSF
    matching basis and its transforms, astropy's lazily imported FITS machinery."""
    alert_schema()
    warm_psfmatch()
    read_image(cutout(np.zeros((64, 64), np.float32), 32.0, 32.0, {}, "electron"))
