"""``enroll scep ...``: the SCEP client on the command line (RFC 8894 §4).

Every command takes the SCEP URL last (``http://host:port/scep[/<profile>]``). The challenge
comes from ``--challenge``, ``$SCEP_CHALLENGE`` or is absent; it never reaches logs.
Certificates are written as PEM; new private keys with mode 0600.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ca import pemfile
from scep.asn1 import MessageType, PkiStatus
from scep.client import ScepClient, ScepClientError, ScepResult, simple_csr
from scep.errors import ScepError

T = TypeVar("T")


def _run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except ScepError as exc:
        raise click.ClickException(exc.detail) from None
    except (ScepClientError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


def _client(url: str, ca_file: Path | None, legacy: bool) -> ScepClient:
    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    return ScepClient(url, ssl_context=ctx, allow_legacy=legacy)


def _rsa_key(path: Path, bits: int) -> rsa.RSAPrivateKey:
    """Load the RSA key at ``path`` or create it (SCEP key transport needs RSA, RFC 8894 §2.1)."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise click.ClickException(f"{path}: SCEP needs an RSA key")
        return key
    key = rsa.generate_private_key(65537, bits)
    pemfile.write(path, pemfile.key_pem(key), private=True)
    return key


def _finish(result: ScepResult, out: Path | None) -> None:
    if result.status is PkiStatus.SUCCESS:
        if result.crls:
            pemfile.write(out, pemfile.pem(result.crls))
        else:
            pemfile.write(out, pemfile.pem(result.certificates))
        return
    if result.status is PkiStatus.PENDING:
        raise click.ClickException(f"PENDING (transactionID {result.transaction_id}): poll again later")
    info = result.fail_info.name if result.fail_info is not None else "?"
    raise click.ClickException(f"FAILURE {info}: {result.fail_info_text or ''}")


_common = [
    click.option("--ca-file", type=click.Path(path_type=Path, exists=True), help="Trust anchor for https:// URLs."),
    click.option("--legacy", is_flag=True, help="Allow DES and SHA-1 if that is all the server offers."),
]


F = TypeVar("F", bound=Callable[..., Any])


def _with_common(f: F) -> F:
    for opt in reversed(_common):
        f = opt(f)
    return f


@click.group("scep")
def scep() -> None:
    """SCEP client (RFC 8894): caps, cacert, enroll, renew, getcert, getcrl."""


@scep.command("caps")
@_with_common
@click.argument("url")
def caps_cmd(url: str, ca_file: Path | None, legacy: bool) -> None:
    """GetCACaps: print the server's capabilities."""
    for cap in sorted(_run(_client(url, ca_file, legacy).get_ca_caps())):
        click.echo(cap)


@scep.command("cacert")
@_with_common
@click.option("-o", "--out", type=click.Path(path_type=Path), help="PEM output (default: stdout).")
@click.argument("url")
def cacert_cmd(url: str, ca_file: Path | None, legacy: bool, out: Path | None) -> None:
    """GetCACert: RA and CA certificates, in the server's order."""
    pemfile.write(out, pemfile.pem(_run(_client(url, ca_file, legacy).get_ca_cert())))


@scep.command("enroll")
@_with_common
@click.option("-k", "--key", "key_path", type=click.Path(path_type=Path), required=True,
              help="RSA key (created if missing).")
@click.option("--bits", default=2048, show_default=True, help="Size of a new key.")
@click.option("--cn", required=True, help="Subject common name.")
@click.option("--challenge", envvar="SCEP_CHALLENGE", help="challengePassword ($SCEP_CHALLENGE).")
@click.option("--wait", default=0.0, help="Poll while PENDING for up to this many seconds.")
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Certificate PEM (default: stdout).")
@click.argument("url")
def enroll_cmd(url: str, ca_file: Path | None, legacy: bool, key_path: Path, bits: int, cn: str,
               challenge: str | None, wait: float, out: Path | None) -> None:
    """PKCSReq with a fresh self-signed signer (RFC 8894 §3.3.1)."""
    key = _rsa_key(key_path, bits)
    client = _client(url, ca_file, legacy)
    csr = simple_csr(key, cn, challenge)
    _finish(_run(client.enroll_and_wait(csr, key, interval=2.0, max_wait=wait)), out)


@scep.command("renew")
@_with_common
@click.option("--cert", "cert_path", type=click.Path(path_type=Path, exists=True), required=True,
              help="The current certificate (signs the request).")
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True), required=True,
              help="Its key.")
@click.option("--new-key", "new_key_path", type=click.Path(path_type=Path),
              help="Key for the new certificate (created if missing; default: keep the key).")
@click.option("--pkcsreq", is_flag=True, help="Send PKCSReq (19) instead of RenewalReq (17).")
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Certificate PEM (default: stdout).")
@click.argument("url")
def renew_cmd(url: str, ca_file: Path | None, legacy: bool, cert_path: Path, key_path: Path,
              new_key_path: Path | None, pkcsreq: bool, out: Path | None) -> None:
    """RenewalReq signed by the current certificate (RFC 8894 §3.3.1.2)."""
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    old_key = _rsa_key(key_path, 2048)
    new_key = _rsa_key(new_key_path, 2048) if new_key_path else old_key
    b = x509.CertificateSigningRequestBuilder().subject_name(old.subject)
    csr = b.sign(new_key, hashes.SHA256())
    mtype = MessageType.PKCS_REQ if pkcsreq else MessageType.RENEWAL_REQ
    _finish(_run(_client(url, ca_file, legacy).renew(csr, old, old_key, message_type=mtype)), out)


@scep.command("getcert")
@_with_common
@click.option("--cert", "cert_path", type=click.Path(path_type=Path, exists=True), required=True,
              help="A certificate of ours that signs the request.")
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--serial", required=True, help="Serial number (hex) of the certificate wanted.")
@click.option("-o", "--out", type=click.Path(path_type=Path))
@click.argument("url")
def getcert_cmd(url: str, ca_file: Path | None, legacy: bool, cert_path: Path, key_path: Path, serial: str,
                out: Path | None) -> None:
    """GetCert: a certificate by issuer and serial (RFC 8894 §3.3.4)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = _rsa_key(key_path, 2048)
    _finish(_run(_client(url, ca_file, legacy).get_cert(int(serial.replace(":", ""), 16), cert, key,
                                                        cert.issuer)), out)


@scep.command("getcrl")
@_with_common
@click.option("--cert", "cert_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--key", "key_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("-o", "--out", type=click.Path(path_type=Path))
@click.argument("url")
def getcrl_cmd(url: str, ca_file: Path | None, legacy: bool, cert_path: Path, key_path: Path,
               out: Path | None) -> None:
    """GetCRL: the CRL of the certificate's issuer (RFC 8894 §3.3.4)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    _finish(_run(_client(url, ca_file, legacy).get_crl(cert, _rsa_key(key_path, 2048))), out)
