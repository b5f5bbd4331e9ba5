"""The ``enroll`` command: set up, serve and administer the server."""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.authz import hash_secret
from ca.errors import CAError, ConfigError
from ca.api import REASONS
from ca.issuer import Issuer
from ca.ledger import CertificateQuery, serial_hex
from enroll.config import Config, load_config, parse_duration

T = TypeVar("T")

DEFAULT_CONFIG = "enroll.toml"


def _config(ctx: click.Context) -> Config:
    try:
        return load_config(ctx.obj["config"])
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from None


def _run_with_issuer(ctx: click.Context, fn: Callable[[Issuer], Awaitable[T]]) -> T:
    from enroll.app import build_issuer

    config = _config(ctx)

    async def go() -> T:
        issuer = build_issuer(config)
        try:
            await issuer.ledger.migrate()
            return await fn(issuer)
        finally:
            await issuer.ledger.close()

    try:
        return asyncio.run(go())
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from None
    except CAError as exc:
        raise click.ClickException(exc.detail) from None


def _operator() -> str:
    """How the audit trail names a CLI operator."""
    return f"cli:{getpass.getuser()}"


def _parse_when(text: str | None, param: str) -> float | None:
    if not text:
        return None
    try:
        d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("use an ISO 8601 date or time, e.g. 2026-01-31 or 2026-01-31T12:00Z",
                                 param_hint=param) from None
    return (d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)).timestamp()


def _state(r: Any) -> str:
    """The certificate's state, named as the admin API names it (ca.ledger.CertState)."""
    return str(r.state().value)


def _parse_serial(text: str) -> int:
    t = text.lower().replace(":", "")
    t = t[2:] if t.startswith("0x") else t
    try:
        return int(t, 16)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a hex serial number (as `enroll certs list` shows)") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", default=lambda: os.environ.get("ENROLL_CONFIG", DEFAULT_CONFIG),
              show_default="enroll.toml or $ENROLL_CONFIG", help="Config file.")
@click.pass_context
def main(ctx: click.Context, config_path: str) -> None:
    """enroll: certificate enrollment server (EST RFC 7030/8951, SCEP RFC 8894)."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path


@main.command()
@click.option("--dir", "directory", default=".", type=click.Path(file_okay=False), show_default=True,
              help="Where to write enroll.toml, certs/ and var/.")
@click.option("--https-port", default=8443, show_default=True)
@click.option("--http-port", default=8080, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing config and development PKI.")
@click.option("--ndes-ra", is_flag=True,
              help="SCEP RA in the Microsoft NDES layout: a signing and an encryption RA certificate (PyScep).")
@click.option("--pkcs11", "pkcs11_uri", default=None, metavar="URI",
              help="Generate the issuing CA, SCEP RA and OCSP keys inside this PKCS#11 token "
                   "(RFC 7512, e.g. pkcs11:token=Enroll); the root key stays a file.")
@click.option("--pkcs11-module", default="/usr/lib/softhsm/libsofthsm2.so", show_default=True, metavar="PATH",
              help="The PKCS#11 module (shared library) of the token.")
@click.option("--pin-env", default="ENROLL_PKCS11_PIN", show_default=True, metavar="NAME",
              help="Environment variable holding the token's user PIN (written to [pkcs11] pin_env).")
@click.option("--pkcs11-key-type", default="rsa-2048", show_default=True,
              type=click.Choice(["rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384"]),
              help="Issuing CA and OCSP key type in the token (the SCEP RA key is RSA-2048).")
def init(directory: str, https_port: int, http_port: int, force: bool, ndes_ra: bool, pkcs11_uri: str | None,
         pkcs11_module: str, pin_env: str, pkcs11_key_type: str) -> None:
    """Create the embedded default: a development PKI under certs/ and a commented enroll.toml."""
    from enroll.setup import init_directory

    base = Path(directory).resolve()
    cfg = base / DEFAULT_CONFIG
    if cfg.exists() and not force:
        raise click.ClickException(f"{cfg} exists; use --force to overwrite it and its PKI")
    if pkcs11_uri is not None:
        _check_pkcs11_init(pkcs11_uri, pkcs11_module, pin_env, ndes_ra)
    res = init_directory(base, https_port=https_port, http_port=http_port, record_client=pkcs11_uri is None,
                         ndes_ra=ndes_ra)
    if pkcs11_uri is not None:
        _init_pkcs11(res, pkcs11_uri, pkcs11_module, pin_env, pkcs11_key_type)
    secrets_file = res.certs_dir / "dev-secrets.txt"
    click.echo(f"wrote {cfg}")
    click.echo(f"wrote development PKI in {base / 'certs'} (trust anchor: certs/root-ca.pem)")
    click.echo(f"EST user 'estuser', password and SCEP challenge in {secrets_file}")
    if getattr(res, "admin_token", ""):
        click.echo(f"admin page https://127.0.0.1:{https_port}/admin/ (ADMIN_TOKEN in {secrets_file})")
    click.echo(f"next: enroll -c {cfg} serve   (HTTPS {https_port}: EST+SCEP, HTTP {http_port}: SCEP)")


def _check_pkcs11_init(uri: str, module: str, pin_env: str, ndes_ra: bool) -> None:
    """Refuse `init --pkcs11` before anything is written when it cannot work."""
    from ca import pkcs11 as p11
    from enroll.pkcs11_init import preflight, token_of

    if ndes_ra:
        raise click.ClickException("--pkcs11 makes a single SCEP RA key in the token; drop --ndes-ra")
    if not Path(module).is_file():
        raise click.ClickException(f"PKCS#11 module {module} does not exist (Debian: apt install softhsm2, "
                                   "or --pkcs11-module PATH)")
    try:
        token = token_of(uri)
        settings = p11.Settings(module=module, pin_env=None if token.pin_source else pin_env)
        p11.read_pin(token, settings, "--pkcs11")
        preflight(uri, settings)
    except ConfigError as exc:
        raise click.ClickException(f"{exc}") from None


def _init_pkcs11(res: Any, uri: str, module: str, pin_env: str, key_type: str) -> None:
    """Move the issuing CA, SCEP RA and OCSP keys of a fresh `enroll init` into the token."""
    from ca import pkcs11 as p11
    from enroll.pkcs11_init import move_keys_to_token, token_of
    from enroll.setup import record_example_client

    settings = p11.Settings(module=module, pin_env=None if token_of(uri).pin_source else pin_env)
    try:
        uris = move_keys_to_token(res, uri, settings, key_type)
    except ConfigError as exc:
        raise click.ClickException(f"PKCS#11: {exc}") from None
    record_example_client(res.config_path)
    for what, key_uri in (("issuing CA", uris.issuing), ("SCEP RA", uris.ra), ("OCSP responder", uris.ocsp)):
        click.echo(f"generated the {what} key in the token: {key_uri} (non-extractable)")
    click.echo(f"[pkcs11] module = {module}" + (f", PIN from ${pin_env}" if settings.pin_env else ""))


@main.command()
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Worker processes sharing the listening sockets (default: [server] workers).")
@click.pass_context
def serve(ctx: click.Context, workers: int | None) -> None:
    """Run the server (HTTPS: EST, SCEP, CRLs, /metrics; HTTP: SCEP, CRLs)."""
    from enroll.logs import setup_logging
    from enroll.server import run

    config = _config(ctx)
    setup_logging(config.log_level)
    try:
        run(config, workers)
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc}") from None


@main.group()
def config() -> None:
    """Configuration commands."""


@config.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the config file, its keys, certificates and protocol tables."""
    from enroll.app import config_warnings, validate

    cfg = _config(ctx)
    try:
        validate(cfg)
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from None
    for warning in config_warnings(cfg):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{cfg.path}: ok ({len(cfg.profiles)} profiles, {len(cfg.cas)} CA)")


@main.command("hash-secret")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the secret from standard input.")
def hash_secret_cmd(from_stdin: bool) -> None:
    """Hash a password or static challenge for the config (scrypt)."""
    value = sys.stdin.readline().rstrip("\n") if from_stdin else getpass.getpass("secret: ")
    if not value:
        raise click.ClickException("empty secret")
    click.echo(hash_secret(value))


@main.group()
def certs() -> None:
    """Issued certificates."""


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _print_certs(rows: list[Any]) -> None:
    click.echo(f"{'SERIAL':<42} {'PROFILE':<12} {'VIA':<5} {'STATUS':<8} {'NOT AFTER':<16} SUBJECT")
    for r in rows:
        click.echo(f"{serial_hex(r.serial):<42} {r.profile:<12} {r.channel:<5} {_state(r):<8} "
                   f"{_when(r.not_after):<16} {r.subject}")


@certs.command("list")
@click.option("--profile", default=None, help="Only this profile.")
@click.option("--state", type=click.Choice(["valid", "revoked", "on_hold", "retired", "expired"]), default=None)
@click.option("--device", default=None, help="Only this device (see `enroll devices list`).")
@click.option("--search", default=None, help="Substring of the subject.")
@click.option("--limit", default=100, show_default=True)
@click.pass_context
def certs_list(ctx: click.Context, profile: str | None, state: str | None, device: str | None,
               search: str | None, limit: int) -> None:
    """List issued certificates, newest first."""

    async def go(issuer: Issuer) -> None:
        _print_certs(await issuer.ledger.query_certificates(
            CertificateQuery(profile=profile, state=state, device=device, text=search, limit=limit)))

    _run_with_issuer(ctx, go)


@certs.command("expiring")
@click.option("--within", default="30d", show_default=True, help="Window: 30d, 2w, 12h, 90m.")
@click.option("--profile", default=None, help="Only this profile.")
@click.pass_context
def certs_expiring(ctx: click.Context, within: str, profile: str | None) -> None:
    """Valid certificates whose notAfter falls within the window, soonest first."""
    try:
        seconds = parse_duration(within)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--within") from None

    async def go(issuer: Issuer) -> None:
        _print_certs(await issuer.expiring(seconds, profile))

    _run_with_issuer(ctx, go)


async def _one(issuer: Issuer, serial: int) -> Any:
    rows = [r for r in await issuer.ledger.find_serial_any_issuer(serial) if r.der]
    if not rows:
        raise click.ClickException(f"no issued certificate with serial {serial_hex(serial)}")
    return rows[0]


@certs.command("show")
@click.argument("serial")
@click.pass_context
def certs_show(ctx: click.Context, serial: str) -> None:
    """Show one certificate's ledger record."""
    n = _parse_serial(serial)

    async def go(issuer: Issuer) -> None:
        r = await _one(issuer, n)
        cert = x509.load_der_x509_certificate(r.der)
        for k, v in [("serial", serial_hex(r.serial)), ("subject", r.subject), ("issuer CA", r.issuer),
                     ("profile", r.profile), ("protocol", r.channel), ("requester", r.requester),
                     ("not before", _when(r.not_before)), ("not after", _when(r.not_after)),
                     ("issued", _when(r.issued_at)), ("revoked", _when(r.revoked_at)),
                     ("revocation reason", r.revocation_reason or "-"), ("retired", _when(r.retired_at)),
                     ("state", _state(r)), ("device", r.device or "-"),
                     ("CSR sha256", r.csr_sha256), ("key sha256", r.spki_sha256),
                     ("transaction", r.transaction_id or "-")]:
            click.echo(f"{k:>18}: {v}")
        for ext in cert.extensions:
            click.echo(f"{'extension':>18}: {ext.oid._name} {'(critical)' if ext.critical else ''}")

    _run_with_issuer(ctx, go)


@certs.command("import")
@click.argument("pem", type=click.Path(exists=True, dir_okay=False))
@click.option("--profile", required=True, help="The profile the certificate counts as issued under.")
@click.pass_context
def certs_import(ctx: click.Context, pem: str, profile: str) -> None:
    """Record certificates one of our CAs signed outside the ledger, so that they authenticate
    (client certificates our CA signed but the ledger does not know are refused as anomalies)."""
    try:
        found = x509.load_pem_x509_certificates(Path(pem).read_bytes())
    except ValueError as exc:
        raise click.ClickException(f"{pem}: {exc}") from None

    async def go(issuer: Issuer) -> None:
        for cert in found:
            rec = await issuer.adopt(cert, profile, by=_operator())
            click.echo(f"recorded {serial_hex(rec.serial)} {rec.subject} (CA {rec.issuer}, profile {rec.profile})")

    _run_with_issuer(ctx, go)


@certs.command("export")
@click.argument("serial")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="File to write (default stdout).")
@click.option("--der", is_flag=True, help="DER instead of PEM.")
@click.pass_context
def certs_export(ctx: click.Context, serial: str, out: str | None, der: bool) -> None:
    """Export one certificate."""
    n = _parse_serial(serial)

    async def go(issuer: Issuer) -> bytes:
        r = await _one(issuer, n)
        cert = x509.load_der_x509_certificate(r.der)
        return cert.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)

    data = _run_with_issuer(ctx, go)
    if out:
        Path(out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


@main.command()
@click.argument("serial")
@click.option("--reason", type=click.Choice(sorted(REASONS)), default="unspecified", show_default=True)
@click.option("--ca", default=None, help="CA name, when the serial exists under several.")
@click.pass_context
def revoke(ctx: click.Context, serial: str, reason: str, ca: str | None) -> None:
    """Revoke a certificate and publish a new CRL (RFC 5280 §5.3.1 reason codes)."""
    n = _parse_serial(serial)
    rec = _run_with_issuer(ctx, lambda issuer: issuer.revoke(n, reason, ca, by=_operator()))
    click.echo(f"{'held' if reason == 'certificate_hold' else 'revoked'} {serial_hex(rec.serial)} ({rec.subject}) "
               f"reason={reason}")


@main.command()
@click.argument("serial")
@click.option("--ca", default=None, help="CA name, when the serial exists under several.")
@click.pass_context
def unhold(ctx: click.Context, serial: str, ca: str | None) -> None:
    """Release a certificate put on hold (revoke --reason certificate_hold); it leaves the CRL."""
    n = _parse_serial(serial)
    rec = _run_with_issuer(ctx, lambda issuer: issuer.unhold(n, ca, by=_operator()))
    click.echo(f"released {serial_hex(rec.serial)} ({rec.subject}) from hold")


@main.command()
@click.argument("serial")
@click.pass_context
def retire(ctx: click.Context, serial: str) -> None:
    """Retire one certificate: it can no longer be renewed (see also `devices retire`)."""
    n = _parse_serial(serial)
    rec = _run_with_issuer(ctx, lambda issuer: issuer.retire(n, by=_operator()))
    click.echo(f"retired {serial_hex(rec.serial)} ({rec.subject})")


@main.group()
def devices() -> None:
    """The device inventory: the identity (profile, subject, SANs) behind certificates."""


@devices.command("list")
@click.option("--profile", default=None, help="Only this profile.")
@click.option("--search", default=None, help="Substring of the subject or a SAN.")
@click.option("--retired/--active", default=None, help="Only retired / only active devices.")
@click.option("--limit", default=100, show_default=True)
@click.pass_context
def devices_list(ctx: click.Context, profile: str | None, search: str | None, retired: bool | None,
                 limit: int) -> None:
    """List devices."""

    async def go(issuer: Issuer) -> None:
        rows = await issuer.ledger.list_devices(profile=profile, text=search, retired=retired, limit=limit)
        click.echo(f"{'DEVICE':<32} {'PROFILE':<12} {'CERTS':>5} {'VALID':>5} {'STATE':<8} {'LAST ISSUED':<16} "
                   "SUBJECT / SANS")
        for d in rows:
            click.echo(f"{d.device:<32} {d.profile:<12} {d.certificates:>5} {d.active:>5} "
                       f"{'retired' if d.retired else 'active':<8} {_when(d.last_issued_at):<16} "
                       f"{d.subject} {' '.join(d.sans)}")

    _run_with_issuer(ctx, go)


@devices.command("show")
@click.argument("device")
@click.pass_context
def devices_show(ctx: click.Context, device: str) -> None:
    """A device, its certificates and its history (issuance, renewal, revocation)."""

    async def go(issuer: Issuer) -> None:
        d = await issuer.get_device(device)
        for k, v in [("device", d.device), ("profile", d.profile), ("subject", d.subject),
                     ("SANs", " ".join(d.sans) or "-"), ("first seen", _when(d.first_seen)),
                     ("retired", f"{_when(d.retired_at)} by {d.retired_by} ({d.retire_reason})" if d.retired else "-")]:
            click.echo(f"{k:>12}: {v}")
        click.echo("")
        _print_certs(await issuer.device_certificates(d.device))
        click.echo("")
        for r in reversed(await issuer.device_history(d.device)):
            click.echo(f"{_when(r.at)} {'ok ' if r.ok else 'NO '} {r.event:<14} {r.serial or '-':<40} "
                       f"{r.requester or '-'} {r.reason or ''}")

    _run_with_issuer(ctx, go)


@devices.command("revoke")
@click.argument("device")
@click.option("--reason", type=click.Choice(sorted(REASONS)), default="unspecified", show_default=True)
@click.pass_context
def devices_revoke(ctx: click.Context, device: str, reason: str) -> None:
    """Revoke every certificate of a device at once (one new CRL)."""
    done = _run_with_issuer(ctx, lambda issuer: issuer.revoke_device(device, reason, by=_operator()))
    click.echo(f"revoked {len(done)} certificate(s): {' '.join(serial_hex(r.serial) for r in done) or '-'}")


@devices.command("retire")
@click.argument("device")
@click.option("--reason", type=click.Choice(sorted(set(REASONS) - {"certificate_hold"})),
              default="cessation_of_operation", show_default=True)
@click.pass_context
def devices_retire(ctx: click.Context, device: str, reason: str) -> None:
    """Retire a device: revoke all its certificates and refuse its future enrollments and renewals."""
    done = _run_with_issuer(ctx, lambda issuer: issuer.retire_device(device, reason, by=_operator()))
    click.echo(f"retired device {device}; revoked {len(done)} certificate(s)")


def _crl_progress(step: str, done: int, total: int) -> None:
    """Progress of a large CRL on stderr (only when there is much to do)."""
    if total >= 10_000:
        click.echo(f"crl: {step} {done}/{total}", err=True)


@main.command()
@click.option("--ca", "ca_name", default=None, help="CA name (default: the only one).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="File to write (default stdout).")
@click.option("--der", is_flag=True, help="DER instead of PEM.")
@click.option("--force", is_flag=True, help="Sign a new CRL even if the current one is fresh.")
@click.pass_context
def crl(ctx: click.Context, ca_name: str | None, out: str | None, der: bool, force: bool) -> None:
    """Print the current CRL (a new one is signed when due or with --force)."""

    async def go(issuer: Issuer) -> bytes:
        name = ca_name or next(iter(issuer.cas))
        if name not in issuer.cas:
            raise click.ClickException(f"no CA named {name!r}")
        c = await (issuer.publish_crl(name, by=_operator(), progress=_crl_progress) if force
                   else issuer.crl_for_ca(name, progress=_crl_progress))
        return c.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)

    data = _run_with_issuer(ctx, go)
    if out:
        Path(out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


@main.group()
def pending() -> None:
    """Requests waiting for an operator (profiles with approval = "manual")."""


@pending.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include decided requests.")
@click.pass_context
def pending_list(ctx: click.Context, show_all: bool) -> None:
    """List pending requests."""

    async def go(issuer: Issuer) -> None:
        rows = await issuer.list_pending(None if show_all else "pending")
        click.echo(f"{'ID':>5} {'STATUS':<9} {'PROFILE':<12} {'VIA':<5} {'CREATED':<16} {'REQUESTER':<30} SUBJECT")
        for r in rows:
            click.echo(f"{r.id:>5} {r.status:<9} {r.profile:<12} {r.channel:<5} {_when(r.created_at):<16} "
                       f"{r.requester:<30} {r.subject}")

    _run_with_issuer(ctx, go)


@pending.command("approve")
@click.argument("request_id", type=int)
@click.pass_context
def pending_approve(ctx: click.Context, request_id: int) -> None:
    """Approve a request; the client's next poll gets its certificate."""
    who = _operator()
    if not _run_with_issuer(ctx, lambda issuer: issuer.approve(request_id, who)):
        raise click.ClickException(f"request {request_id} is not pending")
    click.echo(f"approved request {request_id}")


@pending.command("reject")
@click.argument("request_id", type=int)
@click.option("--reason", default="", help="Shown to the operator and in the audit trail.")
@click.pass_context
def pending_reject(ctx: click.Context, request_id: int, reason: str) -> None:
    """Reject a request; the client's next poll is refused."""
    who = _operator()
    if not _run_with_issuer(ctx, lambda issuer: issuer.reject(request_id, who, reason)):
        raise click.ClickException(f"request {request_id} is not pending")
    click.echo(f"rejected request {request_id}")


@main.group()
def challenge() -> None:
    """One-time SCEP challenges."""


@challenge.command("new")
@click.option("--profile", required=True, help="Profile the challenge is bound to.")
@click.option("--ttl", default=3600, show_default=True, help="Seconds until it expires.")
@click.pass_context
def challenge_new(ctx: click.Context, profile: str, ttl: int) -> None:
    """Print a new one-time challenge (used once, within its TTL, for this profile only)."""
    if ttl < 1:
        raise click.BadParameter("must be positive", param_hint="--ttl")
    click.echo(_run_with_issuer(ctx, lambda issuer: issuer.create_one_time_challenge(profile, ttl, by=_operator())))


@main.command()
@click.option("--limit", default=50, show_default=True)
@click.option("--serial", default=None, help="Only records about this certificate.")
@click.option("--device", default=None, help="Only records about this device and its certificates.")
@click.option("--since", default=None, help="From this time on (ISO 8601, UTC unless a zone is given).")
@click.option("--until", default=None, help="Before this time.")
@click.option("--event", default=None, help="Only this event (issue, renew, revoke, hold, unhold, approve, ...).")
@click.pass_context
def audit(ctx: click.Context, limit: int, serial: str | None, device: str | None, since: str | None,
          until: str | None, event: str | None) -> None:
    """Show the decision log, oldest of the selection first."""
    serials = [_parse_serial(serial)] if serial else None
    t0, t1 = _parse_when(since, "--since"), _parse_when(until, "--until")

    async def go(issuer: Issuer) -> None:
        nonlocal serials
        dev = None
        if device:
            dev = (await issuer.get_device(device)).device
            serials = [c.serial for c in await issuer.device_certificates(dev)]
        for r in reversed(await issuer.ledger.audit_records(limit, serials=serials, device=dev, since=t0, until=t1,
                                                            event=event)):
            click.echo(f"{_when(r.at)} {'ok ' if r.ok else 'NO '} {r.event:<14} {r.channel or '-':<5} "
                       f"{r.profile or '-':<10} {r.serial or '-':<40} {r.requester or '-'} {r.reason or ''}")

    _run_with_issuer(ctx, go)


@main.group()
def admin() -> None:
    """Admin API and page credentials."""


@admin.command("token")
@click.argument("name")
def admin_token(name: str) -> None:
    """Make a bearer token for the admin API/page; prints it once with its [admin.tokens.NAME] table."""
    from ca.authz import new_challenge

    if not name.replace("-", "").replace("_", "").isalnum():
        raise click.BadParameter("use letters, digits, - and _", param_hint="NAME")
    token = new_challenge(40)
    click.echo(f"token (shown once; give it to the admin): {token}")
    click.echo("add to the config:")
    click.echo(f"[admin.tokens.{name}]\nhash = \"{hash_secret(token)}\"")


# --- CA rollover (ca/rollover.py; RFC 4210 §4.4, RFC 7030 §4.1.3, RFC 8894 §3.5.2) ------------
@main.group("ca")
def ca_group() -> None:
    """CA key rollover: prepare the next CA, then switch issuance to it."""


def _cas_header(name: str) -> re.Pattern[str]:
    return re.compile(r'^\s*\[\s*cas\s*\.\s*(?:"' + re.escape(name) + '"|' + re.escape(name) + r')\s*\]\s*(#.*)?$')


def _set_in_ca_table(text: str, name: str, key: str, value: str) -> str:
    """``key = value`` in the ``[cas.NAME]`` table of the config text (replaced if present,
    else right under the header), leaving every other line as it is."""
    lines = text.splitlines(keepends=True)
    header = _cas_header(name)
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        raise click.ClickException(f"no [cas.{name}] header line in the config; add {key} = {value} by hand")
    end = next((j for j in range(start + 1, len(lines)) if lines[j].lstrip().startswith("[")), len(lines))
    assign = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    for j in range(start + 1, end):
        if assign.match(lines[j]):
            lines[j] = f"{key} = {value}\n"
            return "".join(lines)
    lines.insert(start + 1, f"{key} = {value}\n")
    return "".join(lines)


def _rel(config: Config, p: Path) -> str:
    try:
        return str(p.relative_to(config.base_dir))
    except ValueError:
        return str(p)


@ca_group.command("rollover")
@click.argument("ca_name", metavar="CA")
@click.option("--name", "new_name", default=None, help="Name of the new [cas.NAME] (default: CA-2, CA-3, ...).")
@click.option("--key-type", type=click.Choice(["rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384"]),
              default=None, help="Key of the next CA (default: like the current one).")
@click.option("--days", type=click.IntRange(1, 36500), default=None,
              help="Validity of the next CA (default: as long as the current one).")
@click.option("--cn", default=None, help="commonName of the next CA (default: the current subject).")
@click.option("--parent-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="For an issuing CA: the certificate of the CA that signs it.")
@click.option("--parent-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="For an issuing CA: the parent's key (PEM, mode 0600).")
@click.pass_context
def ca_rollover(ctx: click.Context, ca_name: str, new_name: str | None, key_type: str | None, days: int | None,
                cn: str | None, parent_cert: str | None, parent_key: str | None) -> None:
    """Create the next CA key and certificate and configure it as CA's successor (next_ca).

    A root gets a new self-signed root and the NewWithOld and OldWithNew link certificates
    (RFC 4210 §4.4), published by EST /cacerts (RFC 7030 §4.1.3); an issuing CA gets a new
    certificate from --parent-cert/--parent-key. SCEP GetNextCACert offers the next CA until
    `enroll ca activate` switches issuance to it."""
    from ca.keys import load_file_key, write_private_key
    from ca.rollover import is_root, next_issuing, next_root
    from enroll.config import load_certs

    config = _config(ctx)
    c = config.cas.get(ca_name)
    if c is None or c.backend != "local":
        raise click.ClickException(f"no local CA named {ca_name!r}")
    if c.next_ca is not None:
        raise click.ClickException(f"CA {ca_name!r} already rolls over to {c.next_ca!r}")
    if not isinstance(c.key, Path):
        raise click.ClickException("the CA key is not a file: generate the next key in the token and configure "
                                   "[cas.NEW] and next_ca by hand")
    name = new_name or next(f"{ca_name}-{i}" for i in range(2, 1000) if f"{ca_name}-{i}" not in config.cas)
    if name in config.cas or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise click.ClickException(f"{name!r} is taken or not a bare TOML key")
    passphrase = None
    if c.key_passphrase_env:
        passphrase = os.environ.get(c.key_passphrase_env, "").encode() or None
    current = load_certs(c.cert, f"cas.{ca_name}.cert")[0]
    signer = load_file_key(c.key, f"cas.{ca_name}.key", passphrase)
    try:
        if is_root(current):
            nxt = next_root(current, signer, key_type=key_type, days=days, cn=cn)
        else:
            if parent_cert is None or parent_key is None:
                raise click.ClickException("an issuing CA rolls over with --parent-cert and --parent-key")
            parent = x509.load_pem_x509_certificates(Path(parent_cert).read_bytes())[0]
            nxt = next_issuing(current, parent, load_file_key(Path(parent_key), "--parent-key"), key_type=key_type,
                               days=days, cn=cn)
    except CAError as exc:
        raise click.ClickException(exc.detail) from None
    out_dir = c.cert.parent
    cert_path, key_path, links_path = out_dir / f"{name}.pem", out_dir / f"{name}.key", out_dir / f"{name}-links.pem"
    for p in (cert_path, key_path, links_path):
        if p.exists():
            raise click.ClickException(f"{p} exists; choose another --name")
    cert_path.write_bytes(nxt.cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(key_path, nxt.key)
    text = config.path.read_text()
    table = (f'\n[cas.{name}]                       # successor of [cas.{ca_name}] (enroll ca rollover)\n'
             f'backend = "local"\ncert = "{_rel(config, cert_path)}"\nkey = "{_rel(config, key_path)}"\n')
    if c.chain:
        table += "chain = [" + ", ".join(f'"{_rel(config, p)}"' for p in c.chain) + "]\n"
    table += f"crl_validity_hours = {c.crl_validity_hours}\n"
    text = _set_in_ca_table(text, ca_name, "next_ca", f'"{name}"')
    if nxt.links:
        links_path.write_bytes(b"".join(x.public_bytes(serialization.Encoding.PEM) for x in nxt.links))
        text = _set_in_ca_table(text, ca_name, "rollover_certs", f'["{_rel(config, links_path)}"]')
    _write_config(config, text.rstrip("\n") + "\n" + table)
    click.echo(f"wrote {cert_path} and {key_path} (mode 0600)")
    if nxt.links:
        click.echo(f"wrote {links_path} (OldWithNew, NewWithOld; published by /cacerts)")
    click.echo(f"[cas.{name}] added; [cas.{ca_name}] next_ca = \"{name}\"")
    click.echo(f"next: add {_rel(config, cert_path)} to the [trust.*] stores that list the current CA, restart, "
               f"then `enroll ca activate {ca_name} [--at TIME]`")


@ca_group.command("activate")
@click.argument("ca_name", metavar="CA")
@click.option("--at", "at", default=None, help="RFC 3339 time of the switch (default: now).")
@click.pass_context
def ca_activate(ctx: click.Context, ca_name: str, at: str | None) -> None:
    """Switch issuance from CA to its successor (next_ca) at --at: its profiles issue from the
    successor, while CA keeps signing CRLs and answering OCSP for its certificates until they
    expire (keep [cas.CA] configured until then)."""
    config = _config(ctx)
    c = config.cas.get(ca_name)
    if c is None or c.next_ca is None:
        raise click.ClickException(f"CA {ca_name!r} has no next_ca: run `enroll ca rollover {ca_name}` first")
    when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    if at is not None:
        try:
            when = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter("use an RFC 3339 time such as 2027-01-01T00:00:00Z", param_hint="--at") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
    stamp = when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    _write_config(config, _set_in_ca_table(config.path.read_text(), ca_name, "activate_at", f'"{stamp}"'))
    users = sorted(p.name for p in config.profiles.values() if p.ca == ca_name)
    click.echo(f"from {stamp} the profiles of CA {ca_name!r} ({', '.join(users) or 'none'}) issue from "
               f"{c.next_ca!r}; restart `enroll serve` to apply it")
    click.echo(f"keep [cas.{ca_name}] until its last certificate expires (at the latest "
               f"{load_certs_first(c.cert).not_valid_after_utc:%Y-%m-%d}): it signs their CRLs")


def _write_config(config: Config, text: str) -> None:
    """Write the edited config only if it still validates."""
    import tomllib

    from enroll.config import parse_config

    try:
        parse_config(tomllib.loads(text), config.path)
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"the edited config would not load ({exc}); {config.path} is unchanged") from None
    config.path.write_text(text)


@main.command("backup")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The archive to write (a tar, mode 0600).")
@click.option("--no-keys", is_flag=True, help="Leave private key files out of the archive.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
@click.pass_context
def backup_cmd(ctx: click.Context, out: str, no_keys: bool, quiet: bool) -> None:
    """Archive the config, the files it names and an online snapshot of the SQLite ledger,
    with a manifest of SHA-256 hashes (PostgreSQL: use pg_dump for the database)."""
    from enroll.backup import BackupError, backup

    config = _config(ctx)
    try:
        manifest = backup(config.path, Path(out), include_keys=not no_keys,
                          progress=(lambda _: None) if quiet else _progress("backup"))
    except (BackupError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if not manifest["ledger"]["included"]:
        click.echo(f"note: the ledger is not in the archive: {manifest['ledger']['note']}", err=True)
    click.echo(out)


@main.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="An empty or new directory to restore into.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def restore_cmd(archive: str, directory: str, quiet: bool) -> None:
    """Verify every file of a backup against its manifest, then restore it into DIR."""
    from enroll.backup import BackupError, restore

    try:
        config_path = restore(Path(archive), Path(directory), progress=(lambda _: None) if quiet else _progress("restore"))
    except (BackupError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored; next: enroll -c {config_path} config check && enroll -c {config_path} serve")


def _progress(what: str) -> Callable[[str], None]:
    """Progress lines for long CLI work, on stderr so stdout stays the result."""

    def say(line: str) -> None:
        click.echo(f"{what}: {line}", err=True)

    return say


def load_certs_first(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file."""
    from enroll.config import load_certs

    return load_certs(path, str(path))[0]


def _add_protocol_clients() -> None:
    import importlib

    for mod, attr in (("est.cli", "est"), ("scep.cli", "scep"), ("conformance.cli", "conformance"),
                      ("enroll.bench.cli", "bench"), ("enroll.factory_cli", "credentials"),
                      ("enroll.factory_cli", "issue_cmd"), ("enroll.factory_cli", "export_cmd"),
                      ("enroll.factory_cli", "import_cmd")):
        try:
            group = getattr(importlib.import_module(mod), attr)
        except (ModuleNotFoundError, AttributeError):
            continue
        main.add_command(group)


_add_protocol_clients()

if __name__ == "__main__":  # pragma: no cover
    main()
