"""Observing nights to replay: a synthetic night, or one imported from a visit table.

Imported tables may be CSV, an OpSim/rubin_scheduler SQLite output (table ``observations``)
or Parquet (needs pyarrow). Columns are recognised by the names those tools use (see
``COLUMN_ALIASES``); ``--columns field=column,...`` overrides any of them.
"""

from __future__ import annotations

import csv
import math
import random
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prompt.extras import import_optional

MJD_EPOCH = datetime(1858, 11, 17, tzinfo=UTC)

# field -> accepted column names, first found wins (matched case-insensitively)
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "start_mjd": ("observationStartMJD", "obs_start_mjd", "obs_start_mjd_tai", "mjd",
                  "expMJD", "exp_midpt_mjd"),
    "start_iso": ("obs_start_utc", "obs_start", "observationStartTime", "timestamp",
                  "date_obs", "obs_start_time"),
    "exp_time": ("visitExposureTime", "exp_time_s", "exp_time", "exposure_time",
                 "open_interval_s", "exptime", "shut_time"),
    "n_snaps": ("numExposures", "n_exp", "nexp", "snaps", "n_snaps"),
    "band": ("band", "filter", "physical_filter"),
    "physical_filter": ("physical_filter",),
    "ra": ("fieldRA", "ra_deg", "ra", "s_ra"),
    "dec": ("fieldDec", "dec_deg", "dec", "s_dec"),
    "rotation": ("rotSkyPos", "rot_sky_pos_deg", "sky_rotation_deg", "sky_rotation",
                 "rotTelPos"),
    "visit_id": ("observationId", "visit_id", "exposure_id", "visit", "obsid"),
    "survey": ("survey_name", "science_program", "scheduler_note", "note", "target_name"),
    "note": ("scheduler_note", "note"),
    "day_obs": ("day_obs", "dayobs"),
    "seq_num": ("seq_num", "seqnum"),
}  # fmt: skip
REQUIRED = ("exp_time", "band", "ra", "dec")


@dataclass(frozen=True)
class PlannedVisit:
    index: int
    visit_id: int
    start: float
    """Seconds since the night's first visit start."""
    exp_time: float
    n_snaps: int
    band: str
    physical_filter: str
    ra: float
    dec: float
    rotation: float
    survey: str
    note: str
    day_obs: int
    seq_num: int

    @property
    def visit_time(self) -> float:
        """Shutter open plus one 2 s read-out per snap."""
        return self.exp_time + 2.0 * self.n_snaps


@dataclass(frozen=True)
class Night:
    source: str
    start_utc: datetime
    visits: list[PlannedVisit]

    def select(self, count: int | None = None, start: str | None = None) -> Night:
        """A stretch: from visit index or ISO UTC time ``start``, ``count`` visits."""
        visits = self.visits
        if start:
            if start.isdigit():
                visits = visits[int(start) :]
            else:
                when = datetime.fromisoformat(start.replace("Z", "+00:00"))
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                offset = (when - self.start_utc).total_seconds()
                visits = [v for v in visits if v.start >= offset]
        if count is not None:
            visits = visits[:count]
        if not visits:
            raise ValueError("the selection holds no visit")
        t0 = visits[0].start
        rebased = [
            PlannedVisit(**{**vars(v), "index": i, "start": v.start - t0})
            for i, v in enumerate(visits)
        ]
        return Night(self.source, self.start_utc + timedelta(seconds=t0), rebased)

    @property
    def duration_s(self) -> float:
        last = self.visits[-1]
        return last.start + last.visit_time


def physical_filter(band: str) -> str:
    return {"u": "u_24", "g": "g_6", "r": "r_57", "i": "i_39", "z": "z_20", "y": "y_10"}.get(
        band, band
    )


def synthetic_night(seed: int = 0, visits: int = 1000, day_obs: int = 20250501) -> Night:
    """A plausible LSST night, deterministic by seed: mostly 1x30 s (some 2x15 s) survey visits
    with ~5 s of read-out and slew between them (1000 visits take ~10 h), occasional long
    slews, ~2 min filter changes, a deep-drilling block, twilight visits."""
    rng = random.Random(seed)
    start_utc = datetime(day_obs // 10000, day_obs // 100 % 100, day_obs % 100, 23, 10, tzinfo=UTC)
    bands = ["g", "r", "i", "z", "y", "u"]
    weights = [0.22, 0.28, 0.22, 0.14, 0.09, 0.05]
    band = "r"
    ra, dec = rng.uniform(120, 180), rng.uniform(-60, -10)
    planned: list[PlannedVisit] = []
    t = 0.0
    ddf_at = int(visits * rng.uniform(0.4, 0.6))
    for i in range(visits):
        twilight = i < visits * 0.03 or i > visits * 0.97
        in_ddf = ddf_at <= i < ddf_at + 60
        if i and rng.random() < 1 / 90 and not in_ddf:
            band = rng.choices(bands, weights)[0]
            t += 120.0  # filter change
        if in_ddf:
            survey, note, exp, snaps = "DD:COSMOS", "DD:COSMOS", 30.0, 2
            ra, dec = 150.12 + rng.gauss(0, 0.05), 2.21 + rng.gauss(0, 0.05)
            if i == ddf_at:
                band = "g"
            elif (i - ddf_at) % 12 == 0:
                band = bands[((i - ddf_at) // 12) % 5]
                t += 120.0
        elif twilight:
            survey, note, exp, snaps = "twilight_near_sun", "twilight_near_sun, 2", 15.0, 1
            ra, dec = (ra + rng.uniform(1, 4)) % 360, max(-85.0, min(5.0, dec + rng.gauss(0, 2)))
        else:
            pair = rng.random() < 0.7
            survey = "BLOCK-365" if pair else "BLOCK-407"
            note = f"pair_33, {band}{band}, a" if pair else "blob_long"
            exp, snaps = 30.0, (2 if rng.random() < 0.2 else 1)
            step = rng.expovariate(1 / 3.5)
            ra = (ra + step * math.cos(rng.uniform(0, 2 * math.pi))) % 360
            dec = max(-85.0, min(10.0, dec + step * math.sin(rng.uniform(0, 2 * math.pi))))
        rotation = rng.uniform(-90, 90)
        planned.append(
            PlannedVisit(
                index=i, visit_id=i, start=t, exp_time=exp, n_snaps=snaps, band=band,
                physical_filter=physical_filter(band), ra=round(ra, 6), dec=round(dec, 6),
                rotation=round(rotation, 3), survey=survey, note=note, day_obs=day_obs,
                seq_num=i + 1,
            )
        )  # fmt: skip
        slew = 1.0 + rng.expovariate(1 / 1.5) if rng.random() < 0.98 else rng.uniform(20, 60)
        t += exp + 2.0 * snaps + slew
    return Night(f"synthetic(seed={seed}, visits={visits})", start_utc, planned)


def _rows(path: Path) -> Iterable[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".db", ".sqlite", ".sqlite3"):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            table = "observations" if "observations" in tables else (tables[0] if tables else None)
            if table is None:
                raise ValueError(f"{path}: no table")
            yield from (dict(r) for r in conn.execute(f'SELECT * FROM "{table}"'))
        return
    if suffix == ".parquet":
        pq = import_optional("pyarrow.parquet")
        yield from pq.read_table(path).to_pylist()
        return
    with path.open(newline="") as fh:
        yield from csv.DictReader(fh)


def _resolve_columns(header: Iterable[str], overrides: dict[str, str]) -> dict[str, str]:
    lower = {h.lower(): h for h in header}
    found: dict[str, str] = {}
    for field, aliases in COLUMN_ALIASES.items():
        if field in overrides:
            name = overrides[field]
            if name.lower() not in lower:
                raise ValueError(f"--columns {field}={name}: no such column")
            found[field] = lower[name.lower()]
            continue
        for alias in aliases:
            if alias.lower() in lower:
                found[field] = lower[alias.lower()]
                break
    missing = [f for f in REQUIRED if f not in found]
    if "start_mjd" not in found and "start_iso" not in found:
        missing.append("start_mjd|start_iso")
    if missing:
        raise ValueError(
            f"no column found for {missing}; columns are {sorted(header)}; "
            "name them with --columns field=column"
        )
    return found


def _time(row: dict[str, Any], cols: dict[str, str]) -> datetime:
    if "start_mjd" in cols and row.get(cols["start_mjd"]) not in (None, ""):
        return MJD_EPOCH + timedelta(days=float(row[cols["start_mjd"]]))
    text = str(row[cols["start_iso"]]).replace("Z", "+00:00")
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def load_night(path: Path, overrides: dict[str, str] | None = None) -> Night:
    rows = list(_rows(path))
    if not rows:
        raise ValueError(f"{path}: no visits")
    cols = _resolve_columns(rows[0].keys(), overrides or {})
    parsed = sorted(((_time(r, cols), r) for r in rows), key=lambda x: x[0])
    t0 = parsed[0][0]

    def get(row: dict[str, Any], field: str, default: Any) -> Any:
        value = row.get(cols[field]) if field in cols else None
        return default if value in (None, "") else value

    visits = []
    for i, (when, row) in enumerate(parsed):
        band_raw = str(get(row, "band", "r"))
        band = band_raw.split("_", 1)[0][:1] if "_" in band_raw else band_raw
        exp = float(get(row, "exp_time", 30.0))
        snaps = int(float(get(row, "n_snaps", 1)))
        survey = str(get(row, "survey", "")).split(",", 1)[0].strip()
        visits.append(
            PlannedVisit(
                index=i,
                visit_id=int(float(get(row, "visit_id", i))),
                start=(when - t0).total_seconds(),
                exp_time=exp,
                n_snaps=max(1, snaps),
                band=band,
                physical_filter=str(get(row, "physical_filter", physical_filter(band))),
                ra=float(get(row, "ra", 0.0)),
                dec=float(get(row, "dec", 0.0)),
                rotation=float(get(row, "rotation", 0.0)) % 360.0,
                survey=survey or "BLOCK-365",
                note=str(get(row, "note", "")),
                day_obs=int(
                    get(row, "day_obs", int((when - timedelta(hours=12)).strftime("%Y%m%d")))
                ),
                seq_num=int(float(get(row, "seq_num", i + 1))),
            )
        )
    return Night(str(path), t0, visits)


def parse_columns(spec: str | None) -> dict[str, str]:
    """``start_mjd=obs_start_mjd,band=filter`` -> dict; unknown fields are an error."""
    if not spec:
        return {}
    out: dict[str, str] = {}
    for part in spec.split(","):
        field, _, column = part.partition("=")
        field = field.strip()
        if field not in COLUMN_ALIASES or not column.strip():
            raise ValueError(f"--columns: {part!r} (fields: {', '.join(COLUMN_ALIASES)})")
        out[field] = column.strip()
    return out
