"""CA backends that need network clients (aiohttp, the EST client), registered by name with the
core's registry (:mod:`ca.backends`) on import."""

from __future__ import annotations

from enroll.backends import upstream_est

upstream_est.register_kind()
