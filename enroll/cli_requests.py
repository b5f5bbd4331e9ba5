"""``enroll pending``, ``challenge`` and ``audit``: requests waiting for an operator, one-time
SCEP challenges (RFC 8894 §2.3) and the decision log."""

from __future__ import annotations

import click

from ca.issuer import Issuer
from ca.records import PendingStatus
from enroll.cli_common import operator, parse_when, run_with_issuer, serial_arg, when


@click.group()
def pending() -> None:
    """Requests waiting for an operator (profiles with approval = "manual")."""


@pending.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include decided requests.")
@click.pass_context
def pending_list(ctx: click.Context, show_all: bool) -> None:
    """List pending requests."""

    async def go(issuer: Issuer) -> None:
        rows = await issuer.list_pending(None if show_all else PendingStatus.PENDING)
        click.echo(f"{'ID':>5} {'STATUS':<9} {'PROFILE':<12} {'VIA':<5} {'CREATED':<16} {'REQUESTER':<30} SUBJECT")
        for r in rows:
            click.echo(f"{r.id:>5} {r.status:<9} {r.profile:<12} {r.channel:<5} {when(r.created_at):<16} "
                       f"{r.requester.describe():<30} {r.subject}")

    run_with_issuer(ctx, go)


@pending.command("approve")
@click.argument("request_id", type=int)
@click.pass_context
def pending_approve(ctx: click.Context, request_id: int) -> None:
    """Approve a request; the client's next poll gets its certificate."""
    who = operator()
    if not run_with_issuer(ctx, lambda issuer: issuer.approve(request_id, who)):
        raise click.ClickException(f"request {request_id} is not pending")
    click.echo(f"approved request {request_id}")


@pending.command("reject")
@click.argument("request_id", type=int)
@click.option("--reason", default="", help="Shown to the operator and in the audit trail.")
@click.pass_context
def pending_reject(ctx: click.Context, request_id: int, reason: str) -> None:
    """Reject a request; the client's next poll is refused."""
    who = operator()
    if not run_with_issuer(ctx, lambda issuer: issuer.reject(request_id, who, reason)):
        raise click.ClickException(f"request {request_id} is not pending")
    click.echo(f"rejected request {request_id}")


@click.group()
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
    click.echo(run_with_issuer(ctx, lambda issuer: issuer.create_one_time_challenge(profile, ttl, by=operator())))


@click.command()
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
    serials = [serial_arg(serial)] if serial else None
    t0, t1 = parse_when(since, "--since"), parse_when(until, "--until")

    async def go(issuer: Issuer) -> None:
        nonlocal serials
        dev = None
        if device:
            dev = (await issuer.get_device(device)).device
            serials = [c.serial for c in await issuer.device_certificates(dev)]
        for r in reversed(await issuer.ledger.audit_records(limit, serials=serials, device=dev, since=t0, until=t1,
                                                            event=event)):
            click.echo(f"{when(r.at)} {'ok ' if r.ok else 'NO '} {r.event:<14} {r.channel or '-':<5} "
                       f"{r.profile or '-':<10} {r.serial or '-':<40} {r.requester or '-'} {r.reason or ''}")

    run_with_issuer(ctx, go)


#: The commands this module adds to ``enroll``.
COMMANDS = (pending, challenge, audit)
