"""Names: what a certificate's subject and SAN may contain, and how names are shown and keyed.

A requested subject attribute or SAN entry passes only if the profile allows its kind and its
value is well formed: no control characters, no path traversal, host names in preferred name
syntax with IDNA A-labels and wildcards only where allowed, mailboxes, URIs and single-host
addresses (RFC 5280 §4.1.2.4, §4.2.1.6; docs/ARCHITECTURE.md, issuance contract step 4).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.errors import ParseError, PolicyError

if TYPE_CHECKING:
    from ca.profile import Profile

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

_SAN_KINDS: dict[type, str] = {
    x509.DNSName: "dns", x509.IPAddress: "ip", x509.RFC822Name: "email", x509.UniformResourceIdentifier: "uri"}
SAN_TYPES = ("dns", "ip", "email", "uri")


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


def is_ip(text: str) -> bool:
    """True when ``text`` is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


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


def csr_extensions(csr: x509.CertificateSigningRequest) -> x509.Extensions:
    """The CSR's extensionRequest (RFC 2986 §4.1, RFC 2985 §5.4.2), or :class:`ParseError`."""
    try:
        return csr.extensions
    except Exception as exc:  # duplicate or undecodable extensions
        raise ParseError(f"CSR extension request does not parse: {exc}") from exc


def requested_sans(csr: x509.CertificateSigningRequest, profile: Profile) -> list[x509.GeneralName]:
    """The SAN entries the CSR asks for, each allowed by the profile (RFC 5280 §4.2.1.6)."""
    try:
        ext = csr_extensions(csr).get_extension_for_class(x509.SubjectAlternativeName)
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


def general_name_text(gn: x509.GeneralName) -> str:
    """``dns:host``, ``ip:10.0.0.1``, ``email:a@b``, ``uri:...`` (how devices and the API show SANs)."""
    return f"{_SAN_KINDS.get(type(gn), type(gn).__name__)}:{gn.value}"


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
