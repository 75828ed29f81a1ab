"""``--capacity-drop`` through the real stack: half the pilots gone for a window, every job
still accounted for exactly once, and nothing run on a pilot while it was gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.capacity import CapacityDrop
from loadtest.plan import Faults, Timing
from loadtest.replay import ReplayConfig, run_replay
from loadtest.schedule import synthetic_night
from loadtest.summary import summarize_replay, summary_lines
from prompt.stack import Endpoints
from tests.helpers import stack_settings

pytestmark = pytest.mark.stack


async def test_capacity_drop_loses_nothing_and_runs_nothing_on_the_pilots_gone(
    prompt_stack: Endpoints, tmp_path: Path
) -> None:
    settings = stack_settings(prompt_stack, tmp_path / "state")
    night = synthetic_night(seed=5).select(6, "40")
    config = ReplayConfig(
        timing=Timing(speed=20),
        faults=Faults(capacity_drop=CapacityDrop(0.5, 40.0, 120.0)),
        detectors=tuple(range(8)), pilots=2, slots=4, run_mean_s=6.0, seed=4, sample_s=0.5,
        log_dir=tmp_path / "logs", quiet=True, dispatch_order="fifo",
    )  # fmt: skip
    result = await run_replay(settings, night, config)
    summary = summarize_replay(result)
    assert summary["jobs"] == 6 * 8
    assert (summary["lost"], summary["duplicates"], summary["wrong_status"]) == (0, 0, 0)
    assert len(result.records) == summary["jobs"]
    cut = result.capacity
    assert cut is not None and cut.dropped_wall is not None and cut.restored_wall is not None
    assert len(cut.victims) == 1 and cut.dropped_wall < cut.restored_wall
    gone = (result.started_wall + cut.dropped_wall, result.started_wall + cut.restored_wall)
    during = [r for r in result.records if r["started"] and gone[0] < r["started"] < gone[1]]
    assert during, "the window must hold started jobs for this check to mean anything"
    assert all(r["pilot"] not in cut.victims for r in during)
    doc = summary["capacity_drop"]
    assert doc["pilots_dropped"] == cut.victims and doc["window_night_s"] == [40.0, 120.0]
    assert sum(doc["visits_by_phase"].values()) == 6
    assert summary["dispatch_order"] == "fifo"
    text = "\n".join(summary_lines(summary))
    assert "capacity drop 0.5" in text and "dispatch order fifo" in text
