"""``[cas.NAME]`` and ``[pkcs11]``: the CAs this server issues from (local file or PKCS#11 keys,
or a registered backend in ca/backends), their CRL/OCSP/AIA URLs (RFC 5280 §4.2.1.13, §4.2.2.1)
and their rollover to a successor (RFC 4210 §4.4)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ca.errors import ConfigError
from ca.pkcs11 import Settings as Pkcs11Settings
from ca.pkcs11 import is_uri as is_pkcs11_uri
from enroll.config_toml import check_keys, get, key_ref, resolve, str_list, table


@dataclass(frozen=True)
class CAConfig:
    """``[cas.NAME]``."""

    name: str
    backend: str
    cert: Path
    key: Path | str  # a PEM file, or an RFC 7512 "pkcs11:" URI (ca/pkcs11.py)
    chain: tuple[Path, ...] = ()
    key_passphrase_env: str | None = None
    crl_url: str | None = None
    crl_validity_hours: int = 24
    ocsp_url: str | None = None
    ca_issuers_url: str | None = None
    ocsp_cert: Path | None = None  # delegated OCSP signer (RFC 6960 §4.2.2.2); else the CA key signs
    ocsp_key: Path | str | None = None  # PEM file or pkcs11: URI
    ocsp_validity_minutes: int = 60
    options: Mapping[str, Any] = field(default_factory=dict)  # a registered backend's own keys (ca/backends)
    next_ca: str | None = None  # rollover: the [cas.NAME] that succeeds this CA (RFC 4210 §4.4)
    rollover_certs: tuple[Path, ...] = ()  # link certificates published while rolling over
    activate_at: dt.datetime | None = None  # from then on the successor issues for this CA's profiles


def parse_cas(raw: Mapping[str, Any], base: Path, base_url: str | None) -> dict[str, CAConfig]:
    """``[cas.NAME]``: at least one CA; its URLs default to ``[server] base_url``; a rollover's
    ``next_ca`` chain is checked (RFC 4210 §4.4)."""
    cas: dict[str, CAConfig] = {}
    for name, c in table(raw, "cas", "", required=True).items():
        p = f"cas.{name}"
        if not isinstance(c, dict):
            raise ConfigError(p, "must be a table")
        backend = get(c, "backend", str, p, "local")
        kind, options = _backend_options(c, backend, p, base)
        check_keys(c, {"backend", "cert", "key", "chain", "key_passphrase_env", "crl_url", "crl_validity_hours",
                        "ocsp_url", "ca_issuers_url", "ocsp_cert", "ocsp_key", "ocsp_validity_minutes",
                        "next_ca", "rollover_certs", "activate_at"} | kind, p)
        ocsp_cert = get(c, "ocsp_cert", str, p, None)
        ocsp_key = get(c, "ocsp_key", str, p, None)
        if (ocsp_cert is None) != (ocsp_key is None):
            raise ConfigError(f"{p}.ocsp_key" if ocsp_key is None else f"{p}.ocsp_cert",
                              "a delegated OCSP signer needs both ocsp_cert and ocsp_key")
        ocsp_minutes = get(c, "ocsp_validity_minutes", int, p, 60)
        if not 1 <= ocsp_minutes <= 7 * 24 * 60:
            raise ConfigError(f"{p}.ocsp_validity_minutes", "must be between 1 and 10080 (one week)")

        def url(key: str, default_path: str) -> str | None:
            # Unset: derived from [server] base_url (only for CAs this server signs CRLs and OCSP
            # for: a remote CA publishes its own); "" leaves the extension out.
            v = get(c, key, str, p, None)  # noqa: B023
            if v is None:
                return f"{base_url}{default_path}" if base_url and backend == "local" else None  # noqa: B023
            if v and not v.startswith(("http://", "https://", "ldap://")):
                raise ConfigError(f"{p}.{key}", "must be an http:// URL (or \"\" for none)")
            return v or None

        cas[name] = CAConfig(
            name=name, backend=backend,
            cert=resolve(base, get(c, "cert", str, p)),
            key=key_ref(base, get(c, "key", str, p), f"{p}.key") if backend == "local" else Path(),
            chain=tuple(resolve(base, x) for x in str_list(c, "chain", p)),
            key_passphrase_env=get(c, "key_passphrase_env", str, p, None),
            crl_url=url("crl_url", f"/crl/{name}.crl"),
            crl_validity_hours=get(c, "crl_validity_hours", int, p, 24),
            ocsp_url=url("ocsp_url", "/ocsp"),
            ca_issuers_url=url("ca_issuers_url", f"/ca/{name}.crt"),
            ocsp_cert=resolve(base, ocsp_cert) if ocsp_cert else None,
            ocsp_key=key_ref(base, ocsp_key, f"{p}.ocsp_key") if ocsp_key else None,
            ocsp_validity_minutes=ocsp_minutes,
            options=options,
            next_ca=get(c, "next_ca", str, p, None),
            rollover_certs=tuple(resolve(base, x) for x in str_list(c, "rollover_certs", p)),
            activate_at=_when(c, "activate_at", p),
        )
    if not cas:
        raise ConfigError("cas", "define at least one CA")
    _check_rollover(cas)
    return cas


def _backend_options(c: Mapping[str, Any], backend: str, p: str, base: Path) -> tuple[set[str], Mapping[str, Any]]:
    """The keys and validated options of a registered backend kind (ca/backends); none for local."""
    if backend == "local":
        return set(), {}
    import enroll.backends  # noqa: F401  (registers the kinds that need network clients)
    from ca.backends import kind

    k = kind(backend, f"{p}.backend")
    return set(k.keys), k.validate({key: v for key, v in c.items() if key in k.keys}, p, base)


def _when(c: Mapping[str, Any], key: str, p: str) -> dt.datetime | None:
    """An RFC 3339 time (TOML datetime or string); a time without offset is UTC."""
    v = c.get(key)
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{p}.{key}", "must be an RFC 3339 time such as 2027-01-01T00:00:00Z") from None
    if not isinstance(v, dt.datetime):
        raise ConfigError(f"{p}.{key}", "must be an RFC 3339 time such as 2027-01-01T00:00:00Z")
    return v if v.tzinfo is not None else v.replace(tzinfo=dt.timezone.utc)


def _check_rollover(cas: Mapping[str, CAConfig]) -> None:
    """``next_ca`` names another local CA; ``activate_at`` needs a successor; no cycles."""
    for name, c in cas.items():
        p = f"cas.{name}"
        if c.next_ca is None:
            if c.activate_at is not None or c.rollover_certs:
                raise ConfigError(f"{p}.next_ca", "activate_at and rollover_certs need next_ca")
            continue
        nxt = cas.get(c.next_ca)
        if nxt is None or c.next_ca == name:
            raise ConfigError(f"{p}.next_ca", f"no other CA named {c.next_ca!r}")
        if c.backend != "local" or nxt.backend != "local":
            raise ConfigError(f"{p}.next_ca", "a rollover is between two local CAs")
        seen = {name}
        while nxt is not None and nxt.next_ca is not None:
            if nxt.name in seen:
                raise ConfigError(f"{p}.next_ca", "the successors form a cycle")
            seen.add(nxt.name)
            nxt = cas.get(nxt.next_ca)


def active_ca(cas: Mapping[str, CAConfig], name: str, now: dt.datetime) -> str:
    """The CA that issues for profiles of ``name`` at ``now``: its successor once activated
    (``activate_at`` passed), transitively (RFC 4210 §4.4 key update)."""
    for _ in range(len(cas)):
        c = cas[name]
        if c.next_ca is None or c.activate_at is None or now < c.activate_at:
            return name
        name = c.next_ca
    return name


def parse_pkcs11(raw: Mapping[str, Any], base: Path, cas: Mapping[str, CAConfig]) -> Pkcs11Settings | None:
    """``[pkcs11]``: module (the PKCS#11 shared library), pin_env or pin_file; required when a CA
    key is an RFC 7512 ``pkcs11:`` URI."""
    settings = _pkcs11_settings(raw, base)
    if settings is None:
        for name, c in cas.items():
            for field_name, ref in (("key", c.key), ("ocsp_key", c.ocsp_key)):
                if is_pkcs11_uri(ref):
                    raise ConfigError(f"cas.{name}.{field_name}", "a pkcs11: URI needs [pkcs11] module")
    return settings


def _pkcs11_settings(raw: Mapping[str, Any], base: Path) -> Pkcs11Settings | None:
    """``[pkcs11]``: module (the PKCS#11 shared library), pin_env or pin_file."""
    t = table(raw, "pkcs11", "")
    if not t:
        return None
    check_keys(t, {"module", "pin_env", "pin_file"}, "pkcs11")
    pin_env = get(t, "pin_env", str, "pkcs11", None)
    pin_file = get(t, "pin_file", str, "pkcs11", None)
    if pin_env and pin_file:
        raise ConfigError("pkcs11.pin_file", "set pin_env or pin_file, not both")
    return Pkcs11Settings(module=str(resolve(base, get(t, "module", str, "pkcs11"))), pin_env=pin_env or None,
                          pin_file=resolve(base, pin_file) if pin_file else None)
