"""A throwaway ``enroll serve`` for benchmarking: its own directory, PKI, ports and ledger.

The PKI is the embedded default's, except that the issuing CA's key type is chosen
(``rsa-2048`` as shipped, or ``ec-p256``). One profile is added for the load generator:
``benchscep`` (the ``router`` profile with one-time challenges only, so that a pre-seeded
challenge costs a SHA-256 and one UPDATE rather than an scrypt) and nothing else changes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.pkcs11 import Settings as Pkcs11Settings
from enroll.pki import DevPKI, Pair, make_cert
from enroll.setup import InitResult, init_directory, record_example_client

CA_KEY_TYPES = ("rsa-2048", "ec-p256")

BENCH_PROFILE = "benchscep"


def bench_profile(config_text: str) -> str:
    """The TOML of the ``benchscep`` profile: the embedded default's ``router`` profile (as
    ``enroll init`` wrote it into ``config_text``) with one-time challenges only and no EST label."""
    router = dict(tomllib.loads(config_text)["profiles"]["router"])
    router.pop("est", None)
    router["scep"] = {k: v for k, v in router["scep"].items() if k != "challenge_hash"} | {"auth": ["one-time"]}
    return "\n# --- added by `enroll bench`: the router profile with one-time challenges only\n" + _toml_table(
        f"profiles.{BENCH_PROFILE}", router)


def _toml_table(name: str, table: dict[str, Any]) -> str:
    """A TOML table and its sub-tables (values: strings, integers, booleans, lists of those)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v) if isinstance(v, str) else str(int(v))

    text = f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items() if not isinstance(v, dict))
    return text + "".join(_toml_table(f"{name}.{k}", v) for k, v in table.items() if isinstance(v, dict))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Enroll Bench"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def bench_pki(ca_key: str = "rsa-2048") -> DevPKI:
    """The development PKI with an issuing CA of the given key type (RA stays RSA-2048: SCEP)."""
    if ca_key not in CA_KEY_TYPES:
        raise ValueError(f"ca key type must be one of {CA_KEY_TYPES}")
    if ca_key == "ec-p256":
        root_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = ec.generate_private_key(ec.SECP256R1())
        iss_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = ec.generate_private_key(ec.SECP256R1())
    else:
        root_key = rsa.generate_private_key(65537, 3072)
        iss_key = rsa.generate_private_key(65537, 2048)
    root = Pair(make_cert(_name("Bench Root CA"), root_key, None, ca=True, days=3650), root_key)
    issuing = Pair(make_cert(_name("Bench Issuing CA"), iss_key, root, ca=True, path_length=0, days=3000), iss_key)
    ra_key = rsa.generate_private_key(65537, 2048)
    ra = Pair(make_cert(_name("Bench SCEP RA"), ra_key, issuing, days=1000, key_encipherment=True), ra_key)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                    x509.IPAddress(ipaddress.ip_address("::1"))]
    tls = Pair(make_cert(_name("localhost"), tls_key, issuing, days=800, eku=[ExtendedKeyUsageOID.SERVER_AUTH],
                         sans=sans), tls_key)
    cl_key = ec.generate_private_key(ec.SECP256R1())
    client = Pair(make_cert(_name("bench-client"), cl_key, issuing, days=365,
                            eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), cl_key)
    mf_key = ec.generate_private_key(ec.SECP256R1())
    mf = Pair(make_cert(_name("Bench Manufacturer CA"), mf_key, None, ca=True, days=3650), mf_key)
    idev_key = ec.generate_private_key(ec.SECP256R1())
    idev = Pair(make_cert(_name("bench-idevid"), idev_key, mf, days=3650), idev_key)
    return DevPKI(root, issuing, ra, tls, client, mf, idev)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 and ::1 right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET6) as s6:
                s6.bind(("::1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@dataclass(frozen=True)
class Token:
    """A PKCS#11 token for the CA, RA and OCSP keys (``enroll init --pkcs11``), reachable by this
    process and the servers it spawns (their environment is this one's)."""

    uri: str
    settings: Pkcs11Settings


def softhsm_token(base: Path, pin_env: str = "ENROLL_BENCH_PIN") -> Token:
    """A throwaway SoftHSM2 token under ``base`` (its own ``SOFTHSM2_CONF``, set in os.environ
    before any PKCS#11 module is loaded here, so spawned servers find it too)."""
    from enroll.pkcs11_init import DEFAULT_MODULE

    util = shutil.which("softhsm2-util")
    if util is None or not Path(DEFAULT_MODULE).is_file():
        raise RuntimeError(f"--softhsm needs softhsm2-util and {DEFAULT_MODULE} (Debian: apt install softhsm2)")
    (base / "tokens").mkdir(parents=True, exist_ok=True)
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin = secrets.token_hex(8)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    os.environ[pin_env] = pin
    subprocess.run([util, "--init-token", "--free", "--label", "EnrollBench", "--pin", pin,
                    "--so-pin", secrets.token_hex(8)], check=True, capture_output=True, timeout=60)
    return Token("pkcs11:token=EnrollBench", Pkcs11Settings(module=DEFAULT_MODULE, pin_env=pin_env))


def write_config(base: Path, *, ca_key: str = "rsa-2048", ledger_url: str | None = None,
                 pki: DevPKI | None = None, https_port: int | None = None,
                 http_port: int | None = None, token: Token | None = None) -> InitResult:
    """``enroll init`` into ``base`` with the bench PKI, the given ledger, and the bench profiles;
    with ``token``, the CA, RA and OCSP keys generated in it (``enroll init --pkcs11``)."""
    init = init_directory(base, https_port=https_port or free_port(), http_port=http_port or free_port(),
                          pki=pki or bench_pki(ca_key))
    text = init.config_path.read_text()
    if ledger_url:
        text, n = re.subn(r'(?m)^url = "sqlite:///var/enroll.db"$', f'url = "{ledger_url}"', text)
        if n != 1:
            raise RuntimeError("could not set [ledger] url in the generated config")
    init.config_path.write_text(text + bench_profile(text))
    if token is not None:
        from enroll.pkcs11_init import move_keys_to_token

        move_keys_to_token(init, token.uri, token.settings, ca_key)
    record_example_client(init.config_path)  # the EST load authenticates with it (mTLS)
    return init


@dataclass
class SpawnedServer:
    """A running ``enroll serve`` started by the bench (stop it with :meth:`stop`)."""

    init: InitResult
    https_port: int
    http_port: int
    workers: int
    process: subprocess.Popen[bytes]
    log_path: Path
    ledger_url: str
    own_dir: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def certs(self) -> Path:
        return self.init.certs_dir

    def stop(self) -> None:
        """SIGTERM (the parent forwards it to its workers), then SIGKILL after 15 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.own_dir is not None:
            shutil.rmtree(self.own_dir, ignore_errors=True)


def ledger_url_of(init: InitResult) -> str:
    """The [ledger] url of a written config, as a URL the Ledger accepts (absolute SQLite path)."""
    from enroll.config import load_config

    return load_config(init.config_path).ledger_url


def spawn(*, ca_key: str = "rsa-2048", workers: int = 1, ledger_url: str | None = None,
          base: Path | None = None, pki: DevPKI | None = None, startup_timeout: float = 60.0,
          softhsm: bool = False) -> SpawnedServer:
    """Write a bench config and start ``enroll serve --workers N`` on free loopback ports
    (``softhsm``: the CA, RA and OCSP keys in a throwaway SoftHSM2 token)."""
    own = None
    if base is None:
        own = base = Path(tempfile.mkdtemp(prefix="enroll-bench-"))
    token = softhsm_token(base / "softhsm") if softhsm else None
    init = write_config(base / "srv", ca_key=ca_key, ledger_url=ledger_url, pki=pki, token=token)
    from enroll.config import load_config

    config = load_config(init.config_path)
    https_port = config.server.https[0].port
    http_port = config.server.http[0].port
    log = base / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "enroll", "-c", str(init.config_path), "serve",
                                 "--workers", str(workers)], stdout=out, stderr=subprocess.STDOUT, cwd=base)
    srv = SpawnedServer(init, https_port, http_port, workers, proc, log, config.ledger_url, own)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            srv.stop()
            raise RuntimeError(f"enroll serve exited: {text[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    # with workers, wait until every worker has forked
                    from enroll.bench.procstat import process_tree

                    if len(process_tree(proc.pid)) >= (workers + 1 if workers > 1 else 1):
                        return srv
        except OSError:
            pass
        time.sleep(0.1)
    srv.stop()
    raise RuntimeError(f"enroll serve did not answer on {http_port}")
