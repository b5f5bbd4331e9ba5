"""Profiles: the policy that turns an authenticated CSR into a certificate template.

A CSR is a request, never a template: its subject and SAN are checked against what the profile
allows, its other extensions are read only to refuse what may never be issued (CA:TRUE,
keyCertSign, EKUs beyond the profile), and everything that ends up in the certificate comes from
the profile (docs/ARCHITECTURE.md, issuance contract step 4; RFC 5280 §4.2). What a subject
or SAN value may contain is :mod:`ca.names`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from ca.api import CertificateTemplate
from ca.errors import AlgorithmError, CAError, ConfigError, PolicyError, PopError, RejectReason
from ca.names import (
    SAN_TYPES,
    SUBJECT_ATTRIBUTES,
    compiled_pattern,
    csr_extensions,
    requested_sans,
    requested_subject,
)

#: Key usages a profile may grant; keyCertSign and cRLSign are never granted to end entities.
KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
)

EXTENDED_KEY_USAGES: dict[str, x509.ObjectIdentifier] = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsec_ike": ExtendedKeyUsageOID.IPSEC_IKE,
    "cmc_ra": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28"),  # RFC 6402 §2.10
}

KEY_TYPES = ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ec-p521", "ed25519")
_CURVES: dict[str, type[ec.SECP256R1 | ec.SECP384R1 | ec.SECP521R1]] = {
    "ec-p256": ec.SECP256R1, "ec-p384": ec.SECP384R1, "ec-p521": ec.SECP521R1}

#: Digests a CSR may be signed with unless the profile allows legacy ones.
STRONG_DIGESTS = ("sha256", "sha384", "sha512", "sha3-256", "sha3-384", "sha3-512")


@dataclass(frozen=True)
class Profile:
    """One issuance policy, from a ``[profiles.NAME]`` table of the config."""

    name: str
    ca: str
    validity_days: int = 365
    key_types: tuple[str, ...] = ("ec-p256", "rsa-2048", "rsa-3072", "rsa-4096")
    key_usage: tuple[str, ...] = ("digital_signature",)
    extended_key_usage: tuple[str, ...] = ("client_auth",)
    subject_allow: tuple[str, ...] = ("CN",)
    subject_require: tuple[str, ...] = ("CN",)
    subject_force: tuple[tuple[str, str], ...] = ()
    #: ``[subject] patterns``: (attribute, regular expression) pairs; every value of that
    #: attribute in a request must match its expression in full.
    subject_patterns: tuple[tuple[str, str], ...] = ()
    #: ``[subject] allow_path_separators``: accept '/' and '\\' inside subject values.
    subject_allow_path_separators: bool = False
    san_allow: tuple[str, ...] = ()
    san_dns_suffixes: tuple[str, ...] = ()
    san_max: int = 8
    #: ``[san] allow_wildcards``: accept ``*.`` as the whole leftmost label of DNS names.
    san_allow_wildcards: bool = False
    approval: str = "auto"
    retry_after: int = 60
    renewal_window_days: int | None = None
    allow_legacy_digests: bool = False
    backdate_seconds: int = 300
    crl_distribution_point: bool = True  # RFC 5280 §4.2.1.13, from [cas.NAME] crl_url
    authority_info_access: bool = True  # RFC 5280 §4.2.2.1: OCSP and caIssuers URLs

    @property
    def manual(self) -> bool:
        """True when every request waits for an operator's approval."""
        return self.approval == "manual"


def validate_profile(p: Profile) -> None:
    """Raise :class:`ConfigError` naming the key when a profile is inconsistent."""
    key = f"profiles.{p.name}"
    if p.validity_days < 1 or p.validity_days > 36500:
        raise ConfigError(f"{key}.validity_days", "must be between 1 and 36500")
    for t in p.key_types:
        if t not in KEY_TYPES:
            raise ConfigError(f"{key}.key_types", f"unknown key type {t!r}; use {', '.join(KEY_TYPES)}")
    if not p.key_types:
        raise ConfigError(f"{key}.key_types", "must list at least one key type")
    for u in p.key_usage:
        if u in ("key_cert_sign", "crl_sign"):
            raise ConfigError(f"{key}.key_usage", f"{u} is never granted to end entities")
        if u not in KEY_USAGES:
            raise ConfigError(f"{key}.key_usage", f"unknown key usage {u!r}; use {', '.join(KEY_USAGES)}")
    for e in p.extended_key_usage:
        if e not in EXTENDED_KEY_USAGES and not _is_dotted_oid(e):
            raise ConfigError(f"{key}.extended_key_usage", f"unknown EKU {e!r}")
    for a in (*p.subject_allow, *p.subject_require, *(k for k, _ in p.subject_force)):
        if a not in SUBJECT_ATTRIBUTES:
            raise ConfigError(f"{key}.subject", f"unknown attribute {a!r}; use {', '.join(SUBJECT_ATTRIBUTES)}")
    for a, pattern in p.subject_patterns:
        where = f"{key}.subject.patterns.{a}"
        if a not in SUBJECT_ATTRIBUTES:
            raise ConfigError(where, f"unknown attribute {a!r}; use {', '.join(SUBJECT_ATTRIBUTES)}")
        if a not in p.subject_allow:
            raise ConfigError(where, f"{a} is not in subject.allow, so no request may carry it")
        try:
            compiled_pattern(pattern)
        except re.error as exc:
            raise ConfigError(where, f"not a valid regular expression: {exc}") from None
    for s in p.san_allow:
        if s not in SAN_TYPES:
            raise ConfigError(f"{key}.san.allow", f"unknown SAN type {s!r}; use {', '.join(SAN_TYPES)}")
    if p.approval not in ("auto", "manual"):
        raise ConfigError(f"{key}.approval", "must be 'auto' or 'manual'")
    if p.retry_after < 1:
        raise ConfigError(f"{key}.retry_after", "must be at least 1 second")


def _is_dotted_oid(s: str) -> bool:
    parts = s.split(".")
    return len(parts) >= 2 and all(x.isdigit() for x in parts)


def key_type_of(public_key: CertificatePublicKeyTypes) -> str:
    """Name a public key as the profile's ``key_types`` does (``rsa-2048``, ``ec-p256``...)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for name, curve in _CURVES.items():
            if isinstance(public_key.curve, curve):
                return name
        return f"ec-{public_key.curve.name}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return type(public_key).__name__


def check_key(profile: Profile, public_key: CertificatePublicKeyTypes) -> None:
    """Refuse keys the profile does not allow, and RSA keys with a bad exponent."""
    kt = key_type_of(public_key)
    if kt not in profile.key_types:
        raise AlgorithmError(
            f"key type {kt} is not allowed by profile {profile.name!r} (allowed: {', '.join(profile.key_types)})"
        )
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        e = numbers.e
        if e < 65537 or e % 2 == 0 or e.bit_length() > 256:
            raise AlgorithmError(f"RSA public exponent {e} is not allowed (use 65537)")
        problem = weak_rsa_modulus(numbers.n, e)
        if problem:
            raise AlgorithmError(f"RSA key is known to be weak ({problem}); generate a new key")


#: badkeys checks that need no network (its blocklists, e.g. the Debian OpenSSL keys, are a
#: separate download). Each is cheap: well under 10 ms for a 4096-bit modulus.
WEAK_KEY_CHECKS = ("roca", "fermat", "smallfactors", "sharedprimes", "rsainvalid", "rsapoly", "smalld")


def weak_rsa_modulus(n: int, e: int) -> str | None:
    """The name of the first known weakness of an RSA key (CA/B BR §6.1.1.3), or None.

    ROCA (CVE-2017-15361, Infineon RSALib: the modulus lies in the subgroup generated by 65537
    modulo a product of small primes), Fermat-factorable close primes, small factors, primes
    shared with published broken keys, invalid values, zero-byte patterns and Wiener-small d.
    """
    try:
        import badkeys

        found = badkeys.checkrsa(n, e=e, checks=WEAK_KEY_CHECKS)
    except Exception as exc:  # noqa: BLE001 - a checker failure must not pass a key
        return f"weak-key check failed: {type(exc).__name__}"
    return ", ".join(sorted(found)) or None


def generate_key(profile: Profile) -> CertificateIssuerPrivateKeyTypes:
    """A fresh private key of the profile's first key type (EST serverkeygen, RFC 7030 §4.4)."""
    kt = profile.key_types[0]
    if kt.startswith("rsa-"):
        return rsa.generate_private_key(65537, int(kt[4:]))
    if kt in _CURVES:
        return ec.generate_private_key(_CURVES[kt]())
    return ed25519.Ed25519PrivateKey.generate()


def verify_csr(csr: x509.CertificateSigningRequest, profile: Profile) -> None:
    """Proof of possession: the CSR's self-signature verifies with its own key (RFC 2986 §3).

    SHA-1 and MD5 signatures are refused unless the profile allows legacy digests; cryptography
    no longer verifies those through the X.509 API, so they are checked with the primitives.
    """
    try:
        digest = csr.signature_hash_algorithm
    except Exception as exc:
        raise AlgorithmError(f"CSR signature algorithm not supported: {exc}") from exc
    legacy = digest is not None and digest.name not in STRONG_DIGESTS
    if legacy and not profile.allow_legacy_digests:
        assert digest is not None
        raise AlgorithmError(f"CSR signed with {digest.name}, which profile {profile.name!r} does not allow")
    try:
        if legacy:
            key = csr.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise PopError("legacy CSR digests are accepted for RSA keys only")
            assert digest is not None
            key.verify(csr.signature, csr.tbs_certrequest_bytes, padding.PKCS1v15(), digest)
            return
        ok = csr.is_signature_valid
    except PopError:
        raise
    except Exception as exc:  # InvalidSignature, unsupported key or algorithm
        raise PopError("CSR signature does not verify with the CSR's public key") from exc
    if not ok:
        raise PopError("CSR signature does not verify with the CSR's public key")


def refuse_forbidden_requests(csr: x509.CertificateSigningRequest, profile: Profile) -> None:
    """Refuse CSRs that ask for what an end-entity certificate may never carry."""
    exts = csr_extensions(csr)
    for ext in exts:
        v = ext.value
        if isinstance(v, x509.BasicConstraints) and v.ca:
            raise PolicyError("CSR requests CA:TRUE; this server issues end-entity certificates only")
        if isinstance(v, x509.KeyUsage) and (v.key_cert_sign or v.crl_sign):
            raise PolicyError("CSR requests keyCertSign/cRLSign; never granted to end entities")
        if isinstance(v, x509.ExtendedKeyUsage):
            allowed = {_eku_oid(e) for e in profile.extended_key_usage}
            extra = [o.dotted_string for o in v if o not in allowed]
            if extra:
                raise PolicyError(f"CSR requests EKU {', '.join(extra)} beyond profile {profile.name!r}")
        if isinstance(v, x509.NameConstraints):
            raise PolicyError("CSR requests name constraints; never granted to end entities")


def _eku_oid(name: str) -> x509.ObjectIdentifier:
    return EXTENDED_KEY_USAGES.get(name) or x509.ObjectIdentifier(name)


def build_template(
    csr: x509.CertificateSigningRequest,
    profile: Profile,
    issuer: x509.Certificate,
    serial: int,
    now: dt.datetime,
    crl_url: str | None = None,
    *,
    ocsp_url: str | None = None,
    ca_issuers_url: str | None = None,
) -> CertificateTemplate:
    """The certificate the profile allows for this CSR (RFC 5280 §4.1, §4.2).

    ``crl_url`` becomes the CRL Distribution Point (§4.2.1.13); ``ocsp_url`` and
    ``ca_issuers_url`` the Authority Information Access (§4.2.2.1, RFC 6960 §3.1), each only
    when the profile keeps ``crl_distribution_point`` / ``authority_info_access`` on.
    """
    subject = requested_subject(csr, profile)
    sans = requested_sans(csr, profile)
    if len(subject) == 0 and not sans:
        raise PolicyError("the certificate would have neither subject nor SAN")
    public_key = csr.public_key()
    not_before = now - dt.timedelta(seconds=profile.backdate_seconds)
    not_before = max(not_before, issuer.not_valid_before_utc)
    not_after = min(now + dt.timedelta(days=profile.validity_days), issuer.not_valid_after_utc)
    if not_after <= now:
        raise PolicyError("the issuing CA has expired")
    ku = {u: (u in profile.key_usage) for u in KEY_USAGES}
    if isinstance(public_key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        ku["key_encipherment"] = False  # RFC 5480 §3: not for EC keys
        ku["data_encipherment"] = False
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (
            x509.KeyUsage(
                digital_signature=ku["digital_signature"],
                content_commitment=ku["content_commitment"],
                key_encipherment=ku["key_encipherment"],
                data_encipherment=ku["data_encipherment"],
                key_agreement=ku["key_agreement"],
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
    ]
    if profile.extended_key_usage:
        exts.append((x509.ExtendedKeyUsage([_eku_oid(e) for e in profile.extended_key_usage]), False))
    if sans:
        exts.append((x509.SubjectAlternativeName(sans), len(subject) == 0))
    exts.append((x509.SubjectKeyIdentifier.from_public_key(public_key), False))
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    exts.append((aki, False))
    access = []
    if profile.authority_info_access and ocsp_url:
        access.append(x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                             x509.UniformResourceIdentifier(ocsp_url)))
    if profile.authority_info_access and ca_issuers_url:
        access.append(x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                             x509.UniformResourceIdentifier(ca_issuers_url)))
    if access:
        exts.append((x509.AuthorityInformationAccess(access), False))
    if crl_url and profile.crl_distribution_point:
        exts.append(
            (
                x509.CRLDistributionPoints(
                    [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
                ),
                False,
            )
        )
    return CertificateTemplate(
        subject=subject,
        public_key=public_key,
        not_before=not_before,
        not_after=not_after,
        serial=serial,
        extensions=tuple(exts),
        csr=csr,
        profile=profile.name,
    )


def check_issued(cert: x509.Certificate, template: CertificateTemplate, issuer: x509.Certificate) -> None:
    """Re-check a backend's output against the template before it is stored (docs/ARCHITECTURE.md, step 6)."""
    problems = []
    if cert.serial_number != template.serial:
        problems.append("serial")
    if cert.subject != template.subject:
        problems.append("subject")
    if cert.issuer != issuer.subject:
        problems.append("issuer")
    if cert.public_key() != template.public_key:
        problems.append("public key")
    if cert.not_valid_after_utc > issuer.not_valid_after_utc:
        problems.append("validity beyond issuer")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            problems.append("CA:TRUE")
    except x509.ExtensionNotFound:
        pass
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:
        problems.append("signature")
    if problems:
        raise CAError(f"backend output differs from the template: {', '.join(problems)}",
                      reason=RejectReason.UNAVAILABLE)
