"""`enroll init --pkcs11` and a real `enroll serve` whose issuing CA, SCEP RA and OCSP keys live
in a SoftHSM2 token: EST (our client, strongSwan ``pki --est``, /serverkeygen whose key package a
token key signs), SCEP (micromdm scepclient), a CRL over HTTP and an OCSP answer, both verified
with the public keys read from the token; the start-up refusals (wrong PIN, missing token, removed
key) with a message naming the key; and `enroll bench --spawn --softhsm`.

Every token operation runs in a subprocess (``enroll``, or ``python -c`` with python-pkcs11) with
this module's ``SOFTHSM2_CONF``: SoftHSM2 reads it once per process, at C_Initialize, so the
session token directory of tests/ca/test_pkcs11.py and this one never meet in one process.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from enroll.bench.server import free_port
from enroll.config import load_config
from est import asn1, serverkeygen_cms, wire
from est.client import EstClient, build_csr
from tests.harness import enroll_serve
from tests.softhsm import softhsm_setup
from tests.support import EST_PROFILES, KEK, KEK_ID, add_scep_test_profiles, issued_count, make_csr, require_tool

PIN = "3141"
PIN_ENV = "ENROLL_TEST_HSM_PIN"
_spares = itertools.count(1)

#: Reads what a token holds about a key: its public key, CKA_SENSITIVE and CKA_EXTRACTABLE.
TOKEN_FACTS = """
import json, sys
import pkcs11
from cryptography.hazmat.primitives import serialization
from ca import pkcs11 as p11
module, pin_env, token, *labels = sys.argv[1:]
settings = p11.Settings(module=module, pin_env=pin_env)
out = {}
for label in labels:
    pub = p11.load_key(f"pkcs11:token={token};object={label}", settings, label).public_key()
    with pkcs11.lib(module).get_token(token_label=token).open() as s:  # already logged in by the pool
        priv = s.get_key(pkcs11.ObjectClass.PRIVATE_KEY, label=label)
        out[label] = {"public": pub.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
                      "sensitive": bool(priv[pkcs11.Attribute.SENSITIVE]),
                      "extractable": bool(priv[pkcs11.Attribute.EXTRACTABLE])}
print(json.dumps(out))
"""

#: Destroys every object (private and public key) with a label: a key removed from the token.
DESTROY = """
import os, sys
import pkcs11
module, pin_env, token, label = sys.argv[1:]
with pkcs11.lib(module).get_token(token_label=token).open(rw=True, user_pin=os.environ[pin_env]) as s:
    for obj in list(s.get_objects({pkcs11.Attribute.LABEL: label})):
        obj.destroy()
"""


@dataclass(frozen=True)
class Hsm:
    """A SoftHSM2 token directory; ``SOFTHSM2_CONF`` and the PIN variable are in os.environ
    (inherited by every subprocess) while the module's tests run."""

    util: str
    module: str
    base: Path

    def new_token(self, label: str) -> str:
        subprocess.run([self.util, "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", "27182"],
                       check=True, capture_output=True, timeout=60)
        return label

    def init(self, where: Path, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """`enroll init --pkcs11 pkcs11:token=TOKEN` into ``where`` on free ports."""
        return enroll("init", "--dir", str(where), "--https-port", str(free_port()), "--http-port",
                      str(free_port()), "--pkcs11", f"pkcs11:token={token}", "--pkcs11-module", self.module,
                      "--pin-env", PIN_ENV, *extra)

    def facts(self, token: str, *labels: str) -> dict[str, dict[str, object]]:
        done = subprocess.run([sys.executable, "-c", TOKEN_FACTS, self.module, PIN_ENV, token, *labels],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        facts: dict[str, dict[str, object]] = json.loads(done.stdout)
        return facts

    def public_key(self, token: str, label: str) -> object:
        return serialization.load_pem_public_key(str(self.facts(token, label)[label]["public"]).encode())

    def destroy(self, token: str, label: str) -> None:
        subprocess.run([sys.executable, "-c", DESTROY, self.module, PIN_ENV, token, label], check=True,
                       capture_output=True, timeout=120)


def enroll(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "enroll", *(["-c", str(config)] if config else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    base = tmp_path_factory.mktemp("hsm")
    util, module, conf = softhsm_setup(base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        mp.setenv(PIN_ENV, PIN)
        yield Hsm(util, module, base)


@dataclass(frozen=True)
class TokenServer:
    """`enroll serve` of an `enroll init --pkcs11` directory."""

    hsm: Hsm
    token: str
    dir: Path
    https_port: int
    http_port: int

    @property
    def config_path(self) -> Path:
        return self.dir / "enroll.toml"

    @property
    def certs(self) -> Path:
        return self.dir / "certs"

    def secret(self, name: str) -> str:
        lines = (self.certs / "dev-secrets.txt").read_text().splitlines()
        return next(line.split("=", 1)[1] for line in lines if line.startswith(name + "="))

    def cert(self, stem: str) -> x509.Certificate:
        return x509.load_pem_x509_certificates((self.certs / f"{stem}.pem").read_bytes())[0]


@pytest.fixture(scope="module")
def token_server(hsm: Hsm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    base = tmp_path_factory.mktemp("token-server")
    token = hsm.new_token("Enroll")
    done = hsm.init(base / "srv", token)
    assert done.returncode == 0, done.stderr
    config_path = base / "srv" / "enroll.toml"
    add_scep_test_profiles(config_path)
    _token_serverkeygen_signer(config_path, token)
    config = load_config(config_path)
    srv = TokenServer(hsm, token, base / "srv", config.server.https[0].port, config.server.http[0].port)
    with enroll_serve(config_path, srv.http_port, base / "serve.log"):
        yield srv


def _token_serverkeygen_signer(config_path: Path, token: str) -> None:
    """The EST test profiles (skg: /serverkeygen with a KEK) and the token's OCSP key as the
    serverkeygen signer (RFC 7030 §4.4.2), by URI: any Signer may sign the key package."""
    (config_path.parent / "kek-1.hex").write_text(KEK.hex() + "\n")
    (config_path.parent / "kek-1.hex").chmod(0o600)
    text = config_path.read_text()
    assert text.count("[est]\n") == 1
    text = text.replace("[est]\n", f'[est]\nserverkeygen_signer_cert = "certs/ocsp.pem"\n'
                                   f'serverkeygen_signer_key = "pkcs11:token={token};object=ocsp"\n')
    config_path.write_text(text + EST_PROFILES)


# --- enroll init --pkcs11 ---------------------------------------------------------------------------


def test_init_pkcs11_generates_non_extractable_keys_and_config_check_passes(token_server: TokenServer) -> None:
    facts = token_server.hsm.facts(token_server.token, "issuing-ca", "scep-ra", "ocsp")
    for label, fact in facts.items():
        assert fact["sensitive"] is True and fact["extractable"] is False, label
    for stem, label in (("issuing-ca", "issuing-ca"), ("scep-ra", "scep-ra"), ("ocsp", "ocsp")):
        assert token_server.cert(stem).public_key() == serialization.load_pem_public_key(
            str(facts[label]["public"]).encode()), stem
        assert not (token_server.certs / f"{stem}.key").exists(), "the token key has no file twin"
    root = token_server.cert("root-ca")
    issuing = token_server.cert("issuing-ca")
    issuing.verify_directly_issued_by(root)
    for stem in ("scep-ra", "ocsp", "tls-server", "example-client"):
        token_server.cert(stem).verify_directly_issued_by(issuing)
    text = token_server.config_path.read_text()
    assert f'key = "pkcs11:token={token_server.token};object=issuing-ca"' in text
    assert f'ra_key = "pkcs11:token={token_server.token};object=scep-ra"' in text
    assert f'ocsp_key = "pkcs11:token={token_server.token};object=ocsp"' in text
    assert f'[pkcs11]\nmodule = "{token_server.hsm.module}"\npin_env = "{PIN_ENV}"' in text
    check = enroll("config", "check", config=token_server.config_path)
    assert check.returncode == 0, check.stderr


def test_init_pkcs11_refuses_a_token_that_already_holds_the_keys(token_server: TokenServer, tmp_path: Path) -> None:
    again = token_server.hsm.init(tmp_path / "again", token_server.token)
    assert again.returncode != 0
    assert "object=issuing-ca" in again.stderr and "already exists" in again.stderr
    assert not (tmp_path / "again").exists(), "refused before anything is written"
    # the first directory's keys are untouched: its config still checks
    assert enroll("config", "check", config=token_server.config_path).returncode == 0


@pytest.mark.parametrize("case", ["missing token", "wrong PIN"])
def test_init_pkcs11_refuses_before_writing_anything(hsm: Hsm, tmp_path: Path, case: str) -> None:
    token = "NoSuchToken" if case == "missing token" else hsm.new_token(f"Spare{next(_spares)}")
    done = hsm.init(tmp_path / "x", token) if case == "missing token" else \
        enroll("init", "--dir", str(tmp_path / "x"), "--pkcs11", f"pkcs11:token={token}", "--pkcs11-module",
               hsm.module, "--pin-env", PIN_ENV, env={PIN_ENV: "0000"})
    assert done.returncode != 0
    assert ("no PKCS#11 token labelled 'NoSuchToken'" if case == "missing token" else "wrong PIN") in done.stderr
    assert not (tmp_path / "x").exists()


def test_init_pkcs11_refuses_a_uri_naming_an_object(hsm: Hsm, tmp_path: Path) -> None:
    done = enroll("init", "--dir", str(tmp_path / "x"), "--pkcs11", "pkcs11:token=Enroll;object=mine",
                  "--pkcs11-module", hsm.module, "--pin-env", PIN_ENV)
    assert done.returncode != 0 and "name the token only" in done.stderr
    assert not (tmp_path / "x" / "enroll.toml").exists()


# --- protocols on the token CA ----------------------------------------------------------------------


async def test_est_enrollment_with_our_client_is_signed_by_the_token_key(token_server: TokenServer) -> None:
    csr, _ = make_csr("hsm-gw-1", sans=[x509.DNSName("hsm-gw-1.example")])
    async with EstClient(f"https://127.0.0.1:{token_server.https_port}", trust_anchor=token_server.certs / "root-ca.pem",
                         username="estuser", password=token_server.secret("EST_PASSWORD"), max_polls=0) as est:
        result = await est.enroll(csr)
    ca_key = token_server.hsm.public_key(token_server.token, "issuing-ca")
    assert token_server.cert("issuing-ca").public_key() == ca_key
    result.certificate.verify_directly_issued_by(token_server.cert("issuing-ca"))
    assert result.certificate.subject.rfc4514_string() == "CN=hsm-gw-1"


async def test_serverkeygen_key_package_is_signed_by_the_token_key(token_server: TokenServer) -> None:
    """/serverkeygen with a KEK (RFC 7030 §4.4.2): the SignedData around the generated key verifies
    with the embedded signer certificate, whose key is the token's (the configured pkcs11: URI)."""
    import ssl

    import aiohttp

    csr = build_csr(ec.generate_private_key(ec.SECP256R1()), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                            "hsm-skg")]),
                    extra_attributes=[(asn1.Oid.DECRYPT_KEY_IDENTIFIER, KEK_ID)])
    ctx = ssl.create_default_context(cafile=str(token_server.certs / "root-ca.pem"))
    auth = "Basic " + base64.b64encode(f"estuser:{token_server.secret('EST_PASSWORD')}".encode()).decode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"https://127.0.0.1:{token_server.https_port}/.well-known/est/skg/serverkeygen",
                             data=base64.b64encode(csr.public_bytes(serialization.Encoding.DER)), ssl=ctx,
                             headers={"Content-Type": "application/pkcs10", "Authorization": auth}) as resp:
            assert resp.status == 200, await resp.text()
            ctype, body = resp.headers["Content-Type"], await resp.read()
    result = wire.parse_serverkeygen_response(ctype, body)
    assert result.encrypted
    opened = serverkeygen_cms.open_server_generated_key(result.key_der, kek=serverkeygen_cms.KekRecipient(KEK_ID, KEK))
    assert opened.signer == token_server.cert("ocsp")
    assert opened.signer.public_key() == token_server.hsm.public_key(token_server.token, "ocsp")
    (cert,) = [c for c in result.certificates if c.subject.rfc4514_string() == "CN=hsm-skg"]
    assert cert.public_key() == opened.private_key.public_key()
    cert.verify_directly_issued_by(token_server.cert("issuing-ca"))


def test_strongswan_pki_est_enrolls_from_the_token_ca(token_server: TokenServer, tmp_path: Path) -> None:
    pki = require_tool("pki")
    key = tmp_path / "sw.key"
    req = tmp_path / "sw.der"
    key.write_bytes(_run([pki, "--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"], tmp_path).stdout)
    req.write_bytes(_run([pki, "--req", "--type", "priv", "--in", str(key), "--dn", "CN=hsm-strongswan", "--san",
                          "hsm-strongswan.example", "--outform", "der"], tmp_path).stdout)
    out = _run([pki, "--est", "--url", f"https://127.0.0.1:{token_server.https_port}", "--cacert",
                str(token_server.certs / "root-ca.pem"), "--in", str(req), "--userpass",
                f"estuser:{token_server.secret('EST_PASSWORD')}", "--outform", "pem"], tmp_path).stdout
    cert = x509.load_pem_x509_certificate(out)
    assert cert.subject.rfc4514_string() == "CN=hsm-strongswan"
    cert.verify_directly_issued_by(token_server.cert("issuing-ca"))


def test_scepclient_enrolls_through_the_token_ra_and_ca(token_server: TokenServer, tmp_path: Path) -> None:
    """micromdm scepclient encrypts to the RA certificate (the token decrypts, PKCS#1 v1.5) and
    verifies the CertRep the token's RA key signed (RFC 8894 §3.3)."""
    exe = require_tool("scepclient")
    before = issued_count(load_config(token_server.config_path))
    _run([exe, "-server-url", f"http://127.0.0.1:{token_server.http_port}/scep/anytime", "-private-key",
          str(tmp_path / "key.pem"), "-certificate", str(tmp_path / "cert.pem"), "-cn", "hsm-scepclient",
          "-organization", "interop", "-challenge", token_server.secret("SCEP_CHALLENGE")], tmp_path)
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "hsm-scepclient"
    cert.verify_directly_issued_by(token_server.cert("issuing-ca"))
    assert issued_count(load_config(token_server.config_path)) == before + 1


async def test_crl_and_ocsp_are_signed_by_the_token_keys(token_server: TokenServer) -> None:
    """RFC 5280 §5 CRL from /crl/issuing.crl and an RFC 6960 answer from /ocsp, both over HTTP:
    the CRL verifies with the token's CA key, the OCSP answer with the token's responder key
    (a delegated responder certificate issued by the token CA, RFC 6960 §4.2.2.2)."""
    csr, _ = make_csr("hsm-revoked")
    async with EstClient(f"https://127.0.0.1:{token_server.https_port}", trust_anchor=token_server.certs / "root-ca.pem",
                         username="estuser", password=token_server.secret("EST_PASSWORD"), max_polls=0) as est:
        leaf = (await est.enroll(csr)).certificate
    revoked = enroll("revoke", f"{leaf.serial_number:x}", "--reason", "key_compromise",
                     config=token_server.config_path)
    assert revoked.returncode == 0, revoked.stderr
    issuing = token_server.cert("issuing-ca")
    ca_key = token_server.hsm.public_key(token_server.token, "issuing-ca")
    with urllib.request.urlopen(f"http://127.0.0.1:{token_server.http_port}/crl/issuing.crl", timeout=30) as r:
        crl = x509.load_der_x509_crl(r.read())
    assert isinstance(ca_key, rsa.RSAPublicKey)
    assert crl.is_signature_valid(ca_key)
    assert crl.issuer == issuing.subject
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None

    query = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuing, hashes.SHA256()).build()
    req = urllib.request.Request(f"http://127.0.0.1:{token_server.http_port}/ocsp",
                                 data=query.public_bytes(serialization.Encoding.DER),
                                 headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
        answer = ocsp.load_der_ocsp_response(r.read())
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert answer.serial_number == leaf.serial_number
    responder_key = token_server.hsm.public_key(token_server.token, "ocsp")
    assert isinstance(responder_key, rsa.RSAPublicKey)
    assert answer.signature_hash_algorithm is not None
    responder_key.verify(answer.signature, answer.tbs_response_bytes, padding.PKCS1v15(),
                         answer.signature_hash_algorithm)
    assert [c.public_key() for c in answer.certificates] == [responder_key]
    answer.certificates[0].verify_directly_issued_by(issuing)


# --- start-up refusals ------------------------------------------------------------------------------


@pytest.fixture
def spare(hsm: Hsm, tmp_path: Path) -> TokenServer:
    """A second token and `enroll init --pkcs11` directory for the destructive cases (not started)."""
    token = hsm.new_token(f"Spare{next(_spares)}")
    done = hsm.init(tmp_path / "spare", token)
    assert done.returncode == 0, done.stderr
    config = load_config(tmp_path / "spare" / "enroll.toml")
    return TokenServer(hsm, token, tmp_path / "spare", config.server.https[0].port, config.server.http[0].port)


def _serve_refused(srv: TokenServer, **env: str) -> str:
    """`enroll serve` must exit non-zero before it listens (nothing issued); its message."""
    before = issued_count(load_config(srv.config_path))
    done = enroll("serve", config=srv.config_path, env=env, timeout=120)
    assert done.returncode != 0
    assert issued_count(load_config(srv.config_path)) == before
    return done.stderr


def test_serve_refuses_a_wrong_pin_naming_the_key(spare: TokenServer) -> None:
    message = _serve_refused(spare, **{PIN_ENV: "0000"})
    assert "cas.issuing.key" in message and "wrong PIN" in message and spare.token in message


def test_serve_refuses_a_missing_token_naming_the_key(spare: TokenServer) -> None:
    text = spare.config_path.read_text()
    spare.config_path.write_text(text.replace(f"token={spare.token};", "token=NoSuchToken;"))
    message = _serve_refused(spare)
    assert "cas.issuing.key" in message and "no PKCS#11 token labelled 'NoSuchToken'" in message


def test_serve_refuses_a_removed_key_naming_the_key(spare: TokenServer) -> None:
    spare.hsm.destroy(spare.token, "scep-ra")
    message = _serve_refused(spare)
    assert "scep.ra_key" in message and "no private key" in message and "object=scep-ra" in message


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=60)
    assert done.returncode == 0, f"{cmd[0]} exited {done.returncode}:\n{done.stdout!r}\n{done.stderr!r}"
    return done


# --- enroll bench with the keys in SoftHSM2 ---------------------------------------------------------


@pytest.mark.parametrize("protocol", ["est", "scep"])
def test_bench_spawns_a_softhsm2_ca(hsm: Hsm, protocol: str) -> None:
    """`enroll bench {est,scep} --spawn --softhsm`: every enrollment signed by the token CA (and, for
    SCEP, decrypted and answered by the token RA) and recorded in the ledger."""
    from tests.enroll.test_bench import assert_report, bench

    r = bench(protocol, "--spawn", "--softhsm", "--count", "12", "-c", "3", *(["--keys", "2"] if protocol == "scep"
                                                                                else []))
    assert r["spawned"]["keys"] == "softhsm2"
    assert_report(r, 12)
