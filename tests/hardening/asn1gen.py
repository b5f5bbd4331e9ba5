"""Hostile ASN.1 and CSR builders for the hardening campaign (no fixtures here).

Each builder makes one shape from the hostile-input list (README, Security model):
deep nesting, indefinite-length BER, truncated/overlong lengths, huge OIDs and INTEGERs,
10k SANs/RDNs, trailing garbage; plus a byte-level mutator seeded with real client captures.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import strategies as st

from tests.support import tlv

TESTS = Path(__file__).resolve().parent.parent
EST_CAPTURES = TESTS / "est" / "captures"
SCEP_CAPTURES = TESTS / "scep" / "captures"


def nested_sequences(depth: int, core: bytes = b"\x05\x00") -> bytes:
    """``depth`` SEQUENCEs inside each other, definite lengths (a RecursionError bait)."""
    out = core
    for _ in range(depth):
        out = tlv(0x30, out)
    return out


def indefinite_nesting(depth: int) -> bytes:
    """``depth`` constructed SEQUENCEs with indefinite lengths (BER, X.690 §8.1.3.6)."""
    return b"\x30\x80" * depth + b"\x05\x00" + b"\x00\x00" * depth


def huge_oid(arcs: int) -> bytes:
    """An OBJECT IDENTIFIER with ``arcs`` arcs (each a 3-byte base-128 value)."""
    return tlv(0x06, b"\x2a" + b"\xff\xff\x7f" * arcs)


def huge_integer(octets: int) -> bytes:
    return tlv(0x02, b"\x7f" + b"\xff" * (octets - 1))


def overlong_length(content: bytes = b"\x05\x00") -> bytes:
    """A SEQUENCE whose length claims far more than is present."""
    return b"\x30\x84\x7f\xff\xff\xff" + content


def est_seeds() -> list[bytes]:
    """DER CSRs sent by real EST clients (tests/est/captures, see its README)."""
    out = []
    for p in sorted(EST_CAPTURES.glob("*.b64")):
        text = b"".join(p.read_bytes().split())
        try:
            der = base64.b64decode(text + b"=" * (-len(text) % 4))
        except ValueError:
            continue
        if der[:1] == b"\x30":
            out.append(der)
    assert out, "EST captures are missing"
    return out


def scep_seeds() -> list[bytes]:
    """PKIMessages sent by real SCEP clients (tests/scep/captures, see its README)."""
    out = [p.read_bytes() for p in sorted(SCEP_CAPTURES.glob("*/*.der"))
           if "certrep" not in p.name and "getcacert" not in p.name]
    assert out, "SCEP captures are missing"
    return out


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A real sample with a few byte-level mutations: bit flips, cuts, inserts, truncation,
    tag/length bytes swapped for hostile ones, trailing garbage."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 6))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == 0 and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            del data[i:i + draw(st.integers(1, 64))]
        elif op == 2:
            data[i:i] = draw(st.binary(min_size=1, max_size=24))
        elif op == 3:
            del data[i:]
        elif op == 4 and data:
            data[i] = draw(st.sampled_from([0x00, 0x30, 0x31, 0x80, 0x81, 0x82, 0x84, 0x88, 0xA0, 0xFF]))
        elif op == 5:
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == 6 and len(data) > 8:
            j = draw(st.integers(0, len(data) - 1))
            data[i:i] = data[j:j + draw(st.integers(1, 128))]
    return bytes(data)


def structural_cases() -> dict[str, bytes]:
    """Named hostile DER/BER documents (each must be refused quickly and cleanly)."""
    return {
        "nested-5000": nested_sequences(5000),
        "nested-50000": nested_sequences(50000),
        "indefinite-10000": indefinite_nesting(10000),
        "indefinite-unterminated": b"\x30\x80" * 2000,
        "huge-oid-100k-arcs": tlv(0x30, huge_oid(100_000)),
        "huge-integer-100k": tlv(0x30, huge_integer(100_000)),
        "overlong-length": overlong_length(),
        "length-of-length-126": b"\x30\xfe" + b"\xff" * 126,
        "truncated": nested_sequences(3)[:-1],
        "empty": b"",
        "zero": b"\x00",
        "null": b"\x05\x00",
        "set-instead": tlv(0x31, b"\x05\x00"),
        "tag-high-form": b"\x1f\xff\xff\xff\xff\xff\x7f\x00",
    }


def csr_with(key: ec.EllipticCurvePrivateKey | None = None, *, sans: int = 0, rdns: int = 1,
             cn: str = "hostile") -> bytes:
    """A validly signed CSR with ``sans`` DNS SANs and ``rdns`` RDNs (each an OU)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)])]
    attrs += [x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"ou{i}")])
              for i in range(rdns - 1)]
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(f"h{i}.example.com") for i in range(sans)]),
                            False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def gateway_profile() -> Any:
    """The shipped ``gateway`` profile's policy (enroll/default_config.py), without a config file."""
    from ca.profile import Profile

    return Profile(name="gateway", ca="issuing", validity_days=825,
                   key_types=("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"),
                   key_usage=("digital_signature", "key_encipherment"),
                   extended_key_usage=("server_auth", "client_auth"),
                   subject_allow=("CN", "O", "OU", "serialNumber"), subject_require=("CN",),
                   san_allow=("dns", "ip"), san_max=8)
