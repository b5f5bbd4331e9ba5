"""CA, RA and OCSP keys inside a PKCS#11 token (an HSM, or SoftHSM2 for tests).

A key is named by an RFC 7512 URI, ``pkcs11:token=Enroll;object=issuing-ca`` with optional
``id=%01`` and ``pin-source=file:/path`` (RFC 7512 §2.3). The PIN comes from the URI's
pin-source, else from ``[pkcs11] pin_env`` or ``pin_file``. Private keys are generated
sensitive and non-extractable and never leave the token: :class:`Pkcs11Key` is a
:class:`ca.keys.Signer` and :class:`ca.keys.Decrypter` that asks the token for each operation.

One session pool per process and token (thread-safe, so signing may run in an executor);
after ``fork`` the child re-initialises the library, as PKCS#11 v2.40 §6.7.7 requires.
"""

from __future__ import annotations

import os
import queue
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
from asn1crypto import keys as akeys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import PKCS11Error
from pkcs11.util.ec import encode_named_curve_parameters

from ca.errors import ConfigError

SCHEME = "pkcs11:"
_POOL_SIZE = 4

#: The key types ``enroll init --pkcs11`` may generate (RSA 2048-4096, P-256, P-384).
KEY_TYPES = ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384")
_CURVES: dict[str, ec.EllipticCurve] = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}
_EC_NAMES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}
_RSA_SIGN = {"sha256": Mechanism.SHA256_RSA_PKCS, "sha384": Mechanism.SHA384_RSA_PKCS,
             "sha512": Mechanism.SHA512_RSA_PKCS, "sha1": Mechanism.SHA1_RSA_PKCS}
_OAEP_HASH = {"sha1": (Mechanism.SHA_1, pkcs11.MGF.SHA1), "sha256": (Mechanism.SHA256, pkcs11.MGF.SHA256),
              "sha384": (Mechanism.SHA384, pkcs11.MGF.SHA384), "sha512": (Mechanism.SHA512, pkcs11.MGF.SHA512)}


def is_uri(value: object) -> bool:
    """True for a ``pkcs11:`` URI (RFC 7512 §2.3), rather than a file path."""
    return isinstance(value, str) and value.startswith(SCHEME)


@dataclass(frozen=True)
class Settings:
    """``[pkcs11]``: the module (shared library) and where the user PIN comes from."""

    module: str
    pin_env: str | None = None
    pin_file: Path | None = None


@dataclass(frozen=True)
class KeyUri:
    """The parts of an RFC 7512 URI that name a private key."""

    token: str
    object: str | None = None
    id: bytes | None = None
    pin_source: str | None = None

    def __str__(self) -> str:
        parts = [f"token={urllib.parse.quote(self.token, safe='')}"]
        if self.object is not None:
            parts.append(f"object={urllib.parse.quote(self.object, safe='')}")
        if self.id is not None:
            parts.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        text = SCHEME + ";".join(parts)
        return text + (f"?pin-source={urllib.parse.quote(self.pin_source, safe='/:')}" if self.pin_source else "")


def parse_uri(uri: str, key_name: str) -> KeyUri:
    """Parse ``pkcs11:token=..;object=..[;id=..][?pin-source=..]`` (RFC 7512 §2.3).

    ``token`` and one of ``object``/``id`` are required; ``type``, if given, must be ``private``.
    """
    if not is_uri(uri):
        raise ConfigError(key_name, f"{uri!r} is not a pkcs11: URI")
    path, _, query = uri[len(SCHEME):].partition("?")
    attrs: dict[str, str] = {}
    for part in [p for p in path.split(";") if p] + [q for q in query.split("&") if q]:
        name, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(key_name, f"{part!r} in {uri!r} is not NAME=VALUE (RFC 7512 §2.3)")
        if name in attrs:
            raise ConfigError(key_name, f"{name} given twice in {uri!r}")
        attrs[name] = value
    allowed = {"token", "object", "id", "type", "pin-source", "manufacturer", "model", "serial", "library-description",
               "library-manufacturer", "library-version", "slot-description", "slot-id", "slot-manufacturer",
               "module-name", "module-path"}
    unknown = set(attrs) - allowed
    if unknown:
        raise ConfigError(key_name, f"unknown attribute(s) {', '.join(sorted(unknown))} in {uri!r}")
    if attrs.get("type", "private") != "private":
        raise ConfigError(key_name, f"type={attrs['type']} in {uri!r}: name the private key (type=private)")
    token = attrs.get("token")
    if not token:
        raise ConfigError(key_name, f"{uri!r} has no token= (RFC 7512 §2.3)")
    if "object" not in attrs and "id" not in attrs:
        raise ConfigError(key_name, f"{uri!r} names no key: add object= (the key label) or id=")
    key_id = urllib.parse.unquote_to_bytes(attrs["id"]) if "id" in attrs else None
    return KeyUri(token=urllib.parse.unquote(token),
                  object=urllib.parse.unquote(attrs["object"]) if "object" in attrs else None,
                  id=key_id, pin_source=urllib.parse.unquote(attrs["pin-source"]) if "pin-source" in attrs else None)


def read_pin(uri: KeyUri, settings: Settings, key_name: str) -> str:
    """The user PIN: the URI's pin-source (a file), else ``pin_env``, else ``pin_file``."""
    source = uri.pin_source
    if source is not None:
        path = Path(source.removeprefix("file:"))
        return _pin_from_file(path, key_name)
    if settings.pin_env:
        value = os.environ.get(settings.pin_env)
        if value is None:
            raise ConfigError("pkcs11.pin_env", f"environment variable {settings.pin_env} is not set ({key_name})")
        return value
    if settings.pin_file is not None:
        return _pin_from_file(settings.pin_file, "pkcs11.pin_file")
    raise ConfigError(key_name, "no PIN: set [pkcs11] pin_env or pin_file, or pin-source in the URI")


def _pin_from_file(path: Path, key_name: str) -> str:
    from ca.keys import check_key_file_mode

    if not path.is_file():
        raise ConfigError(key_name, f"PIN file {path} does not exist")
    check_key_file_mode(path, key_name)
    return path.read_text().strip()


class _Pool:
    """Logged-in sessions on one token, shared by the threads of one process."""

    def __init__(self, settings: Settings, token_label: str, pin: str, key_name: str) -> None:
        self.pid = os.getpid()
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._open = 0
        self._lock = threading.Lock()
        self._key_name = key_name
        lib = _library(settings.module, key_name)
        try:
            self._token = lib.get_token(token_label=token_label)
        except pkcs11.NoSuchToken:
            raise ConfigError(key_name, f"no PKCS#11 token labelled {token_label!r} in {settings.module}") from None
        except PKCS11Error as exc:
            raise ConfigError(key_name, f"PKCS#11 token {token_label!r}: {type(exc).__name__}") from None
        self._pin = pin
        self._login = self._new()  # keeps the token logged in for the life of the pool

    def _new(self) -> Any:
        try:
            return self._token.open(rw=True, user_pin=self._pin)
        except pkcs11.PinIncorrect:
            raise ConfigError(self._key_name, f"wrong PIN for PKCS#11 token {self._token.label!r}") from None
        except pkcs11.exceptions.PinLocked:
            raise ConfigError(self._key_name, f"the PIN of PKCS#11 token {self._token.label!r} is locked") from None
        except pkcs11.UserAlreadyLoggedIn:
            return self._token.open(rw=True)
        except PKCS11Error as exc:
            raise ConfigError(self._key_name,
                              f"cannot log in to PKCS#11 token {self._token.label!r}: {type(exc).__name__}") from None

    @contextmanager
    def session(self) -> Iterator[Any]:
        """A logged-in session for the duration of one operation."""
        try:
            s = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = self._open < _POOL_SIZE
                if grow:
                    self._open += 1
            s = self._new() if grow else self._idle.get(timeout=30)
        try:
            yield s
        finally:
            self._idle.put(s)


_libraries: dict[str, tuple[int, Any]] = {}
_pools: dict[tuple[str, str], _Pool] = {}
_registry_lock = threading.Lock()


def _library(module: str, key_name: str) -> Any:
    """The loaded module, initialised once per process (C_Initialize again after fork)."""
    pid = os.getpid()
    entry = _libraries.get(module)
    if entry is not None and entry[0] == pid:
        return entry[1]
    if not Path(module).is_file():
        raise ConfigError("pkcs11.module", f"{module} does not exist ({key_name})")
    try:
        lib = pkcs11.lib(module)
    except PKCS11Error as exc:
        raise ConfigError("pkcs11.module", f"cannot load {module}: {type(exc).__name__}") from None
    if entry is not None:  # forked: the parent's sessions and login are gone here
        try:
            lib.finalize()
        except PKCS11Error:
            pass
        lib.initialize()
    _libraries[module] = (pid, lib)
    return lib


def _pool(settings: Settings, uri: KeyUri, key_name: str) -> _Pool:
    with _registry_lock:
        pool = _pools.get((settings.module, uri.token))
        if pool is None or pool.pid != os.getpid():
            pool = _Pool(settings, uri.token, read_pin(uri, settings, key_name), key_name)
            _pools[(settings.module, uri.token)] = pool
        return pool


def _find(session: Any, cls: ObjectClass, uri: KeyUri) -> Any:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: cls}
    if uri.object is not None:
        attrs[Attribute.LABEL] = uri.object
    if uri.id is not None:
        attrs[Attribute.ID] = uri.id
    found = list(session.get_objects(attrs))
    if len(found) > 1:
        raise pkcs11.MultipleObjectsReturned()
    return found[0] if found else None


class Pkcs11Key:
    """A private key in a token: a :class:`ca.keys.Signer` and, for RSA, a :class:`ca.keys.Decrypter`."""

    def __init__(self, settings: Settings, uri: KeyUri, key_name: str) -> None:
        self.uri = uri
        self.key_name = key_name
        self._settings = settings
        with self._session() as s:
            try:
                priv = _find(s, ObjectClass.PRIVATE_KEY, uri)
            except pkcs11.MultipleObjectsReturned:
                raise ConfigError(key_name, f"{uri} matches several private keys: add id=") from None
            if priv is None:
                raise ConfigError(key_name, f"no private key {uri} in the token")
            if priv[Attribute.EXTRACTABLE] or not priv[Attribute.SENSITIVE]:
                raise ConfigError(key_name, f"{uri} is extractable or not sensitive: generate it inside the token")
            self._type = priv.key_type
            self._public = self._read_public(s, priv)

    @contextmanager
    def _session(self) -> Iterator[Any]:
        with _pool(self._settings, self.uri, self.key_name).session() as s:
            yield s

    def _read_public(self, s: Any, priv: Any) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        if priv.key_type == KeyType.RSA:
            n = int.from_bytes(priv[Attribute.MODULUS], "big")
            e = int.from_bytes(priv[Attribute.PUBLIC_EXPONENT], "big")
            if not 2048 <= n.bit_length() <= 4096:
                raise ConfigError(self.key_name, f"{self.uri}: RSA keys must be 2048 to 4096 bits")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if priv.key_type == KeyType.EC:
            pub = _find(s, ObjectClass.PUBLIC_KEY, KeyUri(self.uri.token, self.uri.object, self.uri.id))
            if pub is None:
                raise ConfigError(self.key_name, f"{self.uri}: the EC public key object is missing from the token")
            curve = akeys.ECDomainParameters.load(pub[Attribute.EC_PARAMS]).chosen.native
            if curve not in _CURVES:
                raise ConfigError(self.key_name, f"{self.uri}: curve {curve} (P-256 and P-384 only)")
            raw = bytes(pub[Attribute.EC_POINT])  # DER OCTET STRING around the point (PKCS#11 v2.40 §2.3.3)
            try:
                octets = bytes(akeys.OctetString.load(raw).native)
            except ValueError:
                octets = raw  # some modules return the bare point
            return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[curve], octets)
        raise ConfigError(self.key_name, f"{self.uri}: key type {priv.key_type!r} (RSA and EC only)")

    def _private(self, s: Any) -> Any:
        priv = _find(s, ObjectClass.PRIVATE_KEY, self.uri)
        if priv is None:
            raise ConfigError(self.key_name, f"no private key {self.uri} in the token")
        return priv

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The public half, read from the token once."""
        return self._public

    def sign(self, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bytes:
        """RSA PKCS#1 v1.5 (RFC 8017 §8.2) or ECDSA, DER-encoded (RFC 3279 §2.2.3)."""
        if algorithm is None:
            raise ValueError("PKCS#11 keys sign with a hash (RSA or ECDSA)")
        with self._session() as s:
            priv = self._private(s)
            if self._type == KeyType.RSA:
                return bytes(priv.sign(data, mechanism=_RSA_SIGN[algorithm.name]))
            h = hashes.Hash(algorithm)
            h.update(data)
            raw = bytes(priv.sign(h.finalize(), mechanism=Mechanism.ECDSA))  # r || s (PKCS#11 §2.3.1)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def decrypt(self, ciphertext: bytes, pad: padding.AsymmetricPadding) -> bytes:
        """RSA key transport: PKCS#1 v1.5 or OAEP (RFC 8017 §7.2, §7.1; RFC 3560)."""
        if self._type != KeyType.RSA:
            raise TypeError("only RSA keys decrypt")
        if isinstance(pad, padding.OAEP):
            hash_name = pad.algorithm.name
            mgf_hash = pad.mgf._algorithm.name if isinstance(pad.mgf, padding.MGF1) else hash_name
            if hash_name not in _OAEP_HASH or mgf_hash != hash_name:
                raise ValueError(f"OAEP with {hash_name}/MGF1-{mgf_hash} is not supported")
            mech, param = Mechanism.RSA_PKCS_OAEP, (*_OAEP_HASH[hash_name], None)
        elif isinstance(pad, padding.PKCS1v15):
            mech, param = Mechanism.RSA_PKCS, None
        else:
            raise ValueError(f"unsupported padding {pad.name}")
        with self._session() as s:
            try:
                return bytes(self._private(s).decrypt(ciphertext, mechanism=mech, mechanism_param=param))
            except PKCS11Error as exc:
                raise ValueError(f"decryption failed ({type(exc).__name__})") from None


def load_key(uri: str, settings: Settings | None, key_name: str) -> Pkcs11Key:
    """Open the key named by ``uri``; ConfigError naming ``key_name`` when it cannot be used."""
    if settings is None:
        raise ConfigError("pkcs11.module", f"{key_name} is a pkcs11: URI: set [pkcs11] module")
    parsed = parse_uri(uri, key_name)
    try:
        return Pkcs11Key(settings, parsed, key_name)
    except PKCS11Error as exc:
        raise ConfigError(key_name, f"{parsed}: PKCS#11 error {type(exc).__name__}") from None


def generate_key(uri: str, settings: Settings, key_name: str, key_type: str) -> Pkcs11Key:
    """Generate a sensitive, non-extractable key pair in the token under the URI's label/id."""
    if key_type not in KEY_TYPES:
        raise ConfigError(key_name, f"key type {key_type!r} (one of {', '.join(KEY_TYPES)})")
    parsed = parse_uri(uri, key_name)
    if parsed.object is None:
        raise ConfigError(key_name, f"{uri}: object= (the label) is needed to generate a key")
    key_id = parsed.id if parsed.id is not None else os.urandom(8)
    private = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
               Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.LABEL: parsed.object,
               Attribute.ID: key_id}
    public = {Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.LABEL: parsed.object, Attribute.ID: key_id}
    with _pool(settings, parsed, key_name).session() as s:
        if _find(s, ObjectClass.PRIVATE_KEY, parsed) is not None:
            raise ConfigError(key_name, f"{uri} already exists in the token")
        if key_type.startswith("rsa-"):
            private[Attribute.DECRYPT] = True
            public[Attribute.ENCRYPT] = True
            s.generate_keypair(KeyType.RSA, int(key_type[4:]), store=True, public_template=public,
                               private_template=private)
        else:
            params = s.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(_EC_NAMES[key_type])}, local=True)
            params.generate_keypair(store=True, public_template=public, private_template=private)
    return load_key(str(KeyUri(parsed.token, parsed.object, key_id, parsed.pin_source)), settings, key_name)
