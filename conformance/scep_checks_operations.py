"""SCEP checks of the operations about an issued certificate: RenewalReq (RFC 8894 §3.3.1),
CertPoll (§3.3.3), GetCert and GetCRL (§3.3.4)."""

from __future__ import annotations

from cryptography import x509

from conformance import scepmsg as sm
from conformance.asn1dump import asn1parse
from conformance.model import Fail, Level, Skip, Suite
from conformance.scep_common import R, ScepContext, Txn, require_certrep

group = Suite("scep")


# ================================================================== renewal, polling, access
@group.check("scep.renewalreq", "Renewal advertised: RenewalReq signed by the current certificate", R, "3.3.1",
             Level.MUST, "a CA that lists Renewal issues a RenewalReq signed with a certificate it issued")
async def renewal(ctx: ScepContext) -> str:
    if "Renewal" not in await ctx.caps():
        raise Skip("Renewal not advertised")
    t0 = await ctx.main()
    assert t0.issued is not None and t0.csr_key is not None
    old = sm.Identity(t0.csr_key, t0.issued)
    key = sm.new_rsa_key()
    cn = t0.issued.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    csr = sm.make_csr(key, str(cn), None)
    t = await ctx.transact(sm.RENEWAL_REQ, csr, old, csr_key=key)
    rep = require_certrep(t, "RenewalReq")
    if rep.status == "0":
        if t.issued is None:
            raise Fail("SUCCESS without a certificate for the new key", t.evidence())
        return f"renewed without a challenge: serial {t.issued.serial_number:x}"
    if rep.status != "2" or rep.fail_info is None:
        raise Fail(f"RenewalReq: {rep.summary()}", t.evidence())
    # Refused. Policy (a renewal window) may refuse a just-issued certificate; tell that apart
    # from a server that authenticates renewals by the shared secret instead of the certificate.
    key2 = sm.new_rsa_key()
    t2 = await ctx.transact(sm.RENEWAL_REQ, sm.make_csr(key2, str(cn), ctx.challenge), old, csr_key=key2)
    if t2.rep is not None and t2.rep.status == "0":
        raise Fail("RenewalReq signed by the issued certificate was refused without a challengePassword "
                   f"({rep.summary()}) and accepted with one: renewal is authenticated by the shared secret, "
                   "not by the certificate", t.evidence() + ["-- the same with the challenge:"] + t2.evidence())
    raise Skip(f"renewal of a just-issued certificate refused by policy ({rep.summary()}); "
               "judge renewal with a certificate inside its renewal window")


@group.check("scep.certpoll", "CertPoll gets a CertRep", R, "3.3.3", Level.MUST,
             "CertPoll (GetCertInitial) for a transaction gets a signed CertRep (the certificate, PENDING or "
             "FAILURE), never an HTTP error")
async def certpoll(ctx: ScepContext) -> str:
    t0 = await ctx.main()
    assert t0.issued is not None
    ca = await ctx.recipient()
    data = sm.issuer_and_subject_der(t0.issued.issuer, t0.signer.cert.subject)
    t = await ctx.transact(sm.CERT_POLL, data, t0.signer, csr_key=t0.csr_key,
                           transaction_id=t0.built.transaction_id, recipient=ca)
    rep = require_certrep(t, "CertPoll")
    if rep.status == "0":
        if t.issued is None:
            raise Fail("CertPoll SUCCESS without the certificate", t.evidence())
        if t.issued.serial_number != t0.issued.serial_number:
            raise Fail("CertPoll returned a different certificate than the transaction issued", t.evidence())
        return "SUCCESS with the issued certificate"
    if rep.status == "2" and rep.fail_info is None:
        raise Fail("FAILURE without failInfo", t.evidence())
    if rep.attr_text(sm.OID_TRANSACTION_ID) != t0.built.transaction_id:
        raise Fail("transactionID not echoed", rep.attribute_lines())
    return rep.summary()


async def _access(ctx: ScepContext, mtype: int, what: str) -> Txn:
    t0 = await ctx.main()
    assert t0.issued is not None
    ca = next((c for c in await ctx.ca_certs() if sm.issued_by(t0.issued, c)), None)
    issuer = ca.subject if ca else t0.issued.issuer
    serial = t0.issued.serial_number
    data = sm.issuer_and_serial_der(issuer, serial)
    key = sm.new_rsa_key()
    me = sm.Identity(t0.csr_key, t0.issued)
    t = await ctx.transact(mtype, data, me, csr_key=t0.csr_key, transaction_id=sm.transaction_id_for(key))
    rep = require_certrep(t, what)
    if rep.status == "2":
        if rep.fail_info is None:
            raise Fail("FAILURE without failInfo", t.evidence())
        raise Skip(f"not offered: the server answered {rep.summary()}")
    if rep.status != "0":
        raise Fail(f"{what}: {rep.summary()}", t.evidence())
    if t.decrypt_error or t.certs is None:
        raise Fail(f"{what}: {t.decrypt_error or t.certs_error}", t.evidence())
    return t


@group.check("scep.getcert", "GetCert returns the certificate or FAILURE", R, "3.3.4", Level.MUST,
             "GetCert (IssuerAndSerialNumber) gets a CertRep with that certificate, or FAILURE with failInfo")
async def getcert(ctx: ScepContext) -> str:
    t0 = await ctx.main()
    t = await _access(ctx, sm.GET_CERT, "GetCert")
    assert t.certs is not None and t0.issued is not None
    if not any(c.serial_number == t0.issued.serial_number for c in t.certs.certificates):
        raise Fail("the reply does not contain the requested certificate", t.evidence())
    return "certificate returned"


@group.check("scep.getcrl", "GetCRL returns a CRL or FAILURE", R, "3.3.4", Level.MUST,
             "GetCRL gets a CertRep whose certs-only SignedData carries the CRL in crls, or FAILURE")
async def getcrl(ctx: ScepContext) -> str:
    t = await _access(ctx, sm.GET_CRL, "GetCRL")
    assert t.certs is not None
    if not t.certs.crls:
        raise Fail("SUCCESS without a CRL in crls", t.evidence() + asn1parse(t.decrypted.plaintext if t.decrypted
                                                                            else b"", 16))
    crl = t.certs.crls[0]
    cas = await ctx.ca_certs()
    if not any(c.subject == crl.issuer for c in cas):
        raise Fail("the CRL issuer is not a GetCACert certificate", ["CRL issuer " + crl.issuer.rfc4514_string()])
    return f"CRL from {crl.issuer.rfc4514_string()}, {len(list(crl))} entries"
