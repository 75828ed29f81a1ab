"""Pilot-channel TLS contexts from settings, their errors, and the operator-token check."""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization

from prompt.channel.protocol import CLOSE_WAIT_S, Channel, ProtocolError, read_message
from prompt.channel.tls import (
    TLSConfigError,
    dispatcher_context,
    is_loopback,
    pilot_context,
)
from prompt.config import Settings
from prompt.dispatcher.auth import require_token
from prompt.dispatcher.pilot_server import PilotServer
from tests.certs import Certs, make_certs
from tests.helpers import run_prompt


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def settings(**tls: Any) -> Settings:
    return Settings(**{f"pilot_tls_{k}": v for k, v in tls.items()})


def test_no_tls_settings_mean_plain_tcp() -> None:
    assert dispatcher_context(Settings()) is None
    assert pilot_context(Settings()) is None


def test_dispatcher_context_is_tls13_and_trusts_nothing_unless_mutual(certs: Certs) -> None:
    ctx = dispatcher_context(settings(cert=certs.server_cert, key=certs.server_key))
    assert ctx is not None and ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_NONE and ctx.get_ca_certs() == []
    mutual = dispatcher_context(
        settings(cert=certs.server_cert, key=certs.server_key, client_ca=certs.ca)
    )
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED
    assert len(mutual.get_ca_certs()) == 1, "only the configured CA, not the system store"


def test_pilot_context_checks_the_name_against_the_configured_ca_only(certs: Certs) -> None:
    ctx = pilot_context(settings(ca=certs.ca))
    assert ctx is not None and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    assert len(ctx.get_ca_certs()) == 1
    assert pilot_context(
        settings(ca=certs.ca, client_cert=certs.client_cert, client_key=certs.client_key)
    )


@pytest.mark.parametrize(
    ("tls", "role", "error"),
    [
        ({"cert": "server_cert"}, "dispatcher", "PROMPT_PILOT_TLS_KEY is not"),
        ({"key": "server_key"}, "dispatcher", "PROMPT_PILOT_TLS_CERT is not"),
        ({"client_ca": "ca"}, "dispatcher", "needs the dispatcher's own certificate"),
        ({"client_cert": "client_cert", "client_key": "client_key"}, "pilot",
         "PROMPT_PILOT_TLS_CA is not"),
        ({"server_name": "x"}, "pilot", "PROMPT_PILOT_TLS_CA is not"),
        ({"ca": "ca", "client_cert": "client_cert"}, "pilot", "PROMPT_PILOT_TLS_CLIENT_KEY is"),
        ({"cert": "server_cert", "key": "client_key"}, "dispatcher", "KEY_VALUES_MISMATCH"),
        ({"cert": "server_key", "key": "server_key"}, "dispatcher", "not a PEM certificate"),
        ({"ca": "server_key"}, "pilot", "PROMPT_PILOT_TLS_CA=.*not a PEM CA bundle"),
    ],
)  # fmt: skip
def test_incomplete_or_wrong_tls_settings_are_named(
    certs: Certs, tls: dict[str, str], role: str, error: str
) -> None:
    build = dispatcher_context if role == "dispatcher" else pilot_context
    values = {k: (v if k == "server_name" else getattr(certs, v)) for k, v in tls.items()}
    with pytest.raises(TLSConfigError, match=error):
        build(settings(**values))


def test_an_unreadable_file_is_named_with_its_setting(certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TLSConfigError, match=f"PROMPT_PILOT_TLS_KEY={missing}: cannot read"):
        dispatcher_context(settings(cert=certs.server_cert, key=missing))


def test_an_encrypted_key_is_refused_without_prompting(certs: Certs, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(TLSConfigError, match=r"PROMPT_PILOT_TLS_KEY=.*encrypted private keys"):
        dispatcher_context(settings(cert=certs.server_cert, key=encrypted))


def test_commands_stop_on_a_bad_tls_file_before_connecting(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    env = {"PROMPT_PILOT_TOKEN": "t", "PROMPT_PILOT_TLS_CERT": str(missing),
           "PROMPT_PILOT_TLS_KEY": str(missing)}  # fmt: skip
    serve = run_prompt("serve", env=env)
    assert serve.returncode == 2
    assert f"PROMPT_PILOT_TLS_CERT={missing}: cannot read it" in serve.stderr.decode()
    pilot = run_prompt(
        "pilot", env={"PROMPT_PILOT_TOKEN": "t", "PROMPT_PILOT_TLS_CA": str(missing)}
    )
    assert pilot.returncode == 2
    assert f"PROMPT_PILOT_TLS_CA={missing}: cannot read it" in pilot.stderr.decode()


async def test_a_tls_client_hello_on_the_plain_channel_is_named() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    with pytest.raises(ProtocolError, match="speaks TLS"):
        await read_message(reader)


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback("dispatcher.prompt.svc") and not is_loopback("")


async def test_plain_tcp_on_a_network_address_is_warned_about(certs: Certs) -> None:
    tls = dispatcher_context(settings(cert=certs.server_cert, key=certs.server_key))
    warnings = {}
    for host, ctx in [("127.0.0.1", None), ("0.0.0.0", None), ("0.0.0.0", tls)]:
        server = PilotServer(None, "t")  # type: ignore[arg-type]  # never registers a pilot
        with structlog.testing.capture_logs() as logs:
            await server.start(host, 0, ctx)
        await server.close()
        warnings[(host, ctx is not None)] = [e for e in logs if e["log_level"] == "warning"]
    assert warnings[("127.0.0.1", False)] == [] and warnings[("0.0.0.0", True)] == []
    (warning,) = warnings[("0.0.0.0", False)]
    assert "plain TCP on a non-loopback address" in warning["event"]


async def test_operator_token_check() -> None:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/guarded", require_token("s3cret")(hello))
    app.router.add_get("/unset", require_token("")(hello))
    async with TestServer(app) as server, aiohttp.ClientSession() as http:

        async def get(path: str, auth: str | None) -> tuple[int, str, Any]:
            headers = {"Authorization": auth} if auth is not None else {}
            async with http.get(server.make_url(path), headers=headers) as resp:
                return resp.status, await resp.text(), resp.headers

        status, _, headers = await get("/guarded", None)
        assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="prompt"'
        for wrong in ("Bearer s3cre", "Bearer s3cretx", "Basic s3cret", "s3cret", "Bearer "):
            assert (await get("/guarded", wrong))[0] == 401, wrong
        status, body, headers = await get("/guarded", "Bearer s3cret")
        assert (status, body, headers["Cache-Control"]) == (200, "hello", "no-store")
        assert (await get("/guarded", "bearer  s3cret"))[0] == 200
        status, body, _ = await get("/unset", "Bearer ")
        assert status == 403 and "PROMPT_OPERATOR_TOKEN" in body
        assert (await get("/unset", "Bearer s3cret"))[0] == 403


async def test_closing_a_tls_channel_does_not_wait_long_for_a_hung_peer(certs: Certs) -> None:
    """The peer's event loop is blocked: it cannot answer the TLS close. Without a bound the
    close would wait for the SSL layer's 30 s shutdown timeout."""
    server_ctx = dispatcher_context(settings(cert=certs.server_cert, key=certs.server_key))
    loop = asyncio.new_event_loop()
    hang, release = threading.Event(), threading.Event()

    async def serve() -> int:
        async def handle(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
            hang.set()
            release.wait(30)  # blocks the peer's whole loop, as a hung process would

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port: int = server.sockets[0].getsockname()[1]
        return port

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        port = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
        client = pilot_context(settings(ca=certs.ca))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="dispatcher.prompt.test"
        )
        await asyncio.to_thread(hang.wait, 10)
        channel = Channel(reader, writer)
        async with asyncio.timeout(CLOSE_WAIT_S + 5):
            await channel.close()
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
