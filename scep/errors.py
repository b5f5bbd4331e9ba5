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

    def __init_subclass__(cls, *, fail_info: FailInfo | None = None, text: str | None = None) -> None:
        """A subclass names its failInfo (RFC 8894 §3.2.1.4.5) and default text in its bases."""
        super().__init_subclass__()
        if fail_info is not None:
            cls.fail_info = fail_info
        if text is not None:
            cls.default_text = text

    def __init__(self, detail: str = "", *, public_text: str | None = None) -> None:
        super().__init__(detail or self.default_text)
        self.detail = detail or self.default_text
        self.public_text = public_text if public_text is not None else self.default_text


class ScepDecodeError(ScepError):
    """Undecodable input (not a pkiMessage at all): HTTP 400, no CertRep possible."""

    http_status = 400
    default_text = "malformed SCEP message"


class MessageCheckError(ScepError, fail_info=FailInfo.BAD_MESSAGE_CHECK, text="message check failed"):
    """Any signature, digest or decryption failure: one shape for all (RFC 8894 §3.3.2.2)."""

    def __init__(self, detail: str = "") -> None:
        # The public text is fixed whatever went wrong: no padding or key oracle.
        super().__init__(detail, public_text=self.default_text)


class BadAlgError(ScepError, fail_info=FailInfo.BAD_ALG, text="algorithm not allowed"):
    """An algorithm the profile does not allow (cipher, digest, key transport)."""


class BadRequestError(ScepError, fail_info=FailInfo.BAD_REQUEST, text="bad request"):
    """Not allowed by protocol or policy (unknown type, wrong challenge, replay...)."""


class BadCertIdError(ScepError, fail_info=FailInfo.BAD_CERT_ID, text="no matching certificate"):
    """No certificate or CRL matches the request (GetCert, GetCRL, CertPoll)."""


class BadTimeError(ScepError, fail_info=FailInfo.BAD_TIME, text="signer certificate not valid now"):
    """The signer certificate is outside its validity period."""
