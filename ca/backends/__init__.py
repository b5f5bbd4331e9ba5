"""CA backends by name: the ``backend = "..."`` of a ``[cas.NAME]`` table (docs/ARCHITECTURE.md, "Adding a CA
backend and storage interfaces").

``local`` (a key this server holds, :class:`ca.local.LocalCA`) is built by the wiring because it
needs a key; every other kind registers a factory here, with the validator of its own keys, so
that the configuration refuses an unknown kind or key before anything starts. Packages that may
use network clients (``enroll.backends``) register their kinds on import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ca.api import CABackend, CAChain
from ca.errors import CAError, ConfigError, RejectReason


class BackendPending(CAError):
    """The CA behind a backend has not decided yet (an upstream EST 202, RFC 7030 §4.2.3; an
    external command's exit code 75). Nothing was issued; the client should retry the same
    request after ``retry_after`` seconds (EST 503 + Retry-After)."""

    reason = RejectReason.UNAVAILABLE

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


@dataclass(frozen=True)
class BackendSpec:
    """What a factory gets: the CA's name, the chain it publishes (``cert`` + ``chain``) and the
    options its validator returned."""

    name: str
    chain: CAChain
    options: Mapping[str, Any] = field(default_factory=dict)


#: ``validate(table, path, base_dir)``: the backend's own keys of ``[cas.NAME]`` (already
#: stripped of the common ones), checked and with paths made absolute; raises ConfigError.
Validator = Callable[[Mapping[str, Any], str, Path], Mapping[str, Any]]
Factory = Callable[[BackendSpec], CABackend]


@dataclass(frozen=True)
class BackendKind:
    """One registered backend kind."""

    name: str
    factory: Factory
    validate: Validator
    keys: frozenset[str]  # the kind's own keys in [cas.NAME]


_KINDS: dict[str, BackendKind] = {}


def register(name: str, factory: Factory, validate: Validator, keys: frozenset[str]) -> None:
    """Make ``backend = "<name>"`` available (idempotent for the same factory)."""
    _KINDS[name] = BackendKind(name, factory, validate, keys)


def kinds() -> Mapping[str, BackendKind]:
    """Every registered kind by name."""
    if "command" not in _KINDS:
        from ca.backends import command

        command.register_kind()
    return dict(_KINDS)


def kind(name: str, path: str) -> BackendKind:
    """The registered kind ``name``; ConfigError naming the available ones otherwise."""
    known = kinds()
    if name not in known:
        raise ConfigError(path, f"unknown backend {name!r} (available: {', '.join(['local', *sorted(known)])})")
    return known[name]


def create(name: str, spec: BackendSpec) -> CABackend:
    """A backend of kind ``name`` for ``spec``."""
    return kind(name, f"cas.{spec.name}.backend").factory(spec)


def require(table: Mapping[str, Any], key: str, path: str, typ: type) -> Any:
    """``table[key]`` of type ``typ`` (ConfigError naming ``path.key`` otherwise)."""
    v = table.get(key)
    if v is None:
        raise ConfigError(f"{path}.{key}", "missing")
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise ConfigError(f"{path}.{key}", f"must be a {typ.__name__}")
    return v


def optional_int(table: Mapping[str, Any], key: str, path: str, default: int, low: int, high: int) -> int:
    """An integer option within ``[low, high]``."""
    v = table.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise ConfigError(f"{path}.{key}", f"must be an integer from {low} to {high}")
    return v


def resolve(base: Path, value: str) -> Path:
    """A path from the config made absolute against the config's directory."""
    p = Path(value)
    return p if p.is_absolute() else base / p
