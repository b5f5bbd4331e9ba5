"""Negative SCEP cases through the real app: each answers a signed FAILURE and issues nothing."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.issuer import Issuer
from enroll.app import ISSUER, create_app
from enroll.config import Config, load_config
from enroll.setup import InitResult
from scep import cms
from scep.asn1 import FailInfo, PkiStatus
from scep.client import ScepClient, http_request, self_signed_signer, simple_csr
from scep.message import CertRep, PkiMessage, new_nonce
from scep.quirks import encode_get_message
from tests.scep.scep_testpki import CAPTURES
from tests.support import cached_rsa_key


class Env:
    def __init__(self, base: str, issuer: Issuer, challenge: str, ra: x509.Certificate) -> None:
        self.base, self.issuer, self.challenge, self.ra = base, issuer, challenge, ra

    async def send(self, der: bytes, profile: str = "router", get: bool = False) -> CertRep:
        url = f"{self.base}/scep/{profile}?operation=PKIOperation"
        if get:
            resp = await http_request(url + "&message=" + encode_get_message(der))
        else:
            resp = await http_request(url, "POST", der)
        assert resp.status == 200, resp
        assert resp.content_type == "application/x-pki-message"
        rep = CertRep.parse(resp.body)
        rep.verify([self.ra])
        return rep

    async def count(self) -> int:
        return await self.issuer.ledger.count_certificates()


@pytest.fixture
async def env(config: Config, issuer: Issuer, embedded: InitResult, aiohttp_server) -> AsyncIterator[Env]:  # type: ignore[no-untyped-def]
    server: TestServer = await aiohttp_server(create_app(config, issuer=issuer), host="127.0.0.1")
    base = f"http://127.0.0.1:{server.port}"
    ra = (await ScepClient(base + "/scep").get_ca_cert())[0]
    yield Env(base, issuer, embedded.scep_challenge, ra)


def _build(env: Env, *, mtype: int = 19, cn: str = "neg", challenge: str | None = "", cipher: str = "aes128",
           digest: str = "sha256", recipient: x509.Certificate | None = None, key_index: int = 20,
           txid: str = "NEG-1") -> bytes:
    key = cached_rsa_key(key_index)
    csr = simple_csr(key, cn, env.challenge if challenge == "" else challenge)
    signer = self_signed_signer(key, csr.subject)
    msg = PkiMessage(message_type=mtype, transaction_id=txid, sender_nonce=new_nonce())
    return msg.build(csr.public_bytes(serialization.Encoding.DER), signer_cert=signer, sign=cms.rsa_signer(key),
                     recipient=recipient or env.ra, cipher=cipher, digest=digest)


async def assert_failure(env: Env, der: bytes, fail_info: FailInfo, profile: str = "router") -> CertRep:
    before = await env.count()
    rep = await env.send(der, profile)
    assert rep.status is PkiStatus.FAILURE
    assert rep.fail_info is fail_info
    assert rep.fail_info_text
    assert await env.count() == before, "nothing may be issued"
    return rep


async def test_control_the_same_builder_succeeds(env: Env) -> None:
    rep = await env.send(_build(env, txid="CONTROL"))
    assert rep.status is PkiStatus.SUCCESS


async def test_update_req_18_is_bad_request(env: Env) -> None:
    await assert_failure(env, _build(env, mtype=18), FailInfo.BAD_REQUEST)


async def test_unknown_type_is_bad_request(env: Env) -> None:
    await assert_failure(env, _build(env, mtype=99), FailInfo.BAD_REQUEST)


async def test_encrypted_to_the_wrong_certificate(env: Env, pki) -> None:  # type: ignore[no-untyped-def]
    rep = await assert_failure(env, _build(env, recipient=pki.other_cert), FailInfo.BAD_MESSAGE_CHECK)
    assert rep.fail_info_text == "message check failed"


async def test_tampered_signature(env: Env) -> None:
    der = bytearray(_build(env))
    der[-3] ^= 0x40
    rep = await assert_failure(env, bytes(der), FailInfo.BAD_MESSAGE_CHECK)
    assert rep.fail_info_text == "message check failed"


async def test_decrypt_and_verify_failures_look_alike(env: Env, pki) -> None:  # type: ignore[no-untyped-def]
    """No oracle: a bad signature and a bad envelope give the same failInfo and text."""
    der = bytearray(_build(env))
    der[-3] ^= 0x40
    a = await env.send(bytes(der))
    b = await env.send(_build(env, recipient=pki.other_cert))
    assert (a.fail_info, a.fail_info_text) == (b.fail_info, b.fail_info_text)


async def test_des_where_the_profile_forbids_it(env: Env) -> None:
    await assert_failure(env, _build(env, cipher="des"), FailInfo.BAD_ALG, profile="modern")
    await assert_failure(env, _build(env, cipher="3des"), FailInfo.BAD_ALG, profile="modern")


async def test_sha1_where_the_profile_forbids_it(env: Env) -> None:
    await assert_failure(env, _build(env, digest="sha1"), FailInfo.BAD_ALG, profile="modern")


async def test_legacy_profile_accepts_des_and_sha1(env: Env) -> None:
    rep = await env.send(_build(env, cipher="des", digest="sha1", txid="LEGACY"), "anytime")
    assert rep.status is PkiStatus.SUCCESS
    assert rep.signed is not None and rep.signed.digest == "sha1"  # mirrored


async def test_missing_challenge(env: Env) -> None:
    await assert_failure(env, _build(env, challenge=None, txid="NOCH"), FailInfo.BAD_REQUEST)


async def test_unauthenticated_message_sent_twice_is_refused_twice(env: Env) -> None:
    """No nonce is recorded before authorization (test_scep_security has the replay rule)."""
    der = _build(env, challenge="wrong", txid="REPLAY")
    await assert_failure(env, der, FailInfo.BAD_REQUEST)
    rep = await assert_failure(env, der, FailInfo.BAD_REQUEST)
    assert rep.fail_info_text == "not authorized"


async def test_reply_mirrors_cipher_and_nonces(env: Env) -> None:
    key = cached_rsa_key(21)
    csr = simple_csr(key, "mirror", env.challenge)
    signer = self_signed_signer(key, csr.subject)
    nonce = new_nonce()
    msg = PkiMessage(message_type=19, transaction_id="MIRROR", sender_nonce=nonce)
    der = msg.build(csr.public_bytes(serialization.Encoding.DER), signer_cert=signer, sign=cms.rsa_signer(key),
                    recipient=env.ra, cipher="aes256", digest="sha512")
    rep = await env.send(der)
    assert rep.status is PkiStatus.SUCCESS
    assert rep.recipient_nonce == nonce and rep.sender_nonce != nonce and len(rep.sender_nonce) == 16
    assert rep.signed is not None and rep.signed.digest == "sha512"
    assert rep.envelope is not None
    opened = cms.decrypt_enveloped(rep.envelope, key.decrypt, [signer], {"aes256"})
    assert opened.cipher == "aes256"


async def test_failure_reply_is_signed_with_rsa_encryption(env: Env) -> None:
    from asn1crypto import cms as acms

    resp = await http_request(f"{env.base}/scep?operation=PKIOperation", "POST", _build(env, mtype=18))
    si = acms.ContentInfo.load(resp.body)["content"]["signer_infos"][0]
    assert si["signature_algorithm"]["algorithm"].dotted == "1.2.840.113549.1.1.1"


async def test_sscep_style_get_with_line_breaks(env: Env) -> None:
    der = _build(env, txid="SSCEP-GET")
    b64 = base64.b64encode(der).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    wrapped = "%0A".join(line.replace("+", "%2B").replace("=", "%3D") for line in lines)  # sscep net.c style
    resp = await http_request(f"{env.base}/scep?operation=PKIOperation&message={wrapped}")
    assert resp.status == 200 and CertRep.parse(resp.body).status is PkiStatus.SUCCESS


async def test_http10_post_without_content_type(env: Env) -> None:
    import asyncio

    der = _build(env, txid="HTTP10")
    host, port = env.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /cgi-bin/pkiclient.exe?operation=PKIOperation HTTP/1.0\r\n"
                 + f"Content-Length: {len(der)}\r\n\r\n".encode() + der)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    assert CertRep.parse(body).status is PkiStatus.SUCCESS


async def test_capture_from_another_ca_fails_the_check(env: Env) -> None:
    """A real sscep request encrypted to micromdm's CA: we cannot open it, one failure shape."""
    der = (CAPTURES / "sscep-0.10.0" / "pkcsreq-aes128.der").read_bytes()
    await assert_failure(env, der, FailInfo.BAD_MESSAGE_CHECK)


# --- webhook -------------------------------------------------------------------------------------

@pytest.fixture
async def hooked(embedded: InitResult, config: Config, aiohttp_server) -> AsyncIterator[tuple[Env, list[dict]]]:  # type: ignore[no-untyped-def,type-arg]
    seen: list[dict] = []  # type: ignore[type-arg]

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        return web.json_response({"allow": body["challenge"] == "let-me-in"} if body["challenge"] != "truthy"
                                 else {"allow": "yes"})

    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook)
    hook_server = await aiohttp_server(hook_app, host="127.0.0.1")

    extra = f"""
[profiles.hooked]
ca = "issuing"
validity_days = 30
key_types = ["rsa-2048"]
key_usage = ["digital_signature", "key_encipherment"]
extended_key_usage = ["client_auth"]
[profiles.hooked.subject]
allow = ["CN"]
require = ["CN"]
[profiles.hooked.scep]
auth = ["webhook"]
webhook_url = "http://127.0.0.1:{hook_server.port}/hook"
"""
    with open(embedded.config_path, "a") as f:  # the config fixture already added the test profiles
        f.write(extra)
    cfg = load_config(embedded.config_path)
    server = await aiohttp_server(create_app(cfg), host="127.0.0.1")
    iss = server.app[ISSUER]
    base = f"http://127.0.0.1:{server.port}"
    ra = (await ScepClient(base + "/scep").get_ca_cert())[0]
    yield Env(base, iss, "let-me-in", ra), seen


async def test_webhook_allows_only_an_explicit_yes(hooked: tuple[Env, list[dict]]) -> None:  # type: ignore[type-arg]
    env, seen = hooked
    ok = await env.send(_build(env, challenge="let-me-in", txid="HOOK-OK", cn="h1"), "hooked")
    assert ok.status is PkiStatus.SUCCESS
    assert seen[0]["profile"] == "hooked" and seen[0]["transaction_id"] == "HOOK-OK"
    assert seen[0]["csr"].startswith("-----BEGIN CERTIFICATE REQUEST-----")
    await assert_failure(env, _build(env, challenge="nope", txid="HOOK-NO", cn="h2", key_index=22), FailInfo.BAD_REQUEST, "hooked")
    await assert_failure(env, _build(env, challenge="truthy", txid="HOOK-TRUTHY", cn="h3", key_index=23), FailInfo.BAD_REQUEST, "hooked")


