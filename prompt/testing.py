"""pytest fixtures for code that needs the real broker and database.

Enable with ``pytest_plugins = ["prompt.testing"]``. One embedded stack per test session (its
processes die with the test process even if it crashes); each test that asks for
``isolated_settings`` gets its own database and topic names, so tests never see each other's
state.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from prompt.config import Settings, Topics
from prompt.kafka import ensure_topics
from prompt.stack import Endpoints, Stack
from prompt.stack.scratch import scratch_database


@pytest.fixture(scope="session")
def prompt_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """A running embedded stack (or the external servers named by PROMPT_* env vars)."""
    state_dir: Path = tmp_path_factory.mktemp("prompt-stack")
    stack = Stack(Settings(state_dir=state_dir))
    endpoints = asyncio.run(stack.up(tie_to_parent=True))
    try:
        yield endpoints
    finally:
        stack.down()


@pytest.fixture
async def isolated_settings(prompt_stack: Endpoints, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings pointing at a fresh, migrated database and fresh topics on the shared stack."""
    suffix = uuid.uuid4().hex[:10]
    async with scratch_database(prompt_stack.database_url, "t") as url:
        settings = Settings(
            database_url=url,
            kafka_bootstrap=prompt_stack.kafka_bootstrap,
            state_dir=tmp_path / "state",
            topics=Topics().suffixed(suffix),
        )
        await ensure_topics(settings, prompt_stack.kafka_bootstrap)
        yield settings
