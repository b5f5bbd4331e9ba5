"""Field quirks of EST clients, one small named function each (docs/ARCHITECTURE.md, convention 6).

RFC 8951 §3.1 lets a server lay out its base64 as it likes, but real clients disagree: strongSwan
5.9.8 fails on any line break, while libest's client decodes with OpenSSL's base64 filter in
line mode and reads one long line as nothing. No single layout serves both, so the answer follows
the client, recognised by its ``User-Agent`` (RFC 9110 §10.1.5). Clients without a quirk get RFC
8951's unwrapped form; an explicit ``[est] base64_line_length`` overrides every quirk.

Pure functions: no aiohttp, no asyncio.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from est.wire import UNWRAPPED, Base64Framing

#: libest's own estserver lays out its answers this way (64 columns, LF, final LF).
LIBEST_FRAMING = Base64Framing(64, b"\n")

_LIBEST = re.compile(r"^\s*libest(?:[\s/]|$)", re.IGNORECASE)


def is_libest(user_agent: str | None) -> bool:
    """True for a client built on cisco/libest: its requests carry ``User-Agent: libest
    <version>`` (``libest 3.2.0p`` from estclient 3.2.0)."""
    return bool(user_agent) and _LIBEST.match(user_agent or "") is not None


def libest_line_mode_base64(user_agent: str | None) -> Base64Framing | None:
    """Quirk ok/libest-line-mode-base64.

    Client: libest's client (``estclient`` 3.2.0p and every application on the library).
    Symptom: it decodes /cacerts, /simpleenroll, /simplereenroll and the /serverkeygen
    certificate with OpenSSL's BIO base64 filter in line mode, which discards a line longer than
    its 1 KB buffer; one unwrapped line decodes to nothing ("Failed to build PKCS7 structure from
    received buffer", "no certificate") or, with a final newline, to a truncated prefix.
    ``openssl base64 -d`` (without ``-A``) behaves the same. Answer with 64-column lines, LF
    and a final LF, as libest's own server does.
    """
    return LIBEST_FRAMING if is_libest(user_agent) else None


def libest_serverkeygen_rsa_key(user_agent: str | None, key_types: Sequence[str]) -> str | None:
    """Quirk ok/libest-serverkeygen-rsa-key.

    Client: libest's client. Symptom: it checks a /serverkeygen answer by loading the key part
    as an RSA key only (OpenSSL ``d2i_PrivateKey(EVP_PKEY_RSA, ...)``) and refuses a key part
    shorter than 256 characters; an EC key (P-256 PKCS#8 is 184 base64 characters) fails with
    EST_ERR_ZERO_LENGTH_BUF or a key/certificate validation error. Generate the profile's first
    RSA key type for it; a profile that allows no RSA key keeps its own first type (libest
    cannot use that profile's /serverkeygen).
    """
    if not is_libest(user_agent):
        return None
    return next((kt for kt in key_types if kt.startswith("rsa-")), None)


@dataclass(frozen=True)
class ClientQuirks:
    """What an answer to this client must look like."""

    framing: Base64Framing = UNWRAPPED
    serverkeygen_key_type: str | None = None  # None: the profile's first key type


def for_client(user_agent: str | None, key_types: Sequence[str] = (),
               configured_line_length: int | None = None) -> ClientQuirks:
    """The quirks that apply to a client. ``configured_line_length`` is ``[est]
    base64_line_length`` when set: it then fixes the layout for every client (CRLF lines,
    RFC 2045 §6.8), quirks or not."""
    if configured_line_length is not None:
        framing = Base64Framing(configured_line_length, b"\r\n")
    else:
        framing = libest_line_mode_base64(user_agent) or UNWRAPPED
    return ClientQuirks(framing, libest_serverkeygen_rsa_key(user_agent, key_types))
