"""EST wiring: validate ``[est]`` / ``[profiles.NAME.est]`` and mount the EST routes.

Called by ``enroll.app`` (``validate`` from ``enroll config check`` and start-up, ``mount`` from
``create_app``). EST is answered on HTTPS only: requests that arrive on the plain-HTTP
listener get 403 (RFC 7030 §3.2.1).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from est import http as est_http
from est.service import EstService
from est.settings import EstSettings, parse_settings


def settings(config: Any) -> EstSettings:
    """Parse and validate the EST part of the config (raises ConfigError)."""
    return parse_settings(
        config.est,
        config.profiles,
        config.profile_est,
        trust_names=tuple(config.trust),
        resolve=config.resolve,
        server_max_body=config.server.max_body_bytes,
        tls_cert=config.tls.cert,
        tls_key=config.tls.key,
        pkcs11=config.pkcs11,
    )


def validate(config: Any) -> None:
    """Raise :class:`ca.errors.ConfigError` when the EST configuration is unusable."""
    settings(config)


def mount(app: web.Application, config: Any, issuer: Any) -> None:
    """Add ``/.well-known/est[/<label>]/<op>`` to the application."""
    est_http.setup(app, EstService(settings(config), issuer), require_tls=True)
