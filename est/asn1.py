"""ASN.1 types of EST: CSR attributes (RFC 7030 §4.5.2 as fixed by RFC 8951 §4, RFC 9908
templates) and the server-generated key package (RFC 7030 §4.4.2, RFC 5958 §4).

asn1crypto stays behind the typed functions of this module and the other codecs (``est/wire.py``,
``est/serverkeygen_cms.py``, ``est/cmc.py``): callers see dataclasses, OID strings and bytes.
Nothing here imports aiohttp or asyncio (docs/ARCHITECTURE.md, "Layers").

One cohesive thing: the ASN.1 types EST adds to PKCS#10 and CMS (CsrAttrs, CSR templates, the
key package, ChangeSubjectName) with their typed writers and readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import core, keys
from asn1crypto import x509 as ax509
from cryptography import x509

from est.errors import BadRequest


class Oid:
    """Object identifiers EST uses, with the RFC that assigns each."""

    CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"  # RFC 2985 §5.4.1
    EXTENSION_REQUEST = "1.2.840.113549.1.9.14"  # RFC 2985 §5.4.2
    # RFC 7030 §4.4.1.1 / RFC 4108 §2.2.5: symmetric key to encrypt a server-generated key.
    DECRYPT_KEY_IDENTIFIER = "1.2.840.113549.1.9.16.2.37"
    # RFC 7030 §4.4.1.2: asymmetric key (SKI) to encrypt a server-generated key.
    ASYMMETRIC_DECRYPT_KEY_IDENTIFIER = "1.2.840.113549.1.9.16.2.54"
    # RFC 9908 §3.4 (IANA table 2).
    CERTIFICATION_REQUEST_INFO_TEMPLATE = "1.2.840.113549.1.9.16.2.61"
    EXTENSION_REQ_TEMPLATE = "1.2.840.113549.1.9.16.2.62"
    # RFC 5958 §4: id-ct-KP-aKeyPackage, the content type of an AsymmetricKeyPackage.
    KP_A_KEY_PACKAGE = "2.16.840.1.101.2.1.2.78.5"
    # RFC 6402 §2.10 / RFC 7030 §2.6: id-kp-cmcRA, an EST RA's extended key usage.
    KP_CMC_RA = "1.3.6.1.5.5.7.3.28"
    # RFC 6402 §2.6: ChangeSubjectName (reenroll with a new name).
    CHANGE_SUBJECT_NAME = "1.3.6.1.5.5.7.7.36"
    EC_PUBLIC_KEY = "1.2.840.10045.2.1"  # RFC 5480 §2.1.1
    RSA_ENCRYPTION = "1.2.840.113549.1.1.1"  # RFC 8017 §A.1
    ED25519 = "1.3.101.112"  # RFC 8410 §3
    ED448 = "1.3.101.113"


# --- RFC 7030 §4.5.2 (RFC 8951 §4 corrected module) -----------------------------------------


class _AnySet(core.SetOf):  # type: ignore[misc]
    """``SET OF AttributeValue``: values stay opaque (RFC 8951 §4: ignore what you don't know)."""

    _child_spec = core.Any


class CsrAttribute(core.Sequence):  # type: ignore[misc]
    """``Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET SIZE(1..MAX) OF ANY }``."""

    _fields = [("type", core.ObjectIdentifier), ("values", _AnySet)]


class AttrOrOIDChoice(core.Choice):  # type: ignore[misc]
    """``AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }`` (RFC 8951 §4)."""

    _alternatives = [("oid", core.ObjectIdentifier), ("attribute", CsrAttribute)]


class CsrAttrs(core.SequenceOf):  # type: ignore[misc]
    """``CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID`` (RFC 7030 §4.5.2)."""

    _child_spec = AttrOrOIDChoice


# --- RFC 9908 §3.4: CertificationRequestInfoTemplate -----------------------------------------


class SingleAttributeTemplate(core.Sequence):  # type: ignore[misc]
    """``SingleAttributeTemplate ::= SEQUENCE { type, value OPTIONAL }``: no value = client fills."""

    _fields = [("type", core.ObjectIdentifier), ("value", core.Any, {"optional": True})]


class RelativeDistinguishedNameTemplate(core.SetOf):  # type: ignore[misc]
    """``RelativeDistinguishedNameTemplate ::= SET SIZE (1..MAX) OF SingleAttributeTemplate``."""

    _child_spec = SingleAttributeTemplate


class NameTemplate(core.SequenceOf):  # type: ignore[misc]
    """``NameTemplate ::= CHOICE { rdnSequence RDNSequenceTemplate }`` (only one alternative)."""

    _child_spec = RelativeDistinguishedNameTemplate


class _AlgorithmIdentifier(core.Sequence):  # type: ignore[misc]
    """``AlgorithmIdentifier`` with opaque parameters (RFC 5280 §4.1.1.2)."""

    _fields = [("algorithm", core.ObjectIdentifier), ("parameters", core.Any, {"optional": True})]


class SubjectPublicKeyInfoTemplate(core.Sequence):  # type: ignore[misc]
    """``SubjectPublicKeyInfoTemplate ::= SEQUENCE { algorithm, subjectPublicKey BIT STRING
    OPTIONAL }`` (RFC 9908 §3.4)."""

    _fields = [
        ("algorithm", _AlgorithmIdentifier),
        ("subject_public_key", core.BitString, {"optional": True}),
    ]


class _CriAttributes(core.SetOf):  # type: ignore[misc]
    _child_spec = CsrAttribute


class CertificationRequestInfoTemplate(core.Sequence):  # type: ignore[misc]
    """RFC 9908 §3.4::

    CertificationRequestInfoTemplate ::= SEQUENCE {
        version       INTEGER { v1(0) } (v1, ... ),
        subject       NameTemplate OPTIONAL,
        subjectPKInfo [0] SubjectPublicKeyInfoTemplate OPTIONAL,
        attributes    [1] Attributes }
    """

    _fields = [
        ("version", core.Integer),
        ("subject", NameTemplate, {"optional": True}),
        ("subject_pk_info", SubjectPublicKeyInfoTemplate, {"implicit": 0, "optional": True}),
        ("attributes", _CriAttributes, {"implicit": 1}),
    ]


class ExtensionTemplate(core.Sequence):  # type: ignore[misc]
    """``ExtensionTemplate ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE,
    extnValue OCTET STRING OPTIONAL }`` (RFC 9908 §3.4)."""

    _fields = [
        ("extn_id", core.ObjectIdentifier),
        ("critical", core.Boolean, {"default": False}),
        ("extn_value", core.OctetString, {"optional": True}),
    ]


class ExtensionTemplates(core.SequenceOf):  # type: ignore[misc]
    """``ExtensionReqTemplate ::= SEQUENCE SIZE (1..MAX) OF ExtensionTemplate``."""

    _child_spec = ExtensionTemplate


# --- RFC 5958 §2/§4: the server-generated key package ----------------------------------------


class AsymmetricKeyPackage(core.SequenceOf):  # type: ignore[misc]
    """``AsymmetricKeyPackage ::= SEQUENCE SIZE (1..MAX) OF OneAsymmetricKey`` (RFC 5958 §2);
    OneAsymmetricKey v1 is PKCS#8 PrivateKeyInfo."""

    _child_spec = keys.PrivateKeyInfo


class RawAsymmetricKeyPackage(core.SequenceOf):  # type: ignore[misc]
    """The same SEQUENCE OF with elements kept as exact bytes: re-encoding a parsed
    PrivateKeyInfo drops leading zero octets of an EC private key (RFC 5915 §3 wants the
    fixed curve length), so the key travels byte for byte."""

    _child_spec = core.Any


# --- typed surface ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttrOrOid:
    """One CsrAttrs element: a bare OID (``values is None``) or an attribute whose values are
    kept as DER (RFC 8951 §4: unknown attributes are carried, not interpreted)."""

    oid: str
    values: tuple[bytes, ...] | None = None

    @property
    def is_attribute(self) -> bool:
        """True for the ``attribute`` alternative of AttrOrOID."""
        return self.values is not None


def encode_csrattrs(items: Sequence[AttrOrOid]) -> bytes:
    """DER ``CsrAttrs`` (RFC 7030 §4.5.2); an empty sequence is valid (``30 00``)."""
    out = []
    for item in items:
        if item.values is None:
            out.append(AttrOrOIDChoice(name="oid", value=core.ObjectIdentifier(item.oid)))
        else:
            if not item.values:
                raise ValueError(f"attribute {item.oid} needs at least one value")
            attr = CsrAttribute(
                {"type": item.oid, "values": [core.Any.load(v) for v in item.values]}
            )
            out.append(AttrOrOIDChoice(name="attribute", value=attr))
    return bytes(CsrAttrs(out).dump(force=True))


def decode_csrattrs(der: bytes) -> tuple[AttrOrOid, ...]:
    """Parse DER ``CsrAttrs``; any structural problem is a :class:`BadRequest`."""
    try:
        parsed = CsrAttrs.load(der, strict=True)
        items: list[AttrOrOid] = []
        for choice in parsed:
            if choice.name == "oid":
                items.append(AttrOrOid(choice.chosen.dotted))
            else:
                attr = choice.chosen
                values = tuple(bytes(v.dump()) for v in attr["values"])
                items.append(AttrOrOid(attr["type"].dotted, values))
        return tuple(items)
    except BadRequest:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError) as exc:
        raise BadRequest(f"CsrAttrs does not parse: {exc}") from None


def oid_value(oid: str) -> bytes:
    """DER of an OBJECT IDENTIFIER, for attribute values such as a curve (RFC 8951 §4)."""
    return bytes(core.ObjectIdentifier(oid).dump())


def integer_value(value: int) -> bytes:
    """DER of an INTEGER, for attribute values such as an RSA modulus size (RFC 9908 §5.4)."""
    return bytes(core.Integer(value).dump())


def key_type_ec(curve_oid: str) -> AttrOrOid:
    """``id-ecPublicKey`` attribute naming the curve the client should use (RFC 8951 §4)."""
    return AttrOrOid(Oid.EC_PUBLIC_KEY, (oid_value(curve_oid),))


def key_type_rsa(bits: int) -> AttrOrOid:
    """``rsaEncryption`` attribute carrying the modulus size (RFC 9908 §5.4)."""
    return AttrOrOid(Oid.RSA_ENCRYPTION, (integer_value(bits),))


def extension_request(extensions: Sequence[x509.Extension[x509.ExtensionType]]) -> AttrOrOid:
    """``extensionRequest`` attribute whose value is the Extensions the client should ask for
    (RFC 9908 §3.3: values the client copies verbatim)."""
    from asn1crypto import x509 as ax509

    exts = ax509.Extensions(
        [
            ax509.Extension(
                {
                    "extn_id": ext.oid.dotted_string,
                    "critical": ext.critical,
                    "extn_value": ext.value.public_bytes(),
                }
            )
            for ext in extensions
        ]
    )
    return AttrOrOid(Oid.EXTENSION_REQUEST, (bytes(exts.dump()),))


@dataclass(frozen=True)
class TemplateRdn:
    """One subject attribute in an RFC 9908 template: ``value`` None means "client fills in"."""

    oid: str
    value: str | None = None


@dataclass(frozen=True)
class TemplateExtension:
    """One extension in an RFC 9908 template: ``value`` None means "client fills in"."""

    oid: str
    critical: bool = False
    value: bytes | None = None  # DER extnValue contents


def certification_request_template(
    *,
    subject: Sequence[TemplateRdn] = (),
    key_algorithm: str | None = None,
    key_parameters: bytes | None = None,
    extensions: Sequence[TemplateExtension] = (),
) -> AttrOrOid:
    """Build the ``id-aa-certificationRequestInfoTemplate`` attribute (RFC 9908 §3.4).

    Subject values are encoded as UTF8String (RFC 5280 §4.1.2.6); extensions with every value
    present go in an ``extensionRequest``, otherwise in an ``extensionReqTemplate``
    (RFC 9908 §3.4: never both).
    """
    value: dict[str, object] = {"version": 0}
    if subject:
        rdns = []
        for rdn in subject:
            entry: dict[str, object] = {"type": rdn.oid}
            if rdn.value is not None:
                entry["value"] = core.Any.load(core.UTF8String(rdn.value).dump())
            rdns.append(RelativeDistinguishedNameTemplate([SingleAttributeTemplate(entry)]))
        value["subject"] = NameTemplate(rdns)
    if key_algorithm is not None:
        alg: dict[str, object] = {"algorithm": key_algorithm}
        if key_parameters is not None:
            alg["parameters"] = core.Any.load(key_parameters)
        value["subject_pk_info"] = SubjectPublicKeyInfoTemplate({"algorithm": alg})
    attrs = []
    if extensions:
        if all(e.value is not None for e in extensions):
            from asn1crypto import x509 as ax509

            exts = ax509.Extensions(
                [
                    ax509.Extension(
                        {
                            "extn_id": e.oid,
                            "critical": e.critical,
                            "extn_value": core.ParsableOctetString(e.value),
                        }
                    )
                    for e in extensions
                ]
            )
            attrs.append(
                CsrAttribute(
                    {"type": Oid.EXTENSION_REQUEST, "values": [core.Any.load(exts.dump())]}
                )
            )
        else:
            tmpl = ExtensionTemplates(
                [
                    ExtensionTemplate(
                        {"extn_id": e.oid, "critical": e.critical}
                        | ({"extn_value": e.value} if e.value is not None else {})
                    )
                    for e in extensions
                ]
            )
            attrs.append(
                CsrAttribute(
                    {"type": Oid.EXTENSION_REQ_TEMPLATE, "values": [core.Any.load(tmpl.dump())]}
                )
            )
    value["attributes"] = _CriAttributes(attrs)
    der = CertificationRequestInfoTemplate(value).dump(force=True)
    return AttrOrOid(Oid.CERTIFICATION_REQUEST_INFO_TEMPLATE, (bytes(der),))


@dataclass(frozen=True)
class ParsedTemplate:
    """A decoded RFC 9908 template: what the client reads from /csrattrs."""

    subject: tuple[TemplateRdn, ...]
    key_algorithm: str | None
    key_parameters: bytes | None
    extensions: tuple[TemplateExtension, ...]


def parse_certification_request_template(der: bytes) -> ParsedTemplate:
    """Decode one ``CertificationRequestInfoTemplate`` value (RFC 9908 §3.4)."""
    try:
        tmpl = CertificationRequestInfoTemplate.load(der, strict=True)
        if tmpl["version"].native != 0:
            raise BadRequest("CertificationRequestInfoTemplate version must be v1(0)")
        subject: list[TemplateRdn] = []
        if tmpl["subject"].native is not None:
            for rdn in tmpl["subject"]:
                for sat in rdn:
                    val = sat["value"]
                    text: str | None = None
                    if not isinstance(val, core.Void):
                        parsed = val.parsed if hasattr(val, "parsed") else val
                        text = str(parsed.native) if hasattr(parsed, "native") else None
                    subject.append(TemplateRdn(sat["type"].dotted, text))
        key_alg = key_params = None
        spki = tmpl["subject_pk_info"]
        if not isinstance(spki, core.Void):
            key_alg = spki["algorithm"]["algorithm"].dotted
            params = spki["algorithm"]["parameters"]
            key_params = None if isinstance(params, core.Void) else bytes(params.dump())
        exts: list[TemplateExtension] = []
        for attr in tmpl["attributes"]:
            kind = attr["type"].dotted
            for v in attr["values"]:
                if kind == Oid.EXTENSION_REQUEST:
                    from asn1crypto import x509 as ax509

                    for ext in ax509.Extensions.load(v.dump(), strict=True):
                        exts.append(
                            TemplateExtension(
                                ext["extn_id"].dotted,
                                bool(ext["critical"].native),
                                bytes(ext["extn_value"].contents),
                            )
                        )
                elif kind == Oid.EXTENSION_REQ_TEMPLATE:
                    for et in ExtensionTemplates.load(v.dump(), strict=True):
                        ev = et["extn_value"]
                        exts.append(
                            TemplateExtension(
                                et["extn_id"].dotted,
                                bool(et["critical"].native),
                                None if isinstance(ev, core.Void) else bytes(ev.native),
                            )
                        )
        return ParsedTemplate(tuple(subject), key_alg, key_params, tuple(exts))
    except BadRequest:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError) as exc:
        raise BadRequest(f"CertificationRequestInfoTemplate does not parse: {exc}") from None


# --- CSR attributes EST reads (RFC 7030 §3.5, §4.4.1) ---------------------------------------


def csr_attribute(csr: x509.CertificateSigningRequest, oid: str) -> bytes | None:
    """The raw value of a single-valued CSR attribute, or None when absent.

    cryptography exposes the contents of string-typed values (OCTET STRING, PrintableString,
    UTF8String), which is what challengePassword and the decrypt key identifiers are.
    """
    try:
        attr = csr.attributes.get_attribute_for_oid(x509.ObjectIdentifier(oid))
    except x509.AttributeNotFound:
        return None
    except ValueError as exc:  # duplicate attribute, unsupported tag
        raise BadRequest(f"CSR attribute {oid}: {exc}") from None
    return bytes(attr.value)


def challenge_password(csr: x509.CertificateSigningRequest) -> bytes | None:
    """challengePassword (RFC 2985 §5.4.1), where EST PoP linking puts tls-unique (§3.5)."""
    return csr_attribute(csr, Oid.CHALLENGE_PASSWORD)


def decrypt_key_identifiers(
    csr: x509.CertificateSigningRequest,
) -> tuple[bytes | None, bytes | None]:
    """(DecryptKeyIdentifier, AsymmetricDecryptKeyIdentifier) of a serverkeygen CSR
    (RFC 7030 §4.4.1.1, §4.4.1.2); either may be None."""
    return (
        csr_attribute(csr, Oid.DECRYPT_KEY_IDENTIFIER),
        csr_attribute(csr, Oid.ASYMMETRIC_DECRYPT_KEY_IDENTIFIER),
    )


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def csr_attribute_der(csr: x509.CertificateSigningRequest, oid: str) -> bytes | None:
    """The full DER (tag, length, contents) of a single-valued CSR attribute's value.

    cryptography hands out only the contents octets plus the universal tag number; rebuild the
    TLV so structured values (SEQUENCE, e.g. ChangeSubjectName) can be parsed."""
    try:
        attr = csr.attributes.get_attribute_for_oid(x509.ObjectIdentifier(oid))
    except x509.AttributeNotFound:
        return None
    except ValueError as exc:
        raise BadRequest(f"CSR attribute {oid}: {exc}") from None
    tag = int(attr._type)  # noqa: SLF001 - the value's tag: its universal number, or the tag byte
    if tag in (16, 17):
        tag |= 0x20  # SEQUENCE / SET are constructed
    elif tag not in (0x30, 0x31) and tag > 30:  # cryptography reports SEQUENCE / SET as 0x30 / 0x31
        raise BadRequest(f"CSR attribute {oid}: unsupported tag")
    value = bytes(attr.value)
    return bytes([tag]) + _der_length(len(value)) + value


class ChangeSubjectName(core.Sequence):  # type: ignore[misc]
    """``ChangeSubjectName ::= SEQUENCE { subject Name OPTIONAL, subjectAlt GeneralNames
    OPTIONAL }`` (RFC 6402 §2.10)."""

    _fields = [
        ("subject", ax509.Name, {"optional": True}),
        ("subject_alt", ax509.GeneralNames, {"optional": True}),
    ]


def change_subject_name(der: bytes) -> tuple[bytes | None, bytes | None]:
    """The DER of the current subject and subjectAltName a ChangeSubjectName attribute names
    (None for each one absent); ValueError when it does not parse (the parse gate)."""
    try:
        csn = ChangeSubjectName.load(der, strict=True)
        if bytes(csn.dump(force=True)) != der:  # every element typed, nothing left over
            raise ValueError("not a ChangeSubjectName")
        subject, alt = csn["subject"], csn["subject_alt"]
        return (None if isinstance(subject, core.Void) else bytes(subject.dump()),
                None if isinstance(alt, core.Void) else bytes(alt.dump()))
    except Exception as exc:  # noqa: BLE001 - every failure of untrusted bytes is one error
        raise ValueError(f"ChangeSubjectName does not parse: {type(exc).__name__}") from None
