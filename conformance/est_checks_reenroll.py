"""EST simplereenroll checks (RFC 7030 §4.2.2): renewal with the current certificate, same subject."""

from __future__ import annotations

import base64
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conformance import scepmsg as sm
from conformance.est_common import CERTS_ONLY, R, Enrolled, EstContext, der, make_csr, new_key, require_refused
from conformance.model import Fail, Level, Skip, Suite
from conformance.transport import Exchange

group = Suite("est")


# ================================================================== simplereenroll
def _client_auth(cert: x509.Certificate) -> bool:
    try:
        return ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True


async def _reenroll(ctx: EstContext, subject_cn: str | None, tag: str) -> tuple[Enrolled, Exchange, Any]:
    e = await ctx.main()
    if not _client_auth(e.cert):
        raise Skip("the issued certificate has no clientAuth EKU, so it cannot authenticate a reenroll")
    who = ctx.identity("renew", e.cert, e.key)
    key = new_key()
    cn = subject_cn or e.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    b = x509.CertificateSigningRequestBuilder().subject_name(
        e.cert.subject if subject_cn is None else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(cn))]))
    try:
        san = e.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        b = b.add_extension(san.value, san.critical)
    except x509.ExtensionNotFound:
        pass
    csr = b.sign(key, hashes.SHA256())
    ex = await ctx.post("simplereenroll", base64.b64encode(der(csr)), who=who, basic=None)
    return e, ex, key


@group.check("est.simplereenroll.success", "simplereenroll renews with the current certificate", R, "4.2.2",
             Level.MUST, "a reenroll authenticated by the certificate being renewed, same subject and SAN, gets 200")
async def reenroll_ok(ctx: EstContext) -> str:
    e, ex, key = await _reenroll(ctx, None, "renew")
    if ex.error:
        raise Fail(f"TLS with the just-issued certificate as client certificate failed: {ex.error} (the server "
                   "dropped a connection authenticated by a certificate it issued itself)", ex.lines())
    if ex.status != 200:
        raise Fail(f"simplereenroll answered {ex.error or ex.status}", ex.lines())
    co = ctx.read_certs_only(ex)
    new = next((c for c in co.certificates if sm.public_key_der(c) == sm.public_key_der(key)), None)
    if new is None:
        raise Fail("no certificate for the new key", ex.lines(body=False))
    if new.subject != e.cert.subject:
        raise Fail("the renewed certificate has another subject", [new.subject.rfc4514_string()])
    if co.certificates[0] != new:
        raise Fail("the issued certificate is not first", [c.subject.rfc4514_string() for c in co.certificates])
    if ex.content_type != CERTS_ONLY:
        raise Fail(f"Content-Type {ex.content_type!r}", ex.lines(body=False))
    return f"renewed: serial {new.serial_number:x}"


@group.check("est.simplereenroll.changed-subject", "simplereenroll refuses a changed subject", R, "4.2.2",
             Level.MUST, "the Subject and SubjectAltName of a reenroll request are identical to the certificate's")
async def reenroll_subject(ctx: EstContext) -> str:
    _, ex, _ = await _reenroll(ctx, f"conformance-{ctx.run_id}-other", "renew-other")
    return str(require_refused(ex, "changed subject", (400, 401, 403)))


@group.check("est.simplereenroll.needs-certificate", "simplereenroll without a client certificate is refused", R,
             "4.2.2", Level.SHOULD, "reenrollment is authenticated by the certificate being renewed")
async def reenroll_nocert(ctx: EstContext) -> str:
    e = await ctx.main()
    csr = make_csr(new_key(), str(e.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value))
    ex = await ctx.post("simplereenroll", base64.b64encode(der(csr)), who="anon")
    return str(require_refused(ex, "reenroll without client certificate", (400, 401, 403)))
