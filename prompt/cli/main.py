"""``prompt`` command line: one parser, one Settings object built here, subcommands per module."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from prompt import __version__
from prompt.cli import (
    bench_cmd,
    db_cmd,
    dev_cmd,
    events_cmd,
    pilot_cmd,
    replay_cmd,
    send_cmd,
    serve_cmd,
    stack_cmd,
    status_cmd,
    tasks_cmd,
)
from prompt.cli.common import fail
from prompt.config import Settings
from prompt.extras import missing_extra
from prompt.logging import configure_logging

COMMANDS = (
    stack_cmd,
    db_cmd,
    tasks_cmd,
    serve_cmd,
    pilot_cmd,
    status_cmd,
    replay_cmd,
    dev_cmd,
    send_cmd,
    events_cmd,
    bench_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prompt",
        description="Low-latency prompt processing: next-visit and image events in, alerts out.",
    )
    parser.add_argument("--version", action="version", version=f"prompt {__version__}")
    parser.add_argument(
        "--state-dir", type=Path, help="embedded stack state (env PROMPT_STATE_DIR)"
    )
    parser.add_argument("--log-format", choices=["auto", "json", "console"])
    parser.add_argument("--log-level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: clean-up code runs (children stopped, stack down)."""


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings().with_overrides(
            state_dir=args.state_dir, log_format=args.log_format, log_level=args.log_level
        )
    except ValueError as exc:  # a pydantic ValidationError, or a bad *_FILE secret
        return fail(f"configuration: {exc}")
    configure_logging(settings.log_format, settings.log_level)
    # A CI runner or `timeout` stops a command with SIGTERM; by default that kills Python at
    # once and leaves a replay's dispatcher, pilots and stack running. Services (serve,
    # pilot, dev) install their own handler for a graceful drain while their loop runs.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code: int = args.handler(args, settings)
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130
    except (ImportError, ExceptionGroup) as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        return fail(str(missing))
    return code


if __name__ == "__main__":
    sys.exit(main())
