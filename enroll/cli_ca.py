"""``enroll ca rollover`` and ``enroll ca activate``: CA key rollover (ca/rollover.py; RFC 4210
§4.4, RFC 7030 §4.1.3, RFC 8894 §3.5.2), which edits the config file in place."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.errors import CAError, ConfigError
from enroll.cli_common import config_of
from enroll.config import Config


@click.group("ca")
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
    from enroll.config_toml import load_certs

    config = config_of(ctx)
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
    config = config_of(ctx)
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




def load_certs_first(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file."""
    from enroll.config_toml import load_certs

    return load_certs(path, str(path))[0]


#: The commands this module adds to ``enroll``.
COMMANDS = (ca_group,)
