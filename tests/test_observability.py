"""Metrics move by the right amounts; every metric the dashboards and rules use exists; the
alert rules pass their promtool unit tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from prompt.config import Settings
from prompt.testing.tasks import sleep_task_file
from prompt.testing.traffic import image_arrivals, next_visit_for
from tests.env import dispatcher_env, group_id

DEPLOY = Path(__file__).parent.parent / "deploy"
METRIC = re.compile(r"\b(prompt[_:][a-zA-Z0-9_:]*)")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is needed (Debian package prometheus; `make test` installs it)"
    return path


def test_alert_rules_pass_their_unit_tests() -> None:
    rules = DEPLOY / "prometheus"
    for args in (["check", "rules", "rules.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "rules_test.yml"]):  # fmt: skip
        done = subprocess.run([promtool(), *args], cwd=rules, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


def test_every_alert_has_a_firing_test() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules_test.yml").read_text())
    fired = {
        t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }  # fmt: skip
    quiet = {
        t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])
        if not t.get("exp_alerts")
    }  # fmt: skip
    assert alerts == fired, "each alert is tested firing"
    # Lag and dead-letter cases carry a series that must not fire, and promtool checks that
    # exp_alerts is exact; every other alert needs a case of its own where it stays quiet.
    assert alerts - {"PromptConsumerLagGrowing", "PromptDeadLetters"} <= quiet


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in scrape.items() if n == name and want <= set(ls))


@pytest.mark.stack
async def test_a_visit_moves_the_metrics_and_dashboards_query_real_ones(
    isolated_settings: Settings,
) -> None:
    tasks = sleep_task_file(mean_s=1.5, detectors="0-19")
    async with dispatcher_env(isolated_settings, tasks, slots=10) as env:
        url = f"http://127.0.0.1:{env.running.http_port}/metrics"
        async with aiohttp.ClientSession() as http:

            async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                async with http.get(url) as resp:
                    assert resp.status == 200
                    return samples(await resp.text())

            before = await scrape()
            nv = next_visit_for(group_id("metrics"), start_utc=time.time())
            await env.sender.next_visit(nv)
            await env.visit_preloaded(nv.group_id)
            await env.sender.images(image_arrivals(nv, range(20)))
            await env.sender.raw(env.settings.topics.next_visit, b"\x00\x00\x00\x00\x63bad")
            await env.until(lambda: env.running.metrics.dispatch._sum.get() > 0 and all(
                j.state.value == "running" for j in env.book.jobs.values()))  # fmt: skip
            during = await scrape()
            await env.completions.wait_for(20)
            await env.until(lambda: env.running.publisher.published == 20)
            after = await scrape()
            names = {n for n, _ in after} | {n for n, _ in during}

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("prompt_resurrect_seconds_count") == 1
    assert moved("prompt_dispatch_seconds_count") == 20
    assert moved("prompt_end_to_end_seconds_count") == 20
    assert moved("prompt_end_to_end_seconds_bucket", le="60.0") == 20, "all within 60 s"
    assert moved("prompt_end_to_end_seconds_bucket", le="1.0") == 0, "none ran under 1 s"
    assert moved("prompt_jobs_completed_total", status="finished") == 20
    assert moved("prompt_jobs_completed_total", status="failed") == 0
    assert moved("prompt_events_consumed_total", kind="image-arrival") == 20
    assert moved("prompt_events_consumed_total", kind="next-visit") == 2
    assert (
        moved("prompt_events_dead_lettered_total", kind="next-visit", reason="unknown_schema") == 1
    )
    assert moved("prompt_preload_total", outcome="miss") == 20
    assert moved("prompt_completions_published_total") == 20
    assert value(during, "prompt_jobs", state="running") == 20
    assert value(during, "prompt_pilot_slots_busy") == 20
    assert 0 < value(during, "prompt_oldest_job_budget_seconds") <= 60
    assert value(after, "prompt_jobs", state="running") == 0
    assert value(after, "prompt_pilots") == 2 and value(after, "prompt_pilot_slots") == 20
    lag_topics = {dict(ls)["topic"] for n, ls in after if n == "prompt_consumer_lag_messages"}
    assert env.settings.topics.image_arrival in lag_topics
    assert value(after, "prompt_consumer_lag_messages") == 0

    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    queries = [
        t["expr"]
        for p in orjson.loads((DEPLOY / "grafana" / "dashboards" / "prompt.json").read_bytes())[
            "panels"
        ]
        for t in p["targets"]
    ] + [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for q in queries for m in METRIC.findall(q)}
    assert len(used) > 15
    missing = {m for m in used if m not in names and m not in recorded}
    assert not missing, f"queried but not exported: {sorted(missing)}"
