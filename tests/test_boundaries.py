"""The lint rules that keep the architecture's boundaries (run by `make lint`) do fire."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def ruff(path: str, source: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--stdin-filename", path, "-"],
        input=source, capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    return done.stdout + done.stderr


@pytest.mark.parametrize("module", ["asyncio", "asyncpg", "aiokafka", "aiohttp"])
def test_the_engine_may_not_import_an_io_library(module: str) -> None:
    out = ruff("prompt/dispatcher/engine/probe.py", f"import {module}\n\nprint({module})\n")
    assert "TID251" in out, out
    assert "TID251" not in ruff(
        "prompt/dispatcher/probe.py", f"import {module}\n\nprint({module})\n"
    )


def test_private_members_stay_private_outside_tests() -> None:
    source = "class A:\n    _x = 1\n\n\nprint(A()._x)\n"
    assert "SLF001" in ruff("prompt/probe.py", source)
    assert "SLF001" not in ruff("tests/probe.py", source)
