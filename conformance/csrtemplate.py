"""Well-formedness of a CSR attribute template in a CSR Attributes Response (RFC 9908 §3.4),
judged with the suite's own DER walker (independent of the server code)."""

from __future__ import annotations

from collections.abc import Iterator

from asn1crypto import core, parser

TEMPLATE = "1.2.840.113549.1.9.16.2.61"  # id-aa-certificationRequestInfoTemplate
EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
EXTENSION_REQ_TEMPLATE = "1.2.840.113549.1.9.16.2.62"  # id-aa-extensionReqTemplate

_SEQ, _SET, _INT, _OID, _BOOL, _OCTETS, _BITS = 0x30, 0x31, 0x02, 0x06, 0x01, 0x04, 0x03


class Malformed(Exception):
    """One way the template breaks RFC 9908 §3.4."""


def _tlv(der: bytes) -> tuple[int, bytes, int]:
    """(identifier octet, contents, total length) of the first TLV."""
    _, _, _, header, contents, trailer = parser.parse(der)
    return header[0], contents, len(header) + len(contents) + len(trailer)


def _items(contents: bytes) -> list[tuple[int, bytes, bytes]]:
    """(identifier, contents, whole TLV) of each TLV inside a constructed value."""
    out = []
    pos = 0
    while pos < len(contents):
        ident, inner, size = _tlv(contents[pos:])
        out.append((ident, inner, contents[pos:pos + size]))
        pos += size
    return out


def _oid(tlv: bytes) -> str:
    return str(core.ObjectIdentifier.load(tlv, strict=True).dotted)


def _expect(ident: int, want: int, what: str) -> None:
    if ident != want:
        raise Malformed(f"{what}: tag 0x{ident:02x}, expected 0x{want:02x}")


def _members(contents: bytes, tag: int, what: str, member: str) -> Iterator[list[tuple[int, bytes, bytes]]]:
    """The fields of every SEQUENCE ``member`` of every ``what`` (tag ``tag``, SIZE (1..MAX)) in
    ``contents``: an RDN's SingleAttributeTemplates, an ExtensionReqTemplate's ExtensionTemplates."""
    for ident, collection, _ in _items(contents):
        _expect(ident, tag, what)
        members = _items(collection)
        if not members:
            raise Malformed(f"an empty {what} (SIZE (1..MAX))")
        for ident, inner, _ in members:
            _expect(ident, _SEQ, member)
            yield _items(inner)


def templates(csrattrs_der: bytes) -> list[bytes]:
    """The values of every certificationRequestInfoTemplate attribute in a CsrAttrs."""
    ident, contents, size = _tlv(csrattrs_der)
    _expect(ident, _SEQ, "CsrAttrs")
    if size != len(csrattrs_der):
        raise Malformed("bytes after the CsrAttrs")
    found = []
    for ident, inner, _ in _items(contents):
        if ident != _SEQ:
            continue  # an OID alone
        parts = _items(inner)
        if parts and parts[0][0] == _OID and _oid(parts[0][2]) == TEMPLATE:
            if len(parts) != 2 or parts[1][0] != _SET:
                raise Malformed("the template attribute is not SEQUENCE { type, SET OF value }")
            values = _items(parts[1][1])
            if len(values) != 1:
                raise Malformed(f"the template attribute has {len(values)} values, not exactly one")
            found.append(values[0][2])
    return found


def check_template(der: bytes) -> str:
    """Raise :class:`Malformed` unless ``der`` is a CertificationRequestInfoTemplate (RFC 9908
    §3.4); return a one-line summary."""
    ident, contents, _ = _tlv(der)
    _expect(ident, _SEQ, "CertificationRequestInfoTemplate")
    parts = _items(contents)
    if not parts:
        raise Malformed("empty template")
    _expect(parts[0][0], _INT, "version")
    if core.Integer.load(parts[0][2]).native != 0:
        raise Malformed("version is not v1(0)")
    rest = parts[1:]
    rdns = 0
    if rest and rest[0][0] == _SEQ:  # subject NameTemplate (RDNSequenceTemplate)
        for fields in _members(rest[0][1], _SET, "RelativeDistinguishedNameTemplate", "SingleAttributeTemplate"):
            if not fields or fields[0][0] != _OID or len(fields) > 2:
                raise Malformed("SingleAttributeTemplate is not SEQUENCE { type, value OPTIONAL }")
            _oid(fields[0][2])
            rdns += 1
        rest = rest[1:]
    key = "no key algorithm"
    if rest and rest[0][0] == 0xA0:  # [0] SubjectPublicKeyInfoTemplate
        fields = _items(rest[0][1])
        if not fields or fields[0][0] != _SEQ:
            raise Malformed("subjectPKInfo has no AlgorithmIdentifier")
        alg = _items(fields[0][1])
        if not alg or alg[0][0] != _OID or len(alg) > 2:
            raise Malformed("the AlgorithmIdentifier is not SEQUENCE { OID, parameters OPTIONAL }")
        key = f"key {_oid(alg[0][2])}"
        if len(fields) > 2 or (len(fields) == 2 and fields[1][0] != _BITS):
            raise Malformed("subjectPKInfo holds more than algorithm and subjectPublicKey")
        rest = rest[1:]
    if len(rest) != 1 or rest[0][0] != 0xA1:
        raise Malformed("attributes [1] is missing or followed by other fields")
    kinds: set[str] = set()
    for ident, attr, _ in _items(rest[0][1]):
        _expect(ident, _SEQ, "Attribute")
        fields = _items(attr)
        if len(fields) != 2 or fields[0][0] != _OID or fields[1][0] != _SET:
            raise Malformed("an attribute is not SEQUENCE { type, SET OF value }")
        kind = _oid(fields[0][2])
        if kind in kinds and kind in (EXTENSION_REQUEST, EXTENSION_REQ_TEMPLATE):
            raise Malformed(f"attribute {kind} appears twice")
        kinds.add(kind)
        if kind == EXTENSION_REQ_TEMPLATE:
            for f in _members(fields[1][1], _SEQ, "ExtensionReqTemplate", "ExtensionTemplate"):
                if not f or f[0][0] != _OID or [t for t, _, _ in f[1:]] not in ([], [_BOOL], [_OCTETS],
                                                                              [_BOOL, _OCTETS]):
                    raise Malformed("ExtensionTemplate is not { extnID, critical DEFAULT FALSE, "
                                    "extnValue OPTIONAL }")
    if {EXTENSION_REQUEST, EXTENSION_REQ_TEMPLATE} <= kinds:
        raise Malformed("both extensionRequest and extensionReqTemplate (RFC 9908 §3.4: at most one)")
    return f"{rdns} subject attribute(s), {key}, {len(kinds)} attribute(s)"
