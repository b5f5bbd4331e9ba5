"""Reading the values of the TOML config: typed getters whose errors name the key, paths
relative to the config file, key references (files or RFC 7512 ``pkcs11:`` URIs), certificate
and CRL files, durations and the scrypt hashes of secrets."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509

from ca.errors import ConfigError
from ca.pkcs11 import is_uri as is_pkcs11_uri
from ca.pkcs11 import parse_uri as parse_pkcs11_uri


def resolve(base: Path, p: str | Path) -> Path:
    """``p`` made absolute against ``base``."""
    q = Path(p)
    return q if q.is_absolute() else (base / q)


def key_ref(base: Path, value: str, key: str) -> Path | str:
    """A key setting: an RFC 7512 ``pkcs11:`` URI (validated, kept as text) or a file path."""
    if is_pkcs11_uri(value):
        parse_pkcs11_uri(value, key)
        return value
    return resolve(base, value)


def table(d: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> Mapping[str, Any]:
    """The sub-table ``key`` of ``d`` (empty when absent unless ``required``)."""
    v = d.get(key)
    if v is None:
        if required:
            raise ConfigError(f"{path}{key}", "missing table")
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{path}{key}", "must be a table")
    return v


def check_keys(d: Mapping[str, Any], allowed: set[str], path: str) -> None:
    """Refuse keys outside ``allowed``, naming the first unknown one."""
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{path}.{k}" if path else k,
                              f"unknown key (allowed: {', '.join(sorted(allowed))})")


def get(d: Mapping[str, Any], key: str, typ: type | tuple[type, ...], path: str, default: Any = ...) -> Any:
    """``d[key]`` checked to be a ``typ`` (bool is not an int); ``default`` when absent, else missing."""
    if key not in d:
        if default is ...:
            raise ConfigError(f"{path}.{key}", "missing")
        return default
    v = d[key]
    if typ is int and isinstance(v, bool) or not isinstance(v, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"{path}.{key}", f"must be {names}, got {type(v).__name__}")
    return v


def str_list(d: Mapping[str, Any], key: str, path: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A list of strings."""
    v = d.get(key, list(default))
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{path}.{key}", "must be a list of strings")
    return tuple(v)


def secret_hashes(d: Mapping[str, Any], path: str, key: str, made_by: str) -> dict[str, str]:
    """The tables ``[path.NAME]`` of ``d``, each holding one scrypt hash under ``key`` (users'
    passwords, admin tokens): NAME -> hash. ``made_by`` names the command that makes one."""
    from ca.authz import is_secret_hash

    out: dict[str, str] = {}
    for name, t in d.items():
        p = f"{path}.{name}"
        if not isinstance(t, dict):
            raise ConfigError(p, "must be a table")
        check_keys(t, {key}, p)
        h = get(t, key, str, p)
        if not is_secret_hash(h):
            raise ConfigError(f"{p}.{key}", f"must be a hash from {made_by}")
        out[name] = h
    return out


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
