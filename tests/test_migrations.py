"""Plain-SQL migrations against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from prompt.config import Settings
from prompt.store import MigrationError, connect, current_version, load_migrations, upgrade

pytestmark = pytest.mark.stack


async def test_upgrade_is_idempotent_and_creates_the_state_tables(
    isolated_settings: Settings,
) -> None:
    conn = await connect(isolated_settings.database_url or "")
    try:
        assert await upgrade(conn) == []  # the fixture already applied everything
        assert await current_version(conn) == max(m.version for m in load_migrations())
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert {"tasks", "visits", "jobs", "pilots", "held_images", "consumer_offsets"} <= tables
        # One job per visit x detector, enforced by the database itself.
        task = await conn.fetchval(
            "INSERT INTO tasks (name, version, instrument, detectors, payload, job_timeout_s,"
            " deadline_s, image_timeout_s, max_attempts, spec, spec_sha256)"
            " VALUES ('t', 1, 'LSSTCam', '{1,2}', '{}', 60, 60, 60, 2, '{}', 'x') RETURNING id"
        )
        visit = await conn.fetchval(
            "INSERT INTO visits (instrument, group_id, task_id, next_visit, received_at)"
            " VALUES ('LSSTCam', 'g', $1, '{}'::jsonb, 0) RETURNING id",
            task,
        )
        await conn.execute(
            "INSERT INTO jobs (visit_id, detector, max_attempts) VALUES ($1, 1, 2)", visit
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO jobs (visit_id, detector, max_attempts) VALUES ($1, 1, 2)", visit
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE jobs SET state = 'bogus' WHERE visit_id = $1", visit)
    finally:
        await conn.close()


async def test_concurrent_upgrades_apply_once(prompt_stack: object, tmp_path: Path) -> None:
    from prompt.stack import Endpoints

    assert isinstance(prompt_stack, Endpoints)
    admin = await asyncpg.connect(prompt_stack.database_url)
    await admin.execute('CREATE DATABASE "concurrent_mig"')
    await admin.close()
    url = prompt_stack.database_url.rsplit("/", 1)[0] + "/concurrent_mig"
    a, b = await connect(url), await connect(url)
    try:
        results = await asyncio.gather(upgrade(a), upgrade(b))
        assert sorted(len(r) for r in results) == [0, len(load_migrations())]
    finally:
        await a.close()
        await b.close()


async def test_edited_migration_is_refused(isolated_settings: Settings, tmp_path: Path) -> None:
    edited = [m for m in load_migrations()]
    first = edited[0]
    edited[0] = type(first)(first.version, first.name, first.sql + "\n-- edited\n")
    conn = await connect(isolated_settings.database_url or "")
    try:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await upgrade(conn, edited)
    finally:
        await conn.close()
