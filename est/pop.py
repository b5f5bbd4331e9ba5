"""PoP linking (RFC 7030 §3.5): a CSR proves it was made on the TLS connection that carries it by
holding that connection's channel binding as its challengePassword. Decided here from the TLS
facts est/http.py extracted; no aiohttp, no asn1crypto.
"""

from __future__ import annotations

import base64
import hmac
from typing import TYPE_CHECKING

from cryptography import x509

from est import asn1
from est.errors import BadRequest
from est.settings import CMC_RA, PopMode

if TYPE_CHECKING:
    from est.service import TlsInfo


def has_cmc_ra(cert: x509.Certificate) -> bool:
    """True for an EST RA certificate (id-kp-cmcRA, RFC 7030 §3.7 / RFC 6402 §2.10)."""
    try:
        return CMC_RA in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return False


def check_pop(mode: PopMode, csr: x509.CertificateSigningRequest, tls: TlsInfo,
              authenticating: x509.Certificate | None) -> None:
    """Under :attr:`PopMode.TLS_UNIQUE`, challengePassword must equal base64 of the connection's
    channel binding: tls-unique on TLS 1.2 (RFC 5929 §3), tls-exporter on TLS 1.3 (RFC 9266 §2);
    skipped for an EST RA (id-kp-cmcRA), which re-signs CSRs it relays (RFC 7030 §3.7), when its
    certificate is what must authenticate the request (``authenticating``: the core refuses it
    otherwise). Raises :class:`~est.errors.BadRequest`."""
    if mode is PopMode.OFF:
        return
    if authenticating is not None and has_cmc_ra(authenticating):
        return
    if tls.via_proxy:
        raise BadRequest("this label requires PoP linking (RFC 7030 §3.5), which cannot be checked through a "
                         "TLS-terminating proxy: the client's TLS session ends at the proxy; use TLS passthrough")
    if tls.version == "TLSv1.3" and tls.tls_exporter is not None:
        binding, kind = tls.tls_exporter, "tls-exporter"
    elif tls.version == "TLSv1.2" and tls.tls_unique is not None:
        binding, kind = tls.tls_unique, "tls-unique"
    else:
        raise BadRequest(
            f"this label requires PoP linking (RFC 7030 §3.5) but the connection is {tls.version}: "
            "tls-unique exists only up to TLS 1.2 and this server's TLS stack cannot export "
            "RFC 9266 tls-exporter keying material; reconnect with TLS 1.2")
    sent = asn1.challenge_password(csr)
    expected = base64.b64encode(binding)
    if sent is None:
        raise BadRequest(f"PoP linking required: the CSR lacks challengePassword = base64({kind})")
    if not hmac.compare_digest(sent.strip(), expected):
        raise BadRequest("PoP linking failed: challengePassword does not match this TLS session's "
                         f"{kind} (the CSR must be built on the connection that sends it)")
