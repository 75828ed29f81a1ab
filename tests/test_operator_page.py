"""The live operator page in headless Chromium, and payload logs for failed jobs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from prompt.config import Settings
from prompt.tasks import load_task_file
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.browser import open_page
from tests.env import OPERATOR, OPERATOR_TOKEN, dispatcher_env, group_id
from tests.helpers import run_prompt

pytestmark = pytest.mark.stack

SCREENSHOTS = Path(__file__).parent.parent / ".prompt" / "screenshots"


async def test_page_shows_the_focal_plane_of_a_running_visit(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    tasks = sleep_task_file(mean_s=2.0, sigma=0.3, distribution="lognormal")
    async with dispatcher_env(isolated_settings, tasks, slots=24) as env:
        nv = next_visit_for(group_id("ui"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.visit_preloaded(nv.group_id)
        await env.sender.images(image_arrivals(nv, range(189)))
        engine = env.running.engine
        # Every slot busy (and jobs queued in the pilots' backlogs), the rest ready.
        await env.until(lambda: engine.in_flight_on_pilots() >= 48 and len(engine.book.queues))
        url = f"http://127.0.0.1:{env.running.http_port}/ui"
        async with open_page(url, tmp_path / "chromium") as page:
            await page.wait_for("document.getElementById('conn').textContent == 'token required'")
            assert await page.evaluate("document.getElementById('auth').hidden") is False
            assert await page.evaluate("document.body.dataset.updates") is None
            # A same-document navigation: the page takes the token from the new fragment.
            await page.call("Page.navigate", url=f"{url}#token={OPERATOR_TOKEN}")
            await page.wait_for("+(document.body.dataset.updates || 0) >= 2")
            assert await page.evaluate("location.href") == url, "the token left the address bar"
            state = orjson.loads(
                await page.evaluate(
                    """JSON.stringify({
                      cells: document.querySelectorAll('.plane .cell').length,
                      running: document.querySelectorAll('.cell[data-state=running]').length,
                      ready: document.querySelectorAll('.cell[data-state=ready]').length,
                      clock: document.getElementById('clock').textContent,
                      visits: [...document.querySelectorAll('#visits tbody tr')]
                        .map(r => r.innerText),
                      pilots: document.querySelectorAll('#pilots tbody tr').length})"""
                )
            )
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shot = SCREENSHOTS / "operator.png"
            await page.screenshot(shot)
    assert state["cells"] == 189, "one cell per science detector of the visit in flight"
    assert state["running"] > 0 and state["ready"] > 0, "the grid shows live job states"
    assert state["clock"].endswith(" s") and float(state["clock"][:-2]) > 0
    assert nv.group_id in state["visits"][0] and "in flight" in state["visits"][0]
    assert state["pilots"] == 2
    assert shot.stat().st_size > 20_000


async def test_failed_job_error_and_log_reach_the_operator(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    script = "import sys; print('calibrating detector', sys.argv[1]); sys.exit(sys.argv[1] == '3')"
    tasks = load_task_file(
        f"""
- name: noisy
  instrument: LSSTCam
  detectors: {{include: "0-5"}}
  payload: {{kind: argv, argv: [{sys.executable!r}, "-c", {script!r}, "{{detector}}"]}}
  max_attempts: 1
"""
    )
    async with dispatcher_env(isolated_settings, tasks, pilots=1) as env:
        nv = next_visit_for(group_id("fail"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.sender.images(image_arrivals(nv, range(6)))
        await env.completions.wait_for(6)
        (failed,) = [r for r in env.completions.records if r["status"] == "failed"]
        assert failed["detector"] == 3 and "exit status 1" in failed["error"]
        base = f"http://127.0.0.1:{env.running.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/ui/snapshot", headers=OPERATOR) as resp:
                snap = await resp.json()
            (problem,) = snap["problems"]
            assert (problem["detector"], problem["status"]) == (3, "failed")
            async with http.get(f"{base}/jobs/{problem['job']}/log", headers=OPERATOR) as resp:
                assert resp.status == 200
                assert "calibrating detector 3" in await resp.text()
            async with http.get(f"{base}/jobs/999999/log", headers=OPERATOR) as resp:
                assert resp.status == 404
        async with open_page(f"{base}/ui#token={OPERATOR_TOKEN}", tmp_path / "chromium") as page:
            await page.wait_for("!!document.querySelector('#problems button.log')")
            await page.evaluate("document.querySelector('#problems button.log').click()")
            await page.wait_for(
                "document.getElementById('log-text').textContent.includes('calibrating detector 3')"
            )
            title = await page.evaluate("document.getElementById('log-title').textContent")
        assert title == f"Payload log of job {problem['job']}"
        await env.running.writer.flush()
        shown = run_prompt(
            "status", "--job", str(problem["job"]),
            env={"PROMPT_DATABASE_URL": env.settings.database_url or ""},
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr.decode()
        assert b"failed" in shown.stdout and b"calibrating detector 3" in shown.stdout
