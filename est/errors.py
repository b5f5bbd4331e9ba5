"""Errors of the EST package.

One root, :class:`EstError`, carrying the HTTP mapping RFC 7030 §4.2.3 / RFC 8951 §3.2 asks
for: a status code, a short ``text/plain`` detail and any header the status needs
(``WWW-Authenticate`` on 401, ``Allow`` on 405, ``Retry-After`` on 503). Only ``est/http.py``
turns these into responses; codecs and the service raise them.
"""

from __future__ import annotations

from collections.abc import Mapping

from ca.errors import CAError, RejectReason


class EstError(Exception):
    """Root EST error: ``status`` is the HTTP status, ``detail`` the text/plain body."""

    status: int = 400

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(EstError):
    """Malformed request: bad base64, bad DER, bad CSR signature (RFC 7030 §4.2.3)."""

    status = 400


class Unauthorized(EstError):
    """HTTP authentication needed or failed (RFC 7030 §3.2.3): 401 + ``WWW-Authenticate``."""

    status = 401

    def __init__(self, detail: str, *, realm: str = "enroll") -> None:
        # RFC 7617 §2: the realm is a quoted-string; refuse to emit a broken header.
        safe_realm = realm.replace("\\", "").replace('"', "")
        super().__init__(
            detail, headers={"WWW-Authenticate": f'Basic realm="{safe_realm}", charset="UTF-8"'}
        )


class Forbidden(EstError):
    """Authenticated but not allowed, or a policy refusal (RFC 7030 §4.2.3)."""

    status = 403


class NotFound(EstError):
    """Unknown label or operation (RFC 7030 §3.2.2)."""

    status = 404


class MethodNotAllowed(EstError):
    """Wrong HTTP method for the operation (RFC 9110 §15.5.6): 405 + ``Allow``."""

    status = 405

    def __init__(self, detail: str, *, allow: str) -> None:
        super().__init__(detail, headers={"Allow": allow})


class PayloadTooLarge(EstError):
    """The request body exceeds the configured cap (RFC 9110 §15.5.14)."""

    status = 413


class UnsupportedMediaType(EstError):
    """A request Content-Type the operation cannot take (RFC 9110 §15.5.16)."""

    status = 415


class NotImplementedOperation(EstError):
    """An EST operation this server does not offer (e.g. /fullcmc, RFC 7030 §4.3)."""

    status = 501


#: Seconds a client is told to wait after a 503 (RFC 7030 §4.2.3, RFC 9110 §10.2.3).
RETRY_AFTER_UNAVAILABLE = 30


class Unavailable(EstError):
    """Storage or CA backend unavailable; nothing was issued. Always carries Retry-After
    (RFC 7030 §4.2.3: a 503 SHOULD say when to retry)."""

    status = 503

    def __init__(self, detail: str, *, retry_after: int = RETRY_AFTER_UNAVAILABLE) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
        self.cause = detail


class ProtocolError(EstError):
    """Client side: the server's answer does not follow RFC 7030 / RFC 8951."""

    status = 502


#: RFC 7030 §4.2.3 leaves the 4xx choice to the server; this is ours (docs/ARCHITECTURE.md, "The issuance contract").
_REASON_STATUS: Mapping[RejectReason, int] = {
    RejectReason.BAD_REQUEST: 400,
    RejectReason.BAD_ALG: 400,
    RejectReason.BAD_MESSAGE_CHECK: 400,
    RejectReason.BAD_CERT_ID: 404,
    RejectReason.NOT_AUTHORIZED: 403,
    RejectReason.UNAUTHENTICATED: 401,
    RejectReason.POLICY: 403,
    RejectReason.REJECTED: 403,
    RejectReason.UNAVAILABLE: 503,
}


def status_for_reason(reason: RejectReason) -> int:
    """The HTTP status EST answers for a core :class:`RejectReason`."""
    return _REASON_STATUS.get(reason, 400)


def from_reject(reason: RejectReason, detail: str, *, realm: str = "enroll") -> EstError:
    """Turn a core refusal (a ``Rejected`` outcome or a :class:`CAError`) into an EstError."""
    status = status_for_reason(reason)
    if status == 401:
        return Unauthorized(detail, realm=realm)
    if status == 503:
        # The cause (a database message) goes to the log via http.py, not to the client.
        err = Unavailable("the server cannot record certificates right now; nothing was issued; "
                          "retry after the Retry-After delay")
        err.cause = detail
        return err
    return EstError(detail, status=status)


def from_ca_error(err: CAError, *, realm: str = "enroll") -> EstError:
    """Map a core :class:`CAError` to the EST answer (only ``http.py`` renders it)."""
    return from_reject(err.reason, err.detail, realm=realm)
