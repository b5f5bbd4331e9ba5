"""The SCEP package's one error root, carrying its protocol mapping (docs/ARCHITECTURE.md, convention 5).

Two families:

* :class:`ScepDecodeError`: the bytes never became a pkiMessage; ``http.py`` answers HTTP 400
  (RFC 8894 §3 leaves transport errors to HTTP).
* everything else: the message parsed, so ``http.py`` answers a *signed* CertRep FAILURE with
  ``fail_info`` and ``public_text`` (HTTP 200, RFC 8894 §3.3.2).

``detail`` is for the audit log and never reaches the wire; ``public_text`` is the failInfoText.
All decrypt and signature failures raise :class:`MessageCheckError` with one fixed public text,
so a peer cannot tell a padding error from a bad key or a bad signature (no oracle).
"""

from __future__ import annotations

from scep.asn1 import FailInfo


class ScepError(Exception):
    """Root of SCEP errors. ``fail_info``/``public_text`` form the FAILURE CertRep."""

    fail_info: FailInfo = FailInfo.BAD_REQUEST
    http_status: int = 200
    default_text: str = "bad request"

    def __init__(self, detail: str = "", *, public_text: str | None = None) -> None:
        super().__init__(detail or self.default_text)
        self.detail = detail or self.default_text
        self.public_text = public_text if public_text is not None else self.default_text


class ScepDecodeError(ScepError):
    """Undecodable input (not a pkiMessage at all): HTTP 400, no CertRep possible."""

    http_status = 400
    default_text = "malformed SCEP message"


class MessageCheckError(ScepError):
    """Any signature, digest or decryption failure: one shape for all (RFC 8894 §3.3.2.2)."""

    fail_info = FailInfo.BAD_MESSAGE_CHECK
    default_text = "message check failed"

    def __init__(self, detail: str = "") -> None:
        # The public text is fixed whatever went wrong: no padding or key oracle.
        super().__init__(detail, public_text=self.default_text)


class BadAlgError(ScepError):
    """An algorithm the profile does not allow (cipher, digest, key transport)."""

    fail_info = FailInfo.BAD_ALG
    default_text = "algorithm not allowed"


class BadRequestError(ScepError):
    """Not allowed by protocol or policy (unknown type, wrong challenge, replay...)."""

    fail_info = FailInfo.BAD_REQUEST
    default_text = "bad request"


class BadCertIdError(ScepError):
    """No certificate or CRL matches the request (GetCert, GetCRL, CertPoll)."""

    fail_info = FailInfo.BAD_CERT_ID
    default_text = "no matching certificate"


class BadTimeError(ScepError):
    """The signer certificate is outside its validity period."""

    fail_info = FailInfo.BAD_TIME
    default_text = "signer certificate not valid now"
