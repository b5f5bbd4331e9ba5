"""``[admin]``: who may use the admin API and page (enroll/admin_api.py), fail closed: bearer
token hashes, and admin client certificates from a trust store of the admins' own that shares
no certificate with our CAs or the device-facing anchors, optionally narrowed by fingerprint and
a CRL (RFC 5280 §5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ca.errors import ConfigError
from enroll.config_cas import CAConfig
from enroll.config_toml import check_keys, get, load_certs, load_crl, resolve, secret_hashes, str_list, table


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: who may use the admin API and page (fail closed: no table, no admin)."""

    client_trust: tuple[str, ...] = ()  # trust stores admin client certificates chain to (mTLS)
    tokens: Mapping[str, str] = field(default_factory=dict)  # name -> scrypt hash of a bearer token
    #: When not empty, only admin client certificates with these SHA-256 (of DER) fingerprints
    #: authenticate: removing one revokes that admin.
    allowed_fingerprints: frozenset[str] = frozenset()
    crl: Path | None = None  # CRL of the admin CA: revoked admin certificates are refused


def parse_admin(raw: Mapping[str, Any], base: Path, tls_client_trust: tuple[str, ...],
                trust: Mapping[str, tuple[Path, ...]], profile_est: Mapping[str, Mapping[str, Any]],
                cas: Mapping[str, CAConfig]) -> AdminConfig | None:
    """``[admin]``: absent means no admin API and no admin page (fail closed). ``profile_est``:
    the ``[profiles.NAME.est]`` tables, whose ``client_trust`` stores admins may not share."""
    if "admin" not in raw:
        return None
    a = table(raw, "admin", "")
    check_keys(a, {"client_trust", "tokens", "allowed_fingerprints", "crl"}, "admin")
    client_trust = str_list(a, "client_trust", "admin")
    in_handshake = tls_client_trust or tuple(trust)
    for n in client_trust:
        if n not in trust:
            raise ConfigError("admin.client_trust", f"no trust store named {n!r}")
        if n not in in_handshake:
            raise ConfigError("admin.client_trust", f"trust store {n!r} must also be listed in tls.client_trust")
        for pname, est in profile_est.items():
            if n in (est.get("client_trust") or ()):
                raise ConfigError("admin.client_trust", f"trust store {n!r} also authenticates devices "
                                  f"(profiles.{pname}.est.client_trust); admins need a separate store")
    tokens = secret_hashes(table(a, "tokens", "admin."), "admin.tokens", "hash",
                           "`enroll admin token` or `enroll hash-secret`")
    _check_admin_anchors_separate(raw, base, client_trust, trust, profile_est, cas)
    fingerprints = set()
    for fp in str_list(a, "allowed_fingerprints", "admin"):
        norm = fp.replace(":", "").strip().lower()
        if len(norm) != 64 or any(ch not in "0123456789abcdef" for ch in norm):
            raise ConfigError("admin.allowed_fingerprints",
                              f"{fp!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
        fingerprints.add(norm)
    crl_text = get(a, "crl", str, "admin", None)
    crl = resolve(base, crl_text) if crl_text else None
    if (fingerprints or crl is not None) and not client_trust:
        raise ConfigError("admin.allowed_fingerprints" if fingerprints else "admin.crl",
                          "only applies to admin client certificates: set admin.client_trust")
    if crl is not None:
        load_crl(crl, "admin.crl")
    return AdminConfig(client_trust=client_trust, tokens=tokens, allowed_fingerprints=frozenset(fingerprints),
                       crl=crl)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex (what ``openssl x509 -fingerprint -sha256``
    prints, without colons)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _check_admin_anchors_separate(raw: Mapping[str, Any], base: Path, client_trust: tuple[str, ...],
                                  trust: Mapping[str, tuple[Path, ...]],
                                  profile_est: Mapping[str, Mapping[str, Any]],
                                  cas: Mapping[str, CAConfig]) -> None:
    """No certificate that anchors admin client authentication may also be a CA we issue from or
    an anchor that authenticates devices (EST client_trust, SCEP's RA), compared by certificate
    (SHA-256 of DER), not by store name: otherwise a device certificate would open the admin API."""
    if not client_trust:
        return
    device: dict[str, str] = {}
    for name, c in cas.items():
        for path, key in [(c.cert, f"cas.{name}.cert"), *((p, f"cas.{name}.chain") for p in c.chain)]:
            for cert in load_certs(path, key):
                device.setdefault(fingerprint(cert), f"[cas.{name}] ({path.name})")
    for pname, est in profile_est.items():
        for store in est.get("client_trust") or ():
            for path in trust.get(store, ()):
                for cert in load_certs(path, f"trust.{store}.certs"):
                    device.setdefault(fingerprint(cert), f"trust store {store!r} "
                                      f"(profiles.{pname}.est.client_trust)")
    scep = raw.get("scep")
    ra_cert = scep.get("ra_cert") if isinstance(scep, dict) else None
    if isinstance(ra_cert, str):
        for cert in load_certs(resolve(base, ra_cert), "scep.ra_cert"):
            device.setdefault(fingerprint(cert), "scep.ra_cert")
    for store in client_trust:
        for path in trust[store]:
            for cert in load_certs(path, f"trust.{store}.certs"):
                where = device.get(fingerprint(cert))
                if where is not None:
                    raise ConfigError("admin.client_trust", (
                        f"trust store {store!r} holds {cert.subject.rfc4514_string()} ({path.name}), which is "
                        f"also in {where}: device certificates would authenticate as admins; give admins "
                        "a CA of their own"))
