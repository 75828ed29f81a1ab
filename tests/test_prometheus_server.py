"""A real Prometheus server (Debian's ``prometheus``) scrapes a running dispatcher with pilots,
evaluates ``deploy/prometheus/rules.yml``, and answers every query of the Grafana dashboard
with data after a visit."""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from prompt.config import Settings
from prompt.stack.processes import free_port
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id

DEPLOY = Path(__file__).parent.parent / "deploy"
INTERVAL = "500ms"
# Grafana's own variables, as Grafana would fill them for a short time range.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "1s",
    "${__interval}": "1s",
    "$__range": "5m",
    "${__range}": "5m",
}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, rows included, Grafana variables filled in."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    board = orjson.loads((DEPLOY / "grafana" / "dashboards" / "prompt.json").read_bytes())
    out = []
    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
            out.append((panel["title"], expr))
    return out


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[str]:
    """Prometheus scraping ``target`` as job prompt-dispatcher; yields its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "the prometheus server is needed (Debian package prometheus; make test)"
    config = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [str(DEPLOY / "prometheus" / "rules.yml")],
        "scrape_configs": [
            {"job_name": "prompt-dispatcher", "static_configs": [{"targets": [target]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn", stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:
                assert proc.returncode is None, (tmp_path / "prometheus.log").read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/-/ready") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


class Api:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def get(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
            assert body["status"] == "success", body
            return body["data"]

    async def instant(self, query: str) -> list[dict[str, Any]]:
        data = await self.get("query", query=query)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def finite_range(self, query: str, start: float) -> bool:
        """Whether ``query`` over [start, now] has at least one finite sample."""
        data = await self.get(
            "query_range", query=query, start=str(start), end=str(time.time()), step="1"
        )
        return any(
            math.isfinite(float(v)) for series in data["result"] for _, v in series["values"]
        )

    async def until(
        self, what: str, check: Any, timeout: float = 20, detail: Any = lambda: ""
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not await check():
                    await asyncio.sleep(0.2)
        except TimeoutError:
            pytest.fail(f"Prometheus: not {what} within {timeout} s. {detail()}")


@pytest.mark.stack
async def test_prometheus_scrapes_evaluates_rules_and_answers_the_dashboard(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    queries = dashboard_queries()
    assert len(queries) > 15
    rules_file = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    rule_count = sum(len(g["rules"]) for g in rules_file["groups"])
    start = time.time()
    tasks = sleep_task_file(mean_s=2.0, detectors="0-19")
    async with (
        dispatcher_env(isolated_settings, tasks, pilots=2, slots=10) as env,
        prometheus(tmp_path, f"127.0.0.1:{env.running.http_port}") as url,
        aiohttp.ClientSession() as http,
    ):
        api = Api(http, url)

        async def target_up() -> bool:
            targets = (await api.get("targets"))["activeTargets"]
            return [(t["labels"]["job"], t["health"]) for t in targets] == [
                ("prompt-dispatcher", "up")
            ]

        await api.until("the dispatcher target up", target_up)
        nv = next_visit_for(group_id("prometheus"), start_utc=time.time())
        await env.sender.next_visit(nv)
        await env.visit_preloaded(nv.group_id)
        await env.sender.images(image_arrivals(nv, range(20)))
        await env.sender.raw(env.settings.topics.next_visit, b"\x00\x00\x00\x00\x63bad")

        async def saw_running() -> bool:
            return bool(await api.instant("prompt_pilot_slots_busy == 20"))

        await api.until("a scrape while the jobs ran", saw_running)
        await env.completions.wait_for(20)

        async def saw_finished() -> bool:
            rows = await api.instant('prompt_jobs_completed_total{status="finished"} == 20')
            return bool(rows)

        await api.until("the finished jobs scraped", saw_finished)

        async def rules_ok() -> bool:
            groups = (await api.get("rules"))["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return len(rules) == rule_count and all(
                r["health"] == "ok" and not r.get("lastError") for r in rules
            )

        await api.until("every rule evaluated without error", rules_ok)

        async def dashboard_answers() -> bool:
            missing[:] = [f"{t}: {q}" for t, q in queries if not await api.finite_range(q, start)]
            return not missing

        missing: list[str] = []
        await api.until(
            "every dashboard query answered", dashboard_answers,
            detail=lambda: "Without data:\n" + "\n".join(missing),
        )  # fmt: skip

        groups = (await api.get("rules"))["groups"]
        assert {g["file"] for g in groups} == {str(DEPLOY / "prometheus" / "rules.yml")}
        firing = {a["labels"]["alertname"] for a in (await api.get("alerts"))["alerts"]}
        assert "PromptDispatcherDown" not in firing and "PromptNoPilots" not in firing
