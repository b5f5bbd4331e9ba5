"""SCEP load (RFC 8894 §3.3.1): PKCSReq with pre-built pkiMessages.

Every message is complete before the clock starts: CSR (with its challengePassword) signed by
the device key, EnvelopedData to the server's RA/CA certificate, SignedData by a self-signed
signer certificate (RFC 8894 §2.3). RSA-2048 device keys come from a pool (``keys``) because
RSA key generation is no server's work; each request still has its own CSR, subject,
transactionID and nonce. Building runs in a process pool. Answers (CertRep) are verified and
decrypted after the clock stops; a SUCCESS counts only with a certificate for the CSR's key.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AttributeOID, NameOID

from enroll.bench import load


@dataclass(frozen=True)
class ScepTarget:
    """A SCEP URL (http://host:port/path)."""

    url: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _build_chunk(args: tuple[bytes, bytes, bytes, list[tuple[str, str]], str, str, str, str]) -> list[bytes]:
    """Worker: pkiMessages for one pool key (runs in a child process; no shared state)."""
    from scep import cms
    from scep.client import self_signed_signer
    from scep.message import PkiMessage, new_nonce

    key_pem, recipient_der, _unused, items, cipher, digest, target_path, host = args
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    recipient = x509.load_der_x509_certificate(recipient_der)
    signer = self_signed_signer(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, items[0][0])]))
    sign = cms.rsa_signer(key)
    out = []
    for cn, challenge in items:
        b = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        if challenge:
            b = b.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode())
        csr = b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        txid = os.urandom(20).hex().upper()
        der = PkiMessage(message_type=19, transaction_id=txid, sender_nonce=new_nonce()).build(
            csr, signer_cert=signer, sign=sign, recipient=recipient, cipher=cipher, digest=digest)
        out.append(load.build_request("POST", f"{target_path}?operation=PKIOperation", host, der,
                                      [("Content-Type", "application/x-pki-message")]))
    return out + [signer.public_bytes(serialization.Encoding.DER)]


def pkcsreq_jobs(target: ScepTarget, recipient: x509.Certificate, count: int, *, challenges: list[str],
                 keys: list[rsa.RSAPrivateKey], cipher: str, digest: str, prefix: str = "bench-scep",
                 processes: int | None = None) -> list[load.Job]:
    """``count`` PKCSReq requests; ``challenges`` has one entry (static) or ``count`` (one-time)."""
    rnd = os.urandom(4).hex()
    per_key: list[list[tuple[int, str, str]]] = [[] for _ in keys]
    for i in range(count):
        ch = challenges[i] if len(challenges) > 1 else (challenges[0] if challenges else "")
        per_key[i % len(keys)].append((i, f"{prefix}-{rnd}-{i}", ch))
    host = f"{target.host}:{target.port}"
    rder = recipient.public_bytes(serialization.Encoding.DER)
    tasks = [(_key_pem(k), rder, b"", [(cn, ch) for _, cn, ch in items], cipher, digest, target.path, host)
             for k, items in zip(keys, per_key) if items]
    with ProcessPoolExecutor(processes or os.cpu_count() or 1) as pool:
        built = list(pool.map(_build_chunk, tasks))
    jobs: list[load.Job | None] = [None] * count
    for k, items, raws in zip(keys, [p for p in per_key if p], built):
        signer = x509.load_der_x509_certificate(raws[-1])
        for (i, _, _), raw in zip(items, raws[:-1]):
            jobs[i] = load.Job(raw, tag=(k, signer))
    return [j for j in jobs if j is not None]


def make_keys(n: int) -> list[rsa.RSAPrivateKey]:
    """RSA-2048 device keys (generated in a process pool)."""
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        pems = list(pool.map(_gen_key_pem, range(n)))
    out = []
    for p in pems:
        k = serialization.load_pem_private_key(p, None)
        assert isinstance(k, rsa.RSAPrivateKey)
        out.append(k)
    return out


def _gen_key_pem(_: int) -> bytes:
    return _key_pem(rsa.generate_private_key(65537, 2048))


def _judge_one(args: tuple[int, bytes, bytes, bytes]) -> tuple[str, int | None]:
    """Worker: ("ok", serial) or (error kind, None) for one CertRep body."""
    from scep.asn1 import PkiStatus
    from scep.message import CertRep

    status, body, key_pem, signer_der = args
    if status != 200:
        return f"HTTP {status}", None
    try:
        rep = CertRep.parse(body)
        rep.verify()
    except Exception as exc:  # noqa: BLE001
        return f"bad CertRep ({type(exc).__name__})", None
    if rep.status is not PkiStatus.SUCCESS:
        return f"{rep.status.name} {rep.fail_info.name if rep.fail_info is not None else ''}".strip(), None
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    signer = x509.load_der_x509_certificate(signer_der)
    try:
        certs, _ = rep.open(key.decrypt, signer)
    except Exception as exc:  # noqa: BLE001
        return f"undecryptable ({type(exc).__name__})", None
    pub = key.public_key().public_numbers()
    for c in certs:
        cpub = c.public_key()
        if isinstance(cpub, rsa.RSAPublicKey) and cpub.public_numbers() == pub:
            return "ok", c.serial_number
    return "no certificate for the CSR key", None


def judge(answers: list[load.Answer]) -> tuple[list[bool], list[int], dict[str, int]]:
    """(ok per answer, serials, error kinds), decrypting SUCCESS replies in a process pool."""
    pems: dict[int, bytes] = {}
    args: list[tuple[int, bytes, bytes, bytes]] = []
    for a in answers:
        key, signer = a.job.tag
        pem = pems.setdefault(id(key), _key_pem(key))
        args.append((a.status if a.error is None else -1, a.body, pem, signer.public_bytes(serialization.Encoding.DER)))
    ok: list[bool] = []
    serials: list[int] = []
    errors: dict[str, int] = {}
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        results = list(pool.map(_judge_one, args, chunksize=64))
    for a, (kind, serial) in zip(answers, results):
        if a.error is not None:
            kind = a.error.split(":")[0]
        if kind == "ok" and serial is not None:
            ok.append(True)
            serials.append(serial)
        else:
            ok.append(False)
            errors[kind] = errors.get(kind, 0) + 1
    return ok, serials, errors


def pool_info(keys: list[Any]) -> dict[str, Any]:
    """What the report says about the key pool."""
    return {"device_keys": len(keys), "device_key_type": "rsa-2048"}
