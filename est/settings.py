"""EST configuration: ``[est]`` and every ``[profiles.NAME.est]``, validated into typed settings
(RFC 7030 §3.2.2 labels, §3.2.3/§3.3.2 authentication, §3.5 PoP, §4.4 server-side keys).

Parsed here, in the protocol package; the core receives typed policy only
(:class:`ca.api.CertificatePolicy`, :class:`ca.api.Claims`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509

from ca.api import AuthMethod, BindIdentity
from ca.errors import ConfigError
from ca.keys import Signer, check_key_file_mode, open_key, probe
from est import asn1

OPERATIONS = ("cacerts", "simpleenroll", "simplereenroll", "serverkeygen", "csrattrs", "fullcmc")
#: RFC 7030 §3.2.2 table: the method each operation takes.
METHODS: Mapping[str, str] = {
    "cacerts": "GET",
    "csrattrs": "GET",
    "simpleenroll": "POST",
    "simplereenroll": "POST",
    "serverkeygen": "POST",
    "fullcmc": "POST",
}
#: ``one-time``: a per-device credential (``enroll credentials new``) sent as HTTP Basic
#: (RFC 7030 §3.2.3), bound to the profile and to the device the CSR names, spent by the issuance.
AUTH_METHODS = {"basic": AuthMethod.BASIC, "client-cert": AuthMethod.TLS_CLIENT_CERT,
                "one-time": AuthMethod.ONE_TIME_CREDENTIAL}
#: The methods carried as HTTP Basic (RFC 7617).
PASSWORD_METHODS = frozenset({AuthMethod.BASIC, AuthMethod.ONE_TIME_CREDENTIAL})


class PopMode(enum.Enum):
    """``pop`` of ``[profiles.NAME.est]``: whether a CSR must carry the connection's channel
    binding as its challengePassword (RFC 7030 §3.5); the values are the config spellings."""

    OFF = "off"
    #: tls-unique on TLS 1.2 (RFC 5929 §3); tls-exporter on TLS 1.3 (RFC 9266 §2).
    TLS_UNIQUE = "tls-unique"


CMC_RA = x509.ObjectIdentifier(asn1.Oid.KP_CMC_RA)
DEFAULT_MAX_BODY = 64 * 1024

_EST_KEYS = {"default_profile", "realm", "base64_line_length", "max_body_bytes",
             "serverkeygen_signer_cert", "serverkeygen_signer_key"}
_PROFILE_KEYS = {"labels", "auth", "client_trust", "client_profiles", "bind_identity", "pop", "reenroll", "serverkeygen",
                 "csrattrs", "csr_template", "allow_change_subject_name", "include_chain",
                 "serverkeygen_keks", "serverkeygen_recipients"}


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRule:
    """``[profiles.NAME.est]``, validated."""

    profile: str
    labels: tuple[str, ...]
    auth: tuple[frozenset[AuthMethod], ...]  # any entry satisfied; an entry needs all its methods
    client_trust: tuple[str, ...]
    client_profiles: tuple[str, ...] = ()  # profiles whose certificates authenticate (default: own)
    bind_identity: BindIdentity = BindIdentity.NONE
    pop: PopMode = PopMode.OFF
    reenroll: bool = True
    serverkeygen: bool = True
    csrattrs: str | tuple[str, ...] = "auto"
    csr_template: bool = False
    allow_change_subject_name: bool = False
    include_chain: bool = False
    keks: Mapping[bytes, bytes] = field(default_factory=dict, repr=False)
    recipients: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class EstSettings:
    """``[est]`` plus every ``[profiles.NAME.est]``, validated."""

    rules: Mapping[str, LabelRule]  # by label; "" is the default (no label)
    realm: str = "enroll"
    line_length: int | None = None  # [est] base64_line_length; None: per client (est/quirks.py)
    max_body_bytes: int = DEFAULT_MAX_BODY
    signer_cert: x509.Certificate | None = None
    signer_key: Signer | None = field(default=None, repr=False)  # RFC 7030 §4.4.2 key-package signer


class ProfileLike(Protocol):
    name: str
    approval: str
    key_types: tuple[str, ...]
    subject_require: tuple[str, ...]
    subject_force: tuple[tuple[str, str], ...]
    san_allow: tuple[str, ...]


def _strs(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, "must be a list of strings")
    return tuple(value)


def _bool(table: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
    value = table.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}.{name}", "must be true or false")
    return value


def _load_pem_certs(path: Path, key: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(key, f"cannot load certificates from {path}: {exc}") from None


def parse_rule(
    profile: ProfileLike,
    table: Mapping[str, Any],
    *,
    trust_names: Sequence[str],
    resolve: Any = Path,
    profile_names: Sequence[str] = (),
) -> LabelRule:
    """Validate one ``[profiles.NAME.est]`` table (fail closed: ``auth`` is required)."""
    key = f"profiles.{profile.name}.est"
    unknown = set(table) - _PROFILE_KEYS
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}", "unknown key")
    labels = _strs(table.get("labels", []), f"{key}.labels")
    for label in labels:
        if not label or "/" in label or label in OPERATIONS or label.startswith("."):
            raise ConfigError(f"{key}.labels", f"{label!r} is not a valid EST label (one path segment)")
    if "auth" not in table:
        raise ConfigError(f"{key}.auth", "required: list of 'basic', 'client-cert', 'one-time' or "
                                         "'basic+client-cert'")
    entries = []
    for entry in _strs(table["auth"], f"{key}.auth"):
        names = frozenset(m.strip() for m in entry.split("+"))
        bad = names - set(AUTH_METHODS)
        if bad:
            raise ConfigError(f"{key}.auth", f"unknown method {sorted(bad)[0]!r} (use {', '.join(AUTH_METHODS)})")
        methods = frozenset(AUTH_METHODS[m] for m in names)
        if len(methods & PASSWORD_METHODS) > 1:
            raise ConfigError(f"{key}.auth", f"{entry!r}: 'basic' and 'one-time' are both HTTP Basic; list them "
                                             "as alternatives, not combined")
        entries.append(methods)
    if not entries:
        raise ConfigError(f"{key}.auth", "must name at least one method (EST never enrolls anonymously)")
    client_trust = _strs(table.get("client_trust", []), f"{key}.client_trust")
    for name in client_trust:
        if name not in trust_names:
            raise ConfigError(f"{key}.client_trust", f"no [trust.{name}] store")
    if any(AuthMethod.TLS_CLIENT_CERT in e for e in entries) and not client_trust:
        raise ConfigError(f"{key}.client_trust", "auth 'client-cert' needs at least one trust store")
    client_profiles = _strs(table.get("client_profiles", [profile.name]), f"{key}.client_profiles")
    for name in client_profiles:
        if profile_names and name not in profile_names:
            raise ConfigError(f"{key}.client_profiles", f"no profile {name!r}")
    try:
        bind_identity = BindIdentity(table.get("bind_identity", "none"))
    except ValueError:
        raise ConfigError(f"{key}.bind_identity",
                          f"must be one of {', '.join(b.value for b in BindIdentity)}") from None
    raw_pop = table.get("pop", PopMode.OFF.value)
    if isinstance(raw_pop, bool):  # pop = true / false
        raw_pop = (PopMode.TLS_UNIQUE if raw_pop else PopMode.OFF).value
    try:
        pop = PopMode(raw_pop)
    except ValueError:
        raise ConfigError(f"{key}.pop", f"must be one of {', '.join(m.value for m in PopMode)}") from None
    serverkeygen = _bool(table, "serverkeygen", key, True)
    if serverkeygen and profile.approval == "manual":
        if "serverkeygen" in table:
            raise ConfigError(f"{key}.serverkeygen",
                              "not possible with approval = \"manual\": the server would have to keep "
                              "the generated private key until approval")
        serverkeygen = False
    if serverkeygen and all(AuthMethod.ONE_TIME_CREDENTIAL in e for e in entries):
        if "serverkeygen" in table:
            raise ConfigError(f"{key}.serverkeygen",
                              "not possible with auth = [\"one-time\"]: a one-time credential is spent "
                              "by the enrollment of a key the device holds (use basic or client-cert)")
        serverkeygen = False
    csrattrs: str | tuple[str, ...] = "auto"
    raw_attrs = table.get("csrattrs", "auto")
    if isinstance(raw_attrs, str):
        if raw_attrs not in ("auto", "none"):
            raise ConfigError(f"{key}.csrattrs", "must be \"auto\", \"none\" or a list of OIDs")
        csrattrs = raw_attrs
    else:
        oids = _strs(raw_attrs, f"{key}.csrattrs")
        for oid in oids:
            try:
                x509.ObjectIdentifier(oid)
            except ValueError:
                raise ConfigError(f"{key}.csrattrs", f"{oid!r} is not a dotted OID") from None
        csrattrs = oids
    keks: dict[bytes, bytes] = {}
    raw_keks = table.get("serverkeygen_keks", {})
    if not isinstance(raw_keks, Mapping):
        raise ConfigError(f"{key}.serverkeygen_keks", "must be a table of hex key id = KEK file")
    for kid, path in raw_keks.items():
        try:
            kid_bytes = bytes.fromhex(kid)
            text = Path(resolve(path)).read_text().strip()
            kek = bytes.fromhex(text)
        except (ValueError, OSError, TypeError) as exc:
            raise ConfigError(f"{key}.serverkeygen_keks.{kid}", f"bad key id or KEK file: {exc}") from None
        if len(kek) not in (16, 24, 32):
            raise ConfigError(f"{key}.serverkeygen_keks.{kid}", "KEK must be 16, 24 or 32 bytes (hex)")
        keks[kid_bytes] = kek
    recipients: list[x509.Certificate] = []
    for path in _strs(table.get("serverkeygen_recipients", []), f"{key}.serverkeygen_recipients"):
        recipients.extend(_load_pem_certs(Path(resolve(path)), f"{key}.serverkeygen_recipients"))
    return LabelRule(
        profile=profile.name,
        labels=labels,
        auth=tuple(entries),
        client_trust=client_trust,
        client_profiles=client_profiles,
        bind_identity=bind_identity,
        pop=pop,
        reenroll=_bool(table, "reenroll", key, True),
        serverkeygen=serverkeygen,
        csrattrs=csrattrs,
        csr_template=_bool(table, "csr_template", key, False),
        allow_change_subject_name=_bool(table, "allow_change_subject_name", key, False),
        include_chain=_bool(table, "include_chain", key, False),
        keks=keks,
        recipients=tuple(recipients),
    )


def parse_settings(
    est: Mapping[str, Any],
    profiles: Mapping[str, ProfileLike],
    tables: Mapping[str, Mapping[str, Any]],
    *,
    trust_names: Sequence[str],
    resolve: Any = Path,
    server_max_body: int | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    pkcs11: Any = None,
) -> EstSettings:
    """Validate ``[est]`` and the per-profile tables (``tables``: ``[profiles.NAME.est]`` by profile
    name) into :class:`EstSettings` (``pkcs11``: the ``[pkcs11]`` settings, for a serverkeygen
    signer named by a pkcs11: URI)."""
    unknown = set(est) - _EST_KEYS
    if unknown:
        raise ConfigError(f"est.{sorted(unknown)[0]}", "unknown key")
    rules: dict[str, LabelRule] = {}
    by_profile: dict[str, LabelRule] = {}
    for name, profile in profiles.items():
        if not tables.get(name):
            continue
        rule = parse_rule(profile, tables[name], trust_names=trust_names, resolve=resolve,
                          profile_names=tuple(profiles))
        by_profile[name] = rule
        for label in rule.labels:
            if label in rules:
                raise ConfigError(f"profiles.{name}.est.labels",
                                  f"label {label!r} already belongs to profile {rules[label].profile!r}")
            rules[label] = rule
    default = est.get("default_profile")
    if default is not None:
        if not isinstance(default, str) or default not in profiles:
            raise ConfigError("est.default_profile", f"no profile {default!r}")
        if default not in by_profile:
            raise ConfigError("est.default_profile", f"profile {default!r} has no [profiles.{default}.est] table")
        rules[""] = by_profile[default]
    realm = est.get("realm", "enroll")
    if not isinstance(realm, str) or '"' in realm or "\\" in realm:
        raise ConfigError("est.realm", "must be a string without quotes or backslashes")
    line_length = est.get("base64_line_length")
    if line_length is not None and (not isinstance(line_length, int) or isinstance(line_length, bool)
                                    or line_length < 0 or line_length % 4):
        raise ConfigError("est.base64_line_length", "must be 0 (unwrapped) or a multiple of 4, e.g. 64 or 76")
    max_body = est.get("max_body_bytes", DEFAULT_MAX_BODY)
    if not isinstance(max_body, int) or max_body < 1024:
        raise ConfigError("est.max_body_bytes", "must be an integer >= 1024")
    if server_max_body is not None:
        max_body = min(max_body, server_max_body)
    signer_cert = signer_key = None
    cert_path = est.get("serverkeygen_signer_cert")
    key_path = est.get("serverkeygen_signer_key")
    if (cert_path is None) != (key_path is None):
        raise ConfigError("est.serverkeygen_signer_key", "serverkeygen_signer_cert and _key go together")
    if cert_path is None and tls_cert is not None and tls_key is not None:
        cert_path, key_path = tls_cert, tls_key
    needs_signer = any(r.keks or r.recipients or r.serverkeygen for r in by_profile.values())
    if cert_path is not None and key_path is not None and needs_signer:
        # The signer goes through ca.keys like every other key: a PEM file (mode 0600) or a
        # pkcs11: URI (RFC 7512), probed at start.
        key_name = "est.serverkeygen_signer_key" if est.get("serverkeygen_signer_key") is not None else "tls.key"
        key_ref = key_path if str(key_path).startswith("pkcs11:") else Path(resolve(key_path))
        signer_key = open_key(key_ref, key_name, pkcs11=pkcs11)
        probe(signer_key, key_name)
        try:
            signer_cert = _load_pem_certs(Path(resolve(cert_path)), "est.serverkeygen_signer_cert")[0]
        except (OSError, ValueError, TypeError, IndexError) as exc:
            raise ConfigError("est.serverkeygen_signer_cert", f"cannot load: {exc}") from None
        if signer_cert.public_key() != signer_key.public_key():
            raise ConfigError(key_name, "the serverkeygen signer key does not match its certificate")
    for name in by_profile:
        # KEKs are secret keys like any other: mode 0600 (parse_rule has read them already).
        for kid, kek_path in (tables[name].get("serverkeygen_keks") or {}).items():
            check_key_file_mode(Path(resolve(kek_path)), f"profiles.{name}.est.serverkeygen_keks.{kid}")
    return EstSettings(rules=rules, realm=realm, line_length=line_length, max_body_bytes=max_body,
                       signer_cert=signer_cert, signer_key=signer_key)


