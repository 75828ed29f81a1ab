"""``prompt bench intake`` runs the real intake loop and counts what it sent."""

from __future__ import annotations

import pytest

from prompt.bench.intake import IntakeShape, run_intake_bench


async def test_intake_bench_pushes_every_image_and_times_every_burst() -> None:
    """It raises if fewer job frames than images reached the pilots' channels."""
    result = await run_intake_bench(IntakeShape(bursts=4, detectors=20, warmup=1))
    burst, image = result["burst_cpu_ms"], result["per_image_cpu_us"]
    assert 0 < burst["p50"] <= burst["max"]
    assert image["p50"] * 20 / 1e3 == pytest.approx(burst["p50"], rel=0.01)
