"""The suite's own TLV writer and BER-tolerant TLV reader (X.690 §8.1), shared by its SCEP and
CMC messages: exact bytes where asn1crypto has no class (SCEP attributes, CMC controls), and
children read as sent (definite or indefinite length)."""

from __future__ import annotations

from asn1crypto import core


def tlv(tag: int, content: bytes) -> bytes:
    """One TLV with a definite length in its shortest form (X.690 §8.1.3)."""
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER TLV (X.690 §8.19)."""
    return bytes(core.ObjectIdentifier(dotted).dump())


def header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag byte, content start, content length or -1 for indefinite) of the TLV at ``pos``."""
    tag = data[pos]
    pos += 1
    if tag & 0x1F == 0x1F:
        while data[pos] & 0x80:
            pos += 1
        pos += 1
    first = data[pos]
    pos += 1
    if first == 0x80:
        return tag, pos, -1
    if first & 0x80:
        n = first & 0x7F
        return tag, pos + n, int.from_bytes(data[pos:pos + n], "big")
    return tag, pos, first


def end(data: bytes, pos: int) -> int:
    """Offset just past the TLV at ``pos`` (definite or indefinite length)."""
    tag, start, length = header(data, pos)
    if length >= 0:
        return start + length
    p = start
    while data[p:p + 2] != b"\x00\x00":
        p = end(data, p)
    return p + 2


def children(encoded: bytes) -> list[bytes]:
    """The encoded child TLVs of a constructed TLV (BER tolerant)."""
    tag, start, length = header(encoded, 0)
    out = []
    p = start
    stop = start + length if length >= 0 else len(encoded)
    while p < stop:
        if length < 0 and encoded[p:p + 2] == b"\x00\x00":
            break
        e = end(encoded, p)
        out.append(encoded[p:e])
        p = e
    return out
