"""``enroll certs``, ``revoke``/``unhold``/``retire``, ``devices`` and ``crl``: the lifecycle of
issued certificates and of the devices behind them (RFC 5280 §5.3.1 reasons), read and changed
through the same :class:`ca.issuer.Issuer` methods and ledger queries as the admin API."""

from __future__ import annotations

import time
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.api import REASONS
from ca.issuer import Issuer
from ca.ledger import CertificateQuery, serial_hex
from ca.records import CertRecord, CertState
from enroll.cli_common import operator, run_with_issuer, serial_arg, when, write_out
from enroll.config_toml import parse_duration


@click.group()
def certs() -> None:
    """Issued certificates."""


def _print_certs(rows: list[CertRecord]) -> None:
    click.echo(f"{'SERIAL':<42} {'PROFILE':<12} {'VIA':<5} {'STATUS':<8} {'NOT AFTER':<16} SUBJECT")
    for r in rows:
        click.echo(f"{serial_hex(r.serial):<42} {r.profile:<12} {r.channel:<5} {r.state().value:<8} "
                   f"{when(r.not_after):<16} {r.subject}")


@certs.command("list")
@click.option("--profile", default=None, help="Only this profile.")
@click.option("--state", type=click.Choice([s.value for s in CertState]), default=None)
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

    run_with_issuer(ctx, go)


@certs.command("summary")
@click.pass_context
def certs_summary(ctx: click.Context) -> None:
    """Issued certificates per profile in each state, and the valid ones expiring within 7 and 30
    days: the counts of the admin API's overview (GET /admin/api/v1/overview)."""

    async def go(issuer: Issuer) -> None:
        now = time.time()
        counts = await issuer.ledger.counts_by_profile(now, [now + 7 * 86400, now + 30 * 86400])
        states = list(CertState)
        click.echo(f"{'PROFILE':<16} " + " ".join(f"{s.value.upper():>8}" for s in states)
                   + f" {'EXP 7D':>8} {'EXP 30D':>8}")
        for name in sorted(set(issuer.profiles) | set(counts)):
            c = counts.get(name, {})
            click.echo(f"{name:<16} " + " ".join(f"{c.get(s.value, 0):>8}" for s in states)
                       + f" {c.get('expiring_0', 0):>8} {c.get('expiring_1', 0):>8}")

    run_with_issuer(ctx, go)


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

    run_with_issuer(ctx, go)


async def _one(issuer: Issuer, serial: int) -> tuple[CertRecord, x509.Certificate]:
    """The ledger record of an issued certificate with this serial (under any CA) and the certificate."""
    for r in await issuer.ledger.find_serial_any_issuer(serial):
        if r.der:
            return r, x509.load_der_x509_certificate(r.der)
    raise click.ClickException(f"no issued certificate with serial {serial_hex(serial)}")


@certs.command("show")
@click.argument("serial")
@click.pass_context
def certs_show(ctx: click.Context, serial: str) -> None:
    """Show one certificate's ledger record."""
    n = serial_arg(serial)

    async def go(issuer: Issuer) -> None:
        r, cert = await _one(issuer, n)
        for k, v in [("serial", serial_hex(r.serial)), ("subject", r.subject), ("issuer CA", r.issuer),
                     ("profile", r.profile), ("protocol", r.channel), ("requester", r.requester.describe()),
                     ("not before", when(r.not_before)), ("not after", when(r.not_after)),
                     ("issued", when(r.issued_at)), ("revoked", when(r.revoked_at)),
                     ("revocation reason", r.revocation_reason or "-"), ("retired", when(r.retired_at)),
                     ("state", r.state().value), ("device", r.device or "-"),
                     ("CSR sha256", r.csr_sha256), ("key sha256", r.spki_sha256),
                     ("transaction", r.transaction_id or "-")]:
            click.echo(f"{k:>18}: {v}")
        for ext in cert.extensions:
            click.echo(f"{'extension':>18}: {ext.oid._name} {'(critical)' if ext.critical else ''}")

    run_with_issuer(ctx, go)


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
            rec = await issuer.adopt(cert, profile, by=operator())
            click.echo(f"recorded {serial_hex(rec.serial)} {rec.subject} (CA {rec.issuer}, profile {rec.profile})")

    run_with_issuer(ctx, go)


@certs.command("export")
@click.argument("serial")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="File to write (default stdout).")
@click.option("--der", is_flag=True, help="DER instead of PEM.")
@click.pass_context
def certs_export(ctx: click.Context, serial: str, out: str | None, der: bool) -> None:
    """Export one certificate."""
    n = serial_arg(serial)

    async def go(issuer: Issuer) -> bytes:
        r, cert = await _one(issuer, n)
        return cert.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)

    write_out(run_with_issuer(ctx, go), out)




@click.command()
@click.argument("serial")
@click.option("--reason", type=click.Choice(sorted(REASONS)), default="unspecified", show_default=True)
@click.option("--ca", default=None, help="CA name, when the serial exists under several.")
@click.pass_context
def revoke(ctx: click.Context, serial: str, reason: str, ca: str | None) -> None:
    """Revoke a certificate and publish a new CRL (RFC 5280 §5.3.1 reason codes)."""
    n = serial_arg(serial)
    rec = run_with_issuer(ctx, lambda issuer: issuer.revoke(n, reason, ca, by=operator()))
    click.echo(f"{'held' if reason == 'certificate_hold' else 'revoked'} {serial_hex(rec.serial)} ({rec.subject}) "
               f"reason={reason}")


@click.command()
@click.argument("serial")
@click.option("--ca", default=None, help="CA name, when the serial exists under several.")
@click.pass_context
def unhold(ctx: click.Context, serial: str, ca: str | None) -> None:
    """Release a certificate put on hold (revoke --reason certificate_hold); it leaves the CRL."""
    n = serial_arg(serial)
    rec = run_with_issuer(ctx, lambda issuer: issuer.unhold(n, ca, by=operator()))
    click.echo(f"released {serial_hex(rec.serial)} ({rec.subject}) from hold")


@click.command()
@click.argument("serial")
@click.pass_context
def retire(ctx: click.Context, serial: str) -> None:
    """Retire one certificate: it can no longer be renewed (see also `devices retire`)."""
    n = serial_arg(serial)
    rec = run_with_issuer(ctx, lambda issuer: issuer.retire(n, by=operator()))
    click.echo(f"retired {serial_hex(rec.serial)} ({rec.subject})")


@click.group()
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
                       f"{'retired' if d.retired else 'active':<8} {when(d.last_issued_at):<16} "
                       f"{d.subject} {' '.join(d.sans)}")

    run_with_issuer(ctx, go)


@devices.command("show")
@click.argument("device")
@click.pass_context
def devices_show(ctx: click.Context, device: str) -> None:
    """A device, its certificates and its history (issuance, renewal, revocation)."""

    async def go(issuer: Issuer) -> None:
        d = await issuer.get_device(device)
        for k, v in [("device", d.device), ("profile", d.profile), ("subject", d.subject),
                     ("SANs", " ".join(d.sans) or "-"), ("first seen", when(d.first_seen)),
                     ("retired", f"{when(d.retired_at)} by {d.retired_by} ({d.retire_reason})" if d.retired else "-")]:
            click.echo(f"{k:>12}: {v}")
        click.echo("")
        _print_certs(await issuer.device_certificates(d.device))
        click.echo("")
        for r in reversed(await issuer.device_history(d.device)):
            click.echo(f"{when(r.at)} {'ok ' if r.ok else 'NO '} {r.event:<14} {r.serial or '-':<40} "
                       f"{r.requester or '-'} {r.reason or ''}")

    run_with_issuer(ctx, go)


@devices.command("revoke")
@click.argument("device")
@click.option("--reason", type=click.Choice(sorted(REASONS)), default="unspecified", show_default=True)
@click.pass_context
def devices_revoke(ctx: click.Context, device: str, reason: str) -> None:
    """Revoke every certificate of a device at once (one new CRL)."""
    done = run_with_issuer(ctx, lambda issuer: issuer.revoke_device(device, reason, by=operator()))
    click.echo(f"revoked {len(done)} certificate(s): {' '.join(serial_hex(r.serial) for r in done) or '-'}")


@devices.command("retire")
@click.argument("device")
@click.option("--reason", type=click.Choice(sorted(set(REASONS) - {"certificate_hold"})),
              default="cessation_of_operation", show_default=True)
@click.pass_context
def devices_retire(ctx: click.Context, device: str, reason: str) -> None:
    """Retire a device: revoke all its certificates and refuse its future enrollments and renewals."""
    done = run_with_issuer(ctx, lambda issuer: issuer.retire_device(device, reason, by=operator()))
    click.echo(f"retired device {device}; revoked {len(done)} certificate(s)")


def _crl_progress(step: str, done: int, total: int) -> None:
    """Progress of a large CRL on stderr (only when there is much to do)."""
    if total >= 10_000:
        click.echo(f"crl: {step} {done}/{total}", err=True)


@click.command()
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
        c = await (issuer.publish_crl(name, by=operator(), progress=_crl_progress) if force
                   else issuer.crl_for_ca(name, progress=_crl_progress))
        return c.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)

    write_out(run_with_issuer(ctx, go), out)




#: The commands this module adds to ``enroll``.
COMMANDS = (certs, revoke, unhold, retire, devices, crl)
