"""pytest fixtures for code that needs the real broker, database and S3.

Enable with ``pytest_plugins = ["prompt.testing.fixtures"]``. One embedded stack per test
session (its processes die with the test process even if it crashes); each test that asks for
``isolated_settings`` gets its own database and topic names, so tests never see each other's
state. ``prompt_stack_control`` is the running :class:`~prompt.stack.Stack` itself, for tests
that kill, hold down and restart its servers (skipped when the servers are external);
``prompt_durable_stack`` is one whose broker keeps acknowledged records across a restart.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from prompt.config import S3Settings, Settings, Topics
from prompt.kafka import ensure_topics
from prompt.stack import Endpoints, Stack
from prompt.stack.scratch import scratch_database


@pytest.fixture(scope="session")
def _prompt_session_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, Endpoints]]:
    state_dir: Path = tmp_path_factory.mktemp("prompt-stack")
    stack = Stack(Settings(state_dir=state_dir))
    endpoints = asyncio.run(stack.up(tie_to_parent=True))
    try:
        yield stack, endpoints
    finally:
        stack.down()
        stack.remove_data_outside()


@pytest.fixture(scope="session")
def prompt_stack(_prompt_session_stack: tuple[Stack, Endpoints]) -> Endpoints:
    """A running embedded stack (or the external servers named by PROMPT_* env vars)."""
    return _prompt_session_stack[1]


@pytest.fixture(scope="session")
def prompt_stack_control(_prompt_session_stack: tuple[Stack, Endpoints]) -> Stack:
    """The session's stack, whose servers a test may kill and start again (same port, same
    data): ``kill``, ``start``, ``restart``, ``outage``. A test that leaves a server down
    breaks the tests after it: prefer ``async with stack.outage(name): ...``."""
    stack = _prompt_session_stack[0]
    if stack.settings.database_url or stack.settings.kafka_bootstrap:
        pytest.skip("external servers (PROMPT_DATABASE_URL / PROMPT_KAFKA_BOOTSTRAP) are not ours")
    return stack


@pytest.fixture(scope="session")
def prompt_durable_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second embedded stack, started on first use, whose broker keeps its logs in the
    stack's S3 (``broker_storage="s3"``): acknowledged records and topics survive a kill -9 of
    the broker, as on Kafka. For fault tests that restart the broker under a running service
    (the default memory broker restarts empty)."""
    state_dir: Path = tmp_path_factory.mktemp("prompt-durable-stack")
    settings = Settings(
        state_dir=state_dir,
        broker_storage="s3",
        database_url=None,
        kafka_bootstrap=None,
        s3=S3Settings(endpoint_url=None),
    )
    stack = Stack(settings)
    asyncio.run(stack.up(tie_to_parent=True))
    try:
        yield stack
    finally:
        stack.down()
        stack.remove_data_outside()


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
            s3=prompt_stack.s3 or S3Settings(),
        )
        await ensure_topics(settings, prompt_stack.kafka_bootstrap)
        yield settings
