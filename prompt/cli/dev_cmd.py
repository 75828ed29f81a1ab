"""``prompt dev``: embedded stack + dispatcher + K pilots in one command, for trying it by hand.

Ctrl-C (or SIGTERM) stops the pilots and drains the dispatcher; it stops the stack only if it
started it (one already running, e.g. from ``prompt stack up``, is left running).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import uuid
from pathlib import Path
from urllib.parse import quote

from pydantic import SecretStr

from prompt.cli.common import run_service
from prompt.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dev", help="stack + dispatcher + pilots in one command (Ctrl-C stops)")
    p.add_argument("--pilots", type=int, default=2)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--tasks", type=Path, help="task YAML (default: the built-in sleep task)")
    p.add_argument("--sleep-s", type=float, default=2.0, help="built-in sleep task duration")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from prompt.stack import owned_stack
    from prompt.tasks import load_task_file
    from prompt.testing.processes import InProcessDispatcher, start_pilot
    from prompt.testing.tasks import apply_task_file, sleep_task_file

    tasks = (
        load_task_file(args.tasks.read_text()) if args.tasks else sleep_task_file(
            mean_s=args.sleep_s, sigma=0.3, distribution="lognormal")
    )  # fmt: skip
    if settings.pilot_token is None:
        settings = settings.with_overrides(pilot_token=SecretStr(uuid.uuid4().hex))
    operator = settings.operator_token or SecretStr(secrets.token_urlsafe(18))
    settings = settings.with_overrides(operator_token=operator)
    ui_token = quote(operator.get_secret_value(), safe="")  # the page reads it from the fragment

    async def main(stop: asyncio.Event) -> None:
        async with owned_stack(settings) as endpoints:
            on_stack = settings.with_overrides(
                database_url=endpoints.database_url, kafka_bootstrap=endpoints.kafka_bootstrap
            )
            await run_dev(on_stack, stop)

    async def run_dev(settings: Settings, stop: asyncio.Event) -> None:
        pilots = []
        try:
            await apply_task_file(settings, tasks)
            async with InProcessDispatcher(settings) as running:
                log_dir = settings.state_dir / "logs"
                pilots = [
                    start_pilot(settings, running.pilot_port, f"dev-{i}", slots=args.slots,
                                log_dir=log_dir)
                    for i in range(args.pilots)
                ]  # fmt: skip
                state = f"--state-dir {settings.state_dir}"
                print(
                    f"\nprompt dev is up: {args.pilots} pilots x {args.slots} slots, "
                    f"tasks {[t.name for t in tasks.tasks]}\n"
                    f"  ui       http://127.0.0.1:{running.http_port}/ui#token={ui_token}\n"
                    f"  metrics  http://127.0.0.1:{running.http_port}/metrics\n"
                    f"  status   http://127.0.0.1:{running.http_port}/status   "
                    f"or: prompt status --url http://127.0.0.1:{running.http_port}\n"
                    f"  send     prompt {state} send visit --filter r_57\n"
                    f"  logs     {log_dir}/\nCtrl-C stops everything.\n",
                    flush=True,
                )
                await stop.wait()
                for pilot in pilots:
                    await asyncio.to_thread(pilot.terminate, 60)
        finally:
            for pilot in pilots:
                if pilot.proc.poll() is None:
                    pilot.kill()

    return run_service(main)
