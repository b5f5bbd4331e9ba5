"""The HTTPS listener's TLS context.

TLS 1.2 minimum; the client certificate is optional at the handshake and verified against the
union of the configured client trust stores, never the system roots. Authorization per label or
profile is decided later in code against the specific store (``Issuer.verify_client_chain``),
because Python's ``ssl`` has one trust store per context (docs/ARCHITECTURE.md, "Authentication").
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.errors import ConfigError
from ca.keys import check_key_file_mode
from enroll.config import Config
from enroll.config_toml import load_certs


#: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305, ECDSA or RSA certificates.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!kRSA:!SHA1"


def server_context(config: Config) -> ssl.SSLContext:
    """The SSLContext for the HTTPS listeners."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if config.tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    # TLS 1.2: forward-secret AEAD suites only (RFC 9325 §4.2); TLS 1.3 suites are all AEAD.
    ctx.set_ciphers(TLS12_CIPHERS)
    check_key_file_mode(config.tls.key, "tls.key")
    try:
        ctx.load_cert_chain(str(config.tls.cert), str(config.tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls.cert", f"cannot load {config.tls.cert} / {config.tls.key}: {exc}") from None
    anchors = client_anchors(config)
    if anchors:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        # Trust stores may hold intermediates (our issuing CA) as anchors, RFC 5280 §6.1.1(d).
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.load_verify_locations(cadata=b"".join(c.public_bytes(serialization.Encoding.PEM)
                                                  for c in anchors).decode())
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_anchors(config: Config) -> list[x509.Certificate]:
    """Every trust anchor a client certificate may chain to, over all trust stores in use."""
    names = config.tls.client_trust or tuple(config.trust)
    out: list[x509.Certificate] = []
    for name in names:
        for p in config.trust.get(name, ()):
            out.extend(load_certs(Path(p), f"trust.{name}.certs"))
    return out
