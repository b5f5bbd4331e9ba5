"""Crypto policy and certificate content through the issuance core (SQLite and PostgreSQL):
every hostile request is Rejected, leaves no certificate row (issued or reserved) and exactly
one audit record; what is issued stays inside the profile and the issuer (pkilint at teardown)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from asn1crypto import csr as acsr
from asn1crypto import keys as akeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.x509.oid import NameOID

from ca.api import Issued, Rejected
from ca.issuer import Issuer
from tests.hardening.weakkeys import close_primes_key, roca_key
from tests.support import make_csr, request, resign_csr


def _key_swapped_csr() -> x509.CertificateSigningRequest:
    """Signed by key A, but carrying key B's SubjectPublicKeyInfo (B3/B2: PoP by the wrong key)."""
    csr, _ = make_csr("swap")
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    parsed = acsr.CertificationRequest.load(csr.public_bytes(serialization.Encoding.DER))
    info = parsed["certification_request_info"]
    info["subject_pk_info"] = akeys.PublicKeyInfo.load(other)
    out = acsr.CertificationRequest({"certification_request_info": info,
                                     "signature_algorithm": parsed["signature_algorithm"],
                                     "signature": parsed["signature"].native})
    return x509.load_der_x509_csr(out.dump())


def _raw_subject_csr(cn: bytes) -> x509.CertificateSigningRequest:
    """A correctly signed CSR whose CN carries raw bytes (NUL/CR/LF) cryptography would refuse."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr, _ = make_csr("placeholder", key)
    parsed = acsr.CertificationRequest.load(csr.public_bytes(serialization.Encoding.DER))
    info = parsed["certification_request_info"]
    from asn1crypto import x509 as ax509
    info["subject"] = ax509.Name.build({"common_name": cn.decode("latin-1")})
    sig = key.sign(info.dump(force=True), ec.ECDSA(hashes.SHA256()))
    out = acsr.CertificationRequest({"certification_request_info": info,
                                     "signature_algorithm": {"algorithm": "sha256_ecdsa"}, "signature": sig})
    return x509.load_der_x509_csr(out.dump())


def _rsa(bits: int, e: int = 65537) -> Any:
    return rsa.generate_private_key(e, bits)


CASES: dict[str, Callable[[], x509.CertificateSigningRequest]] = {
    # D1: key sizes, exponents, curves, key types
    "rsa-1024": lambda: make_csr("k", _rsa(1024))[0],
    "rsa-2056-odd-size": lambda: make_csr("k", _rsa(2056))[0],
    "rsa-exponent-3": lambda: make_csr("k", _rsa(2048, 3))[0],
    "ec-secp256k1": lambda: make_csr("k", ec.generate_private_key(ec.SECP256K1()))[0],
    "ec-p521-not-in-profile": lambda: make_csr("k", ec.generate_private_key(ec.SECP521R1()))[0],
    "ed448": lambda: x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k")])).sign(ed448.Ed448PrivateKey.generate(), None),
    # D4: known-weak keys (badkeys' offline checks)
    "rsa-roca": lambda: make_csr("k", roca_key())[0],
    "rsa-fermat-close-primes": lambda: make_csr("k", close_primes_key())[0],
    # D2: legacy digests where the profile does not allow them
    "csr-md5": lambda: resign_csr(make_csr("k", k := _rsa(2048))[0], k, hashes.MD5()),
    "csr-sha1": lambda: resign_csr(make_csr("k", k := _rsa(2048))[0], k, hashes.SHA1()),
    # B1/B2: proof of possession
    "flipped-signature-bit": lambda: x509.load_der_x509_csr(
        (lambda d: d[:-5] + bytes([d[-5] ^ 1]) + d[-4:])(make_csr("k")[0].public_bytes(serialization.Encoding.DER))),
    "spki-not-the-signer": _key_swapped_csr,
    # C1-C4: content beyond the profile
    "san-uri-not-allowed": lambda: make_csr("k", sans=[x509.UniformResourceIdentifier("https://evil.example")])[0],
    "san-email-not-allowed": lambda: make_csr("k", sans=[x509.RFC822Name("a@evil.example")])[0],
    "san-over-max": lambda: make_csr("k", sans=[x509.DNSName(f"h{i}.example.com") for i in range(9)])[0],
    "san-nul": lambda: make_csr("k", sans=[x509.DNSName("a.example.com\x00.evil.example")])[0],
    "san-crlf": lambda: make_csr("k", sans=[x509.DNSName("a.example.com\r\nX-Injected: 1")])[0],
    "cn-nul": lambda: _raw_subject_csr(b"victim.example\x00.evil"),
    "cn-lf": lambda: _raw_subject_csr(b"victim\n{\"ok\":true}"),
    "cn-too-long": lambda: _raw_subject_csr(b"a" * 65),
    # Subject and SAN content policy (enroll/default_config.py: the gateway CN is a host name)
    "cn-path-traversal": lambda: make_csr("../../../../x")[0],
    "cn-backslash": lambda: make_csr("gw\\x")[0],
    "cn-not-a-host-name": lambda: make_csr("gw 1; reboot")[0],
    "san-dns-underscore": lambda: make_csr("k", sans=[x509.DNSName("gw_1.example.com")])[0],
    "san-dns-wildcard-not-opted-in": lambda: make_csr("k", sans=[x509.DNSName("*.example.com")])[0],
    "san-dns-ip-literal": lambda: make_csr("k", sans=[x509.DNSName("192.0.2.7")])[0],
    "san-ip-unspecified": lambda: make_csr("k", sans=[x509.IPAddress(ipaddress.ip_address("0.0.0.0"))])[0],
    "san-ip-network": lambda: make_csr("k", sans=[x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))])[0],
    "ca-true": lambda: make_csr("k", extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)])[0],
    "key-cert-sign": lambda: make_csr("k", extensions=[(x509.KeyUsage(True, False, False, False, False, True, True,
                                                                       False, False), True)])[0],
    "eku-code-signing": lambda: make_csr("k", extensions=[(x509.ExtendedKeyUsage(
        [x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]), False)])[0],
    "eku-any": lambda: make_csr("k", extensions=[(x509.ExtendedKeyUsage(
        [x509.oid.ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]), False)])[0],
    "name-constraints": lambda: make_csr("k", extensions=[(x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("evil.example")], excluded_subtrees=None), True)])[0],
    "subject-attribute-not-allowed": lambda: make_csr("k", extra_attrs=[
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "corp")])[0],
}


async def _rows(issuer: Issuer) -> tuple[int, int]:
    return (await issuer.ledger.count_certificates("issued"), await issuer.ledger.count_certificates("reserved"))


@pytest.mark.parametrize("case", sorted(CASES))
async def test_hostile_request_is_rejected_with_nothing_issued_and_one_audit(issuer: Issuer, case: str) -> None:
    csr = CASES[case]()
    audits = len(await issuer.ledger.audit_records(10_000))
    out = await issuer.issue(request(csr, "gateway"))
    assert isinstance(out, Rejected), (case, out)
    assert await _rows(issuer) == (0, 0)
    records = await issuer.ledger.audit_records(10_000)
    assert len(records) == audits + 1 and not records[0].ok
    assert "\n" not in records[0].reason and "\r" not in (records[0].reason or "")


async def test_unknown_critical_or_unlisted_extensions_are_never_copied(issuer: Issuer) -> None:
    """A CSR asking for AIA, CRLDP, policies and an unknown extension gets none of them from the
    request: extensions come from the profile (C2/C3)."""
    csr, _ = make_csr("copy-nothing", sans=[x509.DNSName("gw.example.com"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))],
                      extensions=[(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.311.21.10"), b"\x30\x00"), False),
                                  (x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier("2.5.29.32.0"), None)]), False)])
    out = await issuer.issue(request(csr, "gateway"))
    if isinstance(out, Rejected):
        assert await _rows(issuer) == (0, 0)
        return
    assert isinstance(out, Issued)
    oids = {e.oid.dotted_string for e in out.certificate.extensions}
    assert "1.3.6.1.4.1.311.21.10" not in oids and "2.5.29.32" not in oids


@pytest.mark.parametrize("profile", ["gateway", "sensor", "bootstrap"])
async def test_validity_never_exceeds_the_issuer(issuer: Issuer, profile: str) -> None:
    csr, _ = make_csr(f"v-{profile}")
    out = await issuer.issue(request(csr, profile))
    assert isinstance(out, Issued), out
    ca = out.chain[0]
    assert ca.not_valid_before_utc <= out.certificate.not_valid_before_utc
    assert out.certificate.not_valid_after_utc <= ca.not_valid_after_utc
    bc = out.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    ku = out.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not ku.key_cert_sign and not ku.crl_sign
