"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


def cancellation_pending() -> bool:
    """Whether the current task is being cancelled.

    A retry loop must check this before it retries: a library that cleans up after a
    cancellation may raise its own error in place of the CancelledError (asyncpg does, when
    the rollback of a transaction on a dead connection fails), and a loop that retries on
    that error would swallow the cancellation and never end.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def reraise_if_cancelled() -> None:
    if cancellation_pending():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has ended (its own cancellation swallowed)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
