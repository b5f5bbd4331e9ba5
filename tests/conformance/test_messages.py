"""The suite's own message builders and readers, checked on their own bytes and on captures of
micromdm's scepserver (so a parser bug cannot turn into a false verdict)."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conformance import report, scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.model import Level, Requirement, Result, Verdict

CAPTURES = Path(__file__).parent / "captures" / "scepserver-2.1.0"  # see captures/PROVENANCE.md


@pytest.mark.parametrize("cipher", list(sm.CIPHERS))
@pytest.mark.parametrize("digest", ["SHA-1", "SHA-256", "SHA-512"])
def test_pkimessage_round_trip(cipher: str, digest: str) -> None:
    key = sm.new_rsa_key()
    me = sm.self_signed(key, "round-trip")
    csr = sm.make_csr(key, "round-trip", "secret")
    built = sm.pki_message(sm.PKCS_REQ, "TX1", me, sm.envelope(csr, me.cert, cipher), digest=digest, cipher=cipher)
    rep = sm.parse_certrep(built.der)
    assert rep.signature_ok and rep.message_digest_ok and rep.signer_digest == digest
    assert rep.attrs[sm.OID_MESSAGE_TYPE].tag == 0x13 and rep.attr_text(sm.OID_MESSAGE_TYPE) == "19"
    assert rep.attrs[sm.OID_SENDER_NONCE].content == built.sender_nonce
    opened = sm.decrypt_envelope(rep.econtent or b"", me)
    assert opened.plaintext == csr and opened.cipher == cipher and opened.recipient_matches
    assert not opened.constructed_content


def test_tampering_is_visible() -> None:
    key = sm.new_rsa_key()
    me = sm.self_signed(key, "t")
    env = sm.envelope(b"payload", me.cert, "AES-128")
    assert not sm.parse_certrep(sm.pki_message(19, "T", me, env, tamper_signature=True).der).signature_ok
    assert sm.parse_certrep(sm.pki_message(19, "T", me, env, tamper_content=True).der).message_digest_ok is False


def test_reads_micromdm_certrep_with_ber_envelope() -> None:
    ca = x509.load_pem_x509_certificate((CAPTURES / "ca-cert.pem").read_bytes())
    rep = sm.parse_certrep((CAPTURES / "certrep-success.der").read_bytes(), [ca])
    assert rep.signature_ok and rep.status == "0" and rep.signer_digest == "SHA-1"
    assert rep.attrs[sm.OID_SENDER_NONCE].content == rep.attrs[sm.OID_RECIPIENT_NONCE].content  # micromdm's reuse
    key = serialization.load_pem_private_key((CAPTURES / "certrep-success-recipient-key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((CAPTURES / "certrep-success-recipient-cert.pem").read_bytes())
    opened = sm.decrypt_envelope(rep.econtent or b"", sm.Identity(key, cert))  # type: ignore[arg-type]
    assert opened.cipher == "DES" and opened.constructed_content
    certs = sm.parse_certs_only(opened.plaintext)
    assert not certs.shape_problems() and len(certs.certificates) == 1


def test_ber_octets_indefinite() -> None:
    tlv = bytes.fromhex("2480" "0402aabb" "2480" "0401cc" "0000" "0000")
    assert sm.ber_octets(tlv) == bytes.fromhex("aabbcc")
    assert any("EOC" in ln for ln in asn1parse(tlv))


def test_reports_carry_requirement_and_evidence(tmp_path: Path) -> None:
    req = Requirement("RFC 8894", "3.2.1.5", Level.MUST, "fresh senderNonce")
    results = [Result("scep.a", "A", req, Verdict.PASS, "ok"),
               Result("scep.b", "B", req, Verdict.FAIL, "reused", ["senderNonce 00"]),
               Result("scep.c", "C", req, Verdict.SKIP, "not offered")]
    text = report.text_report("http://x/scep", "scep", results)
    assert "1 pass, 1 fail, 1 skip" in text and "| senderNonce 00" in text and "RFC 8894 §3.2.1.5 MUST" in text
    data = json.loads(report.dumps_json(report.json_report("http://x/scep", "scep", results, [])))
    assert data["results"][1] | {"duration_ms": 0} == data["results"][1]
    assert data["results"][1]["section"] == "3.2.1.5" and data["summary"]["fail"] == 1
    root = ET.fromstring(report.junit_report("http://x/scep", "scep", results).split("?>", 1)[1])
    assert root.get("failures") == "1" and root.get("skipped") == "1"
    assert root.find("testcase[@name='scep.b']/failure") is not None
