"""The one TOML config file, validated up front with errors that name the key.

Paths inside the file are relative to the file's own directory. Protocol-specific tables
(``[est]``, ``[scep]``, ``[profiles.NAME.est]``, ``[profiles.NAME.scep]``) are kept raw here and
validated by ``enroll.est_mount`` / ``enroll.scep_mount``.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ca.errors import ConfigError
from ca.pkcs11 import Settings as Pkcs11Settings
from ca.pkcs11 import is_uri as is_pkcs11_uri
from ca.pkcs11 import parse_uri as parse_pkcs11_uri
from ca.profile import Profile, validate_profile


@dataclass(frozen=True)
class Listen:
    """One listening address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``."""

    https: tuple[Listen, ...]
    http: tuple[Listen, ...]
    max_body_bytes: int = 256 * 1024
    workers: int = 1
    base_url: str | None = None  # where relying parties reach /crl, /ocsp, /ca (plain HTTP)
    metrics_on_http: bool = False  # /metrics also on the plain-HTTP listener (always on HTTPS)
    metrics_token_env: str | None = None  # environment variable holding the /metrics bearer token
    # A TLS-terminating load balancer (enroll/proxy.py): the peers whose X-Forwarded-For and
    # client-certificate header are believed, and that header's name; everyone else's are dropped.
    trusted_proxies: tuple[str, ...] = ()
    client_cert_header: str | None = None


@dataclass(frozen=True)
class TLSConfig:
    """``[tls]``: the server certificate and the union of client trust anchors."""

    cert: Path
    key: Path
    client_trust: tuple[str, ...] = ()
    min_version: str = "1.2"
    # "stdlib" (Python's ssl) or "pyopenssl" (enroll/tls_openssl.py: RFC 9266 tls-exporter on TLS 1.3)
    engine: str = "stdlib"


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


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: who may use the admin API and page (fail closed: no table, no admin)."""

    client_trust: tuple[str, ...] = ()  # trust stores admin client certificates chain to (mTLS)
    tokens: Mapping[str, str] = field(default_factory=dict)  # name -> scrypt hash of a bearer token
    #: When not empty, only admin client certificates with these SHA-256 (of DER) fingerprints
    #: authenticate: removing one revokes that admin.
    allowed_fingerprints: frozenset[str] = frozenset()
    crl: Path | None = None  # CRL of the admin CA: revoked admin certificates are refused


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    path: Path
    base_dir: Path
    server: ServerConfig
    tls: TLSConfig
    ledger_url: str
    cas: Mapping[str, CAConfig]
    users: Mapping[str, str]
    trust: Mapping[str, tuple[Path, ...]]
    profiles: Mapping[str, Profile]
    est: Mapping[str, Any] = field(default_factory=dict)
    scep: Mapping[str, Any] = field(default_factory=dict)
    log_level: str = "info"
    admin: AdminConfig | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    trust_crl: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # store -> (file or URL, refresh s)
    pkcs11: Pkcs11Settings | None = None  # [pkcs11]: the module keys named by pkcs11: URIs live in

    def resolve(self, p: str | Path) -> Path:
        """A path from the config, relative to the config file's directory."""
        return resolve(self.base_dir, p)


def key_ref(base: Path, value: str, key: str) -> Path | str:
    """A key setting: an RFC 7512 ``pkcs11:`` URI (validated, kept as text) or a file path."""
    if is_pkcs11_uri(value):
        parse_pkcs11_uri(value, key)
        return value
    return resolve(base, value)


def _pkcs11_settings(raw: Mapping[str, Any], base: Path) -> Pkcs11Settings | None:
    """``[pkcs11]``: module (the PKCS#11 shared library), pin_env or pin_file."""
    t = _table(raw, "pkcs11", "")
    if not t:
        return None
    _check_keys(t, {"module", "pin_env", "pin_file"}, "pkcs11")
    pin_env = _get(t, "pin_env", str, "pkcs11", None)
    pin_file = _get(t, "pin_file", str, "pkcs11", None)
    if pin_env and pin_file:
        raise ConfigError("pkcs11.pin_file", "set pin_env or pin_file, not both")
    return Pkcs11Settings(module=str(resolve(base, _get(t, "module", str, "pkcs11"))), pin_env=pin_env or None,
                          pin_file=resolve(base, pin_file) if pin_file else None)


def resolve(base: Path, p: str | Path) -> Path:
    """``p`` made absolute against ``base``."""
    q = Path(p)
    return q if q.is_absolute() else (base / q)


def _table(d: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> Mapping[str, Any]:
    v = d.get(key)
    if v is None:
        if required:
            raise ConfigError(f"{path}{key}", "missing table")
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{path}{key}", "must be a table")
    return v


def _check_keys(d: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{path}.{k}" if path else k,
                              f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _get(d: Mapping[str, Any], key: str, typ: type | tuple[type, ...], path: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ConfigError(f"{path}.{key}", "missing")
        return default
    v = d[key]
    if typ is int and isinstance(v, bool) or not isinstance(v, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"{path}.{key}", f"must be {names}, got {type(v).__name__}")
    return v


def _str_list(d: Mapping[str, Any], key: str, path: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    v = d.get(key, list(default))
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{path}.{key}", "must be a list of strings")
    return tuple(v)


def parse_listen(text: str, key: str) -> Listen:
    """``127.0.0.1:8443`` or ``[::1]:8443``."""
    try:
        if text.startswith("["):
            host, _, port = text[1:].partition("]:")
        else:
            host, _, port = text.rpartition(":")
        n = int(port)
        if not host or not 0 <= n < 65536:
            raise ValueError
        return Listen(host, n)
    except ValueError:
        raise ConfigError(key, f"{text!r} is not HOST:PORT (use [::1]:PORT for IPv6)") from None


def _profile(name: str, t: Mapping[str, Any], cas: Mapping[str, CAConfig]) -> Profile:
    path = f"profiles.{name}"
    _check_keys(t, {"ca", "validity_days", "key_types", "key_usage", "extended_key_usage", "subject", "san",
                    "approval", "retry_after", "renewal_window_days", "allow_legacy_digests", "est", "scep",
                    "description", "crl_distribution_point", "authority_info_access"}, path)
    ca = _get(t, "ca", str, path)
    if ca not in cas:
        raise ConfigError(f"{path}.ca", f"no CA named {ca!r} (defined: {', '.join(cas) or 'none'})")
    subj = _table(t, "subject", path + ".")
    _check_keys(subj, {"allow", "require", "force", "patterns", "allow_path_separators"}, f"{path}.subject")
    force = _table(subj, "force", f"{path}.subject.")
    for k, v in force.items():
        if not isinstance(v, str):
            raise ConfigError(f"{path}.subject.force.{k}", "must be a string")
    patterns = _table(subj, "patterns", f"{path}.subject.")
    for k, v in patterns.items():
        if not isinstance(v, str):
            raise ConfigError(f"{path}.subject.patterns.{k}", "must be a string (a regular expression)")
    san = _table(t, "san", path + ".")
    _check_keys(san, {"allow", "dns_suffixes", "max", "allow_wildcards"}, f"{path}.san")
    window = t.get("renewal_window_days")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ConfigError(f"{path}.renewal_window_days", "must be a positive integer")
    defaults = Profile(name=name, ca=ca)
    p = Profile(
        name=name,
        ca=ca,
        validity_days=_get(t, "validity_days", int, path, defaults.validity_days),
        key_types=_str_list(t, "key_types", path, defaults.key_types),
        key_usage=_str_list(t, "key_usage", path, defaults.key_usage),
        extended_key_usage=_str_list(t, "extended_key_usage", path, defaults.extended_key_usage),
        subject_allow=_str_list(subj, "allow", f"{path}.subject", defaults.subject_allow),
        subject_require=_str_list(subj, "require", f"{path}.subject", defaults.subject_require),
        subject_force=tuple(force.items()),
        subject_patterns=tuple(patterns.items()),
        subject_allow_path_separators=_get(subj, "allow_path_separators", bool, f"{path}.subject", False),
        san_allow=_str_list(san, "allow", f"{path}.san", defaults.san_allow),
        san_dns_suffixes=_str_list(san, "dns_suffixes", f"{path}.san"),
        san_max=_get(san, "max", int, f"{path}.san", defaults.san_max),
        san_allow_wildcards=_get(san, "allow_wildcards", bool, f"{path}.san", False),
        approval=_get(t, "approval", str, path, "auto"),
        retry_after=_get(t, "retry_after", int, path, defaults.retry_after),
        renewal_window_days=window,
        allow_legacy_digests=_get(t, "allow_legacy_digests", bool, path, False),
        crl_distribution_point=_get(t, "crl_distribution_point", bool, path, True),
        authority_info_access=_get(t, "authority_info_access", bool, path, True),
        est=_table(t, "est", path + "."),
        scep=_table(t, "scep", path + "."),
    )
    validate_profile(p)
    return p


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` naming the key."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found (run `enroll init` to create one)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    return parse_config(raw, path)


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


def _trusted_proxies(values: tuple[str, ...]) -> tuple[str, ...]:
    """Addresses or CIDR networks (``10.0.0.0/24``, ``::1``); host bits set are an error."""
    import ipaddress

    for value in values:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ConfigError("server.trusted_proxies", f"{value!r} is not an address or network: {exc}") from None
    return values


def _header_name(value: str | None) -> str | None:
    """An HTTP field name (RFC 9110 §5.1 token) that is not one the server itself relies on."""
    import re

    if value is None:
        return None
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ConfigError("server.client_cert_header", f"{value!r} is not an HTTP header name")
    if value.lower() in ("authorization", "host", "content-type", "content-length", "x-forwarded-for",
                         "x-forwarded-proto", "transfer-encoding", "cookie"):
        raise ConfigError("server.client_cert_header", f"{value!r} is a header with another meaning")
    return value


def parse_config(raw: Mapping[str, Any], path: Path) -> Config:
    """Validate an already-parsed TOML document."""
    base = path.parent
    _check_keys(raw, {"server", "tls", "ledger", "log", "cas", "users", "trust", "profiles", "est", "scep",
                      "admin", "pkcs11"}, "")
    s = _table(raw, "server", "", required=True)
    _check_keys(s, {"https", "http", "max_body_bytes", "workers", "base_url", "metrics_on_http",
                    "metrics_token_env", "trusted_proxies", "client_cert_header"}, "server")
    base_url = _get(s, "base_url", str, "server", None)
    if base_url is not None:
        base_url = base_url.rstrip("/")
        if not base_url.startswith(("http://", "https://")) or "?" in base_url or "#" in base_url:
            raise ConfigError("server.base_url", "must be an http:// or https:// URL without query")
    server = ServerConfig(
        https=tuple(parse_listen(x, "server.https") for x in _str_list(s, "https", "server")),
        http=tuple(parse_listen(x, "server.http") for x in _str_list(s, "http", "server")),
        max_body_bytes=_get(s, "max_body_bytes", int, "server", 256 * 1024),
        workers=_get(s, "workers", int, "server", 1),
        base_url=base_url,
        metrics_on_http=_get(s, "metrics_on_http", bool, "server", False),
        metrics_token_env=_get(s, "metrics_token_env", str, "server", None) or None,
        trusted_proxies=_trusted_proxies(_str_list(s, "trusted_proxies", "server")),
        client_cert_header=_header_name(_get(s, "client_cert_header", str, "server", None) or None),
    )
    if server.max_body_bytes < 1024:
        raise ConfigError("server.max_body_bytes", "must be at least 1024")
    if not 1 <= server.workers <= 256:
        raise ConfigError("server.workers", "must be between 1 and 256")
    if not server.https and not server.http:
        raise ConfigError("server", "listens nowhere: set https and/or http")
    if server.client_cert_header and not server.trusted_proxies:
        raise ConfigError("server.client_cert_header", "is honoured only from trusted_proxies: list the proxies")

    t = _table(raw, "tls", "", required=bool(server.https))
    _check_keys(t, {"cert", "key", "client_trust", "min_version", "engine"}, "tls")
    tls = TLSConfig(
        cert=resolve(base, _get(t, "cert", str, "tls", "")) if t else Path(),
        key=resolve(base, _get(t, "key", str, "tls", "")) if t else Path(),
        client_trust=_str_list(t, "client_trust", "tls"),
        min_version=_get(t, "min_version", str, "tls", "1.2"),
        engine=_get(t, "engine", str, "tls", "stdlib"),
    )
    if tls.min_version not in ("1.2", "1.3"):
        raise ConfigError("tls.min_version", "must be \"1.2\" or \"1.3\"")
    if tls.engine not in ("stdlib", "pyopenssl"):
        raise ConfigError("tls.engine", "must be \"stdlib\" or \"pyopenssl\"")

    led = _table(raw, "ledger", "")
    _check_keys(led, {"url"}, "ledger")
    ledger_url = _get(led, "url", str, "ledger", "sqlite:///var/enroll.db")
    if ledger_url.startswith("sqlite:///") and not ledger_url.startswith("sqlite:////"):
        rel = ledger_url[len("sqlite:///"):]
        ledger_url = "sqlite:///" + str(resolve(base, rel))
    elif not ledger_url.startswith(("sqlite:", "postgresql://", "postgres://", "postgresql+asyncpg://")):
        raise ConfigError("ledger.url", "must be sqlite:///PATH or postgresql://USER@HOST/DB")

    cas: dict[str, CAConfig] = {}
    for name, c in _table(raw, "cas", "", required=True).items():
        p = f"cas.{name}"
        if not isinstance(c, dict):
            raise ConfigError(p, "must be a table")
        backend = _get(c, "backend", str, p, "local")
        kind, options = _backend_options(c, backend, p, base)
        _check_keys(c, {"backend", "cert", "key", "chain", "key_passphrase_env", "crl_url", "crl_validity_hours",
                        "ocsp_url", "ca_issuers_url", "ocsp_cert", "ocsp_key", "ocsp_validity_minutes",
                        "next_ca", "rollover_certs", "activate_at"} | kind, p)
        ocsp_cert = _get(c, "ocsp_cert", str, p, None)
        ocsp_key = _get(c, "ocsp_key", str, p, None)
        if (ocsp_cert is None) != (ocsp_key is None):
            raise ConfigError(f"{p}.ocsp_key" if ocsp_key is None else f"{p}.ocsp_cert",
                              "a delegated OCSP signer needs both ocsp_cert and ocsp_key")
        ocsp_minutes = _get(c, "ocsp_validity_minutes", int, p, 60)
        if not 1 <= ocsp_minutes <= 7 * 24 * 60:
            raise ConfigError(f"{p}.ocsp_validity_minutes", "must be between 1 and 10080 (one week)")

        def url(key: str, default_path: str) -> str | None:
            # Unset: derived from [server] base_url (only for CAs this server signs CRLs and OCSP
            # for: a remote CA publishes its own); "" leaves the extension out.
            v = _get(c, key, str, p, None)  # noqa: B023
            if v is None:
                return f"{base_url}{default_path}" if base_url and backend == "local" else None  # noqa: B023
            if v and not v.startswith(("http://", "https://", "ldap://")):
                raise ConfigError(f"{p}.{key}", "must be an http:// URL (or \"\" for none)")
            return v or None

        cas[name] = CAConfig(
            name=name, backend=backend,
            cert=resolve(base, _get(c, "cert", str, p)),
            key=key_ref(base, _get(c, "key", str, p), f"{p}.key") if backend == "local" else Path(),
            chain=tuple(resolve(base, x) for x in _str_list(c, "chain", p)),
            key_passphrase_env=_get(c, "key_passphrase_env", str, p, None),
            crl_url=url("crl_url", f"/crl/{name}.crl"),
            crl_validity_hours=_get(c, "crl_validity_hours", int, p, 24),
            ocsp_url=url("ocsp_url", "/ocsp"),
            ca_issuers_url=url("ca_issuers_url", f"/ca/{name}.crt"),
            ocsp_cert=resolve(base, ocsp_cert) if ocsp_cert else None,
            ocsp_key=key_ref(base, ocsp_key, f"{p}.ocsp_key") if ocsp_key else None,
            ocsp_validity_minutes=ocsp_minutes,
            options=options,
            next_ca=_get(c, "next_ca", str, p, None),
            rollover_certs=tuple(resolve(base, x) for x in _str_list(c, "rollover_certs", p)),
            activate_at=_when(c, "activate_at", p),
        )
    if not cas:
        raise ConfigError("cas", "define at least one CA")
    _check_rollover(cas)

    users: dict[str, str] = {}
    for name, u in _table(raw, "users", "").items():
        p = f"users.{name}"
        if not isinstance(u, dict):
            raise ConfigError(p, "must be a table")
        _check_keys(u, {"password_hash"}, p)
        from ca.authz import is_secret_hash

        h = _get(u, "password_hash", str, p)
        if not is_secret_hash(h):
            raise ConfigError(f"{p}.password_hash", "must be a hash from `enroll hash-secret` (scrypt$...)")
        users[name] = h

    trust: dict[str, tuple[Path, ...]] = {}
    trust_crl: dict[str, tuple[str, int]] = {}
    for name, tt in _table(raw, "trust", "").items():
        p = f"trust.{name}"
        if not isinstance(tt, dict):
            raise ConfigError(p, "must be a table")
        _check_keys(tt, {"certs", "crl", "crl_refresh_seconds"}, p)
        trust[name] = tuple(resolve(base, x) for x in _str_list(tt, "certs", p))
        if "crl" in tt:
            src = _get(tt, "crl", str, p)
            if not src.startswith(("http://", "https://")):
                src = str(resolve(base, src))
            refresh = tt.get("crl_refresh_seconds", 3600)
            if not isinstance(refresh, int) or isinstance(refresh, bool) or not 60 <= refresh <= 7 * 86400:
                raise ConfigError(f"{p}.crl_refresh_seconds", "must be an integer from 60 to 604800")
            trust_crl[name] = (src, refresh)
        elif "crl_refresh_seconds" in tt:
            raise ConfigError(f"{p}.crl_refresh_seconds", "only with crl")
    for n in tls.client_trust:
        if n not in trust:
            raise ConfigError("tls.client_trust", f"no trust store named {n!r}")

    profiles = {name: _profile(name, pt if isinstance(pt, dict) else {}, cas)
                for name, pt in _table(raw, "profiles", "", required=True).items()}
    if not profiles:
        raise ConfigError("profiles", "define at least one profile")
    # CA rollover: once a successor is activated, the profiles of the old CA issue from it
    # (`enroll ca activate`); the old CA stays configured for its CRLs, OCSP and renewals.
    now = dt.datetime.now(dt.timezone.utc)
    profiles = {name: pr if active_ca(cas, pr.ca, now) == pr.ca else replace(pr, ca=active_ca(cas, pr.ca, now))
                for name, pr in profiles.items()}
    lg = _table(raw, "log", "")
    _check_keys(lg, {"level"}, "log")
    level = _get(lg, "level", str, "log", "info")
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log.level", "must be debug, info, warning or error")
    pkcs11 = _pkcs11_settings(raw, base)
    if pkcs11 is None:
        for name, c in cas.items():
            for field_name, ref in (("key", c.key), ("ocsp_key", c.ocsp_key)):
                if is_pkcs11_uri(ref):
                    raise ConfigError(f"cas.{name}.{field_name}", "a pkcs11: URI needs [pkcs11] module")
    return Config(path=path, base_dir=base, server=server, tls=tls, ledger_url=ledger_url, cas=cas, users=users,
                  trust=trust, profiles=profiles, est=_table(raw, "est", ""), scep=_table(raw, "scep", ""),
                  log_level=level, admin=_admin(raw, base, tls, trust, profiles, cas), raw=raw,
                  trust_crl=trust_crl, pkcs11=pkcs11)


def _admin(raw: Mapping[str, Any], base: Path, tls: TLSConfig, trust: Mapping[str, tuple[Path, ...]],
           profiles: Mapping[str, Profile], cas: Mapping[str, CAConfig]) -> AdminConfig | None:
    """``[admin]``: absent means no admin API and no admin page (fail closed)."""
    if "admin" not in raw:
        return None
    a = _table(raw, "admin", "")
    _check_keys(a, {"client_trust", "tokens", "allowed_fingerprints", "crl"}, "admin")
    client_trust = _str_list(a, "client_trust", "admin")
    in_handshake = tls.client_trust or tuple(trust)
    for n in client_trust:
        if n not in trust:
            raise ConfigError("admin.client_trust", f"no trust store named {n!r}")
        if n not in in_handshake:
            raise ConfigError("admin.client_trust", f"trust store {n!r} must also be listed in tls.client_trust")
        for prof in profiles.values():
            if n in (prof.est.get("client_trust") or ()):
                raise ConfigError("admin.client_trust", f"trust store {n!r} also authenticates devices "
                                  f"(profiles.{prof.name}.est.client_trust); admins need a separate store")
    tokens: dict[str, str] = {}
    from ca.authz import is_secret_hash

    for name, t in _table(a, "tokens", "admin.").items():
        p = f"admin.tokens.{name}"
        if not isinstance(t, dict):
            raise ConfigError(p, "must be a table")
        _check_keys(t, {"hash"}, p)
        h = _get(t, "hash", str, p)
        if not is_secret_hash(h):
            raise ConfigError(f"{p}.hash", "must be a hash from `enroll admin token` or `enroll hash-secret`")
        tokens[name] = h
    _check_admin_anchors_separate(raw, base, client_trust, trust, profiles, cas)
    fingerprints = set()
    for fp in _str_list(a, "allowed_fingerprints", "admin"):
        norm = fp.replace(":", "").strip().lower()
        if len(norm) != 64 or any(ch not in "0123456789abcdef" for ch in norm):
            raise ConfigError("admin.allowed_fingerprints",
                              f"{fp!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
        fingerprints.add(norm)
    crl_text = _get(a, "crl", str, "admin", None)
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
                                  trust: Mapping[str, tuple[Path, ...]], profiles: Mapping[str, Profile],
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
    for prof in profiles.values():
        for store in prof.est.get("client_trust") or ():
            for path in trust.get(store, ()):
                for cert in load_certs(path, f"trust.{store}.certs"):
                    device.setdefault(fingerprint(cert), f"trust store {store!r} "
                                      f"(profiles.{prof.name}.est.client_trust)")
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


def load_crl(path: Path, key: str) -> x509.CertificateRevocationList:
    """A CRL from a PEM or DER file (RFC 5280 §5)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    try:
        return (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data))
    except ValueError as exc:
        raise ConfigError(key, f"{path} holds no readable CRL: {exc}") from None


def load_certs(path: Path, key: str) -> list[x509.Certificate]:
    """Every certificate in a PEM (or single DER) file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else [
            x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ConfigError(key, f"{path} holds no readable certificate: {exc}") from None
    return certs


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds in ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` (a bare number is days)."""
    t = text.strip().lower()
    unit = _DURATION_UNITS.get(t[-1:]) if t else None
    number = t[:-1] if unit else t
    if not number.isdigit():
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 15m or 90s")
    return int(number) * (unit or 86400)
