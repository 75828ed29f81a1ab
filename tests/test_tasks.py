"""Task templates: validation, versioned apply through PostgreSQL, matching order."""

from __future__ import annotations

from typing import Any

import pytest

from prompt.config import Settings
from prompt.events import NextVisit
from prompt.store import connect
from prompt.tasks import apply_tasks, load_active_tasks, load_task_file, match_task
from tests.conftest import make_next_visit

TASKS = """
tasks:
  - name: ddf
    instrument: LSSTCam
    selectors: {surveys: ["DD:*"]}
    detectors: {include: "0-188", exclude: [0, 20, "27-29"]}
    payload: {kind: sleep, params: {mean_s: 0.1}}
    priority: 10
  - name: wide-gri
    instrument: LSSTCam
    selectors: {surveys: ["BLOCK-3*"], filters: [g, r, i]}
    payload: {kind: argv, argv: [pipetask, run, -d, "visit={visit} and detector={detector}"]}
  - name: anything-else
    instrument: LSSTCam
    payload: {kind: python, entry: "prompt.pilot.builtin:flaky"}
"""


def nv(**changes: Any) -> NextVisit:
    return NextVisit.from_record(make_next_visit(**changes))


def test_spec_validation_names_the_problem() -> None:
    spec = load_task_file(TASKS)
    assert len(spec.tasks[0].detectors.resolve()) == 189 - 5
    bad = [
        ("- {name: x, instrument: L, payload: {kind: argv, argv: ['{secret}']}}", "secret"),
        ("- {name: x, instrument: L, payload: {kind: teleport}}", "kind"),
        ("- {name: x, instrument: L, detectors: {include: '5-1'}, payload: {kind: sleep}}",
         "backwards"),
        ("- {name: X!, instrument: L, payload: {kind: sleep}}", "name"),
        ("- {name: x, instrument: L, payload: {kind: sleep}, colour: red}", "colour"),
        ("tasks: [", "not YAML"),
    ]  # fmt: skip
    for text, words in bad:
        with pytest.raises(ValueError, match=words):
            load_task_file(text)


async def test_apply_is_versioned_and_idempotent(isolated_settings: Settings) -> None:
    conn = await connect(isolated_settings.database_url or "")
    try:
        first = await apply_tasks(conn, load_task_file(TASKS))
        assert [(r.name, r.version, r.action) for r in first] == [
            ("ddf", 1, "created"), ("wide-gri", 1, "created"), ("anything-else", 1, "created"),
        ]  # fmt: skip
        again = await apply_tasks(conn, load_task_file(TASKS))
        assert {r.action for r in again} == {"unchanged"}
        changed = await apply_tasks(conn, load_task_file(TASKS.replace("mean_s: 0.1", "mean_s: 2")))
        assert next((r.name, r.version, r.action) for r in changed) == ("ddf", 2, "updated")
        assert await conn.fetchval("SELECT count(*) FROM tasks") == 4
        active = await load_active_tasks(conn)
        assert [t.name for t in active] == ["ddf", "wide-gri", "anything-else"]
        assert active[0].version == 2
    finally:
        await conn.close()


async def test_first_matching_task_wins(isolated_settings: Settings) -> None:
    conn = await connect(isolated_settings.database_url or "")
    try:
        await apply_tasks(conn, load_task_file(TASKS))
        tasks = await load_active_tasks(conn)
    finally:
        await conn.close()

    def chosen(**kw: Any) -> str | None:
        task = match_task(tasks, nv(**kw))
        return task.name if task else None

    assert chosen(survey="DD:COSMOS", filters="y_10") == "ddf"
    assert chosen(survey="BLOCK-365", filters="r_57") == "wide-gri"
    assert chosen(survey="BLOCK-365", filters="z_20") == "anything-else"
    assert chosen(instrument="LATISS") is None
