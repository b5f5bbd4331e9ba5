"""``enroll est ...``: the EST client on the command line (RFC 7030 §4).

Every command needs ``--ca-file`` (the explicit trust anchor, RFC 7030 §3.6.1) and writes PEM.
The password comes from ``--password``, ``$EST_PASSWORD`` or a prompt, never from logs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca import pemfile
from est import asn1, serverkeygen_cms
from est.client import CsrInput, EnrollmentPending, EnrollResult, EstClient, build_csr
from est.errors import EstError

T = TypeVar("T")


def _run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except EnrollmentPending as exc:
        raise click.ClickException(f"still pending: {exc.detail} (retry after {exc.retry_after}s)")
    except EstError as exc:
        raise click.ClickException(exc.detail) from None
    except OSError as exc:
        raise click.ClickException(str(exc)) from None


def _write_issued(cert: x509.Certificate, chain: tuple[x509.Certificate, ...], out: Path | None,
                  chain_out: Path | None) -> None:
    """The issued certificate to ``--out`` and every returned certificate to ``--chain-out`` (PEM)."""
    pemfile.write(out, pemfile.pem([cert]))
    if chain_out:
        pemfile.write(chain_out, pemfile.pem(chain))


async def _post_csr(opts: dict[str, Any], pop: bool, factory: CsrInput, *, renewal: bool = False) -> EnrollResult:
    """POST the CSR to /simpleenroll, or /simplereenroll for a ``renewal`` (RFC 7030 §4.2)."""
    async with _client(opts, pop=pop) as c:
        return await (c.reenroll(factory) if renewal else c.enroll(factory))


def _load_or_create_key(path: Path, key_type: str) -> CertificateIssuerPrivateKeyTypes:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                                ed25519.Ed25519PrivateKey)):
            raise click.ClickException(f"{path}: unsupported key type")
        return key
    new: CertificateIssuerPrivateKeyTypes
    if key_type == "rsa":
        new = rsa.generate_private_key(65537, 2048)
    elif key_type == "rsa3072":
        new = rsa.generate_private_key(65537, 3072)
    elif key_type == "p384":
        new = ec.generate_private_key(ec.SECP384R1())
    elif key_type == "ed25519":
        new = ed25519.Ed25519PrivateKey.generate()
    else:
        new = ec.generate_private_key(ec.SECP256R1())
    pemfile.write(path, pemfile.key_pem(new), private=True)
    return new


def _sans(values: tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for v in values:
        kind, _, val = v.partition(":")
        kind = kind.lower()
        if kind == "dns":
            out.append(x509.DNSName(val))
        elif kind == "ip":
            import ipaddress

            out.append(x509.IPAddress(ipaddress.ip_address(val)))
        elif kind == "email":
            out.append(x509.RFC822Name(val))
        elif kind == "uri":
            out.append(x509.UniformResourceIdentifier(val))
        else:
            raise click.BadParameter(f"{v!r}: use dns:, ip:, email: or uri:", param_hint="--san")
    return out


def _client(opts: dict[str, Any], *, pop: bool = False) -> EstClient:
    password = opts.get("password")
    if opts.get("user") and password is None:
        password = os.environ.get("EST_PASSWORD")
        if password is None:
            password = click.prompt("EST password", hide_input=True)
    return EstClient(
        opts["url"],
        trust_anchor=opts["ca_file"],
        label=opts.get("label"),
        client_cert=opts.get("client_cert"),
        client_key=opts.get("client_key"),
        username=opts.get("user"),
        password=password,
        pop=pop,
        timeout=opts.get("timeout", 30.0),
        max_polls=opts.get("max_polls", 10),
        max_wait=opts.get("max_wait", 600.0),
    )


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every EST command takes."""
    fn = click.argument("url")(fn)
    fn = click.option("--ca-file", required=True, type=click.Path(exists=True, dir_okay=False),
                      help="Explicit trust anchor for the EST server (PEM).")(fn)
    fn = click.option("--label", default=None, help="EST CA label (path segment).")(fn)
    fn = click.option("--timeout", default=30.0, show_default=True, type=float)(fn)
    return fn


def _auth(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--user", "-u", default=None, help="HTTP Basic user name.")(fn)
    fn = click.option("--password", "-p", default=None,
                      help="HTTP Basic password (default: $EST_PASSWORD or prompt).")(fn)
    fn = click.option("--client-cert", type=click.Path(exists=True, dir_okay=False), default=None,
                      help="TLS client certificate (PEM).")(fn)
    fn = click.option("--client-key", type=click.Path(exists=True, dir_okay=False), default=None,
                      help="Key of the TLS client certificate (PEM).")(fn)
    fn = click.option("--max-polls", default=10, show_default=True, type=int,
                      help="How many 202 answers to wait through.")(fn)
    fn = click.option("--max-wait", default=600.0, show_default=True, type=float,
                      help="Give up polling after this many seconds.")(fn)
    return fn


@click.group("est")
def est() -> None:
    """EST client (RFC 7030): cacerts, csrattrs, enroll, reenroll, serverkeygen."""


@est.command("cacerts")
@_common
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the CA certificates here (PEM); default stdout.")
def cacerts_cmd(out: Path | None, **opts: Any) -> None:
    """GET /cacerts and write the certificates as PEM."""

    async def go() -> tuple[x509.Certificate, ...]:
        async with _client(opts) as c:
            return await c.cacerts()

    pemfile.write(out, pemfile.pem(_run(go())))


@est.command("csrattrs")
@_common
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the DER CsrAttrs here; default: print the OIDs.")
def csrattrs_cmd(out: Path | None, **opts: Any) -> None:
    """GET /csrattrs and print what the server asks for."""

    async def go() -> tuple[asn1.AttrOrOid, ...]:
        async with _client(opts) as c:
            return await c.csrattrs()

    items = _run(go())
    if out is not None:
        out.write_bytes(asn1.encode_csrattrs(items))
        return
    if not items:
        click.echo("(nothing requested)")
    for item in items:
        if item.values is None:
            click.echo(item.oid)
        else:
            click.echo(f"{item.oid} = " + ", ".join(v.hex() for v in item.values))


def _enroll_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--key", "-k", "key_path", type=click.Path(dir_okay=False, path_type=Path),
                      help="Private key for the CSR (PEM); created if missing.")(fn)
    fn = click.option("--key-type", type=click.Choice(["p256", "p384", "rsa", "rsa3072",
                                                       "ed25519"]), default="p256",
                      show_default=True, help="Type of a newly created key.")(fn)
    fn = click.option("--subject", "-s", default=None, help='Subject, e.g. "CN=dev1,O=Example".')(fn)
    fn = click.option("--san", multiple=True, help="dns:NAME, ip:ADDR, email:X or uri:X.")(fn)
    fn = click.option("--csr", "csr_path", type=click.Path(exists=True, dir_okay=False,
                                                           path_type=Path),
                      default=None, help="Send this ready-made CSR (PEM or DER) instead.")(fn)
    fn = click.option("--pop/--no-pop", default=False,
                      help="Link the CSR to the TLS session (tls-unique; forces TLS 1.2).")(fn)
    fn = click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path),
                      default=None, help="Write the certificate here (PEM); default stdout.")(fn)
    fn = click.option("--chain-out", type=click.Path(dir_okay=False, path_type=Path),
                      default=None, help="Also write every returned certificate here.")(fn)
    return fn


def _csr_factory(
    key: CertificateIssuerPrivateKeyTypes | None,
    subject: x509.Name | None,
    sans: list[x509.GeneralName],
    csr_path: Path | None,
    extra: list[tuple[str, bytes]] | None = None,
) -> Any:
    if csr_path is not None:
        raw = csr_path.read_bytes()
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_csr(raw)
        return x509.load_der_x509_csr(raw)
    if key is None or subject is None:
        raise click.UsageError("give --subject and --key, or --csr")
    return lambda challenge: build_csr(key, subject, sans=sans, challenge=challenge,
                                       extra_attributes=extra)


def _subject(text: str | None) -> x509.Name | None:
    if text is None:
        return None
    try:
        return x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--subject") from None


@est.command("enroll")
@_common
@_auth
@_enroll_options
@click.option("--from-csrattrs", is_flag=True, default=False,
              help="Fill the CSR from the label's /csrattrs template (RFC 9908): its subject values, key "
                   "algorithm and extensions; --subject and --san give what it leaves open. Needs --key "
                   "(a new key of the template's algorithm is written there).")
def enroll_cmd(key_path: Path | None, key_type: str, subject: str | None, san: tuple[str, ...],
               csr_path: Path | None, pop: bool, out: Path | None, chain_out: Path | None,
               from_csrattrs: bool = False, **opts: Any) -> None:
    """POST /simpleenroll with a new or existing key."""
    if from_csrattrs:
        if csr_path is not None or key_path is None:
            raise click.UsageError("--from-csrattrs needs --key and no --csr")
        result = _run(_enroll_from_template(key_path, _subject(subject), _sans(san), pop, opts))
    else:
        key = _load_or_create_key(key_path, key_type) if key_path else None
        result = _run(_post_csr(opts, pop, _csr_factory(key, _subject(subject), _sans(san), csr_path)))
    _write_issued(result.certificate, result.certificates, out, chain_out)


@est.command("reenroll")
@_common
@_auth
@_enroll_options
@click.option("--rekey/--same-key", default=False,
              help="Generate a new key (written to --key) instead of reusing the client key.")
def reenroll_cmd(key_path: Path | None, key_type: str, subject: str | None, san: tuple[str, ...],
                 csr_path: Path | None, pop: bool, out: Path | None, chain_out: Path | None,
                 rekey: bool, **opts: Any) -> None:
    """POST /simplereenroll over TLS with the certificate being renewed (RFC 7030 §4.2.2).

    Subject and SAN are copied from --client-cert unless given."""
    if not opts.get("client_cert") or not opts.get("client_key"):
        raise click.UsageError("reenroll needs --client-cert and --client-key (RFC 7030 §3.3.2)")
    old = x509.load_pem_x509_certificate(Path(opts["client_cert"]).read_bytes())
    name = _subject(subject) or old.subject
    sans = _sans(san)
    if not sans:
        try:
            sans = list(old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = []
    if rekey:
        if key_path is None:
            raise click.UsageError("--rekey needs --key for the new key")
        if key_path.exists():
            raise click.UsageError(f"{key_path} exists; --rekey writes a new key there")
        key: CertificateIssuerPrivateKeyTypes | None = _load_or_create_key(key_path, key_type)
    else:
        key = _load_or_create_key(Path(opts["client_key"]), key_type)
    result = _run(_post_csr(opts, pop, _csr_factory(key, name, sans, csr_path), renewal=True))
    _write_issued(result.certificate, result.certificates, out, chain_out)


@est.command("serverkeygen")
@_common
@_auth
@click.option("--subject", "-s", required=True, help='Subject, e.g. "CN=dev1".')
@click.option("--san", multiple=True, help="dns:NAME, ip:ADDR, email:X or uri:X.")
@click.option("--key-out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the server-generated private key here (PEM, mode 0600).")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the certificate here (PEM); default stdout.")
@click.option("--kek-id", default=None, help="DecryptKeyIdentifier (hex) of a shared AES KEK.")
@click.option("--kek-hex", default=None, help="The shared AES KEK (hex, 16/24/32 bytes).")
@click.option("--encrypt-to-client-key/--no-encrypt", default=False,
              help="Ask for the key encrypted to --client-cert (AsymmetricDecryptKeyIdentifier).")
def serverkeygen_cmd(subject: str, san: tuple[str, ...], key_out: Path, out: Path | None,
                     kek_id: str | None, kek_hex: str | None, encrypt_to_client_key: bool,
                     **opts: Any) -> None:
    """POST /serverkeygen (RFC 7030 §4.4): the server makes the key."""
    csr_key = ec.generate_private_key(ec.SECP256R1())  # only signs the request
    extra: list[tuple[str, bytes]] = []
    kek = None
    decrypt_key = None
    if kek_id or kek_hex:
        if not (kek_id and kek_hex):
            raise click.UsageError("--kek-id and --kek-hex go together")
        kek = serverkeygen_cms.KekRecipient(bytes.fromhex(kek_id), bytes.fromhex(kek_hex))
        extra.append((asn1.Oid.DECRYPT_KEY_IDENTIFIER, kek.key_id))
    if encrypt_to_client_key:
        if not opts.get("client_cert") or not opts.get("client_key"):
            raise click.UsageError("--encrypt-to-client-key needs --client-cert/--client-key")
        cc = x509.load_pem_x509_certificate(Path(opts["client_cert"]).read_bytes())
        extra.append((asn1.Oid.ASYMMETRIC_DECRYPT_KEY_IDENTIFIER, serverkeygen_cms.subject_key_identifier(cc)))
        decrypt_key = serialization.load_pem_private_key(
            Path(opts["client_key"]).read_bytes(), password=None
        )
    name = _subject(subject)
    assert name is not None
    csr = build_csr(csr_key, name, sans=_sans(san), extra_attributes=extra)

    async def go() -> Any:
        async with _client(opts) as c:
            return await c.serverkeygen(csr, kek=kek, decrypt_key=decrypt_key)

    result = _run(go())
    pemfile.write(key_out, pemfile.key_pem(result.private_key), private=True)
    pemfile.write(out, pemfile.pem([result.certificate]))


@est.command("fullcmc")
@_common
@_auth
@_enroll_options
@click.option("--transaction-id", type=int, default=None,
              help="CMC transactionId (RFC 5272 §6.6); random when omitted. Re-use it to poll a pending request.")
def fullcmc_cmd(key_path: Path | None, key_type: str, subject: str | None, san: tuple[str, ...],
                csr_path: Path | None, pop: bool, out: Path | None, chain_out: Path | None,
                transaction_id: int | None, **opts: Any) -> None:
    """POST /fullcmc: a Full PKI Request (RFC 7030 §4.3) with one PKCS#10 request."""
    key = _load_or_create_key(key_path, key_type) if key_path else None
    factory = _csr_factory(key, _subject(subject), _sans(san), csr_path)

    async def go() -> Any:
        async with _client(opts, pop=pop) as c:
            return await c.enroll_cmc(factory, transaction_id=transaction_id)

    result = _run(go())
    cert = EstClient._matching(result.certificates, (key.public_key() if key is not None
                                                     else factory.public_key()))
    _write_issued(cert, result.certificates, out, chain_out)


async def _enroll_from_template(key_path: Path, subject: x509.Name | None, sans: list[x509.GeneralName],
                                pop: bool, opts: dict[str, Any]) -> Any:
    """GET /csrattrs, fill its RFC 9908 template (est/template.py), POST /simpleenroll."""
    from est import template

    async with _client(opts, pop=pop) as c:
        tmpl = template.find_template(await c.csrattrs())
        if tmpl is None:
            raise EstError("the label's /csrattrs carries no CSR attribute template (RFC 9908)")
        if key_path.exists():
            key = _load_or_create_key(key_path, "p256")
            template.check_key(tmpl, key)
        else:
            key = template.key_for(tmpl)
            pemfile.write(key_path, pemfile.key_pem(key), private=True)
        # Checked once before anything is sent, then rebuilt per TLS session when PoP-linked.
        template.fill(tmpl, key, subject=subject, sans=sans)
        return await c.enroll(lambda challenge: template.fill(tmpl, key, subject=subject, sans=sans,
                                                              challenge=challenge))
