"""``backend = "est"``: enroll as a Registration Authority in front of another EST server
(RFC 7030 §2.5 "Registration Authority", §3.7).

enroll authenticates and authorizes the device with its own profile, then forwards the device's
CSR unchanged (an RA cannot re-sign a request whose key it does not hold) to the upstream's
``/simpleenroll`` over mutual TLS, presenting an RA certificate that carries id-kp-cmcRA
(RFC 6402 §2.10) so the upstream knows an RA vouches for the request (RFC 7030 §3.7). A 202 +
Retry-After (§4.2.3) is followed within a bounded budget; when the budget runs out the device
gets 503 + Retry-After and its retry is forwarded again (the upstream correlates it by the CSR).

The upstream chooses the serial number (:class:`ca.api.IssuesOwnSerial`); the core re-checks
the returned certificate against the template (key, subject, issuer, signature, validity inside
the issuer) and this backend also refuses one whose SANs differ from the profile's decision.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.api import CAChain, CertificateTemplate
from ca.backends import BackendPending, BackendSpec, optional_int, register, require, resolve
from ca.errors import CAError, ConfigError, RejectReason
from ca.keys import load_file_key
from est.client import EnrollmentPending, EstClient
from est.errors import EstError
from est.settings import CMC_RA

log = logging.getLogger("enroll.backend")

KEYS = frozenset({"url", "label", "ra_cert", "ra_key", "trust_anchor", "timeout_seconds",
                  "max_wait_seconds", "max_polls", "retry_after"})


def check_ra_certificate(cert: x509.Certificate, key_name: str) -> None:
    """Refuse an RA certificate without id-kp-cmcRA and clientAuth (RFC 7030 §3.7, §3.3.2)."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise ConfigError(key_name, "the RA certificate has no extended key usage (needs id-kp-cmcRA)") from None
    if CMC_RA not in eku:
        raise ConfigError(key_name, "the RA certificate lacks id-kp-cmcRA (RFC 7030 §3.7)")
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise ConfigError(key_name, "the RA certificate lacks clientAuth (TLS client authentication)")


def _sans(cert_or_exts: x509.Extensions | tuple[tuple[x509.ExtensionType, bool], ...]) -> set[x509.GeneralName]:
    if isinstance(cert_or_exts, x509.Extensions):
        try:
            return set(cert_or_exts.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            return set()
    for ext, _ in cert_or_exts:
        if isinstance(ext, x509.SubjectAlternativeName):
            return set(ext)
    return set()


class UpstreamEstCA:
    """Forwards CSRs to an upstream EST server as its RA (RFC 7030 §2.5, §3.7)."""

    def __init__(self, name: str, chain: CAChain, *, client: Callable[[], EstClient], retry_after: int = 60) -> None:
        """``client`` makes an :class:`est.client.EstClient` for the upstream that presents the RA
        certificate (RFC 7030 §3.3.2) and follows 202s within the configured budget."""
        self.name = name
        self._chain = chain
        self._client = client
        self.retry_after = retry_after

    def issues_own_serial(self) -> bool:
        """The upstream CA picks the serial (:class:`ca.api.IssuesOwnSerial`)."""
        return True

    async def ca_chain(self) -> CAChain:
        """The upstream's chain as configured (``cert`` + ``chain``, RFC 7030 §4.1.1: verified
        out of band, not taken from the upstream's /cacerts at run time)."""
        return self._chain

    async def sign(self, template: CertificateTemplate) -> x509.Certificate:
        """POST the device's CSR, unchanged, to the upstream's /simpleenroll (RFC 7030 §4.2.1)."""
        if template.csr is None:
            raise CAError("the EST upstream backend needs the request's CSR", reason=RejectReason.UNAVAILABLE)
        try:
            async with self._client() as est:
                result = await est.enroll(template.csr)
        except EnrollmentPending as exc:
            raise BackendPending(f"upstream CA {self.name!r} has not decided yet",
                                 retry_after=max(1, exc.retry_after or self.retry_after)) from None
        except EstError as exc:
            status = getattr(exc, "status", 0)
            log.warning(json.dumps({"event": "upstream-est", "ca": self.name, "status": status,
                                    "error": str(exc.detail)[:300]}))
            if isinstance(status, int) and 400 <= status < 500 and status not in (401, 408, 429):
                raise CAError(f"upstream CA {self.name!r} refused the request (HTTP {status})",
                              reason=RejectReason.REJECTED) from None
            raise CAError(f"upstream CA {self.name!r} is unavailable (HTTP {status})",
                          reason=RejectReason.UNAVAILABLE) from None
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:
            log.warning(json.dumps({"event": "upstream-est", "ca": self.name, "error": str(exc)[:300]}))
            raise CAError(f"upstream CA {self.name!r} is unreachable", reason=RejectReason.UNAVAILABLE) from None
        cert = result.certificate
        if _sans(cert.extensions) != _sans(template.extensions):
            log.warning(json.dumps({"event": "upstream-est", "ca": self.name, "serial": f"{cert.serial_number:x}",
                                    "error": "the upstream certificate's SANs differ from the profile's"}))
            raise CAError(f"upstream CA {self.name!r} returned other SANs than the profile decided",
                          reason=RejectReason.UNAVAILABLE)
        return cert


def validate(table: Mapping[str, Any], path: str, base: Path) -> Mapping[str, Any]:
    """The keys of ``backend = "est"``: ``url`` (https), ``label``, ``ra_cert`` / ``ra_key`` (the
    RA's TLS client certificate with id-kp-cmcRA, key mode 0600), ``trust_anchor`` (the upstream
    server's TLS trust anchor, RFC 7030 §3.6.1), ``timeout_seconds``, ``max_wait_seconds`` and
    ``max_polls`` (the 202 budget), ``retry_after``."""
    url = require(table, "url", path, str)
    if not url.startswith("https://"):
        raise ConfigError(f"{path}.url", "must be an https:// URL (the RA authenticates with TLS)")
    label = table.get("label")
    if label is not None and (not isinstance(label, str) or not label or "/" in label):
        raise ConfigError(f"{path}.label", "must be one path segment")
    out: dict[str, Any] = {"url": url, "label": label}
    for key in ("ra_cert", "ra_key", "trust_anchor"):
        p = resolve(base, require(table, key, path, str))
        out[key] = p
    out["timeout_seconds"] = optional_int(table, "timeout_seconds", path, 30, 1, 600)
    out["max_wait_seconds"] = optional_int(table, "max_wait_seconds", path, 30, 0, 600)
    out["max_polls"] = optional_int(table, "max_polls", path, 3, 0, 100)
    out["retry_after"] = optional_int(table, "retry_after", path, 60, 1, 86400)
    return out


def _factory(spec: BackendSpec) -> UpstreamEstCA:
    o = spec.options
    p = f"cas.{spec.name}"
    ra_cert_path: Path = o["ra_cert"]
    try:
        ra_cert = x509.load_pem_x509_certificates(ra_cert_path.read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:
        raise ConfigError(f"{p}.ra_cert", f"{ra_cert_path} cannot be loaded: {exc}") from None
    check_ra_certificate(ra_cert, f"{p}.ra_cert")
    key = load_file_key(o["ra_key"], f"{p}.ra_key")  # refuses group/world-readable files
    if key.public_key() != ra_cert.public_key():
        raise ConfigError(f"{p}.ra_key", "the key does not match ra_cert")
    if not Path(o["trust_anchor"]).is_file():
        raise ConfigError(f"{p}.trust_anchor", f"{o['trust_anchor']} does not exist")
    client = functools.partial(
        EstClient, o["url"], trust_anchor=o["trust_anchor"], label=o["label"], client_cert=ra_cert_path,
        client_key=o["ra_key"], timeout=float(o["timeout_seconds"]), max_polls=int(o["max_polls"]),
        max_wait=float(o["max_wait_seconds"]), min_poll_interval=1.0, max_poll_interval=float(o["max_wait_seconds"]))
    return UpstreamEstCA(spec.name, spec.chain, client=client, retry_after=int(o["retry_after"]))


def register_kind() -> None:
    """Register ``backend = "est"``."""
    register("est", _factory, validate, KEYS)
