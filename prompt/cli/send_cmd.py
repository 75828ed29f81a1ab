"""``prompt send visit``: play the observatory by hand: a next-visit, then the image burst."""

from __future__ import annotations

import argparse
import asyncio
import time

from prompt.cli.common import fail
from prompt.config import Settings
from prompt.stack import StackNotRunningError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("send", help="publish events as the observatory would (for trying it)")
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    v = what.add_parser("visit", help="a next-visit, then after --lead seconds its image burst")
    v.add_argument("--group", help="group id (default: now, ISO)")
    v.add_argument("--instrument", default="LSSTCam")
    v.add_argument("--filter", default="r_57")
    v.add_argument("--survey", default="BLOCK-365")
    v.add_argument("--ra", type=float, default=150.0)
    v.add_argument("--dec", type=float, default=-30.0)
    v.add_argument("--detectors", default="0-188", help="e.g. 0-188 or 0,5,9")
    v.add_argument("--snaps", type=int, default=1)
    v.add_argument("--lead", type=float, default=2.0, help="seconds between next-visit and images")
    v.add_argument("--no-images", action="store_true", help="only the next-visit")
    v.add_argument("--cancel", action="store_true", help="send nextVisitCanceled instead of images")
    p.set_defaults(handler=run)


def _detectors(text: str) -> list[int]:
    from prompt.tasks.spec import Detectors

    return Detectors(include=text).resolve()


def run(args: argparse.Namespace, settings: Settings) -> int:
    from prompt.testing.traffic import EventSender, image_arrivals, next_visit_for

    try:
        detectors = _detectors(args.detectors)
    except ValueError as exc:
        return fail(str(exc))
    group = args.group or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + (
        f".{int(time.time() * 1000) % 1000:03d}"
    )

    async def main() -> None:
        async with EventSender(settings) as sender:
            nv = next_visit_for(
                group, start_utc=time.time() + args.lead, filters=args.filter,
                survey=args.survey, ra=args.ra, dec=args.dec, nimages=args.snaps,
                instrument=args.instrument,
            )  # fmt: skip
            await sender.next_visit(nv)
            print(f"next-visit {group} ({args.instrument}, {args.filter})")
            if args.no_images:
                return
            await asyncio.sleep(args.lead)
            if args.cancel:
                await sender.cancel(group)
                print(f"canceled {group}")
                return
            for snap in range(args.snaps):
                await sender.images(image_arrivals(nv, detectors, snap=snap))
            print(f"{len(detectors) * args.snaps} image-arrivals for {group}")

    try:
        asyncio.run(main())
    except StackNotRunningError as exc:
        return fail(str(exc))
    return 0
