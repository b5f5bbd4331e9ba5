"""The HTTPS listener: TLS 1.2 minimum, client certificates optional and chained to our anchors."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.harness import RunningServer


def handshake(server: RunningServer, ctx: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", server.https_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
            return data.decode(errors="replace")


def client_context(server: RunningServer) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.ca_bundle))
    return ctx


def test_client_certificate_from_our_issuing_ca_is_accepted(running_server: RunningServer) -> None:
    ctx = client_context(running_server)
    certs = running_server.init.certs_dir
    ctx.load_cert_chain(certs / "example-client.pem", certs / "example-client.key")
    assert handshake(running_server, ctx).startswith("HTTP/1.1 200")


def test_manufacturer_idevid_is_accepted_at_the_handshake(running_server: RunningServer) -> None:
    ctx = client_context(running_server)
    certs = running_server.init.certs_dir
    ctx.load_cert_chain(certs / "example-idevid.pem", certs / "example-idevid.key")
    assert handshake(running_server, ctx).startswith("HTTP/1.1 200")


def test_no_client_certificate_is_fine_at_the_handshake(running_server: RunningServer) -> None:
    assert handshake(running_server, client_context(running_server)).startswith("HTTP/1.1 200")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_are_refused(running_server: RunningServer, version: ssl.TLSVersion) -> None:
    ctx = client_context(running_server)
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = version
    try:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(running_server, ctx)
