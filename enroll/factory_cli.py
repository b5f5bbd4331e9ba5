"""The factory-line commands of ``enroll``: one-time EST credentials (``enroll credentials``) and
issuance without a network (``enroll issue``, ``enroll export``, ``enroll import``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ca.errors import CAError
from ca.issuer import Issuer
from enroll.cli_common import operator, parse_when, run_with_issuer, when
from enroll.config_toml import parse_duration
from enroll.credentials import credentials_csv, device_range


def _seconds(text: str, param: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None


@click.group()
def credentials() -> None:
    """One-time EST credentials, one per device (labels with auth = ["one-time"])."""


@credentials.command("new")
@click.option("--profile", required=True, help="Profile the credentials enroll on.")
@click.option("--device", "devices", multiple=True, required=True,
              help="The device's name as its CSR states it (repeatable; with --count, the first of a range).")
@click.option("--bind", type=click.Choice(["serialNumber", "CN"]), default="serialNumber", show_default=True,
              help="The subject attribute that must equal the device name.")
@click.option("--ttl", default="7d", show_default=True, help="Lifetime (90s, 15m, 12h, 7d, 2w).")
@click.option("--uses", default=1, show_default=True, help="Enrollments each credential allows.")
@click.option("--count", default=1, show_default=True,
              help="Make N credentials for N consecutive device names from --device (SN-0001, SN-0002, ...).")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False),
              help="Write user,password,profile,bind,device,uses,expires_at here (mode 0600) instead of stdout.")
@click.pass_context
def credentials_new(ctx: click.Context, profile: str, devices: tuple[str, ...], bind: str, ttl: str, uses: int,
                    count: int, csv_path: str | None) -> None:
    """Make credentials; the passwords are shown (or written) this once only."""
    if count < 1:
        raise click.BadParameter("must be positive", param_hint="--count")
    if count > 1 and len(devices) != 1:
        raise click.BadParameter("--count takes exactly one --device (the first of the range)", param_hint="--count")
    try:
        names = device_range(devices[0], count) if count > 1 else list(devices)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    ttl_seconds = _seconds(ttl, "--ttl")

    async def go(issuer: Issuer) -> str:
        made = await issuer.create_credentials(profile, names, ttl_seconds=ttl_seconds, uses=uses, bind=bind,
                                               by=operator())
        return credentials_csv(made)

    text = run_with_issuer(ctx, go)
    if csv_path is None:
        click.echo(text, nl=False)
        return
    fd = os.open(csv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    click.echo(f"{len(names)} credential(s) for profile {profile} written to {csv_path}", err=True)


@credentials.command("list")
@click.option("--profile", default=None)
@click.option("--unused", is_flag=True, help="Only credentials that can still enroll.")
@click.pass_context
def credentials_list(ctx: click.Context, profile: str | None, unused: bool) -> None:
    """List credentials (never their passwords), newest first."""

    async def go(issuer: Issuer) -> None:
        for r in await issuer.list_credentials(profile, unused=unused):
            state = "revoked" if r.revoked_at is not None else f"{r.uses_left}/{r.uses} left"
            click.echo(f"{r.id}  {r.profile:<10} {r.bind}={r.device:<20} {state:<10} expires {when(r.expires_at)}")

    run_with_issuer(ctx, go)


@credentials.command("revoke")
@click.argument("cred_id", metavar="ID")
@click.pass_context
def credentials_revoke(ctx: click.Context, cred_id: str) -> None:
    """Revoke a credential (its user name): it enrolls nothing from now on."""
    rec = run_with_issuer(ctx, lambda issuer: issuer.revoke_credential(cred_id, by=operator()))
    click.echo(f"revoked {rec.id} ({rec.bind}={rec.device}, profile {rec.profile})")


@click.command("issue")
@click.option("--profile", required=True, help="Profile to issue under (its policy applies in full).")
@click.option("--csr", "csr_path", required=True, type=click.Path(exists=True),
              help="A CSR file (PEM or DER) or a directory of them.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Write each certificate here as NAME.crt (PEM).")
@click.option("--jobs", default=8, show_default=True, help="CSRs in flight at once.")
@click.pass_context
def issue_cmd(ctx: click.Context, profile: str, csr_path: str, out_dir: str | None, jobs: int) -> None:
    """Issue certificates for CSRs carried in (no network), through the same policy, serials and
    audit as EST and SCEP (channel "offline"). Prints what was issued and what was refused and
    why; exits 1 when anything was refused."""
    from enroll.offline import csr_files, issue_batch

    paths = csr_files(Path(csr_path))
    results = run_with_issuer(ctx, lambda issuer: issue_batch(
        issuer, profile, paths, operator(), Path(out_dir) if out_dir else None, jobs))
    refused = [r for r in results if r.reason is not None]
    for r in results:
        if r.reason is None:
            assert r.serial is not None
            again = " (issued before)" if r.replayed else ""
            click.echo(f"issued  {r.name}: serial {r.serial:x}{again}" + (f" -> {r.out}" if r.out else ""))
        else:
            click.echo(f"refused {r.name}: {r.reason}")
    click.echo(f"{len(results) - len(refused)} issued, {len(refused)} refused", err=True)
    if refused:
        sys.exit(1)


@click.command("export")
@click.option("--since", required=True, help="From this date or time on (ISO 8601, UTC unless a zone is given).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The bundle file to write.")
@click.option("--ca", "ca_name", default=None, help="The CA whose certificates to export (its key signs the bundle).")
@click.pass_context
def export_cmd(ctx: click.Context, since: str, out: str, ca_name: str | None) -> None:
    """Write a signed bundle of the certificates issued and revoked since DATE, the current CRL
    and the audit records of the period, for `enroll import` on another instance."""
    from enroll.bundle import export

    t0 = parse_when(since, "--since")
    assert t0 is not None
    data = run_with_issuer(ctx, lambda issuer: export(issuer, t0, ca_name))
    Path(out).write_bytes(data)
    click.echo(f"bundle written to {out} ({len(data)} bytes)", err=True)


@click.command("import")
@click.argument("bundle_path", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
@click.option("--trust", "trust_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="PEM file of the CA certificate(s) a bundle must be signed by.")
@click.pass_context
def import_cmd(ctx: click.Context, bundle_path: str, trust_path: str) -> None:
    """Verify a bundle from `enroll export` (signer, signature, every hash) and only then record
    its certificates (channel "import") and revocations; importing it again changes nothing."""
    from cryptography import x509

    from enroll.bundle import record, verify

    try:
        trusted = x509.load_pem_x509_certificates(Path(trust_path).read_bytes())
    except ValueError as exc:
        raise click.BadParameter(f"no PEM certificate: {exc}", param_hint="--trust") from None
    try:
        verified = verify(Path(bundle_path).read_bytes(), trusted)
    except CAError as exc:
        raise click.ClickException(f"bundle refused, nothing recorded: {exc.detail}") from None
    summary = run_with_issuer(ctx, lambda issuer: record(issuer, verified, by=operator()))
    click.echo(f"recorded {summary.recorded}, already known {summary.known}, revocations applied {summary.revoked}"
               + (f", conflicting serials {', '.join(summary.conflicts)}" if summary.conflicts else ""))
    if summary.conflicts:
        sys.exit(1)

