"""A short replayed stretch through the real stack, with faults, and its report in Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtest.plan import IMAGE, Faults, Timing
from loadtest.replay import ReplayConfig, ReplayResult, run_replay
from loadtest.report import PLOTS, write_report
from loadtest.schedule import synthetic_night
from loadtest.science import read_length_prefixed
from loadtest.summary import summarize_replay
from prompt.pipeline.alerts import decode, validate
from prompt.s3 import s3_env
from prompt.stack import Endpoints
from tests.helpers import run_prompt, stack_settings

pytestmark = pytest.mark.stack

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is needed for the report check (`make test` installs it)"
    return path


async def test_replay_with_faults_accounts_for_every_job(
    prompt_stack: Endpoints, tmp_path: Path
) -> None:
    settings = stack_settings(prompt_stack, tmp_path / "state")
    night = synthetic_night(seed=5).select(6, "40")
    config = ReplayConfig(
        timing=Timing(speed=20),
        faults=Faults(missing_images=0.1, duplicate_events=0.1, late_images=0.05,
                      canceled_visits=0.2, kill_pilots=1),
        detectors=tuple(range(24)), pilots=2, slots=16, run_mean_s=6.0, seed=11, sample_s=0.5,
        log_dir=tmp_path / "logs", quiet=True,
    )  # fmt: skip
    result = await run_replay(settings, night, config)
    summary = summarize_replay(result)
    plan = result.plan
    assert plan.canceled and plan.missing and result.kills, "the seed must inject every fault"
    assert summary["jobs"] == 6 * 24
    assert (summary["lost"], summary["duplicates"], summary["wrong_status"]) == (0, 0, 0)
    statuses = Counter(r["status"] for r in result.records)
    assert statuses["canceled"] == 24 * len(plan.canceled)
    assert statuses["expired"] == len(plan.missing)
    assert statuses["finished"] + statuses["late"] == plan.jobs - statuses["canceled"] - len(
        plan.missing
    )
    assert summary["budget_met"] is not None and summary["budget_met"] > 0.9
    check_night_fields(result, summary)

    report = write_report(result, summary, tmp_path / "report")
    doc = orjson.loads((tmp_path / "report" / "report.json").read_bytes())
    assert len(doc["timeline"]["samples"]) == len(result.samples)
    assert [r["visit"] for r in doc["timeline"]["driver_lag_by_visit"]] == list(range(6))
    await asyncio.to_thread(check_in_chromium, report, tmp_path)


def check_night_fields(result: ReplayResult, summary: dict[str, Any]) -> None:
    """Driver lag and validity, samples of every role, lag scraped from /metrics, the
    broker's partition sizes: all there and consistent with what was sent."""
    assert isinstance(summary["valid"], bool)
    assert summary["valid"] or summary["invalid_reasons"]
    assert len(result.driver_lags) == len(result.plan.events)
    assert summary["driver_lag_s"]["max"] >= summary["driver_lag_s"]["p50"] >= 0
    assert result.samples, "sampled during the run"
    # The session's stack is external to the replay: its broker and PostgreSQL are not sampled
    # here (a replay that starts its own stack samples them too).
    with_memory = [x for x in result.samples if x.rss_mib]
    assert with_memory and all({"dispatcher", "pilots"} <= set(x.rss_mib) for x in with_memory)
    assert all(x.cpu_pct["pilots"] >= 0 for x in result.samples)
    assert any(x.lag for x in result.samples) and any(
        x.loop_lag_max_ms is not None for x in result.samples
    ), "the dispatcher's /metrics was scraped"
    assert any(x.fetch_ms is not None for x in result.samples), "the broker was probed"
    fl = summary["first_last_tenth"]
    assert fl["latency_p99_s"]["first"] is not None and fl["latency_p99_s"]["last"] is not None
    assert {"checks", "ok", "judged"} <= set(summary["trend"])
    images = sum(1 for e in result.plan.events if e.kind == IMAGE)
    image_parts = {k: v for k, v in summary["topic_batches"].items() if "image-arrival" in k}
    assert len(image_parts) == result.config.image_partitions
    assert sum(v["records"] for v in image_parts.values()) == images
    completions = [v for k, v in summary["topic_batches"].items() if "completion" in k]
    assert sum(v["records"] for v in completions) == len(result.records)


def check_in_chromium(report: Path, tmp_path: Path) -> None:
    dom = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=10000", "--dump-dom", report.resolve().as_uri()],
        capture_output=True, timeout=60, check=True,
    ).stdout.decode()  # fmt: skip
    assert f'data-plots-rendered="{len(PLOTS)}"' in dom, "every plot decoded in Chromium"
    assert 'id="validity"' in dom
    for name in PLOTS:
        assert f'id="{name}"' in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium2'}",
         "--window-size=1300,1800", f"--screenshot={shot}", report.resolve().as_uri()],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert shot.stat().st_size > 50_000


def test_alert_replay_from_the_command_line(prompt_stack: Endpoints, tmp_path: Path) -> None:
    """``prompt replay --payload alert``: data generated, alerts judged, --alerts-out written."""
    assert prompt_stack.s3 is not None
    out = tmp_path / "alerts.bin"
    summary_path = tmp_path / "summary.json"
    proc = run_prompt(
        "--state-dir", str(tmp_path / "state"), "replay", "--payload", "alert",
        "--visits", "2", "--detectors", "90-97", "--speed", "10", "--quiet",
        "--data-root", str(tmp_path / "data"), "--alerts-out", str(out),
        "--json", str(summary_path), "--out", str(tmp_path / "report"),
        env={"PROMPT_DATABASE_URL": prompt_stack.database_url,
             "PROMPT_KAFKA_BOOTSTRAP": prompt_stack.kafka_bootstrap, **s3_env(prompt_stack.s3)},
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    summary = orjson.loads(summary_path.read_bytes())
    assert summary["finished"] == 16 and summary["lost"] == 0
    science = summary["science"]
    assert science["alerts"] > 0 and science["alerts_invalid"] == 0
    assert summary["recall"] >= 0.9 and summary["spurious_per_detector_visit"] <= 2
    values = read_length_prefixed(out)
    assert len(values) == science["alerts"]
    assert all(validate(decode(v)) for v in values)
    # Both visits are in r: the second reads no calibration from the store (S3).
    loads = list(summary["store_loads_by_visit"].values())
    assert [v["calib_loads"] for v in loads] == [8 * 3, 0]
    # Each raw PUT to S3, then notified; one ranged header read per exposure, no pixels.
    storage = summary["storage"]
    assert storage["puts"] == 16 and storage["put_failures"] == 0
    assert storage["header_reads"] == 2 and storage["header_bytes_per_read"] == 2 * 2880
    assert "recall (S/N >= 10)" in proc.stdout.decode()


def test_sigterm_stops_a_replay_and_everything_it_started(tmp_path: Path) -> None:
    """As `timeout` or a CI runner stops it: the replay's dispatcher, pilots, broker and
    database are stopped too, none is left reparented to init."""
    import os
    import signal
    import sys
    import time

    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prompt", "--state-dir", str(tmp_path / "stack"), "replay",
         "--visits", "20", "--speed", "20", "--detectors", "0-3", "--quiet",
         "--out", str(tmp_path / "out")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    parent = psutil.Process(proc.pid)
    family: list[psutil.Process] = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:  # until the dispatcher and both pilots run
            family = parent.children(recursive=True)
            lines = [_cmdline(p) for p in family]
            if sum(" pilot " in c for c in lines) >= 2 and any(" serve" in c for c in lines):
                break
            assert proc.poll() is None, "the replay ended before it was stopped"
            time.sleep(0.2)
        else:
            raise AssertionError("the replay's service never came up")
        family = parent.children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 128 + signal.SIGTERM
        _gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, [_cmdline(p) for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def _cmdline(process: Any) -> str:
    """A child's command line, or "" for one that ended (or is a zombie) since it was listed:
    the stack's start-up runs short-lived helpers (initdb, pg_ctl, the unprivileged-user
    wrapper), and reading one of those as it exits raises."""
    import psutil

    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""
