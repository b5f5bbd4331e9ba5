"""The one TOML config file, validated up front with errors that name the key.

Paths inside the file are relative to the file's own directory. This module holds the whole
:class:`Config`, ``[server]``, ``[tls]``, ``[ledger]``, ``[users]``, ``[trust]``, ``[profiles]``
and ``[log]``; ``enroll/config_cas.py`` parses ``[cas]`` and ``[pkcs11]``,
``enroll/config_admin.py`` ``[admin]``, and ``enroll/config_toml.py`` holds the typed getters
they share. Protocol-specific tables (``[est]``, ``[scep]``, ``[profiles.NAME.est]``,
``[profiles.NAME.scep]``) are kept raw here, apart from the protocol-neutral :class:`ca.profile.Profile`,
and validated by ``est.settings`` / ``scep.settings`` through ``enroll.est_mount`` / ``enroll.scep_mount``.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ca.errors import ConfigError
from ca.pkcs11 import Settings as Pkcs11Settings
from ca.profile import Profile, validate_profile
from enroll.config_admin import AdminConfig, parse_admin
from enroll.config_cas import CAConfig, active_ca, parse_cas, parse_pkcs11
from enroll.config_toml import check_keys, get, resolve, secret_hashes, str_list, table


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
    #: ``[profiles.NAME.est]`` / ``[profiles.NAME.scep]`` by profile name (only where present), raw
    profile_est: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    profile_scep: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    log_level: str = "info"
    admin: AdminConfig | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    trust_crl: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # store -> (file or URL, refresh s)
    pkcs11: Pkcs11Settings | None = None  # [pkcs11]: the module keys named by pkcs11: URIs live in

    def resolve(self, p: str | Path) -> Path:
        """A path from the config, relative to the config file's directory."""
        return resolve(self.base_dir, p)


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
    check_keys(t, {"ca", "validity_days", "key_types", "key_usage", "extended_key_usage", "subject", "san",
                    "approval", "retry_after", "renewal_window_days", "allow_legacy_digests", "est", "scep",
                    "description", "crl_distribution_point", "authority_info_access"}, path)
    ca = get(t, "ca", str, path)
    if ca not in cas:
        raise ConfigError(f"{path}.ca", f"no CA named {ca!r} (defined: {', '.join(cas) or 'none'})")
    subj = table(t, "subject", path + ".")
    check_keys(subj, {"allow", "require", "force", "patterns", "allow_path_separators"}, f"{path}.subject")
    force = table(subj, "force", f"{path}.subject.")
    for k, v in force.items():
        if not isinstance(v, str):
            raise ConfigError(f"{path}.subject.force.{k}", "must be a string")
    patterns = table(subj, "patterns", f"{path}.subject.")
    for k, v in patterns.items():
        if not isinstance(v, str):
            raise ConfigError(f"{path}.subject.patterns.{k}", "must be a string (a regular expression)")
    san = table(t, "san", path + ".")
    check_keys(san, {"allow", "dns_suffixes", "max", "allow_wildcards"}, f"{path}.san")
    window = t.get("renewal_window_days")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ConfigError(f"{path}.renewal_window_days", "must be a positive integer")
    defaults = Profile(name=name, ca=ca)
    p = Profile(
        name=name,
        ca=ca,
        validity_days=get(t, "validity_days", int, path, defaults.validity_days),
        key_types=str_list(t, "key_types", path, defaults.key_types),
        key_usage=str_list(t, "key_usage", path, defaults.key_usage),
        extended_key_usage=str_list(t, "extended_key_usage", path, defaults.extended_key_usage),
        subject_allow=str_list(subj, "allow", f"{path}.subject", defaults.subject_allow),
        subject_require=str_list(subj, "require", f"{path}.subject", defaults.subject_require),
        subject_force=tuple(force.items()),
        subject_patterns=tuple(patterns.items()),
        subject_allow_path_separators=get(subj, "allow_path_separators", bool, f"{path}.subject", False),
        san_allow=str_list(san, "allow", f"{path}.san", defaults.san_allow),
        san_dns_suffixes=str_list(san, "dns_suffixes", f"{path}.san"),
        san_max=get(san, "max", int, f"{path}.san", defaults.san_max),
        san_allow_wildcards=get(san, "allow_wildcards", bool, f"{path}.san", False),
        approval=get(t, "approval", str, path, "auto"),
        retry_after=get(t, "retry_after", int, path, defaults.retry_after),
        renewal_window_days=window,
        allow_legacy_digests=get(t, "allow_legacy_digests", bool, path, False),
        crl_distribution_point=get(t, "crl_distribution_point", bool, path, True),
        authority_info_access=get(t, "authority_info_access", bool, path, True),
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
    check_keys(raw, {"server", "tls", "ledger", "log", "cas", "users", "trust", "profiles", "est", "scep",
                      "admin", "pkcs11"}, "")
    s = table(raw, "server", "", required=True)
    check_keys(s, {"https", "http", "max_body_bytes", "workers", "base_url", "metrics_on_http",
                    "metrics_token_env", "trusted_proxies", "client_cert_header"}, "server")
    base_url = get(s, "base_url", str, "server", None)
    if base_url is not None:
        base_url = base_url.rstrip("/")
        if not base_url.startswith(("http://", "https://")) or "?" in base_url or "#" in base_url:
            raise ConfigError("server.base_url", "must be an http:// or https:// URL without query")
    server = ServerConfig(
        https=tuple(parse_listen(x, "server.https") for x in str_list(s, "https", "server")),
        http=tuple(parse_listen(x, "server.http") for x in str_list(s, "http", "server")),
        max_body_bytes=get(s, "max_body_bytes", int, "server", 256 * 1024),
        workers=get(s, "workers", int, "server", 1),
        base_url=base_url,
        metrics_on_http=get(s, "metrics_on_http", bool, "server", False),
        metrics_token_env=get(s, "metrics_token_env", str, "server", None) or None,
        trusted_proxies=_trusted_proxies(str_list(s, "trusted_proxies", "server")),
        client_cert_header=_header_name(get(s, "client_cert_header", str, "server", None) or None),
    )
    if server.max_body_bytes < 1024:
        raise ConfigError("server.max_body_bytes", "must be at least 1024")
    if not 1 <= server.workers <= 256:
        raise ConfigError("server.workers", "must be between 1 and 256")
    if not server.https and not server.http:
        raise ConfigError("server", "listens nowhere: set https and/or http")
    if server.client_cert_header and not server.trusted_proxies:
        raise ConfigError("server.client_cert_header", "is honoured only from trusted_proxies: list the proxies")

    t = table(raw, "tls", "", required=bool(server.https))
    check_keys(t, {"cert", "key", "client_trust", "min_version", "engine"}, "tls")
    tls = TLSConfig(
        cert=resolve(base, get(t, "cert", str, "tls", "")) if t else Path(),
        key=resolve(base, get(t, "key", str, "tls", "")) if t else Path(),
        client_trust=str_list(t, "client_trust", "tls"),
        min_version=get(t, "min_version", str, "tls", "1.2"),
        engine=get(t, "engine", str, "tls", "stdlib"),
    )
    if tls.min_version not in ("1.2", "1.3"):
        raise ConfigError("tls.min_version", "must be \"1.2\" or \"1.3\"")
    if tls.engine not in ("stdlib", "pyopenssl"):
        raise ConfigError("tls.engine", "must be \"stdlib\" or \"pyopenssl\"")

    led = table(raw, "ledger", "")
    check_keys(led, {"url"}, "ledger")
    ledger_url = get(led, "url", str, "ledger", "sqlite:///var/enroll.db")
    if ledger_url.startswith("sqlite:///") and not ledger_url.startswith("sqlite:////"):
        rel = ledger_url[len("sqlite:///"):]
        ledger_url = "sqlite:///" + str(resolve(base, rel))
    elif not ledger_url.startswith(("sqlite:", "postgresql://", "postgres://", "postgresql+asyncpg://")):
        raise ConfigError("ledger.url", "must be sqlite:///PATH or postgresql://USER@HOST/DB")

    cas = parse_cas(raw, base, base_url)

    users = secret_hashes(table(raw, "users", ""), "users", "password_hash", "`enroll hash-secret` (scrypt$...)")

    trust: dict[str, tuple[Path, ...]] = {}
    trust_crl: dict[str, tuple[str, int]] = {}
    for name, tt in table(raw, "trust", "").items():
        p = f"trust.{name}"
        if not isinstance(tt, dict):
            raise ConfigError(p, "must be a table")
        check_keys(tt, {"certs", "crl", "crl_refresh_seconds"}, p)
        trust[name] = tuple(resolve(base, x) for x in str_list(tt, "certs", p))
        if "crl" in tt:
            src = get(tt, "crl", str, p)
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

    profile_tables = {name: pt if isinstance(pt, dict) else {}
                      for name, pt in table(raw, "profiles", "", required=True).items()}
    profiles = {name: _profile(name, pt, cas) for name, pt in profile_tables.items()}
    protocol = {kind: {name: t for name, pt in profile_tables.items() if (t := table(pt, kind, f"profiles.{name}."))}
                for kind in ("est", "scep")}
    if not profiles:
        raise ConfigError("profiles", "define at least one profile")
    # CA rollover: once a successor is activated, the profiles of the old CA issue from it
    # (`enroll ca activate`); the old CA stays configured for its CRLs, OCSP and renewals.
    now = dt.datetime.now(dt.timezone.utc)
    profiles = {name: pr if active_ca(cas, pr.ca, now) == pr.ca else replace(pr, ca=active_ca(cas, pr.ca, now))
                for name, pr in profiles.items()}
    lg = table(raw, "log", "")
    check_keys(lg, {"level"}, "log")
    level = get(lg, "level", str, "log", "info")
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log.level", "must be debug, info, warning or error")
    pkcs11 = parse_pkcs11(raw, base, cas)
    return Config(path=path, base_dir=base, server=server, tls=tls, ledger_url=ledger_url, cas=cas, users=users,
                  trust=trust, profiles=profiles, est=table(raw, "est", ""), scep=table(raw, "scep", ""),
                  profile_est=protocol["est"], profile_scep=protocol["scep"], log_level=level,
                  admin=parse_admin(raw, base, tls.client_trust, trust, protocol["est"], cas), raw=raw,
                  trust_crl=trust_crl, pkcs11=pkcs11)
