"""Small helpers shared by subcommands."""

from __future__ import annotations

import sys
from typing import Any

import orjson


def print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"prompt: error: {message}\n")
    return code
