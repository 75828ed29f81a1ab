"""TLS for the pilot channel: SSL contexts built once at start-up from the settings.

Both ends are ``prompt``, so the floor is TLS 1.3. Trust is only what the settings name: no
system CA store on either side (a public CA must not be able to vouch for a dispatcher or,
with mutual TLS, for a pilot). Every bad file gives a :class:`TLSConfigError` naming the
setting and the path, before anything connects.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from prompt.config import Settings

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_3


class TLSConfigError(ValueError):
    """A TLS setting is incomplete or names a file that is missing or not the right PEM.
    Not retriable: the configuration must change."""


def _var(field: str) -> str:
    return f"PROMPT_{field.upper()}"


def _readable(field: str, path: Path) -> str:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TLSConfigError(f"{_var(field)}={path}: cannot read it ({exc.strerror})") from None
    return str(path)


def _no_passphrase() -> bytes:
    raise TLSConfigError("encrypted private keys are not supported: store the key unencrypted")


def _load_identity(ctx: ssl.SSLContext, cert: tuple[str, Path], key: tuple[str, Path]) -> None:
    cert_path, key_path = _readable(*cert), _readable(*key)
    try:
        ctx.load_cert_chain(cert_path, key_path, password=_no_passphrase)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"{_var(cert[0])}={cert[1]}, {_var(key[0])}={key[1]}: not a PEM certificate chain "
            f"and its private key ({exc.reason or exc})"
        ) from None
    except TLSConfigError as exc:
        raise TLSConfigError(f"{_var(key[0])}={key[1]}: {exc}") from None


def _load_trust(ctx: ssl.SSLContext, ca: tuple[str, Path]) -> None:
    path = _readable(*ca)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"{_var(ca[0])}={ca[1]}: not a PEM CA bundle ({exc.reason or exc})"
        ) from None


def _pair(settings: Settings, cert: str, key: str) -> tuple[Path, Path] | None:
    cert_path, key_path = getattr(settings, cert), getattr(settings, key)
    if (cert_path is None) != (key_path is None):
        given, missing = (cert, key) if key_path is None else (key, cert)
        raise TLSConfigError(f"{_var(given)} is set but {_var(missing)} is not: set both")
    return None if cert_path is None else (cert_path, key_path)


def dispatcher_context(settings: Settings) -> ssl.SSLContext | None:
    """The pilot server's context, or None (plain TCP) when no certificate is configured."""
    identity = _pair(settings, "pilot_tls_cert", "pilot_tls_key")
    if identity is None:
        if settings.pilot_tls_client_ca is not None:
            raise TLSConfigError(
                f"{_var('pilot_tls_client_ca')} needs the dispatcher's own certificate: "
                f"set {_var('pilot_tls_cert')} and {_var('pilot_tls_key')}"
            )
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    _load_identity(ctx, ("pilot_tls_cert", identity[0]), ("pilot_tls_key", identity[1]))
    if settings.pilot_tls_client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_trust(ctx, ("pilot_tls_client_ca", settings.pilot_tls_client_ca))
    return ctx


def pilot_context(settings: Settings) -> ssl.SSLContext | None:
    """A pilot's context (verifies the dispatcher and its name), or None for plain TCP."""
    identity = _pair(settings, "pilot_tls_client_cert", "pilot_tls_client_key")
    if settings.pilot_tls_ca is None:
        if identity is not None or settings.pilot_tls_server_name is not None:
            raise TLSConfigError(
                f"pilot TLS settings are given but {_var('pilot_tls_ca')} is not: a pilot needs "
                "the CA bundle that signed the dispatcher's certificate"
            )
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the hostname
    ctx.minimum_version = MINIMUM_VERSION
    _load_trust(ctx, ("pilot_tls_ca", settings.pilot_tls_ca))
    if identity is not None:
        _load_identity(
            ctx, ("pilot_tls_client_cert", identity[0]), ("pilot_tls_client_key", identity[1])
        )
    return ctx


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; False for names and wildcard addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def untrusted_dispatcher(exc: ssl.SSLCertVerificationError, dispatcher: str, name: str) -> str:
    """Why a pilot gives up on a dispatcher whose certificate does not verify."""
    return (
        f"the dispatcher at {dispatcher} presented a certificate this pilot does not trust "
        f"({exc.verify_message}; name checked: {name!r}). Check {_var('pilot_tls_ca')} and "
        f"{_var('pilot_tls_server_name')}. Not retrying: the same certificate will not verify "
        "on the next attempt either"
    )


def closed_before_welcome(uses_tls: bool, attempts: int) -> str:
    """Why a pilot gives up on a dispatcher that closes every connection without an answer."""
    if uses_tls:
        hint = (
            "a dispatcher that requires mutual TLS does this to a pilot without a client "
            f"certificate it trusts ({_var('pilot_tls_client_cert')}, "
            f"{_var('pilot_tls_client_key')}); one without TLS does it to a TLS pilot"
        )
    else:
        hint = (
            "a dispatcher with TLS does this to a plain TCP pilot: set "
            f"{_var('pilot_tls_ca')} (and a client certificate if it requires mutual TLS)"
        )
    return (
        f"the dispatcher closed the connection before answering register, {attempts} times "
        f"in a row: {hint}"
    )
