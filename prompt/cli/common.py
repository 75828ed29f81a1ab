"""Small helpers shared by subcommands."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson


def print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"prompt: error: {message}\n")
    return code


def dump_tasks() -> None:
    """Write every asyncio task and where it waits to stderr (SIGUSR1: for a service that
    seems wedged, the asyncio counterpart of ``py-spy dump``)."""
    import io

    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=out)
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()


def run_service(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run ``main(stop)`` on uvloop; SIGTERM/SIGINT set ``stop`` (a second one force-exits);
    SIGUSR1 dumps the tasks."""
    import uvloop

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                raise SystemExit(130)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        await main(stop)

    uvloop.run(wrapper())
    return 0
