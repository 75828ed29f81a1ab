"""Certificates for the TLS tests, made on the spot with trustme."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAME = "dispatcher.prompt.test"
"""The only name in the dispatcher's certificate: pilots dialling 127.0.0.1 must override it."""


@dataclass(frozen=True)
class Certs:
    ca: Path
    """Signed the dispatcher's certificate and the good pilot certificate."""
    other_ca: Path
    """Signed nothing the dispatcher uses: the wrong CA bundle."""
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    foreign_client_cert: Path
    """A pilot certificate signed by the other CA."""
    foreign_client_key: Path


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert(SERVER_NAME)
    client = ca.issue_cert("pilot.prompt.test")
    foreign = other.issue_cert("pilot.prompt.test")

    def write(name: str, blob: trustme.Blob) -> Path:
        path = directory / name
        blob.write_to_path(str(path))
        return path

    def chain(name: str, cert: trustme.LeafCert) -> Path:
        path = directory / name
        path.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
        return path

    return Certs(
        ca=write("ca.pem", ca.cert_pem),
        other_ca=write("other-ca.pem", other.cert_pem),
        server_cert=chain("server.pem", server),
        server_key=write("server.key", server.private_key_pem),
        client_cert=chain("client.pem", client),
        client_key=write("client.key", client.private_key_pem),
        foreign_client_cert=chain("foreign.pem", foreign),
        foreign_client_key=write("foreign.key", foreign.private_key_pem),
    )
