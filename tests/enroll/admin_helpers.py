"""Helpers for the admin tests: `enroll serve` with an [admin] table, HTTP calls, EST enrollment."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.authz import hash_secret
from enroll.pki import DevPKI, Pair, make_cert
from enroll.setup import InitResult
from tests.harness import RunningServer, client_ssl, start_server

TOKEN = "admin-token-for-tests-0123456789abcdef"


@dataclass
class AdminServer(RunningServer):
    """`enroll serve` with the admin API enabled (token ``TOKEN``, admin client CA)."""

    admin: Pair  # an admin client certificate (trust store "admin")
    admin_ca: Pair

    def ssl_context(self, client: Pair | None = None, tmp: Path | None = None) -> ssl.SSLContext:
        """Trusts the dev root; presents ``client`` (written under ``tmp``, else the certs dir)."""
        return client_ssl(self.ca_bundle, client, tmp or self.init.certs_dir)

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN,
             headers: dict[str, str] | None = None, raw: bytes | None = None, https: bool = True,
             client: Pair | None = None) -> tuple[int, dict[str, str], Any]:
        """One HTTP request; JSON bodies are decoded."""
        h = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        if token is not None:
            h.setdefault("Authorization", f"Bearer {token}")
        url = (self.base_https if https else self.base_http) + path
        req = urllib.request.Request(url, data=data, method=method, headers=h)
        ctx = self.ssl_context(client) if https else None
        try:
            with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:  # noqa: S310
                status, headers_out, payload = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, headers_out, payload = exc.code, dict(exc.headers), exc.read()
        ctype = headers_out.get("Content-Type", "")
        return status, headers_out, json.loads(payload) if ctype.startswith("application/json") else payload

    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, _, payload = self.call(method, "/admin/api/v1" + path, body, **kw)
        return status, payload

    def est_enroll(self, label: str, csr: x509.CertificateSigningRequest) -> tuple[int, bytes]:
        """POST /.well-known/est/<label>/simpleenroll with the EST user's password."""
        auth = base64.b64encode(self.userpass.encode()).decode()
        status, _, payload = self.call(
            "POST", f"/.well-known/est/{label}/simpleenroll", token=None,
            raw=base64.b64encode(csr.public_bytes(serialization.Encoding.DER)),
            headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {auth}"})
        return status, payload


def make_admin_ca(dev_pki: DevPKI) -> tuple[Pair, Pair]:
    """A separate admin CA and one admin's client certificate."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = Pair(make_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Enroll Admin CA")]), ca_key, None,
                        ca=True, path_length=0, days=365), ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    admin = Pair(make_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice-admin")]), key, ca, days=30,
                           eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), key)
    return ca, admin


ADMIN_TOML = """
[admin]
client_trust = ["admin"]
[admin.tokens.ops]
hash = "{hash}"

[trust.admin]
certs = ["certs/admin-ca.pem"]
"""


def write_admin_config(init: InitResult, dev_pki: DevPKI, *, admin: bool = True,
                       extra: str = "") -> tuple[Pair, Pair]:
    """Replace the template's [admin] block by ``ADMIN_TOML`` (a separate admin CA, file
    ``certs/admin-ca.pem``, plus ``extra`` lines inside [admin]), or drop it (``admin=False``).
    Returns (admin CA, one admin's client certificate)."""
    admin_ca, admin_pair = make_admin_ca(dev_pki)
    text = init.config_path.read_text()
    if "\n[admin]\n" in text:  # drop the [admin] block the template may enable
        head, _, rest = text.partition("\n[admin]\n")
        rest = rest.split("\n# ----", 1)[1] if "\n# ----" in rest else ""
        text = head + "\n# ----" + rest
    if admin:
        (init.certs_dir / "admin-ca.pem").write_bytes(admin_ca.cert.public_bytes(serialization.Encoding.PEM))
        text = text.replace('client_trust = ["enroll", "manufacturer"]', 'client_trust = ["enroll", "manufacturer", "admin"]')
        text += ADMIN_TOML.format(hash=hash_secret(TOKEN)).replace('client_trust = ["admin"]\n',
                                                                   'client_trust = ["admin"]\n' + extra)
    init.config_path.write_text(text)
    return admin_ca, admin_pair


@contextmanager
def admin_server(base: Path, dev_pki: DevPKI, *, admin: bool = True,
                 edit: Callable[[InitResult, str], str] | None = None) -> Iterator[AdminServer]:
    """Start `enroll serve` on free ports with [admin] (or without, for the fail-closed tests);
    ``edit`` may change the config text before the server starts."""
    pairs: list[Pair] = []

    def configure(init: InitResult) -> None:
        if edit is not None:
            init.config_path.write_text(edit(init, init.config_path.read_text()))
        pairs.extend(write_admin_config(init, dev_pki, admin=admin))

    with start_server(base, dev_pki, configure) as srv:
        admin_ca, admin_pair = pairs
        yield AdminServer(srv.init, srv.config, srv.https_port, srv.http_port, srv.process, srv.log_path,
                          admin_pair, admin_ca)
