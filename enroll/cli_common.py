"""What every ``enroll`` subcommand shares: the config of the root group, an issuer for one
command, the operator's name in the audit trail, and the CLI's spellings of times and serials."""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from ca.errors import CAError, ConfigError
from ca.issuer import Issuer
from ca.serials import parse_serial
from enroll.config import Config, load_config

T = TypeVar("T")

DEFAULT_CONFIG = "enroll.toml"


def config_of(ctx: click.Context) -> Config:
    """The config file named by ``enroll -c`` (or $ENROLL_CONFIG), loaded and checked."""
    try:
        return load_config(ctx.obj["config"])
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc}") from None


def run_with_issuer(ctx: click.Context, fn: Callable[[Issuer], Awaitable[T]]) -> T:
    """Run ``fn`` with an issuer over the configured ledger (migrated first, closed after);
    core errors become the command's error message."""
    from enroll.app import build_issuer

    config = config_of(ctx)

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


def operator() -> str:
    """How the audit trail names a CLI operator."""
    return f"cli:{getpass.getuser()}"


def parse_when(text: str | None, param: str) -> float | None:
    """An ISO 8601 date or time option (UTC unless a zone is given) as a timestamp."""
    if not text:
        return None
    try:
        d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("use an ISO 8601 date or time, e.g. 2026-01-31 or 2026-01-31T12:00Z",
                                 param_hint=param) from None
    return (d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)).timestamp()


def when(ts: float | None) -> str:
    """A timestamp as the CLI's tables show it (UTC, to the minute)."""
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def serial_arg(text: str) -> int:
    """A serial number argument, in the spelling ``enroll certs list`` shows (hex)."""
    try:
        return parse_serial(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a hex serial number (as `enroll certs list` shows)") from None


def progress(what: str) -> Callable[[str], None]:
    """Progress lines for long CLI work, on stderr so stdout stays the result."""

    def say(line: str) -> None:
        click.echo(f"{what}: {line}", err=True)

    return say


def write_out(data: bytes, out: str | None) -> None:
    """A command's binary result (a certificate, a CRL) to ``--out`` or to stdout."""
    if out:
        Path(out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
