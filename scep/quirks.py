"""Field quirks of SCEP clients, one small named function each (docs/ARCHITECTURE.md, convention 6).

RFC 8894 §4.1: a GET PKIOperation carries ``message=`` as base64 (standard alphabet) and then
URL-escaped. Real clients deviate, and :func:`decode_get_message` undoes every deviation in a
fixed order. Pure functions: no aiohttp, no asyncio.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote_to_bytes

MAX_GET_MESSAGE = 64 * 1024  # base64 characters; certmonger sends ~3.7 KB


def raw_query_param(raw_query: str, name: str) -> str | None:
    """The still-escaped value of ``name`` in a raw query string, without form decoding.

    Form decoding (``parse_qs``, yarl's ``URL.query``) turns '+' into a space, which destroys
    base64; so the SCEP GET message is taken from the raw query (RFC 8894 §4.1: GET messages are base64 in the query, encoded inconsistently in the field).
    Parameter names are compared case-insensitively (old Cisco images send ``Operation``).
    """
    for part in raw_query.split("&"):
        key, sep, value = part.partition("=")
        if unquote_to_bytes(key).decode("latin-1").lower() == name.lower():
            return value if sep else ""
    return None


def percent_decode_keeping_plus(value: str) -> str:
    """Percent-decode without mapping '+' to a space.

    Client: macOS/iOS (smallstep/certificates PR #1570) leaves '+' and '/' unescaped and only
    escapes '='. Symptom: a form decoder reads '+' as a space and the base64 breaks.
    """
    return unquote_to_bytes(value).decode("latin-1")


def space_as_plus(text: str) -> str:
    """Turn spaces back into '+'.

    Client: any client behind a proxy or framework that form-decoded the query first.
    Symptom: a base64 message with spaces where '+' belongs. Base64 never contains a real space.
    """
    return text.replace(" ", "+")


_WHITESPACE = re.compile(r"[\r\n\t\v\f]+")


def drop_line_breaks(text: str) -> str:
    """Drop CR/LF/TAB inside the base64.

    Client: sscep and Cisco IOS insert ``%0A`` every 64 characters (micromdm/scep#100,
    sscep#59). Symptom: "illegal base64 data".
    """
    return _WHITESPACE.sub("", text)


def urlsafe_to_standard_alphabet(text: str) -> str:
    """Map the URL-safe base64 alphabet ('-', '_') to the standard one ('+', '/').

    Client: Cisco IOS-XE via some stacks (smallstep/certificates #916/#917) and hand-written
    clients that use ``urlsafe_b64encode``. Symptom: invalid characters '-'/'_'.
    """
    return text.replace("-", "+").replace("_", "/")


def repad_base64(text: str) -> str:
    """Add missing '=' padding.

    Client: clients that strip '=' to avoid escaping it (URL-safe encoders, some MDMs).
    Symptom: "incorrect padding".
    """
    text = text.rstrip("=")
    return text + "=" * (-len(text) % 4)


def decode_get_message(raw_query: str) -> bytes | None:
    """The pkiMessage DER of a GET PKIOperation, tolerant of every quirk above.

    Returns None when there is no ``message`` parameter; raises ValueError when it is not base64.
    """
    raw = raw_query_param(raw_query, "message")
    if raw is None:
        return None
    if len(raw) > MAX_GET_MESSAGE * 3:
        raise ValueError("message parameter too long")
    text = percent_decode_keeping_plus(raw)
    text = space_as_plus(text)
    text = drop_line_breaks(text)
    text = urlsafe_to_standard_alphabet(text)
    text = repad_base64(text)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("message parameter is not base64") from None


def encode_get_message(der: bytes) -> str:
    """RFC 8894 §4.1: standard base64, then percent-escape '+', '/' and '=' (our client)."""
    b64 = base64.b64encode(der).decode("ascii")
    return b64.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
