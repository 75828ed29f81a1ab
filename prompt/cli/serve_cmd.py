"""``prompt serve``: the dispatcher."""

from __future__ import annotations

import argparse
import asyncio

from prompt.cli.common import fail, run_service
from prompt.config import Settings
from prompt.stack import StackNotRunningError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the dispatcher (Kafka intake, pilot channel, /metrics)")
    p.add_argument("--pilot-port", type=int, help="pilot channel port (env PROMPT_PILOT_PORT)")
    p.add_argument("--http-port", type=int, help="/metrics port (env PROMPT_HTTP_PORT)")
    p.add_argument("--name", help="dispatcher role name (env PROMPT_DISPATCHER_NAME)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from prompt.dispatcher.service import dispatcher_config, serve

    settings = settings.with_overrides(
        pilot_port=args.pilot_port, http_port=args.http_port, dispatcher_name=args.name
    )
    try:
        dispatcher_config(settings)
    except ValueError as exc:
        return fail(str(exc))

    async def main(stop: asyncio.Event) -> None:
        await serve(settings, stop)

    try:
        return run_service(main)
    except StackNotRunningError as exc:
        return fail(str(exc))
