"""``backend = "command"``: an external program signs (openssl, a vendor CLI, a script in front
of a CA the server cannot reach any other way).

The contract (documented in ``examples/command-ca/README.md``):

- stdin: the device's CSR as PEM (RFC 7468 §7), then one JSON object, the template the profile
  decided (:func:`template_json`): subject, SANs, validity, key usages, serial;
- stdout: the certificate as PEM (RFC 7468 §5); further certificates are ignored;
- exit status :data:`EXIT_ISSUED` (0), :data:`EXIT_PENDING` (75, EX_TEMPFAIL: the CA has not
  decided, the client retries later) or :data:`EXIT_REJECTED` (77, EX_NOPERM: refused); any
  other status, a signal or the timeout is a backend failure (EST 503);
- stderr goes to the log (``enroll.backend``), never to the client.

The core reserves the serial before the command runs and re-checks the returned certificate
against the template (:func:`ca.profile.check_issued`): the command must use the template's
serial, subject and key.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import AuthorityInformationAccessOID

from ca.api import CAChain, CertificateTemplate
from ca.backends import BackendPending, BackendSpec, optional_int, register
from ca.errors import CAError, ConfigError, RejectReason

log = logging.getLogger("enroll.backend")

EXIT_ISSUED = 0
EXIT_PENDING = 75  # sysexits.h EX_TEMPFAIL
EXIT_REJECTED = 77  # sysexits.h EX_NOPERM

MAX_OUTPUT = 1024 * 1024  # stdout or stderr beyond this is a failure (a certificate is a few KB)

KEYS = frozenset({"command", "timeout_seconds", "retry_after"})

_KU = {
    "digital_signature": "digital_signature", "content_commitment": "content_commitment",
    "key_encipherment": "key_encipherment", "data_encipherment": "data_encipherment",
    "key_agreement": "key_agreement", "key_cert_sign": "key_cert_sign", "crl_sign": "crl_sign",
}


def _general_name(gn: x509.GeneralName) -> dict[str, str]:
    if isinstance(gn, x509.DNSName):
        return {"type": "dns", "value": gn.value}
    if isinstance(gn, x509.IPAddress):
        return {"type": "ip", "value": str(gn.value)}
    if isinstance(gn, x509.RFC822Name):
        return {"type": "email", "value": gn.value}
    if isinstance(gn, x509.UniformResourceIdentifier):
        return {"type": "uri", "value": gn.value}
    return {"type": "other", "value": base64.b64encode(gn.value.public_bytes()).decode()
            if isinstance(gn, x509.DirectoryName) else repr(gn.value)}


def _utc(t: dt.datetime) -> dt.datetime:
    """``t`` in UTC (naive means UTC)."""
    return (t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)


def _rfc3339(t: dt.datetime) -> str:
    """RFC 3339 UTC, as in the rest of the config and logs (naive means UTC)."""
    return _utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_json(template: CertificateTemplate, ca: str) -> dict[str, Any]:
    """The template as the command reads it (RFC 5280 §4.1 fields, §4.2 extensions)."""
    out: dict[str, Any] = {
        "version": 1,
        "ca": ca,
        "profile": template.profile,
        # Decimal and hex strings: serials exceed what JSON numbers hold exactly (RFC 8259 §6).
        "serial": str(template.serial),
        "serial_hex": f"0x{template.serial:x}",
        "subject": template.subject.rfc4514_string(),
        # Most significant RDN first, as `openssl -subj /O=.../CN=...` expects.
        "subject_rdns": [[a.rfc4514_attribute_name, str(a.value)] for rdn in template.subject.rdns
                         for a in rdn],
        "subject_der": base64.b64encode(template.subject.public_bytes()).decode(),
        "not_before": _rfc3339(template.not_before),
        "not_after": _rfc3339(template.not_after),
        # Whole days from now that stay inside not_after (`openssl x509 -days` starts now).
        "validity_days": max(1, int((_utc(template.not_after) - dt.datetime.now(dt.timezone.utc)).total_seconds()
                                    // 86400)),
        "sans": [], "key_usage": [], "extended_key_usage": [],
        "crl_urls": [], "ocsp_urls": [], "ca_issuers_urls": [],
        "extensions": [],
    }
    for ext, critical in template.extensions:
        out["extensions"].append({"oid": ext.oid.dotted_string, "critical": critical,
                                  "der": base64.b64encode(ext.public_bytes()).decode()})
        if isinstance(ext, x509.SubjectAlternativeName):
            out["sans"] = [_general_name(g) for g in ext]
        elif isinstance(ext, x509.KeyUsage):
            out["key_usage"] = [name for name, attr in _KU.items() if getattr(ext, attr)]
        elif isinstance(ext, x509.ExtendedKeyUsage):
            out["extended_key_usage"] = [o.dotted_string for o in ext]
        elif isinstance(ext, x509.CRLDistributionPoints):
            out["crl_urls"] = [n.value for dp in ext for n in dp.full_name or ()
                               if isinstance(n, x509.UniformResourceIdentifier)]
        elif isinstance(ext, x509.AuthorityInformationAccess):
            for d in ext:
                if isinstance(d.access_location, x509.UniformResourceIdentifier):
                    key = "ocsp_urls" if d.access_method == AuthorityInformationAccessOID.OCSP \
                        else "ca_issuers_urls"
                    out[key].append(d.access_location.value)
    return out


class CommandCA:
    """Runs one external program per certificate (no shell: ``command`` is an argv list)."""

    def __init__(self, name: str, chain: CAChain, argv: Sequence[str], *, timeout: float = 30.0,
                 retry_after: int = 60) -> None:
        self.name = name
        self._chain = chain
        self.argv = tuple(argv)
        self.timeout = timeout
        self.retry_after = retry_after

    async def ca_chain(self) -> CAChain:
        """The chain of the CA the command signs with (RFC 7030 §4.1.3)."""
        return self._chain

    async def sign(self, template: CertificateTemplate) -> x509.Certificate:
        """Run the command on the CSR and the template; its certificate (re-checked by the core)."""
        if template.csr is None:
            raise CAError("the command backend needs the request's CSR", reason=RejectReason.UNAVAILABLE)
        stdin = (template.csr.public_bytes(serialization.Encoding.PEM)
                 + json.dumps(template_json(template, self.name), indent=1).encode() + b"\n")
        env = {**os.environ, "ENROLL_CA": self.name, "ENROLL_PROFILE": template.profile,
               "ENROLL_SERIAL": f"0x{template.serial:x}"}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            log.error(json.dumps({"event": "backend-command", "ca": self.name, "error": str(exc)}))
            raise CAError(f"CA {self.name!r}: the command cannot start", reason=RejectReason.UNAVAILABLE) from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.error(json.dumps({"event": "backend-command", "ca": self.name, "serial": f"{template.serial:x}",
                                  "error": f"timed out after {self.timeout:g} s"}))
            raise CAError(f"CA {self.name!r}: the command timed out", reason=RejectReason.UNAVAILABLE) from None
        status = proc.returncode
        level = logging.INFO if status == EXIT_ISSUED else logging.WARNING
        for line in err[:MAX_OUTPUT].decode("utf-8", "replace").splitlines()[:50]:
            log.log(level, json.dumps({"event": "backend-command-stderr", "ca": self.name, "line": line[:500]}))
        if status == EXIT_PENDING:
            raise BackendPending(f"CA {self.name!r} has not decided yet", retry_after=self.retry_after)
        if status == EXIT_REJECTED:
            raise CAError(f"CA {self.name!r} refused the request", reason=RejectReason.REJECTED)
        if status != EXIT_ISSUED or len(out) > MAX_OUTPUT:
            log.error(json.dumps({"event": "backend-command", "ca": self.name, "serial": f"{template.serial:x}",
                                  "error": f"exit status {status}"}))
            raise CAError(f"CA {self.name!r}: the command failed (exit status {status})",
                          reason=RejectReason.UNAVAILABLE)
        try:
            return x509.load_pem_x509_certificates(out)[0]
        except (ValueError, IndexError):
            raise CAError(f"CA {self.name!r}: the command printed no PEM certificate",
                          reason=RejectReason.UNAVAILABLE) from None


def validate(table: Mapping[str, Any], path: str, base: Path) -> Mapping[str, Any]:
    """``command`` (an argv list, no shell; a relative program path is resolved against the
    config's directory), ``timeout_seconds`` (1-600, default 30), ``retry_after`` (seconds a
    pending client waits, default 60)."""
    argv = table.get("command")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise ConfigError(f"{path}.command", "must be a non-empty list of strings (program and arguments)")
    program = argv[0]
    if "/" in program and not Path(program).is_absolute():
        program = str(base / program)
    return {"command": (program, *argv[1:]),
            "timeout_seconds": optional_int(table, "timeout_seconds", path, 30, 1, 600),
            "retry_after": optional_int(table, "retry_after", path, 60, 1, 86400)}


def _factory(spec: BackendSpec) -> CommandCA:
    o = spec.options
    return CommandCA(spec.name, spec.chain, o["command"], timeout=float(o["timeout_seconds"]),
                     retry_after=int(o["retry_after"]))


def register_kind() -> None:
    """Register ``backend = "command"``."""
    register("command", _factory, validate, KEYS)
