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
from ca.keys import PrivateKey, open_key, probe
from enroll.config import Config
from enroll.config_toml import key_ref, load_certs
from scep.http import mount_routes, post_webhook
from scep.ra import RA
from scep.service import ScepService
from scep.settings import ScepGlobal, ScepProfile, parse_global, scep_profiles


def _passphrase(env: str | None, key: str) -> bytes | None:
    if not env:
        return None
    value = os.environ.get(env)
    if value is None:
        raise ConfigError(key, f"environment variable {env} is not set")
    return value.encode()


def _key_usage_ok(cert: x509.Certificate, *, sign: bool = True, encipher: bool = True) -> bool:
    """RFC 8894 §2.1.2: the RA (or CA) certificate must allow signing and key encipherment (in the
    NDES layout the signing RA only signing, the encryption RA only key encipherment)."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    if ku.key_cert_sign and ku.digital_signature and sign and encipher:
        return True
    return (ku.digital_signature or not sign) and (ku.key_encipherment or not encipher)


def _load_ra_pair(config: Config, cert_key: str, cert_path: str, key_key: str, key_path: str,
                  passphrase_env: str | None, passphrase_key: str) -> tuple[list[x509.Certificate], PrivateKey]:
    certs = load_certs(config.resolve(cert_path), cert_key)
    key = open_key(key_ref(config.base_dir, key_path, key_key), key_key,
                   passphrase=_passphrase(passphrase_env, passphrase_key), pkcs11=config.pkcs11)
    if not isinstance(key.public_key(), rsa.RSAPublicKey):
        raise ConfigError(key_key, "SCEP key transport needs an RSA key")
    probe(key, key_key, decrypt=True)
    if certs[0].public_key() != key.public_key():
        raise ConfigError(key_key, f"the key does not match {cert_key}")
    return certs, key


def _load_ras(config: Config, settings: ScepGlobal, profiles: dict[str, ScepProfile]) -> dict[str, RA]:
    """The RA answering for each CA that a SCEP profile uses."""
    cas_used = {config.profiles[p].ca for p in profiles}
    out: dict[str, RA] = {}
    if settings.ra_cert and settings.ra_key:
        certs, key = _load_ra_pair(config, "scep.ra_cert", settings.ra_cert, "scep.ra_key", settings.ra_key,
                                   settings.ra_key_passphrase_env, "scep.ra_key_passphrase_env")
        enc_cert: x509.Certificate | None = None
        enc_key: PrivateKey | None = None
        if settings.ra_encryption_cert and settings.ra_encryption_key:
            enc_certs, enc_key = _load_ra_pair(
                config, "scep.ra_encryption_cert", settings.ra_encryption_cert, "scep.ra_encryption_key",
                settings.ra_encryption_key, settings.ra_encryption_key_passphrase_env,
                "scep.ra_encryption_key_passphrase_env")
            enc_cert = enc_certs[0]
            if not _key_usage_ok(enc_cert, sign=False):
                raise ConfigError("scep.ra_encryption_cert", "keyUsage must include keyEncipherment")
            if enc_cert.issuer != certs[0].issuer:
                raise ConfigError("scep.ra_encryption_cert", "must be issued by the CA that issued scep.ra_cert")
            if not _key_usage_ok(certs[0], encipher=False):
                raise ConfigError("scep.ra_cert", "keyUsage must include digitalSignature")
        elif not _key_usage_ok(certs[0]):
            raise ConfigError("scep.ra_cert", "keyUsage must include digitalSignature and keyEncipherment")
        for ca in cas_used:
            out[ca] = RA(certs[0], key, is_ca=False, extra=tuple(certs[1:]), enc_cert=enc_cert, enc_key=enc_key)
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
    profiles = scep_profiles(config.profile_scep)
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
