"""Profiles (ca/profile.py): a profile that cannot be issued from is refused naming its key, and the
certificate template comes from the profile, never from the CSR (docs/ARCHITECTURE.md, issuance
contract step 4; RFC 5280 §4.1, §4.2)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from ca.api import CertificateTemplate
from ca.errors import CAError, ConfigError, PolicyError
from ca.profile import Profile, build_template, check_issued, refuse_forbidden_requests, validate_profile
from enroll.pki import DevPKI
from tests.support import make_csr, rsa_key

GATEWAY = Profile(name="gw", ca="issuing", validity_days=30, subject_allow=("CN", "O"),
                  key_usage=("digital_signature", "key_encipherment"),
                  extended_key_usage=("server_auth", "client_auth"), san_allow=("dns",))


# --- validate_profile: every refusal names the key an operator has to fix ---------------------

@pytest.mark.parametrize(("change", "key"), [
    ({"validity_days": 0}, "profiles.gw.validity_days"),
    ({"validity_days": 36501}, "profiles.gw.validity_days"),
    ({"key_types": ()}, "profiles.gw.key_types"),
    ({"key_types": ("rsa-1024",)}, "profiles.gw.key_types"),
    ({"key_usage": ("crl_sign",)}, "profiles.gw.key_usage"),
    ({"key_usage": ("encipher_everything",)}, "profiles.gw.key_usage"),
    ({"extended_key_usage": ("time_travel",)}, "profiles.gw.extended_key_usage"),
    ({"subject_allow": ("CN", "nickname")}, "profiles.gw.subject"),
    ({"subject_force": (("planet", "earth"),)}, "profiles.gw.subject"),
    ({"subject_patterns": (("OU", "[a-z]+"),)}, "profiles.gw.subject.patterns.OU"),
    ({"san_allow": ("dns", "x400")}, "profiles.gw.san.allow"),
    ({"approval": "maybe"}, "profiles.gw.approval"),
    ({"retry_after": 0}, "profiles.gw.retry_after"),
], ids=lambda v: v if isinstance(v, str) else next(iter(v)))
def test_validate_profile_refuses_naming_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_profile(dataclasses.replace(GATEWAY, **change))
    assert err.value.key == key, str(err.value)


def test_validate_profile_never_grants_key_cert_sign() -> None:
    with pytest.raises(ConfigError, match="never granted to end entities") as err:
        validate_profile(dataclasses.replace(GATEWAY, key_usage=("digital_signature", "key_cert_sign")))
    assert err.value.key == "profiles.gw.key_usage"


def test_validate_profile_accepts_a_dotted_eku_oid_and_the_shipped_names() -> None:
    validate_profile(dataclasses.replace(GATEWAY, extended_key_usage=("client_auth", "1.3.6.1.5.5.7.3.28",
                                                                      "1.2.3.4.5")))
    validate_profile(GATEWAY)


# --- build_template: what the certificate carries ---------------------------------------------

def _now(dev_pki: DevPKI) -> dt.datetime:
    """A moment well inside the issuing CA's validity."""
    return dev_pki.issuing.cert.not_valid_before_utc + dt.timedelta(days=1)


def _template(dev_pki: DevPKI, csr: x509.CertificateSigningRequest, profile: Profile = GATEWAY,
              now: dt.datetime | None = None, **kw: Any) -> CertificateTemplate:
    return build_template(csr, profile, dev_pki.issuing.cert, 2**70 + 1, now or _now(dev_pki), **kw)


def _ext(template: CertificateTemplate, kind: type[x509.ExtensionType]) -> tuple[Any, bool] | None:
    found = [(value, critical) for value, critical in template.extensions if isinstance(value, kind)]
    assert len(found) <= 1
    return found[0] if found else None


def test_template_takes_key_usage_and_eku_from_the_profile_not_the_csr(dev_pki: DevPKI) -> None:
    """RFC 5280 §4.2.1.3, §4.2.1.12: the CSR asks for data encipherment and server auth only; the
    certificate carries exactly the profile's key usage and its EKU list."""
    asked = x509.KeyUsage(digital_signature=False, content_commitment=True, key_encipherment=False,
                          data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    csr, _ = make_csr("gw-1", rsa_key(), extensions=[(asked, True), (x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]), False)])
    t = _template(dev_pki, csr)
    ku = _ext(t, x509.KeyUsage)
    assert ku is not None and ku[1] is True
    assert (ku[0].digital_signature, ku[0].key_encipherment) == (True, True)
    assert (ku[0].content_commitment, ku[0].data_encipherment, ku[0].key_cert_sign, ku[0].crl_sign) == (
        False, False, False, False)
    eku = _ext(t, x509.ExtendedKeyUsage)
    assert eku is not None and list(eku[0]) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_ec_keys_never_get_key_encipherment(dev_pki: DevPKI) -> None:
    """RFC 5480 §3: keyEncipherment and dataEncipherment are not for EC keys, whatever the profile."""
    csr, _ = make_csr("gw-ec")  # P-256
    ku = _ext(_template(dev_pki, csr), x509.KeyUsage)
    assert ku is not None and ku[0].digital_signature and not ku[0].key_encipherment


def test_template_never_copies_other_csr_extensions(dev_pki: DevPKI) -> None:
    """A CSR extension the profile does not know (here OCSP no-check and a private OID) is not copied."""
    private = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    csr, _ = make_csr("gw-2", extensions=[(x509.OCSPNoCheck(), False), (private, False)])
    t = _template(dev_pki, csr)
    oids = {value.oid for value, _ in t.extensions}
    assert x509.OCSPNoCheck.oid not in oids and private.oid not in oids
    bc = _ext(t, x509.BasicConstraints)
    assert bc is not None and bc[0].ca is False and bc[1] is True


def test_subject_comes_from_allowed_csr_attributes_and_forced_values(dev_pki: DevPKI) -> None:
    forced = dataclasses.replace(GATEWAY, subject_force=(("O", "Example Fleet"),))
    csr, _ = make_csr("gw-3", extra_attrs=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Self Proclaimed")])
    t = _template(dev_pki, csr, forced)
    assert t.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-3"
    assert [a.value for a in t.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["Example Fleet"]


def test_subject_attribute_outside_the_profile_is_refused(dev_pki: DevPKI) -> None:
    csr, _ = make_csr("gw-4", extra_attrs=[x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops")])
    with pytest.raises(PolicyError, match="OU is not allowed"):
        _template(dev_pki, csr)


def test_sans_are_the_requested_allowed_ones(dev_pki: DevPKI) -> None:
    csr, _ = make_csr("gw-5", sans=[x509.DNSName("gw-5.example.net")])
    san = _ext(_template(dev_pki, csr), x509.SubjectAlternativeName)
    assert san is not None and list(san[0]) == [x509.DNSName("gw-5.example.net")] and san[1] is False
    csr, _ = make_csr("gw-6", sans=[x509.RFC822Name("ops@example.net")])
    with pytest.raises(PolicyError, match="not allowed by profile"):
        _template(dev_pki, csr)


def test_san_is_critical_when_the_subject_is_empty(dev_pki: DevPKI) -> None:
    """RFC 5280 §4.2.1.6: with an empty subject, subjectAltName MUST be critical."""
    profile = dataclasses.replace(GATEWAY, subject_allow=(), subject_require=())
    key = rsa_key()
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("bare.example.net")]), False)
           .sign(key, hashes.SHA256()))
    t = _template(dev_pki, csr, profile)
    san = _ext(t, x509.SubjectAlternativeName)
    assert len(t.subject) == 0 and san is not None and san[1] is True


def test_neither_subject_nor_san_is_refused(dev_pki: DevPKI) -> None:
    profile = dataclasses.replace(GATEWAY, subject_allow=(), subject_require=())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(rsa_key(), hashes.SHA256())
    with pytest.raises(PolicyError, match="neither subject nor SAN"):
        _template(dev_pki, csr, profile)


@pytest.mark.parametrize(("extension", "words"), [
    (x509.BasicConstraints(ca=True, path_length=None), "CA:TRUE"),
    (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                   encipher_only=False, decipher_only=False), "keyCertSign"),
    (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), "beyond profile"),
    (x509.NameConstraints([x509.DNSName("example.net")], None), "name constraints"),
], ids=["ca-true", "key-cert-sign", "eku-beyond-profile", "name-constraints"])
def test_csr_asking_for_what_an_end_entity_never_gets_is_refused(extension: x509.ExtensionType,
                                                                 words: str) -> None:
    csr, _ = make_csr("gw-7", extensions=[(extension, True)])
    with pytest.raises(PolicyError, match=words):
        refuse_forbidden_requests(csr, GATEWAY)


def test_validity_is_the_profiles_backdated_and_inside_the_issuers(dev_pki: DevPKI) -> None:
    """RFC 5280 §4.1.2.5: notBefore backdated by ``backdate_seconds``, notAfter the profile's
    validity; both clamped inside the issuing CA's validity."""
    issuer = dev_pki.issuing.cert
    csr, _ = make_csr("gw-8")
    t = _template(dev_pki, csr)
    assert t.not_before == _now(dev_pki) - dt.timedelta(seconds=GATEWAY.backdate_seconds)
    assert t.not_after == _now(dev_pki) + dt.timedelta(days=30)
    long_lived = dataclasses.replace(GATEWAY, validity_days=36500)
    assert _template(dev_pki, csr, long_lived).not_after == issuer.not_valid_after_utc
    at_ca_birth = issuer.not_valid_before_utc
    assert _template(dev_pki, csr, now=at_ca_birth).not_before == at_ca_birth


def test_an_expired_issuing_ca_issues_nothing(dev_pki: DevPKI) -> None:
    csr, _ = make_csr("gw-9")
    with pytest.raises(PolicyError, match="expired"):
        _template(dev_pki, csr, now=dev_pki.issuing.cert.not_valid_after_utc + dt.timedelta(seconds=1))


def test_aia_and_crl_distribution_point_follow_the_profile_switches(dev_pki: DevPKI) -> None:
    """RFC 5280 §4.2.1.13 and §4.2.2.1: the URLs are written only where the profile keeps them on."""
    csr, _ = make_csr("gw-10")
    urls: dict[str, Any] = dict(crl_url="http://ca.example.net/issuing.crl", ocsp_url="http://ca.example.net/ocsp",
                ca_issuers_url="http://ca.example.net/issuing.der")
    t = _template(dev_pki, csr, **urls)
    aia = _ext(t, x509.AuthorityInformationAccess)
    assert aia is not None and [(d.access_method, d.access_location.value) for d in aia[0]] == [
        (AuthorityInformationAccessOID.OCSP, urls["ocsp_url"]),
        (AuthorityInformationAccessOID.CA_ISSUERS, urls["ca_issuers_url"])]
    cdp = _ext(t, x509.CRLDistributionPoints)
    assert cdp is not None and cdp[0][0].full_name == [x509.UniformResourceIdentifier(urls["crl_url"])]
    off = dataclasses.replace(GATEWAY, crl_distribution_point=False, authority_info_access=False)
    t = _template(dev_pki, csr, off, **urls)
    assert _ext(t, x509.AuthorityInformationAccess) is None and _ext(t, x509.CRLDistributionPoints) is None


def test_authority_key_identifier_is_the_issuers_subject_key_identifier(dev_pki: DevPKI) -> None:
    """RFC 5280 §4.2.1.1: keyIdentifier equals the issuer's subjectKeyIdentifier."""
    csr, _ = make_csr("gw-11")
    aki = _ext(_template(dev_pki, csr), x509.AuthorityKeyIdentifier)
    ski = dev_pki.issuing.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki is not None and aki[0].key_identifier == ski.digest


def _sign(template: CertificateTemplate, dev_pki: DevPKI, *, serial: int | None = None) -> x509.Certificate:
    builder = (x509.CertificateBuilder().subject_name(template.subject).issuer_name(dev_pki.issuing.cert.subject)
               .public_key(template.public_key).serial_number(serial or template.serial)
               .not_valid_before(template.not_before).not_valid_after(template.not_after))
    for value, critical in template.extensions:
        builder = builder.add_extension(value, critical)
    key = dev_pki.issuing.key
    assert isinstance(key, rsa.RSAPrivateKey)
    return builder.sign(key, hashes.SHA256())


def test_check_issued_accepts_the_template_and_names_what_a_backend_changed(dev_pki: DevPKI) -> None:
    """docs/ARCHITECTURE.md step 6: the core re-checks a backend's certificate before storing it."""
    t = _template(dev_pki, make_csr("gw-12")[0])
    check_issued(_sign(t, dev_pki), t, dev_pki.issuing.cert)
    with pytest.raises(CAError, match="serial"):
        check_issued(_sign(t, dev_pki, serial=t.serial + 1), t, dev_pki.issuing.cert)
    with pytest.raises(CAError, match="issuer, .*signature"):
        check_issued(_sign(t, dev_pki), t, dev_pki.root.cert)
