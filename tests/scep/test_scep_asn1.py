"""scep/asn1.py: OIDs registered once, RFC numbers in the enums (RFC 8894 §3.2.1)."""

from __future__ import annotations

import pytest
from asn1crypto import cms, core

from scep import asn1
from scep.asn1 import Capability, FailInfo, MessageType, PkiStatus


@pytest.mark.parametrize(
    ("name", "oid", "value", "der_hex"),
    [
        ("scep_message_type", "2.16.840.1.113733.1.9.2", "19", "3012060a6086480186f845010902310413023139"),
        ("scep_pki_status", "2.16.840.1.113733.1.9.3", "0", "3011060a6086480186f8450109033103130130"),
        ("scep_fail_info", "2.16.840.1.113733.1.9.4", "2", "3011060a6086480186f8450109043103130132"),
        ("scep_transaction_id", "2.16.840.1.113733.1.9.7", "abc", "3013060a6086480186f8450109073105130361626"
         "3"),
        ("scep_sender_nonce", "2.16.840.1.113733.1.9.5", b"\x01\x02", "3012060a6086480186f845010905310404020102"),
        ("scep_recipient_nonce", "2.16.840.1.113733.1.9.6", b"\x03", "3011060a6086480186f8450109063103040103"),
        ("scep_fail_info_text", "1.3.6.1.5.5.7.24.1", "é", "301006082b0601050507180131040c02c3a9"),
    ],
)
def test_scep_attributes_round_trip_to_exact_bytes(name: str, oid: str, value: object, der_hex: str) -> None:
    attr = cms.CMSAttribute({"type": name, "values": [value]})
    assert attr.dump().hex() == der_hex
    back = cms.CMSAttribute.load(bytes.fromhex(der_hex))
    assert back["type"].dotted == oid
    assert back["type"].native == name
    assert back["values"][0].native == value


def test_registration_is_idempotent() -> None:
    before = dict(cms.CMSAttributeType._map)
    asn1._register()
    assert cms.CMSAttributeType._map == before


def test_enums_carry_rfc_numbers() -> None:
    assert [m.value for m in MessageType] == [3, 17, 18, 19, 20, 21, 22]
    assert (PkiStatus.SUCCESS, PkiStatus.FAILURE, PkiStatus.PENDING) == (0, 2, 3)
    assert [f.value for f in FailInfo] == [0, 1, 2, 3, 4]
    assert Capability.POST_PKI_OPERATION.value == "POSTPKIOperation"
    assert Capability.SCEP_STANDARD.value == "SCEPStandard"


@pytest.mark.parametrize(
    ("encoded", "octets"),
    [
        ("0403616263", b"abc"),  # primitive
        ("2407040161040262 63", b"abc"),  # constructed, definite
        ("2480040161040262630000", b"abc"),  # constructed, indefinite (Apple)
        ("2480248004016100000402626300 00", b"abc"),  # nested
    ],
)
def test_ber_octets_merges_constructed_forms(encoded: str, octets: bytes) -> None:
    assert asn1.ber_octets(bytes.fromhex(encoded.replace(" ", ""))) == octets


def test_ber_octets_refuses_foreign_segments() -> None:
    with pytest.raises(ValueError):
        asn1.ber_octets(bytes.fromhex("2403020100"))


def test_issuer_and_subject_is_a_sequence_of_two_names() -> None:
    v = asn1.IssuerAndSubject({"issuer": cms.Name.build({"common_name": "CA"}), "subject": cms.Name.build({"common_name": "x"})})
    assert isinstance(v, core.Sequence)
    assert asn1.IssuerAndSubject.load(v.dump())["subject"].native == {"common_name": "x"}
