"""TLS on the pilot channel, tokens from files, and the operator endpoints, through real
processes, the real broker and the real database."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from prompt.channel import protocol as p
from prompt.channel.tls import pilot_context
from prompt.config import Settings
from prompt.testing.processes import PilotProcess, start_dispatcher, start_pilot, wait_for_pilots
from prompt.testing.tasks import apply_task_file, sleep_task_file
from prompt.testing.traffic import CompletionCollector, EventSender, image_arrivals, next_visit_for
from tests.certs import SERVER_NAME, Certs, make_certs
from tests.env import OPERATOR, dispatcher_env, group_id, service_settings

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_dispatcher(settings: Settings, certs: Certs, *, mutual: bool = False) -> Settings:
    return service_settings(
        settings, pilot_tls_cert=certs.server_cert, pilot_tls_key=certs.server_key,
        pilot_tls_client_ca=certs.ca if mutual else None,
    )  # fmt: skip


def pilot_settings(settings: Settings, **tls: Any) -> Settings:
    """The pilot side: only the given pilot TLS settings (None clears one)."""
    pilot_side = ("ca", "server_name", "client_cert", "client_key")
    return settings.model_copy(update={f"pilot_tls_{k}": tls.get(k) for k in pilot_side})


async def exits(pilot: PilotProcess, timeout: float = 60) -> tuple[int, str]:
    code = await asyncio.to_thread(pilot.proc.wait, timeout)
    return code, pilot.log.read_text()


async def test_tls_pilot_runs_a_visit_and_no_token_reaches_a_log(
    isolated_settings: Settings, certs: Certs, tmp_path: Path
) -> None:
    """Mutual TLS end to end with ``prompt serve`` and ``prompt pilot`` processes at DEBUG; the
    dispatcher reads both tokens from files. Neither process logs a token, nor the wrong one a
    rogue pilot tried."""
    pilot_token, operator_token = f"pilot-{uuid.uuid4().hex}", f"op-{uuid.uuid4().hex}"
    wrong_token = f"wrong-{uuid.uuid4().hex}"
    (tmp_path / "pilot-token").write_text(pilot_token + "\n")
    (tmp_path / "operator-token").write_text(operator_token)
    settings = tls_dispatcher(isolated_settings, certs, mutual=True).with_overrides(
        log_level="DEBUG"
    )
    from_files = settings.model_copy(update={"pilot_token": None, "operator_token": None})
    await apply_task_file(settings, sleep_task_file(mean_s=0.05, detectors="0-3"))
    service = start_dispatcher(from_files, log_dir=tmp_path, extra_env={
        "PROMPT_PILOT_TOKEN_FILE": str(tmp_path / "pilot-token"),
        "PROMPT_OPERATOR_TOKEN_FILE": str(tmp_path / "operator-token"),
    })  # fmt: skip
    pilot_side = pilot_settings(
        settings.with_overrides(pilot_token=SecretStr(pilot_token)), ca=certs.ca,
        server_name=SERVER_NAME, client_cert=certs.client_cert, client_key=certs.client_key,
    )  # fmt: skip
    pilot: PilotProcess | None = None
    try:
        await service.wait_ready()
        pilot = start_pilot(pilot_side, service.pilot_port, "tls-pilot", slots=4,
                            log_dir=tmp_path)  # fmt: skip
        await service.wait_pilots(1)
        assert await rogue_register(pilot_side, service.pilot_port, wrong_token) == {
            "t": p.REFUSED, "reason": "bad token",
        }  # fmt: skip
        async with EventSender(settings) as sender, CompletionCollector(settings) as completions:
            nv = next_visit_for(group_id("tls"), start_utc=time.time())
            await sender.next_visit(nv)
            await sender.images(image_arrivals(nv, range(4)))
            await completions.wait_for(4)
        assert {r["status"] for r in completions.records} == {"finished"}
        base = f"http://127.0.0.1:{service.http_port}"
        async with aiohttp.ClientSession() as http:
            for token, status in [(wrong_token, 401), (operator_token, 200)]:
                headers = {"Authorization": f"Bearer {token}"}
                async with http.get(f"{base}/ui/snapshot", headers=headers) as resp:
                    assert resp.status == status
        assert await asyncio.to_thread(pilot.terminate) == 0
        assert await asyncio.to_thread(service.terminate) == 0
    finally:
        if pilot is not None:
            await asyncio.to_thread(pilot.stop_if_running)
        await asyncio.to_thread(service.stop_if_running)
    dispatcher_log, pilot_log = service.log.read_text(), pilot.log.read_text()
    assert '"tls": "mutual"' in dispatcher_log and '"pilot registered"' in dispatcher_log
    assert '"tls": true' in pilot_log and '"registered with dispatcher"' in pilot_log
    assert "GET /ui/snapshot" in dispatcher_log, "the access log is on, and holds no token"
    for secret in (pilot_token, operator_token, wrong_token):
        assert secret not in dispatcher_log and secret not in pilot_log


async def rogue_register(settings: Settings, port: int, token: str) -> p.Message:
    """A register frame with the wrong token over a verified TLS connection."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=pilot_context(settings), server_hostname=SERVER_NAME
    )
    try:
        writer.write(p.encode({"t": p.REGISTER, "pilot": "rogue", "token": token, "slots": 1}))
        return await asyncio.wait_for(p.read_message(reader), 10)
    finally:
        writer.close()


async def test_pilots_that_cannot_verify_or_speak_tls_stop_with_a_clear_error(
    isolated_settings: Settings, certs: Certs, tmp_path: Path
) -> None:
    """A certificate that does not verify will not verify on the next attempt either: the pilot
    exits (code 2) after one try. A plain TCP pilot cannot tell a TLS dispatcher from one going
    down, so it tries three times (with backoff), then exits."""
    settings = tls_dispatcher(isolated_settings, certs)
    async with dispatcher_env(settings, sleep_task_file(), pilots=0) as env:
        port = env.running.pilot_port

        def pilot(name: str, **tls: Any) -> PilotProcess:
            return start_pilot(pilot_settings(env.settings, **tls), port, name, slots=1,
                               log_dir=tmp_path)  # fmt: skip

        good = pilot("good", ca=certs.ca, server_name=SERVER_NAME)
        wrong_ca = pilot("wrong-ca", ca=certs.other_ca, server_name=SERVER_NAME)
        wrong_name = pilot("wrong-name", ca=certs.ca)  # checks 127.0.0.1 against the cert
        plain = pilot("plain")
        try:
            code, log = await exits(wrong_ca)
            assert code == 2
            assert "prompt: error: pilot stopped: the dispatcher at 127.0.0.1" in log
            assert "does not trust" in log and "unable to get local issuer certificate" in log
            assert "connection lost" not in log and "before answering" not in log
            code, log = await exits(wrong_name)
            assert code == 2 and "IP address mismatch" in log and "'127.0.0.1'" in log
            code, log = await exits(plain)
            assert code == 2
            assert "a dispatcher with TLS does this to a plain TCP pilot" in log
            assert log.count('"dispatcher closed the connection before answering"') == 2
            await wait_for_pilots(env.running, 1)
            assert [s.id for s in env.book.pilots.connected()] == ["good"]
            assert good.proc.poll() is None
        finally:
            for proc in (good, wrong_ca, wrong_name, plain):  # off the loop the dispatcher is on
                await asyncio.to_thread(proc.stop_if_running)


async def test_mutual_tls_refuses_pilots_without_a_trusted_client_certificate(
    isolated_settings: Settings, certs: Certs, tmp_path: Path
) -> None:
    settings = tls_dispatcher(isolated_settings, certs, mutual=True)
    async with dispatcher_env(settings, sleep_task_file(), pilots=0) as env:
        port, verified = env.running.pilot_port, {"ca": certs.ca, "server_name": SERVER_NAME}
        no_cert = start_pilot(
            pilot_settings(env.settings, **verified), port, "no-cert", slots=1, log_dir=tmp_path
        )
        foreign = start_pilot(
            pilot_settings(env.settings, **verified, client_cert=certs.foreign_client_cert,
                           client_key=certs.foreign_client_key),
            port, "foreign-cert", slots=1, log_dir=tmp_path,
        )  # fmt: skip
        try:
            for pilot in (no_cert, foreign):
                code, log = await exits(pilot)
                assert code == 2, log
                assert (
                    "requires mutual TLS does this to a pilot without a client certificate" in log
                )
                assert "PROMPT_PILOT_TLS_CLIENT_CERT" in log
            assert env.book.pilots.pilots == {}
        finally:
            for proc in (no_cert, foreign):
                await asyncio.to_thread(proc.stop_if_running)


async def test_operator_endpoints_need_the_token_and_the_rest_stay_open(
    isolated_settings: Settings,
) -> None:
    async with dispatcher_env(isolated_settings, sleep_task_file(), pilots=0) as env:
        base = f"http://127.0.0.1:{env.running.http_port}"
        async with aiohttp.ClientSession() as http:

            async def status(path: str, headers: dict[str, str] | None = None) -> int:
                async with http.get(base + path, headers=headers or {}) as resp:
                    return resp.status

            for path in ("/ui/snapshot", "/ui/stream", "/jobs/1/log"):
                assert await status(path) == 401, path
                assert await status(path, {"Authorization": "Bearer nope"}) == 401, path
            assert await status("/ui/snapshot", OPERATOR) == 200
            assert await status("/jobs/1/log", OPERATOR) == 404  # let through: there is no job 1
            for path in ("/metrics", "/healthz", "/status", "/ui"):
                assert await status(path) == 200, path
            async with http.get(f"{base}/ui/stream", headers=OPERATOR) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "text/event-stream"
                assert resp.headers["Cache-Control"] == "no-cache, no-store"
                assert resp.headers["X-Accel-Buffering"] == "no"
                assert resp.headers["Connection"] == "keep-alive"
                event = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
            assert event.startswith(b"data: ")
            assert orjson.loads(event[6:])["pilots"] == []
