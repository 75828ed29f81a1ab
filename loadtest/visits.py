"""The replay's visits as the service sees them: group ids, next-visit events, and for the alert
payload the synthetic observatory's visits and the data it generates for them."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Any

from loadtest.schedule import Night, PlannedVisit
from prompt.calib.regions import region_of
from prompt.events import NextVisit
from prompt.sim import SimVisit, generate, read_truth
from prompt.timescale import MJD_UNIX_EPOCH, TAI_MINUS_UTC_S

if TYPE_CHECKING:
    from loadtest.replay import ReplayConfig


def group_id_for(night: Night, v: PlannedVisit, run_id: str) -> str:
    when = night.start_utc.timestamp() + v.start
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    return f"{stamp}.{int(when * 1000) % 1000:03d}-{run_id}"


def next_visit(
    night: Night, v: PlannedVisit, group: str, start_wall: float, speed: float
) -> NextVisit:
    return NextVisit(
        instrument="LSSTCam",
        group_id=group,
        survey=v.survey,
        filters=v.physical_filter,
        position=(v.ra, v.dec),
        coordinate_system=2,
        camera_angle=v.rotation,
        rotation_system=2,
        start_time=start_wall + TAI_MINUS_UTC_S,
        duration=v.visit_time / speed,
        nimages=v.n_snaps,
        dome=2,
        sal_index=1,
        script_sal_index=v.visit_id,
        efd_stamp=time.time(),
    )


def for_alerts(night: Night) -> Night:
    """The night as the synthetic observatory observes it: each visit pointed at the centre of
    its template region, one snap (the simulator makes one raw per visit and detector)."""
    visits = []
    for v in night.visits:
        region = region_of(v.ra, v.dec)
        visits.append(dataclasses.replace(v, ra=region.ra, dec=region.dec, n_snaps=1))
    return Night(night.source, night.start_utc, visits)


def sim_visits(night: Night, run_id: str) -> list[SimVisit]:
    return [
        SimVisit(
            day_obs=v.day_obs,
            seq_num=v.seq_num,
            group_id=group_id_for(night, v, run_id),
            physical_filter=v.physical_filter,
            ra=v.ra,
            dec=v.dec,
            exp_time=v.exp_time,
            mjd=(night.start_utc.timestamp() + v.start + TAI_MINUS_UTC_S) / 86400 + MJD_UNIX_EPOCH,
        )
        for v in night.visits
    ]


async def prepare_data(night: Night, config: ReplayConfig, run_id: str) -> list[dict[str, Any]]:
    """Generate what the alert payload reads; returns the truth table."""
    visits = sim_visits(night, run_id)
    root = config.data_root.resolve()
    t0 = time.monotonic()
    if not config.quiet:
        print(f"generating data in {root} ({len(visits)} visits x {len(config.detectors)} "
              "detectors) ...", flush=True)  # fmt: skip
    await asyncio.to_thread(generate, root, visits, config.detectors, config.sim)
    if not config.quiet:
        print(f"  data ready in {time.monotonic() - t0:.1f} s", flush=True)
    detectors = set(config.detectors)
    return [row for v in visits for row in read_truth(root, v) if row["detector"] in detectors]
