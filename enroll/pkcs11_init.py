"""``enroll init --pkcs11 URI``: the embedded default with its CA, RA and OCSP keys in a token.

The issuing CA, SCEP RA and delegated OCSP responder keys are generated inside the PKCS#11
token named by an RFC 7512 URI (``pkcs11:token=Enroll``), sensitive and non-extractable
(ca/pkcs11.py), under the labels of :data:`LABELS`. The development root key stays a PEM file
and certifies the issuing CA; the token's issuing CA key then certifies the RA, the OCSP
responder (RFC 6960 §4.2.2.2), the TLS server and the example client. ``enroll.toml`` names the
keys by URI and gets a ``[pkcs11]`` table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca import pkcs11 as p11
from ca.errors import ConfigError
from ca.keys import load_file_key
from enroll.pki import Pair, TokenPair, make_cert, pem, recertify
from enroll.setup import InitResult

#: Debian's softhsm2 package installs its module here.
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
DEFAULT_PIN_ENV = "ENROLL_PKCS11_PIN"

#: Token object labels (CKA_LABEL) of the generated keys.
LABELS = {"issuing": "issuing-ca", "ra": "scep-ra", "ocsp": "ocsp"}


@dataclass(frozen=True)
class TokenKeys:
    """The RFC 7512 URIs of the keys ``enroll init --pkcs11`` generated."""

    issuing: str
    ra: str
    ocsp: str


def token_of(uri: str) -> p11.KeyUri:
    """The token (and pin-source) an ``enroll init --pkcs11`` URI names (RFC 7512 §2.3); it must
    not name an object: init chooses the labels."""
    path, sep, query = uri.partition("?")
    if re.search(r"(^|[:;])(object|id|type)=", path):
        raise ConfigError("--pkcs11", f"{uri!r}: name the token only (pkcs11:token=LABEL); "
                                      f"the keys are labelled {', '.join(LABELS.values())}")
    parsed = p11.parse_uri(f"{path};object=-{sep}{query}", "--pkcs11")
    return p11.KeyUri(parsed.token, pin_source=parsed.pin_source)


def _key_uri(token: p11.KeyUri, label: str) -> str:
    return str(p11.KeyUri(token.token, label, None, token.pin_source))


def preflight(token_uri: str, settings: p11.Settings) -> None:
    """Before anything is written: the module loads, the token is there, the PIN logs in, and
    none of the :data:`LABELS` is taken (ConfigError naming the problem otherwise)."""
    token = token_of(token_uri)
    for label in LABELS.values():
        uri = _key_uri(token, label)
        try:
            p11.load_key(uri, settings, "--pkcs11")
        except ConfigError as exc:
            if exc.problem.startswith("no private key"):  # ca/pkcs11.py: the label is free
                continue
            raise
        raise ConfigError("--pkcs11", f"{uri} already exists in the token: delete it or use another token")


def move_keys_to_token(init: InitResult, token_uri: str, settings: p11.Settings,
                       key_type: str = "rsa-2048") -> TokenKeys:
    """Generate the issuing CA (``key_type``), SCEP RA (RSA-2048: SCEP key transport, RFC 8894
    §3.5.2) and OCSP responder (``key_type``) keys in the token, certify them, re-issue the TLS
    server and example client certificates from the token CA, and point ``init``'s config at
    the keys. Raises ConfigError (naming the key) when the token refuses."""
    token = token_of(token_uri)
    d = init.certs_dir
    uris = TokenKeys(**{role: _key_uri(token, label) for role, label in LABELS.items()})
    issuing_key = p11.generate_key(uris.issuing, settings, "cas.issuing.key", key_type)
    ra_key = p11.generate_key(uris.ra, settings, "scep.ra_key", "rsa-2048")
    ocsp_key = p11.generate_key(uris.ocsp, settings, "cas.issuing.ocsp_key", key_type)

    root = Pair(cert_record(d / "root-ca.pem"), load_file_key(d / "root-ca.key", "root-ca.key").key)
    issuing = TokenPair(recertify(cert_record(d / "issuing-ca.pem"), issuing_key.public_key(), root), issuing_key)
    ra = recertify(cert_record(d / "scep-ra.pem"), ra_key.public_key(), issuing)
    org = issuing.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    ocsp_name = x509.Name([*org, x509.NameAttribute(NameOID.COMMON_NAME, "Enroll OCSP Responder")])
    ocsp = make_cert(ocsp_name, ocsp_key, issuing, days=825, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    tls, client = (recertify(old, old.public_key(), issuing)
                   for old in (cert_record(d / "tls-server.pem"), cert_record(d / "example-client.pem")))

    (d / "issuing-ca.pem").write_bytes(pem(issuing.cert))
    (d / "scep-ra.pem").write_bytes(pem(ra))
    (d / "ocsp.pem").write_bytes(pem(ocsp))
    (d / "tls-server.pem").write_bytes(pem(tls, issuing.cert))
    (d / "example-client.pem").write_bytes(pem(client, issuing.cert))
    (d / "ca-chain.pem").write_bytes(pem(issuing.cert, root.cert))
    for stale in ("issuing-ca.key", "scep-ra.key"):  # replaced by the token's keys
        (d / stale).unlink(missing_ok=True)
    init.config_path.write_text(token_config(init.config_path.read_text(), uris, settings))
    return uris


def token_config(text: str, uris: TokenKeys, settings: p11.Settings) -> str:
    """The rendered embedded-default config with the keys named by URI and a ``[pkcs11]`` table."""
    edits = [
        (r'(?m)^key = "certs/issuing-ca\.key".*$', f'key = "{uris.issuing}"    # in the PKCS#11 token ([pkcs11])'),
        (r'(?m)^# ocsp_cert = "certs/ocsp\.pem"$', 'ocsp_cert = "certs/ocsp.pem"'),
        (r'(?m)^# ocsp_key = "certs/ocsp\.key"$', f'ocsp_key = "{uris.ocsp}"'),
        (r'(?m)^ra_key = "certs/scep-ra\.key"$', f'ra_key = "{uris.ra}"'),
    ]
    for pattern, line in edits:
        text, n = re.subn(pattern, line.replace("\\", "\\\\"), text)
        if n != 1:
            raise ValueError(f"the config template has no single line matching {pattern}")
    table = f'\n# Keys named by pkcs11: URIs (RFC 7512) live in this PKCS#11 module\'s tokens.\n[pkcs11]\n' \
            f'module = "{settings.module}"\n'
    if settings.pin_env:
        table += f'pin_env = "{settings.pin_env}"          # the user PIN, from this environment variable\n'
    if settings.pin_file is not None:
        table += f'pin_file = "{settings.pin_file}"\n'
    return text.rstrip("\n") + "\n" + table


def cert_record(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]

