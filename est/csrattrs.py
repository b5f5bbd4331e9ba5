"""What /csrattrs advertises for a label (RFC 7030 §4.5.2, RFC 8951 §4, RFC 9908): the label's
configured OIDs, or, by default, what its profile asks of a CSR (key type, signature algorithm,
challengePassword under PoP linking, or one CSR template). No aiohttp, no asn1crypto.
"""

from __future__ import annotations

from collections.abc import Callable

from ca.names import SUBJECT_ATTRIBUTES
from est import asn1
from est.settings import LabelRule, PopMode, ProfileLike

#: profile key type -> (namedCurve OID, ecdsa-with-SHA* OID) (RFC 5480 §2.1.1.1, RFC 5758 §3.2).
_CURVES = {"ec-p256": ("1.2.840.10045.3.1.7", "1.2.840.10045.4.3.2"),
           "ec-p384": ("1.3.132.0.34", "1.2.840.10045.4.3.3"),
           "ec-p521": ("1.3.132.0.35", "1.2.840.10045.4.3.4")}
#: sha256WithRSAEncryption (RFC 4055 §5).
_SHA256_RSA = "1.2.840.113549.1.1.11"
#: subjectAltName (RFC 5280 §4.2.1.6).
_SUBJECT_ALT_NAME = "2.5.29.17"


def csrattrs_items(rule: LabelRule, profiles: Callable[[str], ProfileLike]) -> list[asn1.AttrOrOid]:
    """The CsrAttrs items for ``rule`` (``profiles``: the profile by name):
    ``csrattrs = "none"`` nothing, a list of OIDs those, ``"auto"`` the profile's requirements
    (RFC 7030 §4.5.2), as one CertificationRequestInfoTemplate when ``csr_template`` (RFC 9908)."""
    if rule.csrattrs == "none":
        return []
    if isinstance(rule.csrattrs, tuple):
        return [asn1.AttrOrOid(oid) for oid in rule.csrattrs]
    profile = profiles(rule.profile)
    items: list[asn1.AttrOrOid] = []
    if rule.pop is PopMode.TLS_UNIQUE:
        items.append(asn1.AttrOrOid(asn1.Oid.CHALLENGE_PASSWORD))
    key_type = profile.key_types[0] if profile.key_types else None
    alg_oid = params = None
    sig_oid = None
    key_attr = None
    if key_type in _CURVES:
        curve, sig_oid = _CURVES[key_type]
        key_attr = asn1.key_type_ec(curve)
        alg_oid, params = asn1.Oid.EC_PUBLIC_KEY, asn1.oid_value(curve)
    elif key_type and key_type.startswith("rsa-"):
        key_attr = asn1.key_type_rsa(int(key_type[4:]))
        sig_oid = _SHA256_RSA
        alg_oid = asn1.Oid.RSA_ENCRYPTION
    elif key_type == "ed25519":
        alg_oid = asn1.Oid.ED25519
        key_attr = asn1.AttrOrOid(asn1.Oid.ED25519)
    if rule.csr_template:
        subject = [asn1.TemplateRdn(SUBJECT_ATTRIBUTES[n].dotted_string)
                   for n in profile.subject_require if n in SUBJECT_ATTRIBUTES]
        subject += [asn1.TemplateRdn(SUBJECT_ATTRIBUTES[n].dotted_string, v)
                    for n, v in profile.subject_force if n in SUBJECT_ATTRIBUTES]
        exts = [asn1.TemplateExtension(_SUBJECT_ALT_NAME)] if profile.san_allow else []
        items.append(asn1.certification_request_template(
            subject=subject, key_algorithm=alg_oid, key_parameters=params, extensions=exts))
        return items
    if key_attr is not None:
        items.append(key_attr)
    if sig_oid is not None:
        items.append(asn1.AttrOrOid(sig_oid))
    return items
