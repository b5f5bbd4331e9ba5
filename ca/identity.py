"""Who a certificate proves its holder to be: trust follows the lifecycle.

One rule for every protocol (docs/ARCHITECTURE.md, "Authentication"): a client certificate
(EST TLS client authentication, RFC 7030 §3.3.2; a SCEP renewal signer, RFC 8894 §3.3.1.2)
authenticates only when

* it chains to a trust store the label or profile names (RFC 5280 §6.1, done in code: the TLS
  handshake checks the chain against the union of every store, never the label's own);
* if it chains to one of *our* CAs: the ledger holds exactly this certificate, issued and not
  revoked, on hold, retired or expired, and it was issued under a profile that the label lists in
  ``client_profiles``; a certificate of our CA that the ledger does not know is an anomaly;
* if it chains to an external anchor (a manufacturer's IDevID CA) whose store has a CRL
  configured: that CRL is current (fail closed past its nextUpdate) and does not list it.

What it may then ask for is bound by :class:`~ca.api.BindIdentity` (checked by the issuer against
the certificate template it is about to sign).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from ca.api import BindIdentity
from ca.errors import AuthorizationError, PolicyError
from ca.names import sans_of

#: A CRL larger than this is refused (a trust store's CRL is fetched from configuration, but a
#: URL may still answer with anything).
MAX_CRL_BYTES = 16 * 1024 * 1024


class RevocationSource:
    """The CRL of an external trust store (``[trust.NAME] crl``), from a file or an http(s) URL.

    Loaded when first needed and again every ``refresh_seconds`` or once past nextUpdate; a
    failed refresh keeps the last good CRL. :meth:`status` fails closed: no CRL, or one past its
    nextUpdate, means the certificate's revocation status is unknown (RFC 5280 §6.3).
    """

    def __init__(self, source: str, *, refresh_seconds: int = 3600,
                 fetch: Callable[[str], bytes] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.refresh_seconds = refresh_seconds
        self._fetch = fetch or _read_source
        self._clock = clock
        self._crl: x509.CertificateRevocationList | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()
        self.last_error: str | None = None

    @property
    def crl(self) -> x509.CertificateRevocationList | None:
        """The CRL in use (None before the first successful load)."""
        return self._crl

    def _due(self) -> bool:
        if self._crl is None or self._clock() >= self._loaded_at + self.refresh_seconds:
            return True
        nu = self._crl.next_update_utc
        return nu is not None and self._clock() >= nu.timestamp()

    async def refresh(self, force: bool = False) -> None:
        """Load the CRL again if due (or ``force``); errors are remembered, never raised."""
        async with self._lock:
            if not force and not self._due():
                return
            try:
                data = await asyncio.get_running_loop().run_in_executor(None, self._fetch, self.source)
                crl = _load_crl(data)
            except (OSError, ValueError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                self._loaded_at = self._clock()  # retry after refresh_seconds, not on every request
                return
            self._crl, self._loaded_at, self.last_error = crl, self._clock(), None

    async def check(self, cert: x509.Certificate, issuer: x509.Certificate) -> None:
        """Raise :class:`AuthorizationError` unless a current CRL of ``issuer`` clears ``cert``."""
        await self.refresh()
        crl = self._crl
        now = self._clock()
        if crl is None:
            raise AuthorizationError(f"revocation status unknown: CRL {self.source} unavailable"
                                     + (f" ({self.last_error})" if self.last_error else ""))
        nu = crl.next_update_utc
        if nu is None or now > nu.timestamp():
            raise AuthorizationError(f"revocation status unknown: CRL {self.source} is past its nextUpdate")
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise AuthorizationError(f"revocation status unknown: CRL {self.source} is not signed by "
                                     f"{issuer.subject.rfc4514_string()}")
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise AuthorizationError(f"certificate {cert.serial_number:x} is revoked by its issuer's CRL")


def _read_source(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=10) as resp:  # noqa: S310 - scheme checked above
            data: bytes = resp.read(MAX_CRL_BYTES + 1)
    else:
        data = Path(source).read_bytes()
    if len(data) > MAX_CRL_BYTES:
        raise ValueError("CRL too large")
    return data


def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


@dataclass(frozen=True)
class Standing:
    """The ledger facts that decide whether one of our certificates authenticates."""

    serial: int
    profile: str
    revoked: bool
    on_hold: bool
    retired: bool
    not_after: float | None
    known: bool = True
    detail: dict[str, str] = field(default_factory=dict)


def lifecycle_refusal(standing: Standing, cert: x509.Certificate, allowed_profiles: tuple[str, ...],
                      now: dt.datetime) -> str | None:
    """Why one of our certificates may not authenticate now, or None when it may."""
    serial = f"{standing.serial:x}"
    if not standing.known:
        return f"certificate {serial} chains to our CA but is not in the ledger"
    if standing.on_hold:
        return f"certificate {serial} is on hold"
    if standing.revoked:
        return f"certificate {serial} is revoked"
    if standing.retired:
        return f"certificate {serial} belongs to a retired device"
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return f"certificate {serial} is outside its validity period"
    if standing.profile not in allowed_profiles:
        return (f"certificate {serial} was issued under profile {standing.profile!r}, which this label "
                f"does not accept (client_profiles: {', '.join(allowed_profiles) or 'none'})")
    return None


def _values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in name.get_attributes_for_oid(oid)]


def check_binding(bind: BindIdentity, cert: x509.Certificate, subject: x509.Name,
                  sans: list[str]) -> None:
    """Refuse a request whose names are not the authenticating certificate's own.

    ``serialNumber``: the requested subject's serialNumber (X.520) equals the certificate's (a
    bootstrap device gets an LDevID for its own serial number only). ``subject``: the requested
    subject is the certificate's subject and every requested SAN is one of its SANs.
    """
    if bind is BindIdentity.NONE:
        return
    if bind is BindIdentity.SERIAL_NUMBER:
        mine = _values(cert.subject, NameOID.SERIAL_NUMBER)
        asked = _values(subject, NameOID.SERIAL_NUMBER)
        if not mine:
            raise PolicyError("the authenticating certificate has no subject serialNumber to bind to")
        if asked != mine:
            raise PolicyError("the requested subject serialNumber must be the authenticating certificate's "
                              f"({mine[0][:64]})")
        return
    if subject.public_bytes() != cert.subject.public_bytes():
        raise PolicyError("the requested subject must be the authenticating certificate's subject")
    own = set(sans_of(cert.extensions))
    extra = [s for s in sans if s not in own]
    if extra:
        raise PolicyError(f"subjectAltName {extra[0][:64]} is not one of the authenticating certificate's")

