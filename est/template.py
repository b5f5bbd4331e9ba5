"""A CSR filled from a CSR attribute template (RFC 9908 §3.4, §4): the client side of
``id-aa-certificationRequestInfoTemplate``. Pure: template and the user's values in, key and
CSR out; the caller fetched /csrattrs (RFC 7030 §4.5)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import AttributeOID, ExtensionOID

from est import asn1
from est.errors import BadRequest
from est.wire import csr_signature_hash

_CURVES: dict[str, ec.EllipticCurve] = {
    "1.2.840.10045.3.1.7": ec.SECP256R1(),
    "1.3.132.0.34": ec.SECP384R1(),
    "1.3.132.0.35": ec.SECP521R1(),
}


class TemplateError(BadRequest):
    """The template asks for something the client cannot or was not told to fill in."""


def find_template(items: Sequence[asn1.AttrOrOid]) -> asn1.ParsedTemplate | None:
    """The one ``CertificationRequestInfoTemplate`` of a CSR Attributes Response (RFC 9908 §3.4:
    at most one), decoded; None when the server sent none."""
    found = [i for i in items if i.oid == asn1.Oid.CERTIFICATION_REQUEST_INFO_TEMPLATE]
    if not found:
        return None
    if len(found) > 1 or found[0].values is None or len(found[0].values) != 1:
        raise TemplateError("the CSR attributes carry more than one template (RFC 9908 §3.4)")
    return asn1.parse_certification_request_template(found[0].values[0])


def key_for(template: asn1.ParsedTemplate, rsa_bits: int = 2048) -> CertificateIssuerPrivateKeyTypes:
    """A new key of the template's algorithm (RFC 9908 §3.4 subjectPKInfo: algorithm and, for
    EC, the named curve); P-256 when the template names none."""
    alg = template.key_algorithm
    if alg is None:
        return ec.generate_private_key(ec.SECP256R1())
    if alg == asn1.Oid.EC_PUBLIC_KEY:
        if template.key_parameters is None:
            raise TemplateError("the template names ecPublicKey without a curve")
        curve_oid = _oid_from_der(template.key_parameters)
        if curve_oid not in _CURVES:
            raise TemplateError(f"the template asks for curve {curve_oid}, which this client does not support")
        return ec.generate_private_key(_CURVES[curve_oid])
    if alg == asn1.Oid.RSA_ENCRYPTION:
        return rsa.generate_private_key(65537, rsa_bits)
    if alg == asn1.Oid.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    raise TemplateError(f"the template asks for key algorithm {alg}, which this client does not support")


def check_key(template: asn1.ParsedTemplate, key: CertificateIssuerPrivateKeyTypes) -> None:
    """An existing key must be what the template asks for (RFC 9908 §3.4)."""
    alg = template.key_algorithm
    if alg is None:
        return
    if alg == asn1.Oid.EC_PUBLIC_KEY:
        ok = isinstance(key, ec.EllipticCurvePrivateKey)
        if ok and template.key_parameters is not None:
            curve = _CURVES.get(_oid_from_der(template.key_parameters))
            ok = curve is not None and isinstance(key, ec.EllipticCurvePrivateKey) and curve.name == key.curve.name
    elif alg == asn1.Oid.RSA_ENCRYPTION:
        ok = isinstance(key, rsa.RSAPrivateKey)
    elif alg == asn1.Oid.ED25519:
        ok = isinstance(key, ed25519.Ed25519PrivateKey)
    else:
        ok = False
    if not ok:
        raise TemplateError(f"the key is not of the template's algorithm {alg}")


def fill(template: asn1.ParsedTemplate, key: CertificateIssuerPrivateKeyTypes, *,
         subject: x509.Name | None = None, sans: Sequence[x509.GeneralName] = (),
         challenge: bytes | None = None) -> x509.CertificateSigningRequest:
    """The CSR the template describes (RFC 9908 §4): subject attributes with a value are copied
    as given, those without are taken from ``subject`` (an error when missing); extensions with
    a value are copied verbatim, a subjectAltName without one is filled from ``sans``; subject
    attributes or extensions the template does not name are refused, not added."""
    check_key(template, key)
    given: dict[str, list[str]] = {}
    for attr in subject or []:
        given.setdefault(attr.oid.dotted_string, []).append(str(attr.value))
    rdns: list[x509.NameAttribute[str]] = []
    for rdn in template.subject:
        if rdn.value is not None:
            value = rdn.value
        else:
            values = given.get(rdn.oid)
            if not values:
                raise TemplateError(f"the template asks for subject attribute {_name(rdn.oid)}: give it in --subject")
            value = values.pop(0)
        rdns.append(x509.NameAttribute(x509.ObjectIdentifier(rdn.oid), value))
    left = [oid for oid, vals in given.items() if vals]
    if left:
        raise TemplateError(f"the template does not ask for subject attribute {_name(left[0])}")
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(rdns))
    san_used = False
    for ext in template.extensions:
        if ext.value is not None:
            builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(ext.oid), ext.value),
                                            ext.critical)
        elif ext.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string:
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), ext.critical)
                san_used = True
        else:
            raise TemplateError(f"the template asks for extension {ext.oid} without a value; "
                                "this client fills in only subjectAltName")
    if sans and not san_used:
        raise TemplateError("the template does not ask for a subjectAltName")
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge)
    return builder.sign(key, csr_signature_hash(key))


def _oid_from_der(der: bytes) -> str:
    from asn1crypto import core

    try:
        return str(core.ObjectIdentifier.load(der, strict=True).dotted)
    except ValueError:
        raise TemplateError("the template's key parameters are not a named curve") from None


def _name(oid: str) -> str:
    try:
        return x509.ObjectIdentifier(oid)._name  # noqa: SLF001 - cryptography's short names
    except Exception:  # noqa: BLE001
        return oid
