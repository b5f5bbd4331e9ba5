"""Wiring: the one place that turns a :class:`Config` into a running aiohttp application."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from ca.api import CAChain
from ca.authz import TrustStore
from ca.errors import CAError, ConfigError
from ca.issuer import Issuer, IssuingCA
from ca.keys import load_file_key
from ca.ledger import Ledger
from ca.local import LocalCA
from enroll.config import Config, load_certs
from enroll.metrics import Metrics

CONFIG = web.AppKey("config", Config)
ISSUER = web.AppKey("issuer", Issuer)
METRICS = web.AppKey("metrics", Metrics)

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
        passphrase = None
        if c.key_passphrase_env:
            value = os.environ.get(c.key_passphrase_env)
            if value is None:
                raise ConfigError(f"cas.{name}.key_passphrase_env",
                                  f"environment variable {c.key_passphrase_env} is not set")
            passphrase = value.encode()
        signer = load_file_key(c.key, f"cas.{name}.key", passphrase)
        backend = LocalCA(name, CAChain(issuer=chain[0], chain=tuple(chain)), signer)
        out[name] = IssuingCA(name, backend, c.crl_url, c.crl_validity_hours)
    return out


def build_issuer(config: Config, metrics: Metrics | None = None) -> Issuer:
    """The issuance core for this config (the ledger opens lazily; call ``ledger.migrate()``)."""
    trust = {name: TrustStore(name, tuple(c for p in paths for c in load_certs(Path(p), f"trust.{name}.certs")))
             for name, paths in config.trust.items()}
    return Issuer(Ledger(config.ledger_url), build_cas(config), config.profiles, users=config.users, trust=trust,
                  observer=metrics.observe_issuance if metrics else None)


def validate(config: Config) -> None:
    """Everything ``enroll config check`` and start-up verify beyond the TOML itself."""
    build_cas(config)
    for name, paths in config.trust.items():
        for p in paths:
            load_certs(Path(p), f"trust.{name}.certs")
    for mod in protocol_mounts():
        mod.validate(config)


def _route_group(path: str) -> str:
    if path.startswith("/.well-known/est"):
        return "est"
    if path in ("/metrics", "/health"):
        return path[1:]
    if path.startswith("/crl/"):
        return "crl"
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


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


async def _crl(request: web.Request) -> web.Response:
    """The CRL named in issued certificates' CRL Distribution Points (RFC 5280 §4.2.1.13)."""
    issuer = request.app[ISSUER]
    name = request.match_info["ca"]
    if name not in issuer.cas:
        raise web.HTTPNotFound(text=f"no CA named {name!r}\n")
    try:
        crl = await issuer.crl_for_ca(name)
    except CAError as exc:
        raise web.HTTPServiceUnavailable(text=exc.detail + "\n") from None
    return web.Response(body=crl.public_bytes(serialization.Encoding.DER),
                        headers={"Content-Type": "application/pkix-crl"})


def create_app(config: Config, *, issuer: Issuer | None = None, metrics: Metrics | None = None) -> web.Application:
    """The application: EST, SCEP, CRLs, health and metrics, over one issuance core."""
    metrics = metrics or Metrics()
    issuer = issuer or build_issuer(config, metrics)
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[_metrics_middleware])
    app[CONFIG] = config
    app[ISSUER] = issuer
    app[METRICS] = metrics

    async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
        await issuer.ledger.migrate()
        yield
        await issuer.ledger.close()

    app.cleanup_ctx.append(ledger_ctx)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/crl/{ca}.crl", _crl)
    for mod in protocol_mounts():
        mod.mount(app, config, issuer)
    return app
