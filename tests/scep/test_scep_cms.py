"""scep/cms.py: SignedData verify/sign, EnvelopedData decrypt/encrypt (RFC 5652, RFC 8894 §3.1)."""

from __future__ import annotations

import datetime as dt

import pytest
from asn1crypto import algos, core
from asn1crypto import cms as acms
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from tests.support import TestPki, cached_rsa_key, make_cert

from ca import cms_der
from scep import cms
from scep.asn1 import FailInfo, PkiStatus
from scep.message import CertRep
from scep.errors import BadAlgError, MessageCheckError, ScepDecodeError


def _signed(pki: TestPki, content: bytes | None = b"payload", digest: str = "sha256") -> bytes:
    attrs = [acms.CMSAttribute({"type": "scep_transaction_id", "values": ["t1"]})]
    return cms.sign_signed_data(content, attrs, pki.client_self_signed, cms.rsa_signer(pki.client_key), digest)


@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha384", "sha512"])
def test_signed_data_round_trip(pki: TestPki, digest: str) -> None:
    sm = cms.parse_signed(_signed(pki, digest=digest))
    cms.verify_signed(sm)
    assert sm.content == b"payload"
    assert sm.digest == digest
    assert sm.signer == pki.client_self_signed


def test_signer_info_uses_rsa_encryption(pki: TestPki) -> None:
    """strongSwan: 'only RSA digest encryption supported' unless rsaEncryption (PEERS.md)."""
    info = acms.ContentInfo.load(_signed(pki))
    si = info["content"]["signer_infos"][0]
    assert si["signature_algorithm"]["algorithm"].dotted == "1.2.840.113549.1.1.1"


def test_detached_content_digest_is_over_empty_string(pki: TestPki) -> None:
    sm = cms.parse_signed(_signed(pki, content=None))
    assert sm.content is None
    cms.verify_signed(sm)


def test_tampered_signature_is_a_message_check_failure(pki: TestPki) -> None:
    der = bytearray(_signed(pki))
    der[-5] ^= 0x01  # inside the signature value (last field)
    with pytest.raises(MessageCheckError) as exc:
        cms.verify_signed(cms.parse_signed(bytes(der)))
    assert exc.value.public_text == "message check failed"


def test_tampered_content_is_a_message_check_failure(pki: TestPki) -> None:
    der = _signed(pki, content=b"payload-AAAA")
    der = der.replace(b"payload-AAAA", b"payload-BBBB")
    with pytest.raises(MessageCheckError) as exc:
        cms.verify_signed(cms.parse_signed(der))
    assert exc.value.public_text == "message check failed"


def test_digest_outside_the_allow_list_is_bad_alg(pki: TestPki) -> None:
    with pytest.raises(BadAlgError):
        cms.verify_signed(cms.parse_signed(_signed(pki, digest="sha1")), allowed_digests={"sha256"})


@pytest.mark.parametrize("junk", [b"", b"\x30\x00", b"not der at all", b"\x30\x80" * 5000])
def test_garbage_is_a_decode_error(junk: bytes) -> None:
    with pytest.raises(ScepDecodeError):
        cms.parse_signed(junk)


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(ScepDecodeError):
        cms.parse_signed(b"\x30" * (cms.MAX_MESSAGE_BYTES + 1))


def test_unsorted_signed_attributes_verify_as_received(pki: TestPki) -> None:
    """Legacy clients sign their attributes in insertion order, not DER order (research §2.9)."""
    content = b"x"
    h = hashes.Hash(hashes.SHA256())
    h.update(content)
    attrs = [
        acms.CMSAttribute({"type": "scep_transaction_id", "values": ["zz"]}),
        acms.CMSAttribute({"type": "message_digest", "values": [h.finalize()]}),
        acms.CMSAttribute({"type": "content_type", "values": ["data"]}),
    ]
    body = b"".join(a.dump() for a in attrs)  # this (unsorted) order, not DER's
    set_der = b"\x31" + cms_der.der_length(len(body)) + body
    assert set_der != acms.CMSAttributes.load(set_der).dump(force=True)
    signature = pki.client_key.sign(set_der, padding.PKCS1v15(), hashes.SHA256())
    si = acms.SignerInfo(
        {
            "version": "v1",
            "sid": acms.SignerIdentifier(
                name="issuer_and_serial_number",
                value=acms.IssuerAndSerialNumber(
                    {"issuer": acms.Name.load(pki.client_self_signed.issuer.public_bytes()),
                     "serial_number": pki.client_self_signed.serial_number}
                ),
            ),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": acms.CMSAttributes.load(set_der),
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
            "signature": signature,
        }
    )
    sd = acms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {"content_type": "data", "content": content},
            "certificates": [
                acms.CertificateChoices(
                    name="certificate",
                    value=ax509.Certificate.load(pki.client_self_signed.public_bytes(serialization.Encoding.DER)),
                )
            ],
            "signer_infos": [si],
        }
    )
    der = acms.ContentInfo({"content_type": "signed_data", "content": sd}).dump()
    assert body in der  # the unsorted order survived
    sm = cms.parse_signed(der)
    assert sm.signed_attrs_encoding == set_der
    cms.verify_signed(sm)


# --- EnvelopedData --------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", sorted(cms.CIPHERS))
def test_envelope_round_trip_each_cipher(pki: TestPki, cipher: str) -> None:
    env = cms.encrypt_enveloped(b"secret message", pki.ca, cipher)
    dec = cms.decrypt_enveloped(env, pki.ca_key.decrypt, [pki.ca], {cipher})
    assert dec.plaintext == b"secret message"
    assert dec.cipher == cipher
    assert dec.key_transport == cms.KeyTransport()


def test_envelope_round_trip_oaep(pki: TestPki) -> None:
    kt = cms.KeyTransport(oaep=True, oaep_hash="sha256", mgf_hash="sha256")
    env = cms.encrypt_enveloped(b"m" * 33, pki.ca, "aes128", kt)
    dec = cms.decrypt_enveloped(env, pki.ca_key.decrypt, [pki.ca], {"aes128"})
    assert dec.plaintext == b"m" * 33
    assert dec.key_transport == kt


def test_envelope_encrypted_content_is_primitive(pki: TestPki) -> None:
    """asn1crypto clients reject a constructed encryptedContent (PEERS.md)."""
    env = acms.ContentInfo.load(cms.encrypt_enveloped(b"x", pki.ca, "aes256"))
    eci = env["content"]["encrypted_content_info"]
    assert eci["encrypted_content"].method == 0


def test_des_is_refused_when_not_allowed(pki: TestPki) -> None:
    env = cms.encrypt_enveloped(b"x", pki.ca, "des")
    calls: list[bytes] = []

    def spy(ct: bytes, pad: AsymmetricPadding) -> bytes:
        calls.append(ct)
        return pki.ca_key.decrypt(ct, pad)

    with pytest.raises(BadAlgError):
        cms.decrypt_enveloped(env, spy, [pki.ca], {"aes128", "aes256"})
    assert calls == []  # refused before any private-key operation


def _failure_text(pki: TestPki, env: bytes, recipients: list) -> str:  # type: ignore[type-arg]
    with pytest.raises(MessageCheckError) as exc:
        cms.decrypt_enveloped(env, pki.ca_key.decrypt, recipients, set(cms.CIPHERS))
    return exc.value.public_text


def test_all_decrypt_failures_share_one_shape(pki: TestPki) -> None:
    wrong_recipient = cms.encrypt_enveloped(b"x", pki.other_cert, "aes128")
    # same recipient identifier but a different key: decryption of the CEK fails
    impostor = make_cert(cached_rsa_key(3), "SCEP Test CA", serial=pki.ca.serial_number)
    wrong_key = cms.encrypt_enveloped(b"x", impostor, "aes128")
    good = bytearray(cms.encrypt_enveloped(b"x" * 64, pki.ca, "aes128"))
    good[-1] ^= 0xFF  # last ciphertext byte: padding breaks
    texts = {
        _failure_text(pki, wrong_recipient, [pki.ca]),
        _failure_text(pki, wrong_key, [pki.ca]),
        _failure_text(pki, bytes(good), [pki.ca]),
        _failure_text(pki, b"\x30\x03\x02\x01\x00", [pki.ca]),
    }
    assert texts == {"message check failed"}


def test_certs_only_keeps_order(pki: TestPki) -> None:
    certs = [pki.other_cert, pki.ca, pki.client_self_signed]
    der = cms.certs_only(certs)
    got, crls = cms.parse_certs_only(der)
    assert got == certs and crls == []
    sd = acms.ContentInfo.load(der)["content"]
    assert sd["version"].native == "v1"
    assert len(sd["digest_algorithms"]) == 0 and len(sd["signer_infos"]) == 0
    assert sd["encap_content_info"]["content"].native is None


def test_decrypter_is_any_callable(pki: TestPki) -> None:
    """An HSM Decrypter only needs (ciphertext, padding) -> bytes."""
    env = cms.encrypt_enveloped(b"hsm", pki.ca, "aes256")
    seen: list[AsymmetricPadding] = []

    def hsm(ct: bytes, pad: AsymmetricPadding) -> bytes:
        seen.append(pad)
        return pki.ca_key.decrypt(ct, pad)

    assert cms.decrypt_enveloped(env, hsm, [pki.ca], {"aes256"}).plaintext == b"hsm"
    assert len(seen) == 1


# --- byte-exact against the asn1crypto builders (issue 13: CMS by concatenation) ---------------
# The reference builders below are the asn1crypto code scep/cms.py used before ca/cms_der.py;
# the concatenated DER must equal their output for the same inputs.


def _asn1_cert(cert: x509.Certificate) -> ax509.Certificate:
    return ax509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _reference_signed_data(
    content: bytes | None,
    attributes: list[acms.CMSAttribute],
    signer_cert: x509.Certificate,
    signer_key: rsa.RSAPrivateKey,
    digest: str,
    certificates: list[x509.Certificate] | None = None,
    signing_time: dt.datetime | None = None,
) -> bytes:
    hash_alg = cms.hash_for(digest)
    h = hashes.Hash(hash_alg)
    h.update(content or b"")
    attrs = [
        acms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        acms.CMSAttribute({"type": "message_digest", "values": [h.finalize()]}),
    ]
    if signing_time is not None:
        attrs.append(acms.CMSAttribute({"type": "signing_time", "values": [acms.Time({"utc_time": signing_time})]}))
    attrs.extend(attributes)
    signed_attrs = acms.CMSAttributes(attrs)
    signature = signer_key.sign(signed_attrs.dump(force=True), padding.PKCS1v15(), hash_alg)
    acert = _asn1_cert(signer_cert)
    signer_info = acms.SignerInfo({
        "version": "v1",
        "sid": acms.SignerIdentifier(name="issuer_and_serial_number", value=acms.IssuerAndSerialNumber(
            {"issuer": acert.issuer, "serial_number": acert.serial_number})),
        "digest_algorithm": {"algorithm": digest},
        "signed_attrs": signed_attrs,
        "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
        "signature": signature,
    })
    encap: dict[str, object] = {"content_type": "data"}
    if content is not None:
        encap["content"] = content
    sd = acms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": digest}],
        "encap_content_info": encap,
        "certificates": [acms.CertificateChoices(name="certificate", value=_asn1_cert(c))
                         for c in (certificates if certificates is not None else [signer_cert])],
        "signer_infos": [signer_info],
    })
    return bytes(acms.ContentInfo({"content_type": "signed_data", "content": sd}).dump())


@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("content", [None, b"", b"payload" * 40])
def test_signed_data_is_byte_identical_to_asn1crypto(pki: TestPki, digest: str, content: bytes | None) -> None:
    attrs = [acms.CMSAttribute({"type": "scep_transaction_id", "values": ["t1"]}),
             acms.CMSAttribute({"type": "scep_sender_nonce", "values": [b"\x01" * 16]})]
    chain = [pki.other_cert, pki.client_self_signed, pki.ca]  # a SET OF: both sort it by DER
    when = dt.datetime(2026, 5, 1, 12, 30, 5, tzinfo=dt.timezone.utc)
    got = cms.sign_signed_data(content, attrs, pki.client_self_signed, cms.rsa_signer(pki.client_key),
                               digest, chain, signing_time=when)
    want = _reference_signed_data(content, attrs, pki.client_self_signed, pki.client_key, digest, chain, when)
    assert got == want
    assert cms.sign_signed_data(content, attrs, pki.ca, cms.rsa_signer(pki.ca_key), digest) == (
        _reference_signed_data(content, attrs, pki.ca, pki.ca_key, digest))


def _reference_attr(name: str, value: object) -> acms.CMSAttribute:
    return acms.CMSAttribute({"type": name, "values": [value]})


@pytest.mark.parametrize("status", [PkiStatus.SUCCESS, PkiStatus.FAILURE, PkiStatus.PENDING])
def test_certrep_is_byte_identical_to_asn1crypto(pki: TestPki, status: PkiStatus) -> None:
    envelope = cms.encrypt_enveloped(cms.certs_only([pki.client_self_signed]), pki.client_self_signed, "des")
    rep = CertRep(status=status, transaction_id="0A1b+/=~txid", recipient_nonce=b"\x10" * 16,
                  sender_nonce=b"\x20" * 16,
                  fail_info=FailInfo.BAD_REQUEST if status is PkiStatus.FAILURE else None,
                  fail_info_text="refusé: übel" if status is PkiStatus.FAILURE else None,
                  envelope=envelope if status is PkiStatus.SUCCESS else None)
    got = rep.build(signer_cert=pki.ca, sign=cms.rsa_signer(pki.ca_key), digest="sha1",
                    certificates=[pki.ca, pki.other_cert])
    attrs = [
        _reference_attr("scep_message_type", "3"),
        _reference_attr("scep_pki_status", str(int(status))),
        _reference_attr("scep_transaction_id", rep.transaction_id),
        _reference_attr("scep_sender_nonce", rep.sender_nonce),
        _reference_attr("scep_recipient_nonce", rep.recipient_nonce),
    ]
    if status is PkiStatus.FAILURE:
        attrs += [_reference_attr("scep_fail_info", "2"), _reference_attr("scep_fail_info_text", "refusé: übel")]
    want = _reference_signed_data(envelope if status is PkiStatus.SUCCESS else None, attrs, pki.ca, pki.ca_key,
                                  "sha1", [pki.ca, pki.other_cert])
    assert got == want
    parsed = CertRep.parse(got)
    parsed.verify([pki.ca])
    assert (parsed.status, parsed.fail_info_text) == (status, rep.fail_info_text)


def _reference_enveloped(recipient: x509.Certificate, alg_id: str, transport: cms.KeyTransport,
                         iv: bytes, encrypted_key: bytes, ciphertext: bytes) -> bytes:
    acert = _asn1_cert(recipient)
    if transport.oaep:
        kea = acms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": algos.RSAESOAEPParams({
            "hash_algorithm": {"algorithm": transport.oaep_hash},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": transport.mgf_hash}}})})
    else:
        kea = acms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15", "parameters": core.Null()})
    ktri = acms.KeyTransRecipientInfo({
        "version": "v0",
        "rid": acms.RecipientIdentifier(name="issuer_and_serial_number", value=acms.IssuerAndSerialNumber(
            {"issuer": acert.issuer, "serial_number": acert.serial_number})),
        "key_encryption_algorithm": kea,
        "encrypted_key": encrypted_key,
    })
    env = acms.EnvelopedData({
        "version": "v0",
        "recipient_infos": [acms.RecipientInfo(name="ktri", value=ktri)],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": alg_id, "parameters": core.OctetString(iv)},
            "encrypted_content": ciphertext,
        },
    })
    return bytes(acms.ContentInfo({"content_type": "enveloped_data", "content": env}).dump(force=True))


@pytest.mark.parametrize("cipher", sorted(cms.CIPHERS))
@pytest.mark.parametrize("transport", [cms.KeyTransport(), cms.KeyTransport(oaep=True),
                                       cms.KeyTransport(oaep=True, oaep_hash="sha256", mgf_hash="sha256")])
def test_enveloped_data_is_byte_identical_to_asn1crypto(pki: TestPki, cipher: str,
                                                        transport: cms.KeyTransport) -> None:
    """The random parts (content key, IV, RSA padding) are read back from our output and fed to
    the asn1crypto builder; the content key must decrypt our ciphertext."""
    plaintext = cms.certs_only([pki.client_self_signed, pki.ca])
    got = cms.encrypt_enveloped(plaintext, pki.client_self_signed, cipher, transport)
    env = acms.ContentInfo.load(got)["content"]
    ktri = env["recipient_infos"][0].chosen
    eci = env["encrypted_content_info"]
    iv = eci["content_encryption_algorithm"]["parameters"].native
    want = _reference_enveloped(pki.client_self_signed, cms.CIPHERS[cipher][0], transport, iv,
                                ktri["encrypted_key"].native, eci["encrypted_content"].native)
    assert got == want
    dec = cms.decrypt_enveloped(got, pki.client_key.decrypt, [pki.client_self_signed], {cipher})
    assert dec.plaintext == plaintext and dec.key_transport == transport


def test_certs_only_reencodes_identically(pki: TestPki) -> None:
    """Caller's order kept, and the bytes are DER: asn1crypto re-encodes them unchanged."""
    crl = (x509.CertificateRevocationListBuilder().issuer_name(pki.ca.subject)
           .last_update(dt.datetime(2026, 1, 1)).next_update(dt.datetime(2026, 2, 1))
           .sign(pki.ca_key, hashes.SHA256()))
    der = cms.certs_only([pki.other_cert, pki.ca], [crl])
    info = acms.ContentInfo.load(der)
    sd = info["content"]
    assert [c.chosen.dump() for c in sd["certificates"]] == [
        c.public_bytes(serialization.Encoding.DER) for c in (pki.other_cert, pki.ca)]
    assert [c.dump() for c in sd["crls"]] == [crl.public_bytes(serialization.Encoding.DER)]
    assert bytes(acms.ContentInfo.load(der).dump()) == der
