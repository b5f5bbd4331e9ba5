"""Plugging SCEP into the application: ``validate(config)`` and ``mount(app, config, issuer)``.

The ``[scep]`` and ``[profiles.NAME.scep]`` tables are documented in :mod:`scep.settings`.
"""

from __future__ import annotations

import os

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.errors import ConfigError
from ca.issuer import Issuer
from ca.keys import open_key, probe
from enroll.config import Config, key_ref, load_certs
from scep.http import mount_routes, post_webhook
from scep.service import RA, ScepService
from scep.settings import ScepGlobal, ScepProfile, parse_global, scep_profiles


def _passphrase(env: str | None, key: str) -> bytes | None:
    if not env:
        return None
    value = os.environ.get(env)
    if value is None:
        raise ConfigError(key, f"environment variable {env} is not set")
    return value.encode()


def _key_usage_ok(cert: x509.Certificate) -> bool:
    """RFC 8894 §2.1.2: the RA (or CA) certificate must allow signing and key encipherment."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return bool(ku.digital_signature and ku.key_encipherment) or bool(ku.key_cert_sign and ku.digital_signature)


def _load_ras(config: Config, settings: ScepGlobal, profiles: dict[str, ScepProfile]) -> dict[str, RA]:
    """The RA answering for each CA that a SCEP profile uses."""
    cas_used = {config.profiles[p].ca for p in profiles}
    out: dict[str, RA] = {}
    if settings.ra_cert and settings.ra_key:
        certs = load_certs(config.resolve(settings.ra_cert), "scep.ra_cert")
        key = open_key(key_ref(config.base_dir, settings.ra_key, "scep.ra_key"), "scep.ra_key",
                       passphrase=_passphrase(settings.ra_key_passphrase_env, "scep.ra_key_passphrase_env"),
                       pkcs11=config.pkcs11)
        if not isinstance(key.public_key(), rsa.RSAPublicKey):
            raise ConfigError("scep.ra_key", "SCEP key transport needs an RSA key")
        probe(key, "scep.ra_key", decrypt=True)
        if certs[0].public_key() != key.public_key():
            raise ConfigError("scep.ra_key", "the key does not match scep.ra_cert")
        if not _key_usage_ok(certs[0]):
            raise ConfigError("scep.ra_cert", "keyUsage must include digitalSignature and keyEncipherment")
        for ca in cas_used:
            out[ca] = RA(certs[0], key, is_ca=False, extra=tuple(certs[1:]))
        return out
    for ca in cas_used:
        c = config.cas[ca]
        cert = load_certs(c.cert, f"cas.{ca}.cert")[0]
        ca_key = open_key(c.key, f"cas.{ca}.key", pkcs11=config.pkcs11,
                          passphrase=_passphrase(c.key_passphrase_env, f"cas.{ca}.key_passphrase_env"))
        if not isinstance(ca_key.public_key(), rsa.RSAPublicKey):
            raise ConfigError("scep.ra_cert", f"CA {ca!r} has no RSA key: configure an RSA SCEP RA")
        probe(ca_key, f"cas.{ca}.key", decrypt=True)
        out[ca] = RA(cert, ca_key, is_ca=True)
    return out


def _settings(config: Config) -> tuple[ScepGlobal, dict[str, ScepProfile]]:
    settings = parse_global(config.scep)
    profiles = scep_profiles(config.profiles)
    if settings.default_profile is not None and settings.default_profile not in profiles:
        raise ConfigError("scep.default_profile",
                          f"{settings.default_profile!r} is not a profile with a [profiles.NAME.scep] table")
    for p in profiles.values():
        if p.webhook_secret_env and p.webhook_secret_env not in os.environ:
            raise ConfigError(f"profiles.{p.name}.scep.webhook_secret_env",
                              f"environment variable {p.webhook_secret_env} is not set")
    return settings, profiles


def validate(config: Config) -> None:
    """Check the SCEP tables and load the RA keys (``enroll config check`` and start-up)."""
    settings, profiles = _settings(config)
    if profiles:
        _load_ras(config, settings, profiles)


def mount(app: web.Application, config: Config, issuer: Issuer) -> None:
    """Serve SCEP on the configured paths (both the HTTP and the HTTPS listener)."""
    settings, profiles = _settings(config)
    if not profiles:
        return
    ras = _load_ras(config, settings, profiles)
    secrets = {p.name: os.environ[p.webhook_secret_env] for p in profiles.values() if p.webhook_secret_env}
    service = ScepService(issuer, settings, profiles, ras, webhook=post_webhook, secrets=secrets)
    mount_routes(app, service, settings.paths)
