"""Profiles: the policy that turns an authenticated CSR into a certificate template.

A CSR is a request, never a template: its subject and SAN are checked against what the profile
allows, its other extensions are read only to refuse what may never be issued (CA:TRUE,
keyCertSign, EKUs beyond the profile), and everything that ends up in the certificate comes from
the profile (docs/ARCHITECTURE.md, issuance contract step 4; RFC 5280 §4.2).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from ca.api import CertificateTemplate
from ca.errors import AlgorithmError, ConfigError, ParseError, PolicyError, PopError

#: Subject attribute short names a profile may allow or force (RFC 4514 / RFC 5280 §4.1.2.4).
SUBJECT_ATTRIBUTES: dict[str, x509.ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "title": NameOID.TITLE,
    "unstructuredName": x509.ObjectIdentifier("1.2.840.113549.1.9.2"),
}
_ATTRIBUTE_NAMES = {oid: name for name, oid in SUBJECT_ATTRIBUTES.items()}

#: Upper bounds of attribute values (RFC 5280 Appendix A.1 ub-* values, in characters); a value
#: over its bound would make a certificate that linters (pkilint) and strict parsers refuse.
SUBJECT_UPPER_BOUNDS: dict[str, int] = {"C": 2, "ST": 128, "L": 128, "emailAddress": 255, "DC": 63}
#: No device subject needs more attributes than this; a CSR with thousands is an attack on
#: the parser, the ledger and every relying party's name matching.
MAX_SUBJECT_ATTRIBUTES = 16

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
_SAN_KINDS: dict[type, str] = {
    x509.DNSName: "dns", x509.IPAddress: "ip", x509.RFC822Name: "email", x509.UniformResourceIdentifier: "uri"}
SAN_TYPES = ("dns", "ip", "email", "uri")

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
    est: Mapping[str, Any] = field(default_factory=dict)
    scep: Mapping[str, Any] = field(default_factory=dict)

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


def _clean_text(value: str, what: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise PolicyError(f"{what} contains a control character")


#: How much of a refused value an error (and so the audit record) repeats.
SHOWN_VALUE_CHARS = 64


def _shown(value: str) -> str:
    """``value`` quoted for an error message, cut to :data:`SHOWN_VALUE_CHARS` characters."""
    if len(value) > SHOWN_VALUE_CHARS:
        return repr(value[:SHOWN_VALUE_CHARS]) + "..."
    return repr(value)


@functools.lru_cache(maxsize=256)
def compiled_pattern(pattern: str) -> re.Pattern[str]:
    """A ``[subject] patterns`` expression, compiled once (raises :class:`re.error`)."""
    return re.compile(pattern)


def check_subject_value(profile: Profile, name: str, value: str) -> None:
    """Refuse a requested subject attribute value the profile does not accept.

    Control characters (NUL, C0, DEL) and ``..`` are refused in every profile; '/' and '\\'
    unless the profile sets ``allow_path_separators``: subjects end up in file names, log lines
    and shell commands of relying parties. Then the length bound (RFC 5280 Appendix A.1) and
    the profile's pattern for the attribute, matched in full.
    """
    _clean_text(value, f"subject {name}")
    if ".." in value:
        raise PolicyError(f"subject {name} contains '..' (a path traversal), which is never accepted")
    if not profile.subject_allow_path_separators and ("/" in value or "\\" in value):
        raise PolicyError(f"subject {name} contains a path separator ('/' or '\\'), "
                          f"which profile {profile.name!r} does not accept")
    bound = SUBJECT_UPPER_BOUNDS.get(name, 64)
    if not value or len(value) > bound:
        raise PolicyError(f"subject {name} is empty or longer than RFC 5280 allows ({bound} characters)")
    for attribute, pattern in profile.subject_patterns:
        if attribute == name and not compiled_pattern(pattern).fullmatch(value):
            raise PolicyError(f"subject {name} {_shown(value)} does not match the pattern of "
                              f"profile {profile.name!r}")


#: One DNS label (RFC 1123 §2.1, RFC 952): letters, digits and hyphens, 1-63 characters,
#: neither starting nor ending with a hyphen.
_LDH_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _a_label_problem(label: str) -> str | None:
    """Why ``label`` (with '--' at positions 3-4) is not a valid IDNA A-label (RFC 5890 §2.3.2.1)."""
    if label[:4].lower() != "xn--":
        return f"label {_shown(label)} has '--' at positions 3-4, reserved for IDNA (RFC 5891 §4.2.3.1)"
    body = label[4:].lower()
    try:
        decoded = body.encode("ascii").decode("punycode")
        ok = (not decoded.isascii() and decoded.isprintable()
              and decoded.encode("punycode").decode("ascii") == body)
    except (UnicodeError, ValueError, IndexError, OverflowError):
        ok = False
    return None if ok else f"label {_shown(label)} is not a valid IDNA A-label (RFC 5890 §2.3.2.1)"


def dns_name_problem(name: str, *, allow_wildcard: bool = False) -> str | None:
    """Why ``name`` is not a host name a certificate may carry, or None (RFC 5280 §4.2.1.6).

    Preferred name syntax (RFC 1034 §3.5 as relaxed by RFC 1123 §2.1): dot-separated LDH labels,
    253 characters at most, no empty label (so no trailing dot), IDNA A-labels (``xn--``) for
    internationalised names, and a last label that is not all digits (an address belongs in an
    iPAddress entry). A wildcard is ``*`` as the whole leftmost label, over at least two labels,
    and only where ``allow_wildcard`` says so.
    """
    if not name.isascii():
        return "is not ASCII (internationalised names are written as IDNA A-labels, xn--)"
    if len(name) > 253:
        return "is longer than 253 characters"
    labels = name.split(".")
    if labels[0] == "*":
        if not allow_wildcard:
            return "is a wildcard, which the profile does not allow (san.allow_wildcards)"
        labels = labels[1:]
        if len(labels) < 2:
            return "is a wildcard over fewer than two labels"
    for label in labels:
        if not label:
            return "has an empty label"
        if "*" in label:
            return "has a wildcard that is not the whole leftmost label"
        if not _LDH_LABEL.fullmatch(label):
            return (f"label {_shown(label)} is not 1-63 letters, digits and hyphens "
                    "that neither start nor end with a hyphen")
        if label[2:4] == "--":
            problem = _a_label_problem(label)
            if problem:
                return problem
    if labels[-1].isdigit():
        return "ends in an all-numeric label (an IP address belongs in an IP SAN)"
    return None


#: atext (RFC 5322 §3.2.3), the characters of a dot-atom local part (RFC 5321 §4.1.2).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")


def email_problem(value: str) -> str | None:
    """Why ``value`` is not an rfc822Name mailbox ``local@domain`` (RFC 5280 §4.2.1.6), or None.

    The local part is a dot-atom of at most 64 characters (RFC 5321 §4.1.2, §4.5.3.1.1; quoted
    local parts are not accepted); the domain is a host name as :func:`dns_name_problem` checks.
    """
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        return "is not local@domain"
    if len(local) > 64 or not all(_ATOM.fullmatch(atom) for atom in local.split(".")):
        return "has a local part that is not a dot-atom of at most 64 characters (RFC 5321 §4.1.2)"
    problem = dns_name_problem(domain)
    return f"has a domain that {problem}" if problem else None


_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")  # RFC 3986 §3.1
#: unreserved, reserved and '%' (RFC 3986 §2): every character a URI may contain.
_URI_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                            "-._~:/?#[]@!$&'()*+,;=%")


def uri_problem(value: str) -> str | None:
    """Why ``value`` is not a URI a certificate may carry, or None (RFC 5280 §4.2.1.6).

    A scheme (RFC 3986 §3.1) and a non-empty scheme-specific part, only URI characters
    (RFC 3986 §2), and where there is an authority, a host that is a host name or an IP address.
    """
    scheme, colon, rest = value.partition(":")
    if not colon or not _URI_SCHEME.fullmatch(scheme):
        return "has no scheme (RFC 3986 §3.1)"
    if not rest:
        return "has no scheme-specific part"
    if any(c not in _URI_CHARACTERS for c in value):
        return "contains characters a URI may not (RFC 3986 §2)"
    if rest.startswith("//"):
        try:
            parts = urlsplit(value)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            return "has an authority that does not parse"
        if not host:
            return "has an authority without a host"
        if not is_ip(host) and dns_name_problem(host) is not None:
            return "has an authority whose host is neither a host name nor an IP address"
    return None


def ip_problem(value: object) -> str | None:
    """Why an iPAddress SAN entry is not one host's address, or None (RFC 5280 §4.2.1.6).

    A SAN carries one address of four or sixteen octets; networks (the name-constraints form),
    the unspecified address and multicast groups name no single host.
    """
    if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return "is a network, not an address"
    if value.is_unspecified or value.is_multicast:
        return "is not a host address (unspecified or multicast)"
    return None


def requested_subject(csr: x509.CertificateSigningRequest, profile: Profile) -> x509.Name:
    """The subject the certificate will carry: the CSR's allowed attributes plus forced ones."""
    forced = dict(profile.subject_force)
    rdns: list[x509.RelativeDistinguishedName] = []
    seen: set[str] = set()
    count = sum(len(rdn) for rdn in csr.subject.rdns)
    if count > MAX_SUBJECT_ATTRIBUTES:
        raise PolicyError(f"subject has {count} attributes; at most {MAX_SUBJECT_ATTRIBUTES} are accepted")
    for rdn in csr.subject.rdns:
        attrs = []
        for attr in rdn:
            name = _ATTRIBUTE_NAMES.get(attr.oid)
            if name is None or name not in profile.subject_allow:
                if name is not None and name in forced:
                    continue  # replaced by the forced value below
                raise PolicyError(
                    f"subject attribute {name or attr.oid.dotted_string} is not allowed by profile {profile.name!r}"
                )
            value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
            check_subject_value(profile, name, value)
            if name in forced:
                continue
            seen.add(name)
            attrs.append(attr)
        if attrs:
            rdns.append(x509.RelativeDistinguishedName(attrs))
    for name in profile.subject_require:
        if name not in seen and name not in forced:
            raise PolicyError(f"subject must contain {name} (profile {profile.name!r})")
    for name, value in profile.subject_force:
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(SUBJECT_ATTRIBUTES[name], value)]))
    if not forced:
        return csr.subject if len(rdns) == len(csr.subject.rdns) else x509.Name(rdns)
    return x509.Name(rdns)


def _csr_extensions(csr: x509.CertificateSigningRequest) -> x509.Extensions:
    try:
        return csr.extensions
    except Exception as exc:  # duplicate or undecodable extensions
        raise ParseError(f"CSR extension request does not parse: {exc}") from exc


def requested_sans(csr: x509.CertificateSigningRequest, profile: Profile) -> list[x509.GeneralName]:
    """The SAN entries the CSR asks for, each allowed by the profile (RFC 5280 §4.2.1.6)."""
    try:
        ext = _csr_extensions(csr).get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names = list(ext.value)
    if len(names) > profile.san_max:
        raise PolicyError(f"CSR asks for {len(names)} SAN entries; profile {profile.name!r} allows {profile.san_max}")
    for gn in names:
        kind = _SAN_KINDS.get(type(gn))
        if kind is None or kind not in profile.san_allow:
            raise PolicyError(f"SAN {gn} is not allowed by profile {profile.name!r}")
        if isinstance(gn, x509.IPAddress):
            problem = ip_problem(gn.value)
            if problem:
                raise PolicyError(f"IP SAN {gn.value} {problem}")
            continue
        value = str(gn.value)
        _clean_text(value, "SAN")
        if kind == "dns":
            problem = dns_name_problem(value, allow_wildcard=profile.san_allow_wildcards)
        else:
            problem = email_problem(value) if kind == "email" else uri_problem(value)
        if problem:
            raise PolicyError(f"{kind} SAN {_shown(value)} {problem}")
        if kind == "dns" and profile.san_dns_suffixes:
            low = value.lower().rstrip(".")
            if not any(low == s.lstrip(".").lower() or low.endswith("." + s.lstrip(".").lower())
                       for s in profile.san_dns_suffixes):
                raise PolicyError(f"DNS name {value} is outside the profile's domains")
    return names


def refuse_forbidden_requests(csr: x509.CertificateSigningRequest, profile: Profile) -> None:
    """Refuse CSRs that ask for what an end-entity certificate may never carry."""
    exts = _csr_extensions(csr)
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


def general_name_text(gn: x509.GeneralName) -> str:
    """``dns:host``, ``ip:10.0.0.1``, ``email:a@b``, ``uri:...`` (how devices and the API show SANs)."""
    kind = {x509.DNSName: "dns", x509.IPAddress: "ip", x509.RFC822Name: "email",
            x509.UniformResourceIdentifier: "uri"}.get(type(gn), type(gn).__name__)
    return f"{kind}:{gn.value}"


def sans_of(extensions: x509.Extensions | Sequence[tuple[x509.ExtensionType, bool]]) -> list[str]:
    """The SAN entries of a certificate's (or template's) extensions, as text."""
    for item in extensions:
        value = item[0] if isinstance(item, tuple) else item.value
        if isinstance(value, x509.SubjectAlternativeName):
            return [general_name_text(gn) for gn in value]
    return []


def device_key(profile: str, subject: x509.Name, sans: Sequence[str]) -> str:
    """The device behind a certificate: its profile plus its subject and SAN set.

    Renewals keep subject and SAN (RFC 7030 §4.2.2, RFC 8894 §3.3.1.2), so every certificate of
    one device maps to the same key. 32 hex characters of SHA-256 over a canonical spelling.
    """
    canon = "\n".join([profile, subject.rfc4514_string(), *sorted(s.lower() for s in sans)])
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


def device_key_of_certificate(profile: str, cert: x509.Certificate) -> str:
    """:func:`device_key` for an issued certificate."""
    return device_key(profile, cert.subject, sans_of(cert.extensions))


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
        from ca.errors import CAError, RejectReason

        raise CAError(f"backend output differs from the template: {', '.join(problems)}",
                      reason=RejectReason.UNAVAILABLE)


def digest_by_name(name: str) -> hashes.HashAlgorithm:
    """A cryptography hash object from its lower-case name (``sha256``)."""
    table: dict[str, type[hashes.HashAlgorithm]] = {
        "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
        "sha384": hashes.SHA384, "sha512": hashes.SHA512, "md5": hashes.MD5,
    }
    return table[name]()


def is_ip(text: str) -> bool:
    """True when ``text`` is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
