"""Installable (issue 17): `python -m build` makes a wheel that carries the admin page; installed
into a fresh venv outside the checkout (dependencies from the package index), `enroll init`,
`enroll serve`, one EST and one SCEP enrollment work with nothing from the source tree."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from est.client import EstClient, build_csr
from scep.asn1 import PkiStatus
from scep.client import ScepClient, simple_csr
from tests.harness import enroll_serve
from tests.support import ROOT, free_port

SOURCES = ("ca", "est", "scep", "enroll", "conformance", "pyproject.toml", "README.md")


def _env() -> dict[str, str]:
    """No trace of the checkout: no PYTHONPATH, no config from the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ENROLL_CONFIG", "VIRTUAL_ENV")}
    return env


def _build_wheel(tmp: Path) -> Path:
    """`python -m build --wheel` on a copy of the sources (the shared checkout stays clean)."""
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)],
                         capture_output=True, text=True, timeout=900, cwd=tmp, env=_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wheels = list(dist.glob("enroll-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_installs_and_serves_est_and_scep(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for needed in ("enroll/admin_page/index.html", "enroll/admin_page/app.js", "enroll/admin_page/style.css",
                   "enroll/default_config.py", "conformance/CLAUSES.md", "ca/py.typed", "enroll/py.typed",
                   "enroll/backup.py", "enroll/proxy.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith("tests/")]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=_env())
    py, enroll = venv / "bin" / "python", venv / "bin" / "enroll"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True,
                         timeout=900, env=_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    where = subprocess.run([str(py), "-c", "import enroll, est; print(enroll.__file__)"], capture_output=True,
                           text=True, check=True, env=_env(), cwd=tmp_path).stdout
    assert str(venv) in where and str(ROOT) not in where, where

    home = tmp_path / "srv"
    https_port, http_port = free_port(), free_port()
    subprocess.run([str(enroll), "init", "--dir", str(home), "--https-port", str(https_port),
                    "--http-port", str(http_port)], check=True, capture_output=True, timeout=120, env=_env(),
                   cwd=tmp_path)
    secrets = dict(line.split("=", 1) for line in (home / "certs" / "dev-secrets.txt").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    log = tmp_path / "serve.log"
    with enroll_serve(home / "enroll.toml", http_port, log, command=[str(enroll)], env=_env()):
        import ssl

        ctx = ssl.create_default_context(cafile=str(home / "certs" / "root-ca.pem"))
        with urllib.request.urlopen(f"https://127.0.0.1:{https_port}/admin/", context=ctx, timeout=30) as resp:
            page = resp.read()
        assert resp.status == 200 and b"<html" in page.lower()
        asyncio.run(_enroll_both(home, https_port, http_port, secrets))


async def _enroll_both(home: Path, https_port: int, http_port: int, secrets: dict[str, str]) -> None:
    user = secrets.get("EST_USER", "estuser").strip()
    password = next(v.strip() for k, v in secrets.items() if "EST" in k and "PASS" in k)
    challenge = next(v.strip() for k, v in secrets.items() if "SCEP" in k and "CHALLENGE" in k)
    async with EstClient(f"https://127.0.0.1:{https_port}", trust_anchor=home / "certs" / "root-ca.pem",
                         label="gateway", username=user, password=password) as est:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (await est.enroll(build_csr(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wheel-est")]))
                )).certificate
    assert cert.subject.rfc4514_string() == "CN=wheel-est"
    rkey = rsa.generate_private_key(65537, 2048)
    reply = await ScepClient(f"http://127.0.0.1:{http_port}/scep/router").enroll(
        simple_csr(rkey, "wheel-scep", challenge=challenge), rkey)
    assert reply.status is PkiStatus.SUCCESS, reply
