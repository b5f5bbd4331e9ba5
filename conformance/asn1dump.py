"""Evidence formatting: hex previews and an ``openssl asn1parse``-like dump of DER/BER bytes,
written here so that the suite shows the offending bytes without trusting any parser of ours."""

from __future__ import annotations

_UNIVERSAL = {
    1: "BOOLEAN", 2: "INTEGER", 3: "BIT STRING", 4: "OCTET STRING", 5: "NULL", 6: "OBJECT",
    12: "UTF8STRING", 16: "SEQUENCE", 17: "SET", 19: "PRINTABLESTRING", 20: "T61STRING",
    22: "IA5STRING", 23: "UTCTIME", 24: "GENERALIZEDTIME", 30: "BMPSTRING",
}


def hexdump(data: bytes, limit: int = 64) -> str:
    """``N bytes: 30 82 ...`` with at most ``limit`` bytes shown."""
    shown = data[:limit].hex(" ")
    more = f" ... (+{len(data) - limit})" if len(data) > limit else ""
    return f"{len(data)} bytes: {shown}{more}"


def _oid(content: bytes) -> str:
    if not content:
        return "?"
    parts = [content[0] // 40, content[0] % 40] if content[0] < 80 else [2, content[0] - 80]
    value = 0
    for b in content[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def asn1parse(data: bytes, max_lines: int = 40, max_depth: int = 8) -> list[str]:
    """Lines like ``openssl asn1parse``: ``offset:d=depth hl=.. l=.. cons/prim: TYPE value``.
    Tolerates BER (indefinite lengths) and stops quietly at the first malformed header."""
    lines: list[str] = []

    def walk(start: int, end: int, depth: int) -> int:
        pos = start
        while pos < end and len(lines) < max_lines:
            if end - pos >= 2 and data[pos] == 0 and data[pos + 1] == 0:
                lines.append(f"{pos:5d}:d={depth} hl=2 l=0 prim: EOC")
                return pos + 2
            hdr = pos
            try:
                tag = data[pos]
                pos += 1
                num = tag & 0x1F
                if num == 0x1F:
                    num = 0
                    while data[pos] & 0x80:
                        num = (num << 7) | (data[pos] & 0x7F)
                        pos += 1
                    num = (num << 7) | data[pos]
                    pos += 1
                first = data[pos]
                pos += 1
                if first == 0x80:
                    length = -1
                elif first & 0x80:
                    n = first & 0x7F
                    length = int.from_bytes(data[pos:pos + n], "big")
                    pos += n
                else:
                    length = first
            except IndexError:
                lines.append(f"{hdr:5d}:d={depth} (truncated header)")
                return end
            cons = bool(tag & 0x20)
            cls = tag >> 6
            name = _UNIVERSAL.get(num, f"[{num}]") if cls == 0 else (
                f"cont [ {num} ]" if cls == 2 else f"{['univ', 'appl', 'cont', 'priv'][cls]} [ {num} ]")
            hl = pos - hdr
            lstr = "inf" if length < 0 else str(length)
            line = f"{hdr:5d}:d={depth} hl={hl} l={lstr:>4} {'cons' if cons else 'prim'}: {name}"
            if length >= 0 and pos + length > len(data):
                lines.append(line + " (length runs past the end)")
                return end
            if not cons:
                content = data[pos:pos + length]
                if cls == 0 and num == 6:
                    line += f" :{_oid(content)}"
                elif cls == 0 and num in (12, 19, 22, 23, 24):
                    line += f" :{content.decode('latin-1')[:60]}"
                elif cls == 0 and num in (2, 4, 3) and length <= 20:
                    line += f" :{content.hex().upper()}"
                elif length:
                    line += f" [HEX DUMP]:{content[:16].hex().upper()}{'...' if length > 16 else ''}"
                lines.append(line)
                pos += length
            else:
                lines.append(line)
                if depth >= max_depth:
                    if length < 0:
                        return end
                    pos += length
                elif length < 0:
                    pos = walk(pos, end, depth + 1)
                else:
                    walk(pos, pos + length, depth + 1)
                    pos += length
        if len(lines) >= max_lines and pos < end:
            if not lines[-1].endswith("..."):
                lines.append("...")
        return pos

    walk(0, len(data), 0)
    return lines
