"""The reference alert pipeline: ISR, difference, detection, alerts; then through the service."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from astropy.io import fits

from loadtest.science import evaluate, read_all, read_length_prefixed, write_length_prefixed
from prompt.calib.fitsio import read_image
from prompt.calib.index import CalibEntry, CalibIndex
from prompt.calib.layout import calib_key, index_key, template_key
from prompt.calib.objectstore import FileStore
from prompt.calib.regions import region_of
from prompt.calib.source import MissingCalibrationError, StoreCalibrations
from prompt.config import Settings
from prompt.instruments import raw_key
from prompt.pilot.alerts import alert_publisher
from prompt.pipeline.alerts import alert_schema, decode, validate
from prompt.pipeline.isr import isr
from prompt.pipeline.process import Calibs, Result, process
from prompt.sim import SimConfig, SimVisit, generate, read_truth
from prompt.sim.scene import catalogue, detector_truth, flat_truth
from prompt.testing.tasks import alert_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env

REGION = region_of(150.0, -30.0)
DAY_OBS = 20261123


def visit(seq: int, group: str = "", band: str = "r") -> SimVisit:
    return SimVisit(DAY_OBS, seq, group or f"g{seq}", f"{band}_57", REGION.ra, REGION.dec)


def raw_uri(root: Path, v: SimVisit) -> Callable[[int], str]:
    return lambda d: f"file://{root}/{raw_key('LSSTCam', v.day_obs, v.seq_num, d)}"


def run_detector(root: Path, v: SimVisit, detector: int) -> Result:
    store = FileStore(root)
    source = StoreCalibrations(store)
    fields = {"instrument": "LSSTCam", "detector": detector, "filter": v.physical_filter,
              "day_obs": v.day_obs, "ra": v.ra, "dec": v.dec}  # fmt: skip
    arrays = {}
    for key in source.keys_for(fields):
        arrays[key.calib_type] = read_image(store.get(key.validity))
    raw, header = read_image(store.get(raw_key("LSSTCam", v.day_obs, v.seq_num, detector)))
    bias, bias_header = arrays["bias"]
    template, template_header = arrays["template"]
    calibs = Calibs(
        bias, arrays["dark"][0], arrays["flat"][0], bias_header["GAIN"], bias_header["RDNOISE"],
        template, template_header["PSFSIG"], template_header["NOISE"],
    )  # fmt: skip
    return process([(raw, header["EXPTIME"])], calibs)


# ---- ISR ------------------------------------------------------------------------------------


def test_isr_removes_bias_dark_and_flat() -> None:
    config = SimConfig(seed=3)
    n = config.camera.size
    truth = detector_truth(config, 7, 202611)
    flat = flat_truth(config, 7, "r", 202611)
    rng = np.random.default_rng(1)
    signal = np.full((n, n), 400.0) + rng.uniform(0, 200, (n, n))  # electrons, known
    exptime = 30.0
    collected = rng.poisson(signal * flat).astype(np.float64)
    raw = truth.bias + truth.dark * exptime + collected / truth.gain
    raw = (raw + rng.normal(0, truth.read_noise_adu, raw.shape)).astype(np.float32)

    out = isr(raw, truth.bias, truth.dark, flat, exptime=exptime, gain=truth.gain,
              read_noise_adu=truth.read_noise_adu)  # fmt: skip
    residual = out.image - signal
    pull = residual / np.sqrt(out.variance)
    # Unbiased (mean within 5 standard errors of 0) and the noise is what the variance says.
    assert abs(residual.mean()) < 5 * residual.std() / math.sqrt(residual.size)
    assert 0.97 < pull.std() < 1.03
    # No trace of the signatures: the residual does not correlate with any of them.
    for signature in (truth.bias, truth.dark, flat):
        assert abs(np.corrcoef(residual.ravel(), signature.ravel())[0, 1]) < 0.02

    # Without the calibrations the same raw is far off: the test above can fail.
    naive = raw.astype(np.float64) * truth.gain
    assert abs((naive - signal).mean()) > 100 * residual.std() / math.sqrt(residual.size)
    flat_only = (raw - truth.bias - truth.dark * exptime) * truth.gain
    assert abs(np.corrcoef((flat_only - signal).ravel(), flat.ravel())[0, 1]) > 0.2


# ---- difference and detection ----------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim")
    generate(root, [visit(1), visit(2)], [0, 94, 188], SimConfig(seed=11), processes=1)
    return root


def test_injected_transient_is_detected_where_it_was_put(tmp_path: Path) -> None:
    config = SimConfig(seed=5, transients=1, variables=0, snr_range=(10.0, 12.0))
    v = visit(3)
    generate(tmp_path, [v], [94], config, processes=1)
    [row] = read_truth(tmp_path, v)
    assert row["kind"] == "transient" and row["snr"] >= 10
    result = run_detector(tmp_path, v, 94)

    near = [s for s in result.sources if math.hypot(s.x - row["x"], s.y - row["y"]) <= 1.0]
    assert len(near) == 1, (row, result.sources)
    assert near[0].flux > 0 and near[0].snr >= 5
    assert abs(near[0].flux / row["flux"] - 1) < 0.35  # flux error at S/N 10 is ~10 %
    # The catalogue's bright stars are in the template too: they subtract away.
    stars = catalogue(config, v.region, 94)
    inside = (stars.x > 10) & (stars.x < 245) & (stars.y > 10) & (stars.y < 245)
    brightest = np.argsort(np.where(inside, stars.flux, 0))[::-1][:5]
    assert stars.flux[brightest[0]] > 50 * row["flux"] / 10  # really bright, not a faint one
    for i in brightest:
        assert not any(
            math.hypot(s.x - stars.x[i], s.y - stars.y[i]) <= 2.0 for s in result.sources
        ), f"static star at ({stars.x[i]:.1f}, {stars.y[i]:.1f}) detected"
    # and nothing else was found on this detector
    assert len(result.sources) == 1


def test_a_fading_star_is_a_negative_source(tmp_path: Path) -> None:
    config = SimConfig(seed=2, transients=0, variables=4, snr_range=(20.0, 30.0))
    v = visit(4)
    generate(tmp_path, [v], [40], config, processes=1)
    rows = read_truth(tmp_path, v)
    result = run_detector(tmp_path, v, 40)
    for row in rows:
        [s] = [s for s in result.sources if math.hypot(s.x - row["x"], s.y - row["y"]) <= 1.0]
        assert s.is_negative == (row["flux"] < 0)
    assert any(r["flux"] < 0 for r in rows)  # the seed gives at least one fading star


# ---- alerts ----------------------------------------------------------------------------------


def test_alert_packets_follow_the_latest_rubin_schema(sim_root: Path) -> None:
    from lsst.alert.packet import Schema, get_latest_schema_version

    schema = alert_schema()
    major, minor = get_latest_schema_version()
    assert schema.version == f"{major}.{minor}"
    assert schema.schema_id == Schema.from_file().get_schema_id() == major * 100 + minor


# ---- calibration store -----------------------------------------------------------------------


def test_the_calibration_valid_on_the_night_is_chosen(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    entries = [
        CalibEntry(t, 5, b, start, end, calib_key("LSSTCam", t, start, 5, b))
        for start, end in ((20261001, 20261031), (20261101, 20261130))
        for t, b in (("bias", ""), ("dark", ""), ("flat", "r"))
    ]
    store.put(index_key("LSSTCam"), CalibIndex(entries).to_json())
    source = StoreCalibrations(store)
    fields = {"instrument": "LSSTCam", "detector": 5, "filter": "r_57", "day_obs": 20261115,
              "ra": REGION.ra, "dec": REGION.dec}  # fmt: skip
    keys = {k.calib_type: k.validity for k in source.keys_for(fields)}
    assert keys["bias"] == "calib/LSSTCam/bias/20261101/005.fits"
    assert keys["flat"] == "calib/LSSTCam/flat/20261101/005_r.fits"
    assert keys["template"] == template_key("LSSTCam", "r", REGION.name, 5)
    assert source.keys_for({**fields, "day_obs": 20261002})[0].validity.endswith(
        "/20261001/005.fits"
    )
    with pytest.raises(MissingCalibrationError, match=r"no flat .* band g"):
        source.keys_for({**fields, "filter": "g_6"})
    with pytest.raises(MissingCalibrationError, match="valid on 20261201"):
        source.keys_for({**fields, "day_obs": 20261201})


# ---- through Kafka, PostgreSQL, the dispatcher and pilots -----------------------------------


@pytest.mark.stack
async def test_alerts_through_the_service(
    isolated_settings: Settings, sim_root: Path, tmp_path: Path
) -> None:
    detectors = [0, 94, 188]
    source = StoreCalibrations(FileStore(sim_root))
    alerts = alert_publisher(isolated_settings, isolated_settings.kafka_bootstrap or "")
    tasks = alert_task_file(detectors="0,94,188")
    async with dispatcher_env(
        isolated_settings, tasks, pilots=1, slots=2, source=source, alerts=alerts,
        warm_imports=("prompt.pipeline.task",),
    ) as env:  # fmt: skip
        per_visit: list[list[dict[str, Any]]] = []
        for v in (visit(1), visit(2)):
            # The group id dates the visit on the simulated night (its day_obs picks the
            # calibrations), whatever the date of the run.
            night = f"{str(DAY_OBS)[:4]}-{str(DAY_OBS)[4:6]}-{str(DAY_OBS)[6:]}"
            nv = next_visit_for(
                f"{night}T23:00:{v.seq_num:02d}.{time.monotonic_ns() % 1000:03d}",
                start_utc=time.time(), filters=v.physical_filter, ra=v.ra, dec=v.dec,
            )  # fmt: skip
            await env.sender.next_visit(nv)
            await env.visit_preloaded(nv.group_id)
            await env.sender.images(image_arrivals(nv, detectors, uri_for=raw_uri(sim_root, v)))
            await env.completions.wait_for(len(detectors) * (len(per_visit) + 1), timeout=60)
            per_visit.append(env.completions.for_group(nv.group_id))

    first, second = per_visit
    for records in per_visit:
        assert [r["status"] for r in records] == ["finished"] * len(detectors), records
        for r in records:
            assert r["counts"]["alerts"] == r["counts"]["dia_sources"] > 0
            assert {"read", "isr", "subtract", "detect", "alerts", "publish"} <= set(
                r["stageSeconds"]
            )
            # Calibrations were loaded on the hint, before the image arrived; latency counts
            # from the image's arrival, so the load is not in it.
            assert r["preloaded"] is not None and r["preloaded"] < r["imageArrived"]
            assert r["latencySeconds"] == pytest.approx(r["finished"] - r["imageArrived"])
    # First visit: bias, dark, flat and the template read from the store, during the preload.
    assert all(
        r["counts"]["calib_loads"] == 3 and r["counts"]["template_loads"] == 1 for r in first
    )
    assert all(r["stageSeconds"]["preload"] > 0 for r in first)
    # Second visit in the same filter and field: nothing read from the store.
    assert all(
        r["counts"]["calib_loads"] == 0 and r["counts"]["template_loads"] == 0 for r in second
    )
    assert sum(source.loads.values()) == 4 * len(detectors)

    values = await read_all(env.settings, env.settings.topics.alerts)
    assert len(values) == sum(r["counts"]["alerts"] for r in first + second)
    for value in values:
        assert value[0] == 0 and int.from_bytes(value[1:5], "big") == alert_schema().schema_id
        record = decode(value)
        assert validate(record)
        for name in ("cutoutDifference", "cutoutScience", "cutoutTemplate"):
            with fits.open(io.BytesIO(record[name])) as hdul:
                assert hdul[0].data.shape == (30, 30)
    truth = read_truth(sim_root, visit(1)) + read_truth(sim_root, visit(2))
    truth = [t for t in truth if t["detector"] in detectors]
    result = evaluate(values, truth, detector_visits=2 * len(detectors))
    assert result["alerts_invalid"] == 0
    assert result["recall"] == 1.0, result
    assert result["spurious_per_detector_visit"] <= 2, result

    out = tmp_path / "alerts.bin"
    assert write_length_prefixed(out, values) == len(values)
    assert read_length_prefixed(out) == values


def test_pipeline_bench_prints_stage_timings(tmp_path: Path) -> None:
    from tests.helpers import run_prompt

    out = tmp_path / "bench.json"
    proc = run_prompt(
        "bench", "pipeline", "--detectors", "2", "--data-root", str(tmp_path / "data"),
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    result = orjson.loads(out.read_bytes())
    assert result["detectors"] == 2 and result["alerts"] > 0
    stages = result["stage_ms"]
    assert set(stages) == {"read", "isr", "subtract", "detect", "alerts", "total"}
    assert all(0 < s["p50"] <= s["max"] for s in stages.values())
