"""Running the real ``prompt`` command in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_prompt(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPT_")}
    full_env["PROMPT_LOG_FORMAT"] = "json"
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "prompt", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=full_env,
        cwd=Path(__file__).parent.parent,
    )
