"""A short chaos replay through the real stack: kill -9 of the leading dispatcher, a pilot,
PostgreSQL and the broker (stored in S3), each restarted; every job still ends exactly once with
a right status, and every fault's recovery is measured and reported."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from loadtest.chaos import FAILOVER_LIMIT_S, KINDS, ChaosConfig
from loadtest.plan import Timing
from loadtest.replay import ReplayConfig, run_replay
from loadtest.report import write_report
from loadtest.schedule import synthetic_night
from loadtest.summary import summarize_replay, summary_lines
from prompt.stack import Stack

pytestmark = pytest.mark.stack


async def test_chaos_replay_loses_nothing_and_measures_every_recovery(
    prompt_durable_stack: Stack, tmp_path: Path
) -> None:
    night = synthetic_night(seed=5).select(8, "40")
    config = ReplayConfig(
        timing=Timing(speed=20),
        detectors=tuple(range(24)), pilots=2, slots=8, run_mean_s=6.0, seed=11, sample_s=1.0,
        log_dir=tmp_path / "logs", quiet=True, image_partitions=4,
        chaos=ChaosConfig(seed=11, gap_s=4.0),
    )  # fmt: skip
    result = await run_replay(prompt_durable_stack.settings, night, config, prompt_durable_stack)
    summary = summarize_replay(result)
    print("\n".join(summary_lines(summary)))
    assert summary["jobs"] == 8 * 24
    assert (summary["lost"], summary["duplicates"], summary["wrong_status"]) == (0, 0, 0), summary[
        "wrong_status_examples"
    ]
    assert sorted({f.kind for f in result.faults}) == sorted(KINDS)
    assert len(result.faults) == len(KINDS)
    for fault in result.faults:
        assert fault.error is None, fault
        assert fault.recovery_s is not None and fault.recovery_s > 0, fault
        assert fault.pilots_back_s is not None and fault.target
    assert summary["failover_s"] is not None and summary["failover_s"] <= FAILOVER_LIMIT_S
    assert summary["double_ready_looks"] == 0 and summary["chaos_ok"], summary["chaos_problems"]
    servers = {f.kind: f for f in result.faults}
    for name in ("postgres", "broker"):  # restarted, then a dispatcher ready again
        restarted = servers[name].restarted_s
        assert restarted is not None and servers[name].recovery_s >= restarted  # type: ignore[operator]

    write_report(result, summary, tmp_path / "report")
    doc = orjson.loads((tmp_path / "report" / "report.json").read_bytes())
    assert [f["kind"] for f in doc["chaos_faults"]] == [f.kind for f in result.faults]
    page = (tmp_path / "report" / "report.html").read_text()
    assert 'id="chaos"' in page and all(f"<td>{k}</td>" in page for k in KINDS)
