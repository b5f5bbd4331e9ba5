"""Wiring: the one place that turns a :class:`Config` into a running aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

from aiohttp import web
from aiohttp.typedefs import Middleware

from ca import ocsp
from ca.api import CABackend, CAChain
from ca.rollover import RollingCA, publication
from ca.authz import TrustStore
from ca.identity import RevocationSource
from ca.serials import SerialPool
from ca.errors import CAError, ConfigError, LedgerError
from ca.issuer import Issuer, IssuingCA
from ca.keys import Signer, open_key, probe
from ca.pkcs11 import Settings as Pkcs11Settings
from ca.ledger import Ledger
from ca.local import LocalCA
from cryptography import x509

from enroll import pki_http
from enroll.config import Config
from enroll.config_cas import CAConfig
from enroll.config_toml import load_certs
from enroll.metrics import Metrics

log = logging.getLogger("enroll.server")

CONFIG = web.AppKey("config", Config)
ISSUER = web.AppKey("issuer", Issuer)
METRICS = web.AppKey("metrics", Metrics)
METRICS_TOKEN = web.AppKey("metrics_token", str)

#: Protocol packages plug in through these modules: ``validate(config)`` and ``mount(app, config, issuer)``.
PROTOCOL_MOUNTS = ("enroll.est_mount", "enroll.scep_mount")


def protocol_mounts() -> list[ModuleType]:
    """The protocol mount modules present in this installation."""
    out = []
    for name in PROTOCOL_MOUNTS:
        try:
            out.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return out


def build_cas(config: Config) -> dict[str, IssuingCA]:
    """Load every ``[cas.NAME]``: certificate, chain to the anchor, key (mode-checked)."""
    out: dict[str, IssuingCA] = {}
    for name, c in config.cas.items():
        certs = load_certs(c.cert, f"cas.{name}.cert")
        chain = [certs[0], *certs[1:]]
        for p in c.chain:
            chain.extend(load_certs(p, f"cas.{name}.chain"))
        if c.backend != "local":
            # A CA this server does not hold the key of (ca/backends): it signs nothing else.
            import enroll.backends  # noqa: F401  (registers the network backends)
            from ca.backends import BackendSpec, create

            remote = create(c.backend, BackendSpec(name, CAChain(issuer=chain[0], chain=tuple(chain)), c.options))
            out[name] = IssuingCA(name, remote, c.crl_url, c.crl_validity_hours, ocsp_url=c.ocsp_url,
                                  ca_issuers_url=c.ca_issuers_url, responder=None)
            continue
        passphrase = None
        if c.key_passphrase_env:
            value = os.environ.get(c.key_passphrase_env)
            if value is None:
                raise ConfigError(f"cas.{name}.key_passphrase_env",
                                  f"environment variable {c.key_passphrase_env} is not set")
            passphrase = value.encode()
        signer = open_key(c.key, f"cas.{name}.key", passphrase=passphrase, pkcs11=config.pkcs11)
        probe(signer, f"cas.{name}.key")  # refuse to start with a key that cannot sign
        backend: CABackend = LocalCA(name, _publication(config, name, chain), signer)
        if c.next_ca is not None:
            backend = RollingCA(backend, c.next_ca, c.activate_at)
        out[name] = IssuingCA(name, backend, c.crl_url, c.crl_validity_hours, ocsp_url=c.ocsp_url,
                              ca_issuers_url=c.ca_issuers_url,
                              responder=_responder(c, chain[0], signer, config.pkcs11),
                              ocsp_validity_seconds=c.ocsp_validity_minutes * 60)
    return out


def _publication(config: Config, name: str, chain: list[x509.Certificate]) -> CAChain:
    """The chain a local CA publishes, with the rollover certificates of ``next_ca`` (the
    successor and the links) or of the CA it succeeds (ca/rollover.py, RFC 7030 §4.1.3)."""
    def full(ca: str) -> list[x509.Certificate]:
        c = config.cas[ca]
        return [*load_certs(c.cert, f"cas.{ca}.cert"), *(x for p in c.chain for x in load_certs(p, f"cas.{ca}.chain"))]

    def links(ca: str) -> list[x509.Certificate]:
        return [x for p in config.cas[ca].rollover_certs for x in load_certs(p, f"cas.{ca}.rollover_certs")]

    c = config.cas[name]
    before = next((o for o, oc in config.cas.items() if oc.next_ca == name), None)
    return publication(chain, successor=full(c.next_ca) if c.next_ca else (),
                       links=links(name) if c.next_ca else (),
                       predecessor=full(before) if before else (), predecessor_links=links(before) if before else ())


def _responder(c: CAConfig, ca_cert: x509.Certificate, ca_signer: Signer,
               pkcs11: Pkcs11Settings | None = None) -> ocsp.Responder:
    """The CA key answers OCSP, unless a delegated responder (RFC 6960 §4.2.2.2) is configured."""
    if c.ocsp_cert is None or c.ocsp_key is None:
        return ocsp.Responder(ca_cert=ca_cert, cert=ca_cert, signer=ca_signer)
    cert = load_certs(c.ocsp_cert, f"cas.{c.name}.ocsp_cert")[0]
    problem = ocsp.check_delegated_responder(ca_cert, cert)
    if problem:
        raise ConfigError(f"cas.{c.name}.ocsp_cert", f"{c.ocsp_cert} {problem}")
    key = open_key(c.ocsp_key, f"cas.{c.name}.ocsp_key", pkcs11=pkcs11)
    probe(key, f"cas.{c.name}.ocsp_key")
    if key.public_key() != cert.public_key():
        raise ConfigError(f"cas.{c.name}.ocsp_key", "the key does not match ocsp_cert")
    return ocsp.Responder(ca_cert=ca_cert, cert=cert, signer=key)


def _revocation(config: Config, store: str) -> RevocationSource | None:
    """The CRL source of a trust store (``[trust.NAME] crl``), None when none is configured."""
    if store not in config.trust_crl:
        return None
    source, refresh = config.trust_crl[store]
    return RevocationSource(source, refresh_seconds=refresh)


#: A reservation older than this is stale: the sweep (enroll/server.py) marks it ``abandoned`` at
#: start and every minute; ``ENROLL_RESERVATION_TIMEOUT`` overrides (the crash tests use 0).
RESERVATION_TIMEOUT = float(os.environ.get("ENROLL_RESERVATION_TIMEOUT", "300"))


def build_issuer(config: Config, metrics: Metrics | None = None) -> Issuer:
    """The issuance core for this config (the ledger opens lazily; call ``ledger.migrate()``)."""
    trust = {name: TrustStore(name, tuple(c for p in paths for c in load_certs(Path(p), f"trust.{name}.certs")),
                              _revocation(config, name))
             for name, paths in config.trust.items()}
    issuer = Issuer(Ledger(config.ledger_url), build_cas(config), config.profiles, users=config.users, trust=trust,
                    static_challenges=_static_challenges(config),
                    observer=metrics.observe_issuance if metrics else None)
    # Reserved serials are used well before the sweep would call them abandoned; a tiny timeout
    # (the crash tests) means no reserving ahead at all.
    issuer.serials = SerialPool(issuer.ledger, block=16 if RESERVATION_TIMEOUT >= 10 else 1,
                                max_age=min(120.0, RESERVATION_TIMEOUT / 2))
    return issuer


def _static_challenges(config: Config) -> dict[str, str]:
    """Profile name -> ``[profiles.NAME.scep] challenge_hash`` (RFC 8894 §2.2), parsed by scep.settings."""
    try:
        from scep.settings import scep_profiles
    except ModuleNotFoundError:
        return {}
    return {name: p.challenge_hash for name, p in scep_profiles(config.profile_scep).items() if p.challenge_hash}


def validate(config: Config) -> None:
    """Everything ``enroll config check`` and start-up verify beyond the TOML itself."""
    build_cas(config)
    metrics_token(config)
    for name, paths in config.trust.items():
        for p in paths:
            load_certs(Path(p), f"trust.{name}.certs")
    for mod in protocol_mounts():
        mod.validate(config)
    from enroll import admin_api

    admin_api.validate(config)


def config_warnings(config: Config) -> list[str]:
    """Risky but valid choices ``enroll config check`` (and start-up) point out; never fatal."""
    out: list[str] = []
    try:
        from scep.settings import parse_global, scep_profiles
    except ModuleNotFoundError:
        return out
    settings = parse_global(config.scep)
    profiles = scep_profiles(config.profile_scep)
    if profiles and not settings.ra_cert:
        for ca in sorted({config.profiles[p].ca for p in profiles}):
            users = ", ".join(sorted(p for p in profiles if config.profiles[p].ca == ca))
            out.append(f"cas.{ca}: the CA key itself decrypts SCEP requests (profiles {users}; no [scep] "
                       "ra_cert/ra_key): every SCEP request is an RSA decryption with the CA key. Configure "
                       "a separate RA certificate and key (RFC 8894 §2.1) to keep the CA key to signing.")
    return out


def _route_group(path: str) -> str:
    if path.startswith("/.well-known/est"):
        return "est"
    if path in ("/metrics", "/health"):
        return path[1:]
    for prefix, group in (("/crl/", "crl"), ("/ocsp", "ocsp"), ("/ca/", "ca"), ("/admin", "admin")):
        if path.startswith(prefix):
            return group
    return "scep"


@web.middleware
async def _metrics_middleware(request: web.Request,
                              handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    metrics = request.app[METRICS]
    group = _route_group(request.path)
    started = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.requests.labels(group, request.method, str(status)).inc()
        metrics.latency.labels(group).observe(time.perf_counter() - started)


class InFlight:
    """Requests being handled in this process, so that a stop can drain them (enroll/server.py):
    listeners close first, requests in flight finish (reading the rest of their bodies), and
    answers given meanwhile close their connection."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if self.count == 0:
                self._idle.set()
        return self._idle

    def enter(self) -> None:
        self.count += 1
        self._event().clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._event().set()

    async def idle(self) -> None:
        """Until no request is being handled."""
        await self._event().wait()


IN_FLIGHT = web.AppKey("in_flight", InFlight)


@web.middleware
async def _in_flight_middleware(request: web.Request,
                                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                ) -> web.StreamResponse:
    in_flight = request.app[IN_FLIGHT]
    in_flight.enter()
    try:
        resp = await handler(request)
        if in_flight.draining:
            resp.force_close()  # no further request on this connection: the process is stopping
        return resp
    finally:
        in_flight.leave()


@web.middleware
async def _refuse_content_encoding(request: web.Request,
                                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                   ) -> web.StreamResponse:
    """Request bodies are never inflated (a zip bomb costs us nothing): 415 for any
    Content-Encoding but identity (RFC 9110 §15.5.16), before a handler reads a byte."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding and encoding != "identity":
        return web.Response(status=415, text="compressed request bodies are not accepted\n",
                            content_type="text/plain")
    return await handler(request)


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def metrics_token(config: Config) -> str | None:
    """The ``/metrics`` bearer token from the environment variable ``[server] metrics_token_env``
    names (None when unset; a ConfigError when the variable is missing or too short to be a secret)."""
    env = config.server.metrics_token_env
    if env is None:
        return None
    value = os.environ.get(env)
    if value is None:
        raise ConfigError("server.metrics_token_env", f"environment variable {env} is not set")
    if len(value.strip()) < 16:
        raise ConfigError("server.metrics_token_env", f"the token in {env} must be at least 16 characters")
    return value.strip()


def _metrics_allowed(request: web.Request) -> web.Response | None:
    """None when this request may read /metrics; else the refusal. Plain HTTP only with
    ``[server] metrics_on_http``; with a token, ``Authorization: Bearer`` (RFC 6750 §2.1) on
    every listener, compared in constant time."""
    config = request.app[CONFIG]
    tls = request.transport is not None and request.transport.get_extra_info("ssl_object") is not None
    if not tls and not config.server.metrics_on_http:
        return web.Response(status=404, text="not found\n", content_type="text/plain")
    token = request.app[METRICS_TOKEN]
    if token:
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return web.Response(status=401, text="metrics need a bearer token\n", content_type="text/plain",
                                headers={"WWW-Authenticate": 'Bearer realm="enroll-metrics"'})
    return None


async def _metrics(request: web.Request) -> web.Response:
    refusal = _metrics_allowed(request)
    if refusal is not None:
        return refusal
    m = request.app[METRICS]
    issuer = request.app[ISSUER]
    now = time.time()
    try:
        m.set_fleet(await issuer.ledger.counts_by_profile(now, [now + 7 * 86400, now + 30 * 86400]), issuer.profiles)
    except CAError:
        pass  # the ledger is down: the request counters still render
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


async def _refresh_crls(issuer: Issuer, every: float = 60.0) -> None:
    """Keep every CA's CRL fresh even when nobody fetches it (re-signed at half its lifetime)."""
    while True:
        for name in issuer.cas:
            try:
                await issuer.crl_for_ca(name)
            except Exception as exc:  # noqa: BLE001 - keep refreshing; say why it failed
                log.warning(json.dumps({"event": "crl-refresh-failed", "ca": name, "error": str(exc)}))
        await asyncio.sleep(every)


def create_app(config: Config, *, issuer: Issuer | None = None, metrics: Metrics | None = None) -> web.Application:
    """The application: EST, SCEP, CRLs, health and metrics, over one issuance core."""
    metrics = metrics or Metrics()
    issuer = issuer or build_issuer(config, metrics)
    metrics.watch_refusals(lambda: issuer.refusal_counts)
    middlewares: list[Middleware] = [_in_flight_middleware, _metrics_middleware, _refuse_content_encoding]
    if config.server.trusted_proxies:
        from enroll import proxy

        middlewares.insert(2, proxy.middleware(proxy.ProxyPolicy.from_config(config.server)))
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=middlewares)
    app[CONFIG] = config
    app[ISSUER] = issuer
    app[METRICS] = metrics
    app[METRICS_TOKEN] = metrics_token(config) or ""
    app[IN_FLIGHT] = InFlight()

    async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
        await issuer.ledger.migrate()
        refresher = asyncio.create_task(_refresh_crls(issuer))
        yield
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        with contextlib.suppress(LedgerError):
            await issuer.release_serials()
        await issuer.ledger.close()

    app.cleanup_ctx.append(ledger_ctx)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    pki_http.Publication(issuer, metrics).mount(app)
    for mod in protocol_mounts():
        mod.mount(app, config, issuer)
    from enroll import admin_api

    admin_api.mount(app, config, issuer)
    return app
