"""``prompt bench dispatch --floor``: the bare uvloop push measured in the same run as prompt."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from prompt.bench.floor import (
    FloorShape,
    assign,
    burst_ms,
    frames,
    measure_floor,
    ratio,
    with_floor,
)
from prompt.stack import Endpoints
from tests.helpers import run_prompt


def test_round_robin_gives_every_job_once_and_balances() -> None:
    shares = assign(189, 8)
    assert sorted(i for share in shares for i in share) == list(range(189))
    assert {len(share) for share in shares} == {23, 24}
    assert shares[0][:3] == [0, 8, 16]
    assert assign(3, 8)[5:] == [[], [], []]


def test_one_buffer_per_connection_holds_its_jobs_as_lines() -> None:
    buf = frames(4, [1, 9])
    lines = buf.split(b"\n")
    assert lines[-1] == b""
    assert [orjson.loads(line) for line in lines[:-1]] == [
        {"b": 4, "i": 1, "detector": 1},
        {"b": 4, "i": 9, "detector": 9},
    ]
    assert frames(0, []) == b""


def test_burst_is_t0_to_the_last_start_and_the_ratio_guards_missing_figures() -> None:
    assert burst_ms(100.0, [100.001, 100.004, 100.002]) == pytest.approx(4.0)
    assert ratio(10.0, 4.0) == 2.5
    assert ratio(10.0, 0.0) is None
    assert ratio(float("nan"), 4.0) is None
    merged = with_floor({"burst_ms": {"p50": 9.0}}, {"burst_ms": {"p50": 3.0}})
    assert merged["floor_ratio_p50"] == 3.0 and merged["floor"] == {"burst_ms": {"p50": 3.0}}


def test_floor_pushes_to_real_processes_and_times_every_burst() -> None:
    floor = measure_floor(FloorShape(processes=3, jobs=10, bursts=4, warmup=1, pause_s=0.01))
    assert (floor["processes"], floor["jobs"], floor["bursts"]) == (3, 10, 4)
    assert len(floor["warmup_burst_ms"]) == 1
    b = floor["burst_ms"]
    assert all(math.isfinite(v) and v > 0 for v in b.values())
    assert b["p50"] <= b["p99"] <= b["max"]


@pytest.mark.stack
def test_dispatch_bench_with_floor_and_cpu_prints_the_ratio_and_where_the_cpu_went(
    prompt_stack: Endpoints, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    proc = run_prompt(
        "--state-dir", str(tmp_path / "state"), "bench", "dispatch", "--visits", "2",
        "--detectors", "6", "--pilots", "1", "--slots", "2", "--sleep-s", "0", "--warmup", "1",
        "--floor", "--cpu", "--json", str(out), "--logs", str(tmp_path / "logs"),
        env={"PROMPT_DATABASE_URL": prompt_stack.database_url,
             "PROMPT_KAFKA_BOOTSTRAP": prompt_stack.kafka_bootstrap},
        timeout=180,
    )  # fmt: skip
    text = proc.stdout.decode()
    assert proc.returncode == 0, text + proc.stderr.decode()
    result = orjson.loads(out.read_bytes())
    assert (result["lost"], result["duplicates"]) == (0, 0)
    floor = result["floor"]
    assert (floor["processes"], floor["jobs"], floor["bursts"]) == (2, 6, 2)
    assert result["floor_ratio_p50"] == ratio(result["burst_ms"]["p50"], floor["burst_ms"]["p50"])
    assert result["floor_ratio_p50"] is not None
    assert f"= {result['floor_ratio_p50']} x the floor" in text
    assert result["intake"]["burst_cpu_ms"]["p50"] > 0
    assert "dispatcher intake alone (prompt bench intake):" in text
    cpu = result["cpu"]
    assert cpu["bursts"] == 2  # the warm-up visit left out
    for role in ("dispatcher", "pilots", "workers", "bench"):
        assert cpu["per_role_ms"][role]["p50"] > 0, role
    assert f"all {cpu['total_ms']['p50']} on" in text
    assert floor["cpu"]["bursts"] == 2 and floor["cpu"]["per_role_ms"]["processes"]["p50"] > 0
    assert "x the floor's" in text
