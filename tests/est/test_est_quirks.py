"""EST client quirks (est/quirks.py): the base64 of every answer follows the client.

libest's client decodes with OpenSSL's BIO base64 filter in line mode; ``openssl base64 -d``
(without ``-A``) is the same filter, so it stands in for libest here, on real captures
(tests/est/captures) and on real answers of the server. strongSwan 5.9.8 wants one unbroken
line, which is what every client without a quirk gets (RFC 8951 §3.1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ca.api import CAChain
from ca.errors import ConfigError
from enroll.pki import DevPKI
from est import quirks, wire
from est.client import build_csr
from est.quirks import LIBEST_FRAMING
from est.service import EstService
from est.wire import UNWRAPPED, Base64Framing
from tests.est.test_est_service import FakeIssuer, P, settings
from tests.harness import EstServer, RunningServer
from tests.support import require_tool

CAP = Path(__file__).parent / "captures"
LIBEST_UA = "libest 3.2.0p"


# --- helpers: the captures, OpenSSL, and libest's reading of an answer -------------------------


def captured_user_agent(name: str) -> str | None:
    """The User-Agent of a captured request, None when the client sent none."""
    head = (CAP / name).read_bytes().partition(b"\r\n\r\n")[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"user-agent":
            return value.strip().decode()
    return None


def openssl_b64decode(text: bytes, *, no_nl: bool = False) -> bytes:
    """OpenSSL's BIO base64 filter through ``openssl base64 -d``: line mode (libest's default),
    or ``-A`` (BIO_FLAGS_BASE64_NO_NL)."""
    args = [require_tool("openssl"), "base64", "-d"] + (["-A"] if no_nl else [])
    res = subprocess.run(args, input=text, capture_output=True, timeout=60, check=True)
    return res.stdout


class LibestFailure(Exception):
    """libest's client would stop here; ``args[0]`` is its EST_ERROR name."""


def libest_base64_decode(text: bytes) -> bytes:
    """What libest's ``est_base64_decode`` (src/est/est.c) does with the serverkeygen parts and
    /csrattrs: line mode only when a newline comes before the last character, the no-newline mode
    otherwise; the length without whitespace must be a multiple of 4, and the decoded length must
    be exactly three quarters of it minus the padding, else the decode counts as failed."""
    core = re.sub(rb"\s", b"", text)
    inner_newline = text.find(b"\n") not in (-1, len(text) - 1)
    if len(core) % 4:
        raise LibestFailure("EST_ERR_BAD_BASE64")
    der = openssl_b64decode(text, no_nl=not inner_newline)
    pad = len(core) - len(core.rstrip(b"="))
    if len(der) != len(core) * 3 // 4 - pad:
        raise LibestFailure("EST_ERR_BAD_BASE64")
    return der


def libest_split(raw: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An HTTP answer read to EOF (libest sends ``Connection: close``): status, headers as sent,
    body."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, "no end of headers"
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = [(k, v.strip()) for k, _, v in (line.partition(b":") for line in lines[1:])]
    return status, headers, body


def libest_single_part_body(raw: bytes, content_type: bytes) -> bytes:
    """libest's check of a one-part answer (``est_io_check_http_hdrs``): a header named exactly
    ``Content-Type`` starting with the operation's type, and a ``Content-Length`` equal to the
    body read. Returns the body (still base64)."""
    status, headers, body = libest_split(raw)
    assert status == 200, raw[:300]
    types = [v for k, v in headers if k == b"Content-Type"]
    assert types and types[0].startswith(content_type), headers
    lengths = [int(v) for k, v in headers if k == b"Content-Length"]
    assert lengths == [len(body)], (lengths, len(body))
    return body


@dataclass(frozen=True)
class LibestKeygen:
    key_text: bytes
    cert_text: bytes
    key_der: bytes
    cert_der: bytes


_BOUNDARY_CHARS = re.compile(rb"[A-Za-z0-9'()+,\-./:=?_ ]{1,70}")
_HEADER_NAME = re.compile(rb"[A-Za-z-]+")
_KEY_TYPE, _CERT_TYPE = b"application/pkcs8", b"application/pkcs7-mime; smime-type=certs-only"


def libest_read_serverkeygen(raw: bytes) -> LibestKeygen:
    """A /serverkeygen answer read the way libest's client reads it (cisco/libest a464ba8:
    ``est_io_get_response_internal``, ``parse_and_split_keygen_rsp`` and ``part_data_cb`` in
    src/est/est_client_http.c, the parser in src/est/multipart_parser.c,
    ``est_client_verify_key_and_cert`` in src/est/est_client.c, and estclient's ``save_cert``).
    Raises :class:`LibestFailure` where libest would fail."""
    status, headers, body = libest_split(raw)
    assert status == 200, raw[:300]
    # 1. The boundary comes from the header whose value holds "multipart/mixed": the text after
    #    "boundary=", cut at ';', trailing spaces and surrounding quotes dropped, 1..70 of the
    #    allowed characters.
    boundary = b""
    for _, value in headers:
        if b"multipart/mixed" in value and b"boundary=" in value:
            boundary = value.split(b"boundary=", 1)[1].split(b";")[0].rstrip(b" ").strip(b'"')
    if not _BOUNDARY_CHARS.fullmatch(boundary):
        raise LibestFailure("EST_ERR_MULTIPART_PARSE")
    # 2. Parsing starts two bytes before the boundary's first occurrence in the body and skips
    #    every leading '-'.
    at = body.find(boundary)
    if at < 2:
        raise LibestFailure("EST_ERR_MULTIPART_PARSE")
    buf = body[at - 2:].lstrip(b"-")
    i = 0
    key = cert = b""
    while not (key and cert):
        # 3. A delimiter line: as many bytes as the boundary has (their values are not compared),
        #    then CR LF.
        i += len(boundary)
        if buf[i:i + 2] != b"\r\n":
            raise LibestFailure("EST_ERR_ZERO_LENGTH_BUF")
        i += 2
        # 4. Header lines "Name: value" CR LF up to an empty CR LF line. Only a Content-Type that
        #    starts with application/pkcs8 or the certs-only type and a Content-Transfer-Encoding
        #    that starts with "base64" are kept (case-sensitive prefixes).
        kept: dict[bytes, bytes] = {}
        while buf[i:i + 2] != b"\r\n":
            end = buf.find(b"\r\n", i)
            name, colon, value = buf[i:end].partition(b":")
            if not colon or not _HEADER_NAME.fullmatch(name):
                raise LibestFailure("EST_ERR_ZERO_LENGTH_BUF")
            value = value.lstrip(b" ")
            if name.startswith(b"Content-Type") and value.startswith((_KEY_TYPE, _CERT_TYPE)):
                kept[b"ct"] = value
            elif name.startswith(b"Content-Transfer-Encoding") and value.startswith(b"base64"):
                kept[b"cte"] = value
            i = end + 2
        i += 2
        # 5. The part's data runs to the first CR whose next or next-but-one byte is '-'.
        j = i
        while True:
            j = buf.find(b"\r", j)
            if j < 0:
                raise LibestFailure("EST_ERR_ZERO_LENGTH_BUF")
            if b"-" in buf[j + 1:j + 3]:
                break
            j += 1
        data = buf[i:j]
        if b"ct" in kept and b"cte" in kept:
            if not data.strip(b" \r\n"):
                raise LibestFailure("EST_ERR_MULTIPART_PARSE")  # whitespace only: parse aborted
            if kept[b"ct"].startswith(_KEY_TYPE):
                key = data
            else:
                cert = data
        if key and cert:
            break
        # 6. After the data: CR LF "--", then the next delimiter.
        if buf[j:j + 4] != b"\r\n--":
            raise LibestFailure("EST_ERR_ZERO_LENGTH_BUF")
        i = j + 4
        if buf[i:i + len(boundary) + 2] == boundary + b"--":
            raise LibestFailure("EST_ERR_ZERO_LENGTH_BUF")  # closed before both parts came
    # 7. Minimum and maximum sizes of the two texts (EST_MIN_CLIENT_PKEY_LEN,
    #    EST_MIN_CLIENT_CERT_LEN, MULTIPART_PARSE_DATA_MAX).
    if len(key) < 256 or len(cert) < 128:
        raise LibestFailure("EST_ERR_ZERO_LENGTH_BUF")
    if len(key) > 8192 or len(cert) > 8192:
        raise LibestFailure("EST_ERR_BUF_EXCEEDS_MAX_LEN")
    # 8. The certificate must be a PKCS#7 whose first certificate matches the key, and the key
    #    loads only as RSA (OpenSSL d2i_PrivateKey(EVP_PKEY_RSA, ...); `openssl rsa` is the same
    #    load).
    cert_der = libest_base64_decode(cert)
    key_der = libest_base64_decode(key)
    loaded = subprocess.run([require_tool("openssl"), "rsa", "-inform", "DER", "-noout"], input=key_der,
                            capture_output=True, timeout=60)
    if loaded.returncode != 0:
        raise LibestFailure("EST_ERR_VALIDATION")
    first = wire.decode_certs_only(cert_der)[0]
    private = serialization.load_der_private_key(key_der, None)
    if _spki(private.public_key()) != _spki(first.public_key()):
        raise LibestFailure("EST_ERR_VALIDATION")
    # 9. estclient writes the certificate through est_convert_p7b64_to_pem: BIO line mode.
    if openssl_b64decode(cert) != cert_der:
        raise LibestFailure("certificate not written (line-mode base64)")
    return LibestKeygen(key, cert, key_der, cert_der)


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined, no-any-return]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def mime_layout(body: bytes, boundary: bytes) -> list[tuple[tuple[bytes, ...], int, bytes, bool]]:
    """Per part of a multipart body: its header lines, the length of its full base64 lines, the
    line end inside the base64, and whether the base64 ends with that line end before the CRLF
    of the next delimiter. Every MIME line (delimiters, headers) must end with CRLF."""
    chunks = body.split(b"--" + boundary)
    layout = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        assert chunk.startswith(b"\r\n")
        head, sep, content = chunk[2:].partition(b"\r\n\r\n")
        assert sep and content.endswith(b"\r\n")
        content = content[:-2]
        eol = b"\r\n" if b"\r\n" in content else b"\n" if b"\n" in content else b""
        lines = content.split(eol) if eol else [content]
        full = {len(line) for line in lines[:-2]} if len(lines) > 2 else {len(lines[0])}
        assert len(full) == 1
        layout.append((tuple(head.split(b"\r\n")), full.pop(), eol, bool(eol) and content.endswith(eol)))
    return layout


async def replay(port: int, ca: Path, capture: str, userpass: str, *, drop_user_agent: bool = False) -> bytes:
    """Send a captured libest request byte for byte over TLS 1.2 (libest's cap), with only the
    redacted credentials and the Host filled in, and read the answer to EOF as libest does."""
    raw = (CAP / capture).read_bytes()
    raw = raw.replace(b"Basic <redacted>", b"Basic " + base64.b64encode(userpass.encode()))
    raw = raw.replace(b"Host: 127.0.0.1:8095", f"Host: 127.0.0.1:{port}".encode())
    if drop_user_agent:
        raw = raw.replace(f"User-Agent: {LIBEST_UA}\r\n".encode(), b"")
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 120)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def get(srv: EstServer, path: str, user_agent: str | None,
              cert: tuple[str, str] | None = None, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    ctx = ssl.create_default_context(cafile=str(srv.ca_bundle))
    if cert:
        ctx.load_cert_chain(*cert)
    headers = {"User-Agent": user_agent} if user_agent is not None else {}
    if body is not None:
        headers["Content-Type"] = "application/pkcs10"
    async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as s:
        method = "POST" if body is not None else "GET"
        async with s.request(method, srv.base_https + "/.well-known/est" + path, data=body, headers=headers,
                             ssl=ctx) as r:
            return r.status, dict(r.headers), await r.read()


def userpass(srv: EstServer) -> str:
    return f"{srv.init.est_user}:{srv.init.est_password}"


# --- who is libest ----------------------------------------------------------------------------


@pytest.mark.parametrize("capture", [
    "libest-client-cacerts.http", "libest-client-csrattrs.http", "libest-client-simpleenroll.http",
    "libest-client-simplereenroll.http", "libest-client-serverkeygen.http",
])
def test_libest_is_recognised_by_the_user_agent_it_sends(capture: str) -> None:
    assert captured_user_agent(capture) == LIBEST_UA
    assert quirks.is_libest(captured_user_agent(capture))
    assert quirks.for_client(captured_user_agent(capture)).framing == LIBEST_FRAMING


@pytest.mark.parametrize("agent", [
    captured_user_agent("strongswan-simpleenroll.http"),  # strongSwan pki 5.9.8 sends none
    "", "curl/7.88.1", "Go-http-client/1.1", "python-requests/2.34.2", "Python/3.11 aiohttp/3.9.5",
    "libestimate/1.0", "not libest 3.2.0p",
])
def test_other_clients_get_rfc8951_unwrapped_base64(agent: str | None) -> None:
    assert not quirks.is_libest(agent)
    assert quirks.for_client(agent) == quirks.ClientQuirks(UNWRAPPED, None)


@pytest.mark.parametrize("agent,configured,expected", [
    (LIBEST_UA, None, LIBEST_FRAMING),  # ok/libest-line-mode-base64
    (None, None, UNWRAPPED),
    (LIBEST_UA, 0, UNWRAPPED),  # an explicit [est] base64_line_length wins over every quirk
    (LIBEST_UA, 76, Base64Framing(76, b"\r\n")),
    ("curl/7.88.1", 64, Base64Framing(64, b"\r\n")),
])
def test_configured_line_length_overrides_the_quirk(agent: str | None, configured: int | None,
                                                     expected: Base64Framing) -> None:
    assert quirks.for_client(agent, (), configured).framing == expected


@pytest.mark.parametrize("agent,key_types,expected", [
    (LIBEST_UA, ("ec-p256", "ec-p384", "rsa-2048", "rsa-4096"), "rsa-2048"),  # ok/libest-serverkeygen-rsa-key
    (LIBEST_UA, ("ec-p256",), None),  # nothing to choose: the profile's own type, libest fails
    (None, ("ec-p256", "rsa-2048"), None),
    ("curl/7.88.1", ("ec-p256", "rsa-2048"), None),
])
def test_libest_serverkeygen_gets_the_profiles_first_rsa_key_type(agent: str | None, key_types: tuple[str, ...],
                                                                 expected: str | None) -> None:
    assert quirks.for_client(agent, key_types).serverkeygen_key_type == expected


# --- the failures, reproduced from the captured wire format -------------------------------------


def captured_cacerts_der() -> bytes:
    _, _, body = libest_split((CAP / "libest-server-cacerts.http").read_bytes())
    return wire.decode_base64_body(body)


def test_libest_layout_is_the_layout_of_libests_own_server() -> None:
    """libest estserver 3.2.0p answers /cacerts in 64 columns, LF, final LF: byte for byte what
    LIBEST_FRAMING gives for the same DER."""
    _, _, body = libest_split((CAP / "libest-server-cacerts.http").read_bytes())
    assert LIBEST_FRAMING.encode(captured_cacerts_der()) == body


def test_line_mode_base64_loses_an_unwrapped_body_and_reads_the_libest_layout() -> None:
    """ok/libest-line-mode-base64, reproduced: one line longer than the filter's 1 KB buffer
    decodes to nothing, or with a final newline to a truncated prefix ("Failed to build PKCS7
    structure from received buffer"); the libest layout decodes to the exact DER."""
    der = wire.encode_certs_only([x509.load_pem_x509_certificate((CAP / "libest-client-simpleenroll-cert.pem")
                                                                 .read_bytes())] * 2)
    one_line = UNWRAPPED.encode(der)
    assert len(one_line) > 1024
    assert openssl_b64decode(one_line) == b""
    assert openssl_b64decode(one_line + b"\n") != der
    assert openssl_b64decode(LIBEST_FRAMING.encode(der)) == der
    assert openssl_b64decode(Base64Framing(64, b"\r\n").encode(der)) == der  # the config key's form


def test_serverkeygen_with_an_ec_key_fails_in_libest_in_any_layout() -> None:
    """The serverkeygen failure (EST_ERR_ZERO_LENGTH_BUF) seen with and without
    base64_line_length = 64: a P-256 PKCS#8 key is 184 base64 characters, under libest's 256."""
    key = ec.generate_private_key(ec.SECP256R1())
    p8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())
    certs = wire.encode_certs_only([_selfsigned(key)])
    for framing in (UNWRAPPED, Base64Framing(64, b"\r\n"), LIBEST_FRAMING):
        ctype, body = wire.build_serverkeygen_response(p8, certs, encrypted=False, framing=framing)
        raw = _http(ctype, body)
        with pytest.raises(LibestFailure, match="EST_ERR_ZERO_LENGTH_BUF"):
            libest_read_serverkeygen(raw)


def test_serverkeygen_emulation_reads_libests_own_server_answer() -> None:
    """The libest reading above accepts the answer libest's own server gave libest's client."""
    got = libest_read_serverkeygen((CAP / "libest-server-serverkeygen.http").read_bytes())
    assert wire.decode_certs_only(got.cert_der)[0].subject.rfc4514_string() == "CN=estclient-capture-skg"
    assert isinstance(serialization.load_der_private_key(got.key_der, None), rsa.RSAPrivateKey)


def test_serverkeygen_libest_layout_matches_libests_own_server() -> None:
    key = rsa.generate_private_key(65537, 2048)
    p8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())
    ctype, body = wire.build_serverkeygen_response(p8, wire.encode_certs_only([_selfsigned(key)]),
                                                   encrypted=False, framing=LIBEST_FRAMING)
    got = libest_read_serverkeygen(_http(ctype, body))
    assert got.key_der == p8
    _, headers, captured = libest_split((CAP / "libest-server-serverkeygen.http").read_bytes())
    assert mime_layout(body, ctype.split("boundary=")[1].encode()) == \
        mime_layout(captured, b"est-server-boundary")


def _http(content_type: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def _selfsigned(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> x509.Certificate:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skg")])
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))


# --- every base64 answer of the server follows the client ---------------------------------------


async def test_cacerts_for_libest_decodes_in_line_mode_and_stays_unwrapped_for_others(est_server: EstServer) -> None:
    status, headers, plain = await get(est_server, "/cacerts", None)
    assert status == 200 and b"\r" not in plain and b"\n" not in plain  # strongSwan's expectation
    der = base64.b64decode(plain, validate=True)
    assert openssl_b64decode(plain) != der  # what libest got before the quirk
    raw = await replay(est_server.https_port, est_server.ca_bundle, "libest-client-cacerts.http", userpass(est_server))
    body = libest_single_part_body(raw, b"application/pkcs7-mime")
    assert body == LIBEST_FRAMING.encode(der)
    assert openssl_b64decode(body) == der


async def test_csrattrs_for_libest_decodes_the_libest_way(est_server: EstServer) -> None:
    status, _, plain = await get(est_server, "/csrattrs", None)
    assert status == 200 and b"\n" not in plain
    raw = await replay(est_server.https_port, est_server.ca_bundle, "libest-client-csrattrs.http", userpass(est_server))
    body = libest_single_part_body(raw, b"application/csrattrs")
    assert body == LIBEST_FRAMING.encode(base64.b64decode(plain, validate=True))
    assert libest_base64_decode(body) == base64.b64decode(plain, validate=True)


async def test_simpleenroll_of_libests_captured_request_decodes_in_line_mode(est_server: EstServer) -> None:
    before = await est_server.issued()
    raw = await replay(est_server.https_port, est_server.ca_bundle, "libest-client-simpleenroll.http", userpass(est_server))
    body = libest_single_part_body(raw, b"application/pkcs7-mime; smime-type=certs-only")
    assert all(len(line) <= 64 for line in body.split(b"\n")) and body.endswith(b"\n") and b"\r" not in body
    der = openssl_b64decode(body)
    assert der == wire.decode_base64_body(body)
    cert = wire.decode_certs_only(der)[0]
    assert cert.subject.rfc4514_string() == "CN=estclient-capture"
    assert await est_server.issued() == before + 1


async def test_simplereenroll_for_libest_decodes_in_line_mode(est_server: EstServer, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    async with est_server.basic() as c:
        first = await c.enroll(build_csr(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "re-libest")])))
    (tmp_path / "c.pem").write_bytes(first.certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    csr = build_csr(key, first.certificate.subject)
    status, headers, body = await get(est_server, "/simplereenroll", LIBEST_UA,
                                      cert=(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")),
                                      body=base64.b64encode(csr.public_bytes(serialization.Encoding.DER)))
    assert status == 200, body
    assert headers["Content-Type"] == wire.CT_CERTS_ONLY
    renewed = wire.decode_certs_only(openssl_b64decode(body))[0]
    assert renewed.subject == first.certificate.subject and renewed.serial_number != first.certificate.serial_number
    assert body == LIBEST_FRAMING.encode(wire.decode_base64_body(body))


async def test_serverkeygen_of_libests_captured_request_is_read_by_libest(est_server: EstServer) -> None:
    """ok/libest-serverkeygen-rsa-key and ok/libest-line-mode-base64 on libest's own request: the
    answer passes every step of libest's reading, and its parts are laid out like the parts of
    libest's own server."""
    before = await est_server.issued()
    raw = await replay(est_server.https_port, est_server.ca_bundle, "libest-client-serverkeygen.http", userpass(est_server))
    got = libest_read_serverkeygen(raw)
    key = serialization.load_der_private_key(got.key_der, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048  # the gateway profile's first RSA type
    assert wire.decode_certs_only(got.cert_der)[0].subject.rfc4514_string() == "CN=estclient-capture-skg"
    _, headers, body = libest_split(raw)
    ctype = dict(headers)[b"Content-Type"]
    _, _, captured = libest_split((CAP / "libest-server-serverkeygen.http").read_bytes())
    assert mime_layout(body, ctype.split(b"boundary=")[1]) == mime_layout(captured, b"est-server-boundary")
    assert await est_server.issued() == before + 1


async def test_serverkeygen_without_the_quirk_is_what_libest_failed_on(est_server: EstServer) -> None:
    """The same request without libest's User-Agent gets the profile's EC key, unwrapped: libest
    would stop with EST_ERR_ZERO_LENGTH_BUF, as it did before the quirk."""
    raw = await replay(est_server.https_port, est_server.ca_bundle, "libest-client-serverkeygen.http", userpass(est_server),
                       drop_user_agent=True)
    status, headers, body = libest_split(raw)
    assert status == 200
    parsed = wire.parse_serverkeygen_response(dict(headers)[b"Content-Type"].decode(), body)
    assert isinstance(serialization.load_der_private_key(parsed.key_der, None), ec.EllipticCurvePrivateKey)
    assert b"\n" not in body.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[0]  # the key part is one line
    with pytest.raises(LibestFailure, match="EST_ERR_ZERO_LENGTH_BUF"):
        libest_read_serverkeygen(raw)


# --- end to end: `enroll serve` answering libest's captured requests -----------------------------


async def test_real_server_answers_libest_cacerts_and_simpleenroll_in_line_mode(serve: RunningServer) -> None:
    """``enroll serve`` (a subprocess) gets libest's captured /cacerts and /simpleenroll requests
    byte for byte; ``openssl base64 -d`` in line mode yields the exact DER of each answer."""
    raw = await replay(serve.https_port, serve.ca_bundle, "libest-client-cacerts.http", serve.userpass)
    body = libest_single_part_body(raw, b"application/pkcs7-mime")
    der = openssl_b64decode(body)
    assert der and der == wire.decode_base64_body(body)
    chain = wire.decode_certs_only(der)
    assert any(c.subject == c.issuer for c in chain)  # up to the trust anchor
    raw = await replay(serve.https_port, serve.ca_bundle, "libest-client-simpleenroll.http", serve.userpass)
    body = libest_single_part_body(raw, b"application/pkcs7-mime; smime-type=certs-only")
    der = openssl_b64decode(body)
    assert der and der == wire.decode_base64_body(body)
    cert = wire.decode_certs_only(der)[0]
    assert cert.subject.rfc4514_string() == "CN=estclient-capture"
    assert any(c.subject == cert.issuer for c in chain)
    assert serve.issued() == 1


# --- [est] base64_line_length: unset follows the client, set fixes the layout for all -----------


@pytest.mark.parametrize("est,agent,expected", [
    ({}, LIBEST_UA, LIBEST_FRAMING),
    ({}, None, UNWRAPPED),
    ({"base64_line_length": 64}, LIBEST_UA, Base64Framing(64, b"\r\n")),
    ({"base64_line_length": 64}, None, Base64Framing(64, b"\r\n")),
    ({"base64_line_length": 0}, LIBEST_UA, UNWRAPPED),
])
async def test_cacerts_layout_follows_client_unless_configured(dev_pki: DevPKI, est: dict[str, int],
                                                               agent: str | None, expected: Base64Framing) -> None:
    chain = CAChain(issuer=dev_pki.issuing.cert, chain=(dev_pki.issuing.cert, dev_pki.root.cert))
    svc = EstService(settings(P("a", {"labels": ["x"], "auth": ["basic"]}), est=est),
                     FakeIssuer(chain))  # type: ignore[arg-type]
    resp = await svc.cacerts("x", agent)
    der = wire.encode_certs_only([dev_pki.issuing.cert, dev_pki.root.cert])
    assert resp.body == expected.encode(der)
    if expected.line_length:
        assert openssl_b64decode(resp.body) == der  # what libest's line-mode reader gets


def test_base64_line_length_is_unset_by_default_and_refuses_non_integers() -> None:
    assert settings(P("a", {"labels": ["x"], "auth": ["basic"]})).line_length is None
    assert settings(P("a", {"labels": ["x"], "auth": ["basic"]}), est={"base64_line_length": 0}).line_length == 0
    for bad in (True, "64", -4, 62):
        with pytest.raises(ConfigError):
            settings(P("a", {"labels": ["x"], "auth": ["basic"]}), est={"base64_line_length": bad})
