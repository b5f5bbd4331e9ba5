"""TLS for the HTTPS listeners on pyOpenSSL (``[tls] engine = "pyopenssl"``).

Python's ``ssl`` cannot export keying material, so on TLS 1.3 it has no channel binding for
PoP linking (RFC 7030 §3.5): tls-unique ends at TLS 1.2 and its successor is the RFC 9266
``tls-exporter``. This engine terminates TLS with OpenSSL through pyOpenSSL over memory BIOs
and hands the plaintext to aiohttp's per-connection protocol, whose transport exposes an
``ssl_object`` that answers what the stdlib's does (version, peer certificate, tls-unique) and
also exports keying material.

The settings are those of :func:`enroll.tls.server_context`: TLS 1.2 minimum (or 1.3), the same
TLS 1.2 suites, no compression, server cipher preference, no renegotiation, and an optional
client certificate verified against the union of client trust anchors (partial chains allowed).
TLS 1.2 sessions are never resumed on this engine, so tls-unique is always the client's
Finished message of a full handshake (RFC 5929 §3.1).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from ca.errors import ConfigError
from ca.keys import check_key_file_mode
from enroll.config import Config
from enroll.tls import TLS12_CIPHERS, client_anchors

#: RFC 9266 §2: the exporter label, with a zero-length context and 32 bytes of output.
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_LENGTH = 32

_CHUNK = 65536


def openssl_context(config: Config) -> SSL.Context:
    """The pyOpenSSL context for the HTTPS listeners (same policy as enroll/tls.py)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION if config.tls.min_version == "1.3" else SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
                    | SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # TLS 1.2: forward-secret AEAD suites only (RFC 9325 §4.2); TLS 1.3 suites are all AEAD.
    ctx.set_cipher_list(TLS12_CIPHERS.encode())
    check_key_file_mode(config.tls.key, "tls.key")
    try:
        ctx.use_certificate_chain_file(str(config.tls.cert))
        ctx.use_privatekey_file(str(config.tls.key))
        ctx.check_privatekey()
    except (OSError, SSL.Error) as exc:
        raise ConfigError("tls.cert", f"cannot load {config.tls.cert} / {config.tls.key}: {exc}") from None
    anchors = client_anchors(config)
    if anchors:
        store = ctx.get_cert_store()
        assert store is not None
        # Trust stores may hold intermediates (our issuing CA) as anchors, RFC 5280 §6.1.1(d).
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
        for cert in anchors:
            try:
                store.add_cert(crypto.X509.from_cryptography(cert))
            except crypto.Error:
                pass  # the same anchor listed in two trust stores
        ctx.set_verify(SSL.VERIFY_PEER)  # optional: no VERIFY_FAIL_IF_NO_PEER_CERT
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


@dataclass(frozen=True)
class OpenSSLTls:
    """What a listener needs to speak TLS through pyOpenSSL: the context and the handshake
    deadline. ``protocol(inner)`` wraps aiohttp's per-connection protocol."""

    context: SSL.Context
    handshake_timeout: float

    def protocol(self, inner: asyncio.Protocol) -> TlsServerProtocol:
        return TlsServerProtocol(self.context, inner, self.handshake_timeout)


class TlsSession:
    """The connection's TLS facts, read like ``ssl.SSLObject`` (the ``ssl_object`` extra)."""

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn

    def version(self) -> str | None:
        """"TLSv1.2" or "TLSv1.3"."""
        return self._conn.get_protocol_version_name()

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        """The verified client certificate as DER (``binary_form`` only), or None."""
        if not binary_form:
            raise ValueError("only binary_form=True is supported")
        cert = self._conn.get_peer_certificate(as_cryptography=True)
        return cert.public_bytes(serialization.Encoding.DER) if cert is not None else None

    def get_channel_binding(self, cb_type: str = "tls-unique") -> bytes | None:
        """tls-unique (RFC 5929 §3.1): the first Finished message of the latest handshake; no
        session is resumed on this engine, so it is the client's. None beyond TLS 1.2."""
        if cb_type != "tls-unique":
            raise ValueError(f"{cb_type!r} channel binding type not implemented")
        if self.version() != "TLSv1.2":
            return None
        return self._conn.get_peer_finished()

    def export_keying_material(self, label: bytes, length: int, context: bytes | None = None) -> bytes:
        """RFC 5705 / RFC 8446 §7.5 keying material exporter."""
        return self._conn.export_keying_material(label, length, context)


class _AppTransport(asyncio.Transport):
    """The transport aiohttp's protocol writes plaintext to."""

    def __init__(self, owner: TlsServerProtocol) -> None:
        super().__init__()
        self._owner = owner

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._owner.session
        if name == "sslcontext":
            return self._owner.context
        if name == "peercert":
            return self._owner.session.getpeercert(binary_form=True)
        return self._owner.raw.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._owner.send(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self._owner.send(b"".join(bytes(d) for d in list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._owner.closing

    def close(self) -> None:
        self._owner.close()

    def abort(self) -> None:
        self._owner.abort()

    def is_reading(self) -> bool:
        return self._owner.raw.is_reading()

    def pause_reading(self) -> None:
        self._owner.raw.pause_reading()

    def resume_reading(self) -> None:
        self._owner.raw.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._owner.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._owner.raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._owner.raw.get_write_buffer_limits()


class TlsServerProtocol(asyncio.Protocol):
    """Owns the TCP transport: handshake (bounded by ``handshake_timeout``), then decrypts into
    ``inner.data_received`` and encrypts what ``inner`` writes. ``inner`` sees the connection
    only once the handshake has succeeded, as with the stdlib's TLS transport."""

    def __init__(self, context: SSL.Context, inner: asyncio.Protocol, handshake_timeout: float) -> None:
        self.context = context
        self.inner = inner
        self.handshake_timeout = handshake_timeout
        self.conn = SSL.Connection(context, None)
        self.conn.set_accept_state()
        self.session = TlsSession(self.conn)
        self.raw: asyncio.Transport
        self.app: _AppTransport | None = None
        self.closing = False
        self.timer: asyncio.TimerHandle | None = None
        self.inner_lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.raw = transport
        self.timer = asyncio.get_running_loop().call_later(self.handshake_timeout, self.abort)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.conn.bio_write(data)
        if self.app is None:
            try:
                self.conn.do_handshake()
            except SSL.WantReadError:
                self._flush()
                return
            except SSL.Error:
                self._flush()  # the alert, if any
                self.abort()
                return
            self._cancel_timer()
            self._flush()
            self.app = _AppTransport(self)
            self.inner.connection_made(self.app)
        self._read_plaintext()

    def _read_plaintext(self) -> None:
        eof = False
        while not self.closing:
            try:
                chunk = self.conn.recv(_CHUNK)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify
                eof = True
                break
            except SSL.Error:
                self.abort()
                return
            self.inner.data_received(chunk)
        if not self.closing:
            self._flush()
        if eof and not self.closing and not self.inner.eof_received():
            self.close()

    def _flush(self) -> None:
        while True:
            try:
                out = self.conn.bio_read(_CHUNK)
            except SSL.WantReadError:
                return
            if not out:
                return
            self.raw.write(out)

    def send(self, data: bytes) -> None:
        """Encrypt and send application data (the memory BIO takes all of it)."""
        if self.closing or not data:
            return
        view = memoryview(data)
        try:
            while view:
                n = self.conn.send(view[:_CHUNK].tobytes())
                view = view[n:]
        except SSL.Error:
            self.abort()
            return
        self._flush()

    def close(self) -> None:
        """Send close_notify, then close the TCP connection once its buffer is written."""
        if self.closing:
            return
        self.closing = True
        self._cancel_timer()
        try:
            self.conn.shutdown()
        except SSL.Error:
            pass
        self._flush()
        self.raw.close()

    def abort(self) -> None:
        self.closing = True
        self._cancel_timer()
        self.raw.abort()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def eof_received(self) -> bool | None:
        if self.app is not None and not self.closing:
            return self.inner.eof_received()
        return None

    def pause_writing(self) -> None:
        if self.app is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._cancel_timer()
        if self.app is not None and not self.inner_lost:
            self.inner_lost = True
            self.inner.connection_lost(exc)
