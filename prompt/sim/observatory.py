"""Write a synthetic observatory's data into a bucket-like root.

Layout (keys from ``prompt.calib.layout`` and ``prompt.instruments.raw_key``)::

    calib/{instrument}/index.json                       calibration index (validity ranges)
    calib/{instrument}/{bias,dark,flat}/{valid_from}/{detector}[_{band}].fits
    templates/{instrument}/{band}/{region}/{detector}.fits
    {instrument}/{day_obs}/{obs_id}/{obs_id}_{RNN_SNN}.fits   raws
    truth/{instrument}/{day_obs}/{obs_id}.csv           injected sources per visit

Raws are made the way a camera makes them: sky + stars + injected sources, with the flat's
sensitivity, Poisson noise, divided by the gain, plus dark current, bias and read noise.
Generation runs per detector in worker processes; files already present (same config, same
visit) are kept, so a data root can be reused across runs.
"""

from __future__ import annotations

import calendar
import csv
import io
import multiprocessing as mp
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from prompt.calib.fitsio import write_image
from prompt.calib.index import CalibEntry, CalibIndex
from prompt.calib.layout import calib_key, index_key, template_key, truth_key
from prompt.calib.objectstore import FileStore, ObjectStoreError
from prompt.calib.regions import Region, region_of
from prompt.instruments import detector_name, obs_id, raw_key
from prompt.sim.render import add_sources
from prompt.sim.scene import (
    SKY_E_PER_30S,
    SimConfig,
    _rng,
    catalogue,
    detector_truth,
    expected_snr,
    flat_truth,
    flux_for_snr,
    seeing,
    template_noise,
)
from prompt.wcs import pixel_to_sky

TRUTH_FIELDS = ("obs_id", "detector", "kind", "x", "y", "ra", "dec", "flux", "snr")


@dataclass(frozen=True)
class SimVisit:
    day_obs: int
    seq_num: int
    group_id: str
    physical_filter: str
    ra: float
    dec: float
    exp_time: float = 30.0
    mjd: float = 61000.0
    """Exposure start (MJD TAI)."""
    instrument: str = "LSSTCam"

    @property
    def band(self) -> str:
        return self.physical_filter.split("_", 1)[0]

    @property
    def obs_id(self) -> str:
        return obs_id(self.instrument, self.day_obs, self.seq_num)

    @property
    def region(self) -> str:
        return region_of(self.ra, self.dec).name


def epoch_of(day_obs: int) -> tuple[int, int, int]:
    """Calibrations are certified per month: (epoch, valid_from, valid_to) as day_obs."""
    year, month = day_obs // 10000, day_obs // 100 % 100
    last = calendar.monthrange(year, month)[1]
    return year * 100 + month, year * 10000 + month * 100 + 1, year * 10000 + month * 100 + last


def generate(
    root: Path, visits: list[SimVisit], detectors: Iterable[int], config: SimConfig,
    *, processes: int = 2,
) -> Path:  # fmt: skip
    """Write everything the visits need; returns the root. Deterministic by ``config.seed``."""
    store = FileStore(root)
    dets = sorted(set(detectors))
    manifest = {"config": config.key()}
    mkey = "sim.json"
    if store.exists(mkey) and orjson.loads(store.get(mkey))["config"] != manifest["config"]:
        raise ValueError(f"{root} holds data made with another configuration; use a new root")
    store.put(mkey, orjson.dumps(manifest))
    args = [(str(root), config, d, visits) for d in dets]
    if processes > 1 and len(dets) > 1:
        ctx = mp.get_context("forkserver")
        with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
            results = list(pool.map(_detector_work, args, chunksize=4))
    else:
        results = [_detector_work(a) for a in args]
    entries: dict[str, CalibEntry] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for det_entries, det_rows in results:
        for e in det_entries:
            entries[e.key] = e
        for row in det_rows:
            rows.setdefault(row["obs_id"], []).append(row)
    instrument = config.camera.instrument
    try:
        known = CalibIndex.from_json(store.get(index_key(instrument))).entries
    except ObjectStoreError:  # a new root: no index yet
        known = []
    for e in known:
        entries.setdefault(e.key, e)
    store.put(index_key(instrument), CalibIndex(sorted(entries.values(), key=_order)).to_json())
    for v in visits:
        store.put(truth_key(instrument, v.day_obs, v.obs_id), _truth_csv(rows.get(v.obs_id, [])))
    return root


def _order(e: CalibEntry) -> tuple[str, int, str, int]:
    return (e.calib_type, e.detector, e.band, e.valid_from)


def _truth_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, TRUTH_FIELDS)
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r["detector"], r["kind"], r["x"])):
        writer.writerow(row)
    return out.getvalue().encode()


def read_truth(root: Path, visit: SimVisit) -> list[dict[str, Any]]:
    data = FileStore(root).get(truth_key(visit.instrument, visit.day_obs, visit.obs_id))
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    for row in rows:
        row["detector"] = int(row["detector"])
        for k in ("x", "y", "ra", "dec", "flux", "snr"):
            row[k] = float(row[k])
    return rows


def _detector_work(
    args: tuple[str, SimConfig, int, list[SimVisit]],
) -> tuple[list[CalibEntry], list[dict[str, Any]]]:
    root, config, detector, visits = args
    store = FileStore(root)
    instrument = config.camera.instrument
    entries: list[CalibEntry] = []
    for epoch, valid_from, valid_to in sorted({epoch_of(v.day_obs) for v in visits}):
        truth = detector_truth(config, detector, epoch)
        meta = {
            "INSTRUME": instrument, "DETECTOR": detector, "VALIDFR": valid_from,
            "VALIDTO": valid_to, "GAIN": truth.gain, "RDNOISE": truth.read_noise_adu,
        }  # fmt: skip
        noise = _rng(config, "master", detector, epoch)
        masters = {
            "bias": truth.bias + noise.normal(0, truth.read_noise_adu / 10, truth.bias.shape),
            "dark": truth.dark + noise.normal(0, 1e-4, truth.dark.shape),
        }
        for calib_type, array in masters.items():
            key = calib_key(instrument, calib_type, valid_from, detector, "")
            entries.append(CalibEntry(calib_type, detector, "", valid_from, valid_to, key))
            if not store.exists(key):
                store.put(
                    key, write_image(array.astype(np.float32), {**meta, "OBSTYPE": calib_type})
                )
        for band in sorted({v.band for v in visits if epoch_of(v.day_obs)[0] == epoch}):
            key = calib_key(instrument, "flat", valid_from, detector, band)
            entries.append(CalibEntry("flat", detector, band, valid_from, valid_to, key))
            if not store.exists(key):
                flat = flat_truth(config, detector, band, epoch)
                flat = flat * noise.normal(1.0, 0.001, flat.shape)
                store.put(key, write_image(flat.astype(np.float32),
                                           {**meta, "OBSTYPE": "flat", "BAND": band}))  # fmt: skip
    regions = {(v.band, region_of(v.ra, v.dec)) for v in visits}
    for band, region in sorted(regions, key=lambda item: (item[0], item[1].name)):
        key = template_key(instrument, band, region.name, detector)
        if not store.exists(key):
            store.put(key, _template(config, detector, band, region))
    rows: list[dict[str, Any]] = []
    for v in visits:
        rows.extend(_raw(store, config, detector, v))
    return entries, rows


def _template(config: SimConfig, detector: int, band: str, region: Region) -> bytes:
    n = config.camera.size
    stars = catalogue(config, region.name, detector)
    image = np.zeros((n, n), np.float64)
    add_sources(image, stars.x, stars.y, stars.flux, config.template_psf_px)
    sigma = template_noise(config, band)
    image += _rng(config, "template", region.name, band, detector).normal(0, sigma, image.shape)
    header = {
        "INSTRUME": config.camera.instrument, "DETECTOR": detector, "BAND": band,
        "REGION": region.name, "PSFSIG": config.template_psf_px, "NOISE": sigma,
        "EXPTIME": 30.0, "BUNIT": "electron",
        **config.camera.wcs_header(detector, region.ra, region.dec),
    }  # fmt: skip
    return write_image(image.astype(np.float32), header)


def _raw(store: FileStore, config: SimConfig, detector: int, v: SimVisit) -> list[dict[str, Any]]:
    """Write one raw and return the truth rows of what was injected into it."""
    n = config.camera.size
    epoch = epoch_of(v.day_obs)[0]
    det = detector_truth(config, detector, epoch)
    flat = flat_truth(config, detector, v.band, epoch)
    psf = seeing(config, v.day_obs, v.seq_num, detector)
    scale = v.exp_time / 30.0
    stars = catalogue(config, v.region, detector)
    flux = stars.flux * scale
    rng = _rng(config, "visit", v.day_obs, v.seq_num, detector)
    centre = region_of(v.ra, v.dec)
    wcs = config.camera.wcs_header(detector, centre.ra, centre.dec)
    lo, hi = config.snr_range
    edge = config.edge_px
    rows: list[dict[str, Any]] = []

    def throughput(x: float, y: float) -> float:
        xi, yi = round(x), round(y)
        return float(flat[max(0, yi - 2) : yi + 3, max(0, xi - 2) : xi + 3].mean())

    def row(kind: str, x: float, y: float, delta: float, base: float) -> None:
        snr = expected_snr(
            config, v.band, v.exp_time, 1, psf, delta, base + delta, throughput(x, y)
        )
        ra, dec = pixel_to_sky(wcs, x, y)
        rows.append({
            "obs_id": v.obs_id, "detector": detector, "kind": kind, "x": round(x, 3),
            "y": round(y, 3), "ra": round(ra, 7), "dec": round(dec, 7),
            "flux": round(delta, 2), "snr": round(snr, 3),
        })  # fmt: skip

    inside = np.flatnonzero(
        (stars.x > edge) & (stars.x < n - 1 - edge) & (stars.y > edge) & (stars.y < n - 1 - edge)
    )
    for i in rng.choice(inside, size=min(config.variables, len(inside)), replace=False):
        want = rng.uniform(lo, hi)
        delta = flux_for_snr(
            config, v.band, v.exp_time, 1, psf, want, float(flux[i]),
            throughput(float(stars.x[i]), float(stars.y[i])),
        )  # fmt: skip
        if rng.uniform() < 0.5 and delta < 0.8 * flux[i]:
            delta = -delta  # the star faded: a negative source in the difference
        row("variable", float(stars.x[i]), float(stars.y[i]), delta, float(flux[i]))
        flux[i] += delta
    tx = rng.uniform(edge, n - 1 - edge, config.transients)
    ty = rng.uniform(edge, n - 1 - edge, config.transients)
    tf = np.array([
        flux_for_snr(config, v.band, v.exp_time, 1, psf, rng.uniform(lo, hi), 0.0,
                     throughput(float(x), float(y)))
        for x, y in zip(tx, ty, strict=True)
    ])  # fmt: skip
    for x, y, f in zip(tx, ty, tf, strict=True):
        row("transient", float(x), float(y), float(f), 0.0)
    signal = np.full((n, n), SKY_E_PER_30S[v.band] * scale, np.float64)
    signal *= 1.0 + 0.01 * np.linspace(-1, 1, n)[None, :]
    add_sources(signal, stars.x, stars.y, flux, psf)
    add_sources(signal, tx, ty, tf, psf)
    collected = rng.poisson(np.clip(signal * flat, 0, None)).astype(np.float64)
    raw = det.bias + det.dark * v.exp_time + collected / det.gain
    raw = raw + rng.normal(0, det.read_noise_adu, raw.shape)
    header = {
        "INSTRUME": v.instrument, "TELESCOP": "Simonyi Survey Telescope (simulated)",
        "OBSID": v.obs_id, "GROUPID": v.group_id, "CURINDEX": 1, "DAYOBS": v.day_obs,
        "SEQNUM": v.seq_num, "DETECTOR": detector,
        "RAFTBAY": detector_name(v.instrument, detector)[:3],
        "CCDSLOT": detector_name(v.instrument, detector)[4:], "FILTER": v.physical_filter,
        "BAND": v.band, "EXPTIME": v.exp_time, "MJD-OBS": v.mjd, "REGION": v.region,
        "BUNIT": "adu", **wcs,
    }  # fmt: skip
    store.put(raw_key(v.instrument, v.day_obs, v.seq_num, detector),
              write_image(raw.astype(np.float32), header))  # fmt: skip
    return rows
