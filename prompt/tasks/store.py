"""Dormant task templates in PostgreSQL: versioned apply, and the active set for matching."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from prompt.events.models import NextVisit
from prompt.tasks.spec import TaskFile, TaskSpec


@dataclass(frozen=True, slots=True)
class ApplyResult:
    name: str
    version: int
    action: str  # created | updated | unchanged


@dataclass(frozen=True, slots=True)
class Task:
    """An active task as the dispatcher holds it in memory."""

    id: int
    version: int
    position: int
    spec: TaskSpec
    detectors: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    def matches(self, nv: NextVisit) -> bool:
        return nv.instrument == self.spec.instrument and self.spec.selectors.match(nv)


async def apply_tasks(conn: asyncpg.Connection, tasks: TaskFile) -> list[ApplyResult]:
    """Store the file's tasks. Identical specs are no-ops; changed ones get a new version."""
    results = []
    async with conn.transaction():
        for position, spec in enumerate(tasks.tasks):
            digest = spec.sha256()
            current = await conn.fetchrow(
                "SELECT id, version, spec_sha256, position FROM tasks"
                " WHERE name = $1 AND active FOR UPDATE",
                spec.name,
            )
            if current is not None and current["spec_sha256"] == digest:
                if current["position"] != position:
                    await conn.execute(
                        "UPDATE tasks SET position = $2 WHERE id = $1", current["id"], position
                    )
                results.append(ApplyResult(spec.name, current["version"], "unchanged"))
                continue
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM tasks WHERE name = $1", spec.name
            )
            if current is not None:
                await conn.execute("UPDATE tasks SET active = false WHERE id = $1", current["id"])
            data = spec.model_dump(mode="json")
            await conn.execute(
                """INSERT INTO tasks (name, version, instrument, selectors, detectors, payload,
                       requirements, job_timeout_s, deadline_s, image_timeout_s, max_attempts,
                       priority, position, spec, spec_sha256)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)""",
                spec.name,
                version,
                spec.instrument,
                data["selectors"],
                spec.detectors.resolve(),
                data["payload"],
                data["requirements"],
                spec.job_timeout_s,
                spec.deadline_s,
                spec.image_timeout_s,
                spec.max_attempts,
                spec.priority,
                position,
                data,
                digest,
            )
            action = "created" if version == 1 else "updated"
            results.append(ApplyResult(spec.name, version, action))
        if any(r.action != "unchanged" for r in results):
            await conn.execute("SELECT pg_notify('prompt_tasks', '')")
    return results


async def load_active_tasks(conn: asyncpg.Connection) -> list[Task]:
    """Active tasks in matching order: higher priority first, then file position, then name."""
    rows = await conn.fetch(
        "SELECT id, version, position, spec, detectors FROM tasks WHERE active"
        " ORDER BY priority DESC, position, name"
    )
    return [
        Task(r["id"], r["version"], r["position"], TaskSpec.model_validate(r["spec"]),
             tuple(r["detectors"]))
        for r in rows
    ]  # fmt: skip


async def load_task(conn: asyncpg.Connection, task_id: int) -> Task | None:
    """Any version, active or not: jobs keep the version they were stamped from."""
    r = await conn.fetchrow(
        "SELECT id, version, position, spec, detectors FROM tasks WHERE id = $1", task_id
    )
    if r is None:
        return None
    return Task(
        r["id"], r["version"], r["position"], TaskSpec.model_validate(r["spec"]),
        tuple(r["detectors"]),
    )  # fmt: skip


def match_task(tasks: list[Task], nv: NextVisit) -> Task | None:
    for task in tasks:
        if task.matches(nv):
            return task
    return None
