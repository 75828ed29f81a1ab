"""One rule for tools that need a stack (``prompt dev``, the benchmarks, the load-test replay):
use the one running, or start one and stop it again — stop only what you started."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from prompt.config import Settings
from prompt.stack.stack import Stack
from prompt.stack.state import Endpoints


@contextlib.asynccontextmanager
async def owned_stack(settings: Settings, stack: Stack | None = None) -> AsyncIterator[Endpoints]:
    """The stack's endpoints for the block. A stack already running (started by
    ``prompt stack up``, another tool, a test session) is used and left running; otherwise
    the embedded servers the settings ask for are started and stopped on the way out, however
    the block ends. Servers named by ``PROMPT_*`` URLs are never the stack's to stop.

    ``stack``: the caller's object for it, when the caller also kills and restarts its servers
    (another object over the same state directory would go on with their old processes)."""
    stack = stack or Stack(settings)
    started_here = not stack.status()["running"]
    endpoints = await stack.up()
    try:
        yield endpoints
    finally:
        if started_here:
            stack.down()
