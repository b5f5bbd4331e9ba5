"""The SCEP configuration tables, parsed and validated (``[scep]``, ``[profiles.NAME.scep]``).

Raw TOML mappings come from ``enroll.config.Config``; this module turns them into frozen
settings and raises :class:`ca.errors.ConfigError` naming the key for anything wrong. Pure: no
aiohttp, no file access (paths are resolved and loaded by ``enroll.scep_mount``).

Example::

    [scep]
    default_profile = "router"        # the profile for /scep and the bare legacy paths
    ra_cert = "certs/scep-ra.pem"     # RA certificate (+ optional chain) that signs CertReps
    ra_key = "certs/scep-ra.key"      # its RSA key (mode 0600); omit both: the CA is its own RA
    # ra_key_passphrase_env = "ENROLL_SCEP_RA_PASSPHRASE"
    # Microsoft NDES layout (PyScep needs it): a second RA certificate for key encipherment only
    # (keyUsage keyEncipherment, no digitalSignature), issued by the same CA; `enroll init --ndes-ra`.
    # ra_encryption_cert = "certs/scep-ra-enc.pem"
    # ra_encryption_key = "certs/scep-ra-enc.key"
    # ra_encryption_key_passphrase_env = "ENROLL_SCEP_RA_ENC_PASSPHRASE"
    paths = ["/scep", "/cgi-bin/pkiclient.exe", "/certsrv/mscep/mscep.dll"]

    [profiles.router.scep]
    auth = ["challenge", "one-time"]  # any of: challenge, one-time, webhook (fail closed if empty)
    challenge_hash = "scrypt$..."     # `enroll hash-secret`; needed by "challenge"
    allow_legacy = true               # DES, 3DES, SHA-1 (old firmware); default false
    # allow_md5 = true                # MD5 digests and md5WithRSA signatures too; default false
    renewal = true                    # a request signed by a valid cert we issued renews it
    certrep_chain = false             # add the CA chain after the issued cert in CertRep
    # webhook_url = "https://hooks.example/scep"   # needed by "webhook"; answers {"allow": true}
    #                                 # https only; http:// only to 127.0.0.0/8, ::1 or localhost
    # webhook_timeout = 5.0
    # webhook_secret_env = "ENROLL_SCEP_WEBHOOK_TOKEN"  # sent as "Authorization: Bearer <token>"
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ca.api import AuthMethod
from ca.authz import is_secret_hash
from ca.errors import ConfigError

DEFAULT_PATHS = ("/scep", "/cgi-bin/pkiclient.exe", "/certsrv/mscep/mscep.dll")
AUTH_METHODS = {"challenge": AuthMethod.CHALLENGE, "one-time": AuthMethod.ONE_TIME_CHALLENGE,
                "webhook": AuthMethod.WEBHOOK}

#: Content-encryption ciphers and digests every profile accepts (RFC 8894 §3.5.2 AES, SHA-2).
MODERN_CIPHERS = frozenset({"aes128", "aes192", "aes256"})
MODERN_DIGESTS = frozenset({"sha256", "sha384", "sha512"})
#: Added only where ``allow_legacy = true`` (scepclient: DES + SHA-1).
LEGACY_CIPHERS = frozenset({"des", "3des"})
LEGACY_DIGESTS = frozenset({"sha1"})
#: Added only where ``allow_md5 = true`` (Juniper: DES3 + MD5); never by ``allow_legacy`` alone.
MD5_DIGESTS = frozenset({"md5"})

_GLOBAL_KEYS = {"default_profile", "ra_cert", "ra_key", "ra_key_passphrase_env", "ra_encryption_cert",
                "ra_encryption_key", "ra_encryption_key_passphrase_env", "paths"}
_PROFILE_KEYS = {
    "auth",
    "challenge_hash",
    "allow_legacy",
    "allow_md5",
    "renewal",
    "certrep_chain",
    "webhook_url",
    "webhook_timeout",
    "webhook_secret_env",
}


@dataclass(frozen=True)
class ScepGlobal:
    """``[scep]``."""

    default_profile: str | None = None
    ra_cert: str | None = None
    ra_key: str | None = None
    ra_key_passphrase_env: str | None = None
    ra_encryption_cert: str | None = None
    ra_encryption_key: str | None = None
    ra_encryption_key_passphrase_env: str | None = None
    paths: tuple[str, ...] = DEFAULT_PATHS


@dataclass(frozen=True)
class ScepProfile:
    """``[profiles.NAME.scep]``: how SCEP requesters of one profile authenticate."""

    name: str
    auth: tuple[AuthMethod, ...] = ()
    challenge_hash: str | None = None
    allow_legacy: bool = False
    allow_md5: bool = False
    renewal: bool = True
    certrep_chain: bool = False
    webhook_url: str | None = None
    webhook_timeout: float = 5.0
    webhook_secret_env: str | None = None

    @property
    def ciphers(self) -> frozenset[str]:
        """Content-encryption ciphers accepted (and mirrored in replies)."""
        return MODERN_CIPHERS | LEGACY_CIPHERS if self.allow_legacy else MODERN_CIPHERS

    @property
    def digests(self) -> frozenset[str]:
        """Message digests accepted in SignerInfos, in digestAlgorithm and in the hash of
        signatureAlgorithm (and mirrored in replies)."""
        digests = MODERN_DIGESTS | LEGACY_DIGESTS if self.allow_legacy else MODERN_DIGESTS
        return digests | MD5_DIGESTS if self.allow_md5 else digests


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", f"unknown key; use one of {', '.join(sorted(allowed))}")


def _opt_str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}", "must be a non-empty string")
    return value


def _bool(table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}", "must be true or false")
    return value


def _check_webhook_url(url: str, key: str) -> None:
    """https:// anywhere; plain http:// only to this host (the challenge and the CSR travel in it)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ConfigError(key, "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(key, "must be an https:// URL with a host")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(key, "must use https:// (http:// only to 127.0.0.0/8, ::1 or localhost)")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_global(table: Mapping[str, Any]) -> ScepGlobal:
    """Parse ``[scep]``."""
    _check_keys(table, _GLOBAL_KEYS, "scep")
    paths = table.get("paths", list(DEFAULT_PATHS))
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ConfigError("scep.paths", "must be a non-empty list of strings")
    for p in paths:
        if not p.startswith("/") or p.endswith("/") or "{" in p or "//" in p:
            raise ConfigError("scep.paths", f"{p!r}: must start with '/', not end with '/', no braces")
    ra_cert = _opt_str(table, "ra_cert", "scep")
    ra_key = _opt_str(table, "ra_key", "scep")
    if (ra_cert is None) != (ra_key is None):
        raise ConfigError("scep.ra_key" if ra_key is None else "scep.ra_cert", "ra_cert and ra_key go together")
    enc_cert = _opt_str(table, "ra_encryption_cert", "scep")
    enc_key = _opt_str(table, "ra_encryption_key", "scep")
    if (enc_cert is None) != (enc_key is None):
        raise ConfigError("scep.ra_encryption_key" if enc_key is None else "scep.ra_encryption_cert",
                          "ra_encryption_cert and ra_encryption_key go together")
    if enc_cert is not None and ra_cert is None:
        raise ConfigError("scep.ra_encryption_cert", "needs scep.ra_cert and scep.ra_key (the signing RA)")
    return ScepGlobal(
        default_profile=_opt_str(table, "default_profile", "scep"),
        ra_cert=ra_cert,
        ra_key=ra_key,
        ra_key_passphrase_env=_opt_str(table, "ra_key_passphrase_env", "scep"),
        ra_encryption_cert=enc_cert,
        ra_encryption_key=enc_key,
        ra_encryption_key_passphrase_env=_opt_str(table, "ra_encryption_key_passphrase_env", "scep"),
        paths=tuple(paths),
    )


def parse_profile(name: str, table: Mapping[str, Any]) -> ScepProfile:
    """Parse ``[profiles.NAME.scep]``; fail closed: an auth method without its secret is an error."""
    where = f"profiles.{name}.scep"
    _check_keys(table, _PROFILE_KEYS, where)
    auth = table.get("auth", [])
    if not isinstance(auth, list) or not all(isinstance(a, str) for a in auth):
        raise ConfigError(f"{where}.auth", "must be a list of strings")
    for a in auth:
        if a not in AUTH_METHODS:
            raise ConfigError(f"{where}.auth", f"unknown method {a!r}; use {', '.join(AUTH_METHODS)}")
    challenge_hash = _opt_str(table, "challenge_hash", where)
    methods = tuple(AUTH_METHODS[a] for a in auth)
    if AuthMethod.CHALLENGE in methods and challenge_hash is None:
        raise ConfigError(f"{where}.challenge_hash", 'required when auth lists "challenge"')
    if challenge_hash is not None and not is_secret_hash(challenge_hash):
        raise ConfigError(f"{where}.challenge_hash", "must be a hash from `enroll hash-secret`, not a secret")
    webhook_url = _opt_str(table, "webhook_url", where)
    if AuthMethod.WEBHOOK in methods and webhook_url is None:
        raise ConfigError(f"{where}.webhook_url", 'required when auth lists "webhook"')
    if webhook_url is not None:
        _check_webhook_url(webhook_url, f"{where}.webhook_url")
    timeout = table.get("webhook_timeout", 5.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 60:
        raise ConfigError(f"{where}.webhook_timeout", "must be a number of seconds in (0, 60]")
    return ScepProfile(
        name=name,
        auth=methods,
        challenge_hash=challenge_hash,
        allow_legacy=_bool(table, "allow_legacy", where, False),
        allow_md5=_bool(table, "allow_md5", where, False),
        renewal=_bool(table, "renewal", where, True),
        certrep_chain=_bool(table, "certrep_chain", where, False),
        webhook_url=webhook_url,
        webhook_timeout=float(timeout),
        webhook_secret_env=_opt_str(table, "webhook_secret_env", where),
    )


def scep_profiles(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, ScepProfile]:
    """The SCEP settings of every profile that has a ``[profiles.NAME.scep]`` table (``tables``,
    by profile name); other profiles are not served."""
    return {name: parse_profile(name, table) for name, table in tables.items() if table}
