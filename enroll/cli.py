"""The ``enroll`` command: the root group, set up (``init``), ``serve``, ``config check``,
secrets and admin tokens, backup and restore. The administration commands live in
``enroll/cli_certs.py`` (certificates, devices, CRLs), ``enroll/cli_requests.py`` (pending
requests, challenges, audit) and ``enroll/cli_ca.py`` (CA rollover); each is added to the root
group here, as are the protocol clients' groups."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Any

import click

from ca.authz import hash_secret
from ca.errors import ConfigError
from enroll.cli_common import DEFAULT_CONFIG, config_of, progress


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

    config = config_of(ctx)
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

    cfg = config_of(ctx)
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



@main.command("backup")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The archive to write (a tar, mode 0600).")
@click.option("--no-keys", is_flag=True, help="Leave private key files out of the archive.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
@click.pass_context
def backup_cmd(ctx: click.Context, out: str, no_keys: bool, quiet: bool) -> None:
    """Archive the config, the files it names and an online snapshot of the SQLite ledger,
    with a manifest of SHA-256 hashes (PostgreSQL: use pg_dump for the database)."""
    from enroll.backup import BackupError, backup

    config = config_of(ctx)
    try:
        manifest = backup(config.path, Path(out), include_keys=not no_keys,
                          progress=(lambda _: None) if quiet else progress("backup"))
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
        config_path = restore(Path(archive), Path(directory), progress=(lambda _: None) if quiet else progress("restore"))
    except (BackupError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored; next: enroll -c {config_path} config check && enroll -c {config_path} serve")


def _add_commands() -> None:
    """The administration commands, and the protocol clients' groups where installed."""
    import importlib

    from enroll import cli_ca, cli_certs, cli_requests

    for module in (cli_certs, cli_requests, cli_ca):
        for command in module.COMMANDS:
            main.add_command(command)
    for mod, attr in (("est.cli", "est"), ("scep.cli", "scep"), ("conformance.cli", "conformance"),
                      ("enroll.bench.cli", "bench"), ("enroll.factory_cli", "credentials"),
                      ("enroll.factory_cli", "issue_cmd"), ("enroll.factory_cli", "export_cmd"),
                      ("enroll.factory_cli", "import_cmd")):
        try:
            group = getattr(importlib.import_module(mod), attr)
        except (ModuleNotFoundError, AttributeError):
            continue
        main.add_command(group)


_add_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
