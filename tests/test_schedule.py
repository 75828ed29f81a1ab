"""Night schedules: the synthetic generator, imports, selection, and the fault plan."""

from __future__ import annotations

import sqlite3
import statistics
from pathlib import Path

import pytest

from loadtest.plan import CANCEL, IMAGE, NEXT_VISIT, Faults, Timing, build_plan
from loadtest.schedule import load_night, parse_columns, synthetic_night

DATA = Path(__file__).parent / "data"


def test_synthetic_night_is_plausible_and_deterministic() -> None:
    night = synthetic_night(seed=3)
    assert len(night.visits) == 1000
    assert 9.0 < night.duration_s / 3600 < 11.5
    gaps = [b.start - a.start for a, b in zip(night.visits, night.visits[1:], strict=False)]
    assert 32 < statistics.median(gaps) < 40
    changes = sum(a.band != b.band for a, b in zip(night.visits, night.visits[1:], strict=False))
    assert 5 < changes < 40
    assert {v.n_snaps for v in night.visits} == {1, 2}
    assert {"DD:COSMOS", "BLOCK-365", "twilight_near_sun"} <= {v.survey for v in night.visits}
    assert all(-90 <= v.dec <= 90 and 0 <= v.ra < 360 for v in night.visits)
    assert synthetic_night(seed=3).visits == night.visits
    assert synthetic_night(seed=4).visits != night.visits


def test_schedview_csv_columns_are_recognised() -> None:
    night = load_night(DATA / "schedview_sample.csv")
    v = night.visits
    assert [x.band for x in v] == ["r", "r", "g", "g"]
    assert v[0].physical_filter == "r_57" and v[0].n_snaps == 2 and v[3].exp_time == 15
    assert v[1].start == pytest.approx(41.0, abs=0.01)
    assert v[2].survey == "pair_33" and v[2].rotation == pytest.approx(306.19)
    assert night.start_utc.isoformat().startswith("2025-05-01T23:01:11")


def test_consdb_export_columns_are_recognised() -> None:
    night = load_night(DATA / "consdb_sample.csv")
    v = night.visits
    assert len(v) == 3 and v[0].visit_id == 2025041700470
    assert v[0].physical_filter == "i_39" and v[0].exp_time == pytest.approx(30.97)
    assert v[2].survey == "BLOCK-365" and v[0].n_snaps == 1


def test_opsim_sqlite_output_is_read(tmp_path: Path) -> None:
    db = tmp_path / "baseline.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE observations (observationId INT, observationStartMJD REAL,"
            " visitExposureTime REAL, numExposures INT, filter TEXT, fieldRA REAL,"
            " fieldDec REAL, rotSkyPos REAL, note TEXT)"
        )
        conn.executemany(
            "INSERT INTO observations VALUES (?,?,?,?,?,?,?,?,?)",
            [(i, 60796.9 + i * 40 / 86400, 30, 1, "z", 10.0 + i, -20.0, 5.0, "blob_long, z")
             for i in range(5)],
        )  # fmt: skip
    night = load_night(db)
    assert len(night.visits) == 5 and night.visits[4].start == pytest.approx(160, abs=0.01)
    assert night.visits[0].band == "z" and night.visits[0].survey == "blob_long"


def test_parquet_night_is_read(tmp_path: Path) -> None:
    from pyarrow import csv, parquet

    csv_night = load_night(DATA / "schedview_sample.csv")
    table = csv.read_csv(DATA / "schedview_sample.csv")
    parquet.write_table(table, tmp_path / "night.parquet")
    night = load_night(tmp_path / "night.parquet")
    assert night.visits == csv_night.visits and len(night.visits) == 4
    assert night.start_utc == csv_night.start_utc


def test_column_overrides_and_clear_errors(tmp_path: Path) -> None:
    odd = tmp_path / "odd.csv"
    odd.write_text("when,shutter,flt,alpha,delta\n2025-05-02T01:00:00,30,i,10,-5\n")
    with pytest.raises(ValueError, match="no column found"):
        load_night(odd)
    night = load_night(
        odd, parse_columns("start_iso=when,exp_time=shutter,band=flt,ra=alpha,dec=delta")
    )
    assert night.visits[0].band == "i" and night.visits[0].ra == 10
    with pytest.raises(ValueError, match="no such column"):
        load_night(odd, parse_columns("band=nope"))
    with pytest.raises(ValueError, match="fields"):
        parse_columns("colour=flt")


def test_selection_by_count_index_and_time() -> None:
    night = synthetic_night(seed=1)
    part = night.select(5, "10")
    assert len(part.visits) == 5 and part.visits[0].start == 0
    assert part.visits[0].seq_num == night.visits[10].seq_num
    when = night.start_utc.timestamp() + night.visits[100].start
    from datetime import UTC, datetime

    iso = datetime.fromtimestamp(when, UTC).isoformat()
    assert night.select(1, iso).visits[0].seq_num == night.visits[100].seq_num
    with pytest.raises(ValueError, match="no visit"):
        night.select(5, "99999")


def test_fault_plan_is_deterministic_and_accounts_for_every_job() -> None:
    night = synthetic_night(seed=1).select(40)
    faults = Faults(missing_images=0.05, duplicate_events=0.05, canceled_visits=0.1, kill_pilots=2)
    plan = build_plan(night, list(range(189)), Timing(speed=20), faults, seed=7)
    again = build_plan(night, list(range(189)), Timing(speed=20), faults, seed=7)
    assert [(e.wall, e.kind, e.detector) for e in plan.events] == [
        (e.wall, e.kind, e.detector) for e in again.events
    ]
    assert plan.jobs == 40 * 189
    assert 0 < len(plan.canceled) < 10 and len(plan.kill_times) == 2
    for (vi, d), allowed in plan.expected.items():
        if vi in plan.canceled:
            assert allowed == {"canceled"}
        elif (vi, d) in plan.missing:
            assert allowed == {"expired"}
    kinds = [e.kind for e in plan.events]
    assert kinds.count(NEXT_VISIT) > 40 and kinds.count(CANCEL) == len(plan.canceled)
    images = [e for e in plan.events if e.kind == IMAGE]
    assert all((e.visit.index, e.detector) not in plan.missing for e in images)
    # every next-visit leads its first image by at least the (scaled) 20 s Rubin guarantees
    first_image: dict[int, float] = {}
    for e in images:
        first_image.setdefault(e.visit.index, e.wall)
    for e in plan.events:
        if e.kind == NEXT_VISIT and e.visit.index in first_image:
            assert first_image[e.visit.index] - e.wall >= 20 / 20


def test_every_exposure_of_a_night_has_its_own_obs_id() -> None:
    """Snaps of two-snap visits and one-snap visits never share a sequence number (the
    dispatcher reads one header per obs_id: a shared one gave a visit's images to another)."""
    from dataclasses import replace

    from loadtest.images import exposure_seq

    visits = synthetic_night(seed=1, visits=4).visits
    mixed = [
        replace(visits[0], seq_num=97, n_snaps=2),
        replace(visits[1], seq_num=970, n_snaps=1),
        replace(visits[2], seq_num=971, n_snaps=1),
        replace(visits[3], seq_num=98, n_snaps=2),
    ]
    seqs = [exposure_seq(v, s) for v in mixed for s in range(v.n_snaps)]
    assert len(set(seqs)) == len(seqs) == 6
    assert exposure_seq(mixed[1], 0) == 970  # a one-snap visit keeps its own number
