"""Hostile input at every parse gate: each codec raises only its protocol error, fast.

Seeded with real client captures (tests/est/captures, tests/scep/captures) and mutated at the
byte level by Hypothesis, plus the named shapes of the attack checklist (deep nesting,
indefinite-length BER, overlong lengths, huge OIDs and INTEGERs, trailing garbage). The
service- and HTTP-level runs that also count ledger rows are in test_hostile_requests.py.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from ca.errors import CAError, ParseError
from ca.ocsp import parse_request
from ca.names import requested_sans, requested_subject
from ca.profile import Profile, refuse_forbidden_requests, verify_csr
from est.asn1 import decode_csrattrs
from est.errors import EstError
from est.wire import csr_signature_valid, decode_base64_body, decode_certs_only, parse_csr
from scep.errors import ScepError
from scep.message import IssuerAndSerial, IssuerAndSubject, PkiMessage, decode_csr
from scep.quirks import decode_get_message
from tests.hardening.conftest import FUZZ
from tests.hardening.asn1gen import csr_with, est_seeds, mutated, scep_seeds, structural_cases

EST_SEEDS = est_seeds()
SCEP_SEEDS = scep_seeds()
STRUCTURAL = structural_cases()

#: Every parse gate and the one error type it may raise.
GATES: dict[str, tuple[Callable[[bytes], Any], type[Exception]]] = {
    "est.parse_csr": (parse_csr, EstError),
    "est.decode_csrattrs": (decode_csrattrs, EstError),
    "est.decode_certs_only": (decode_certs_only, EstError),
    "scep.PkiMessage.parse": (PkiMessage.parse, ScepError),
    "scep.decode_csr": (decode_csr, ScepError),
    "scep.IssuerAndSerial": (IssuerAndSerial.from_der, ScepError),
    "scep.IssuerAndSubject": (IssuerAndSubject.from_der, ScepError),
    "ocsp.parse_request": (parse_request, ParseError),
}


def _gate(name: str, data: bytes) -> Any:
    fn, allowed = GATES[name]
    try:
        return fn(data)
    except allowed:
        return None


@pytest.mark.parametrize("shape", sorted(STRUCTURAL))
@pytest.mark.parametrize("gate", sorted(GATES))
def test_hostile_shapes_are_one_clean_error_and_fast(gate: str, shape: str) -> None:
    started = time.perf_counter()
    _gate(gate, STRUCTURAL[shape])
    assert time.perf_counter() - started < 2.0, f"{gate} took too long on {shape}"


@pytest.mark.parametrize("gate", sorted(GATES))
def test_trailing_garbage_after_a_real_message_is_refused(gate: str) -> None:
    seed = EST_SEEDS[0] if gate.startswith(("est", "scep.decode_csr")) else SCEP_SEEDS[0]
    assert _gate(gate, seed + b"\x00\x00garbage") is None


@FUZZ
@given(mutated(EST_SEEDS))
def test_mutated_csrs_only_ever_raise_bad_request(data: bytes) -> None:
    csr = _gate("est.parse_csr", data)
    _gate("scep.decode_csr", data)
    if csr is not None:
        _policy_never_crashes(csr)


@FUZZ
@given(mutated(SCEP_SEEDS))
def test_mutated_pkimessages_only_ever_raise_decode_errors(data: bytes) -> None:
    msg = _gate("scep.PkiMessage.parse", data)
    if msg is not None:
        try:
            msg.verify(allowed_digests=("sha1", "sha256", "sha512"))
        except ScepError:
            pass


@FUZZ
@given(st.one_of(st.binary(max_size=512), mutated(EST_SEEDS + SCEP_SEEDS)))
def test_every_gate_on_random_bytes(data: bytes) -> None:
    for gate in GATES:
        _gate(gate, data)


@FUZZ
@given(st.one_of(st.binary(max_size=256),
                 mutated(EST_SEEDS).map(base64.b64encode),
                 mutated(EST_SEEDS).map(lambda d: b"-----BEGIN CERTIFICATE REQUEST-----\r\n"
                                        + base64.encodebytes(d) + b"-----END CERTIFICATE REQUEST-----\r\n")))
def test_est_body_decoding_only_raises_bad_request(body: bytes) -> None:
    try:
        der = decode_base64_body(body)
    except EstError as err:
        assert err.status == 400
        return
    _gate("est.parse_csr", der)


@FUZZ
@given(st.text(max_size=300), st.binary(max_size=300))
def test_scep_get_message_decoding(query: str, raw: bytes) -> None:
    for q in (query, "operation=PKIOperation&message=" + query,
              "message=" + base64.urlsafe_b64encode(raw).decode() + "%0A%2B"):
        try:
            decode_get_message(q)
        except ValueError:
            pass


def test_oversized_get_message_is_refused_before_decoding() -> None:
    started = time.perf_counter()
    with pytest.raises(ValueError):
        decode_get_message("message=" + "A" * 10_000_000)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(("sans", "rdns"), [(10_000, 1), (0, 10_000)])
def test_csr_with_ten_thousand_sans_or_rdns_is_refused_fast(sans: int, rdns: int) -> None:
    """Parsing is bounded and the profile refuses (SAN max, attribute policy) in well under a second."""
    from tests.hardening.asn1gen import gateway_profile

    csr = parse_csr(csr_with(sans=sans, rdns=rdns))
    started = time.perf_counter()
    assert csr_signature_valid(csr)
    with pytest.raises(CAError):
        profile = gateway_profile()
        requested_subject(csr, profile)
        requested_sans(csr, profile)
    assert time.perf_counter() - started < 1.0


def _policy_never_crashes(csr: x509.CertificateSigningRequest) -> None:
    from tests.hardening.asn1gen import gateway_profile

    profile: Profile = gateway_profile()
    for check in (lambda: verify_csr(csr, profile), lambda: requested_subject(csr, profile),
                  lambda: requested_sans(csr, profile), lambda: refuse_forbidden_requests(csr, profile)):
        try:
            check()
        except CAError:
            pass
