"""``prompt status`` prints the dispatcher's one read model: the same document as ``/status``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from prompt.config import Settings
from prompt.dispatcher.engine import JobState
from prompt.stack.processes import free_port
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id
from tests.helpers import run_prompt

pytestmark = pytest.mark.stack


def shape(doc: Any) -> Any:
    """The keys of a JSON document, nested (lists by their first element)."""
    if isinstance(doc, dict):
        return {k: shape(v) for k, v in doc.items() if k != "detectors"}
    if isinstance(doc, list):
        return [shape(doc[0])] if doc else []
    return None


async def test_prompt_status_prints_the_status_snapshot(isolated_settings: Settings) -> None:
    tasks = sleep_task_file(mean_s=30.0, detectors="0-3")  # still in flight when we look
    async with dispatcher_env(isolated_settings, tasks, pilots=1, slots=2) as env:
        nv = next_visit_for(group_id("status"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(4)))
        await env.until(
            lambda: sum(j.state is JobState.RUNNING for j in env.book.jobs.values()) == 2
        )
        url = f"http://127.0.0.1:{env.running.http_port}"
        printed = await asyncio.to_thread(run_prompt, "status", "--json", "--url", url)
        human = await asyncio.to_thread(run_prompt, "status", "--url", url)
        async with aiohttp.ClientSession() as http, http.get(f"{url}/status") as resp:
            served = orjson.loads(await resp.read())
    assert printed.returncode == 0, printed.stderr.decode()
    status = orjson.loads(printed.stdout)
    assert shape(status) == shape(served)
    assert status["visits"] and status["pilots"], "both documents have visits and pilots"
    assert status["visits"][0]["group"] == nv.group_id
    assert status["scheduling"] == "push"
    assert human.returncode == 0, human.stderr.decode()
    assert nv.group_id in human.stdout.decode() and "pilot-0" in human.stdout.decode()


def test_prompt_status_says_when_no_dispatcher_answers() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_prompt("status", "--url", url)
    assert done.returncode == 1
    message = done.stderr.decode()
    assert f"no dispatcher answers at {url}" in message and "prompt serve" in message
