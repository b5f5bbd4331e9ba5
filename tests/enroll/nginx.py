"""nginx from Debian in front of `enroll serve`, started on loopback with the very configuration
files under packaging/nginx/ (their addresses, ports and certificate paths substituted)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness import Loopback, stop_process, wait_port
from tests.support import ROOT, free_port, require_tool

PACKAGING = ROOT / "packaging" / "nginx"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

#: The address nginx connects to the nodes from (`proxy_bind`): the nodes' trusted proxy, while
#: clients of the tests connect from 127.0.0.1, an untrusted address.
PROXY_SOURCE = "127.0.0.2"


@dataclass(frozen=True)
class Nginx(Loopback):
    https_port: int
    http_port: int
    log: Path


def render(conf: str, *, https_port: int, http_port: int, tls_nodes: Sequence[int], plain_nodes: Sequence[int],
           cert: Path, key: Path) -> str:
    """packaging/nginx/*.conf with the test's loopback ports and certificate files."""
    out = []
    for line in conf.splitlines():
        if re.match(r"\s*listen \[::\]:", line):
            continue
        line = re.sub(r"listen 443\b", f"listen 127.0.0.1:{https_port}", line)
        line = re.sub(r"listen 80\b", f"listen 127.0.0.1:{http_port}", line)
        line = line.replace("/etc/nginx/tls/enroll.pem", str(cert)).replace("/etc/nginx/tls/enroll.key", str(key))
        out.append(line)
    text = "\n".join(out) + "\n"

    def upstream(name: str, ports: Sequence[int]) -> None:
        nonlocal text
        servers = "".join(f"    server 127.0.0.1:{p} max_fails=0;\n" for p in ports)
        text, n = re.subn(rf"(upstream {name} \{{\n)(?:    server [^\n]*\n)+", lambda m: m.group(1) + servers, text)
        assert n == 1, f"upstream {name} not found"

    for name, ports in (("enroll_nodes", plain_nodes), ("enroll_tls", tls_nodes), ("enroll_plain", plain_nodes)):
        if f"upstream {name} " in text:
            upstream(name, ports)
    return text


@contextmanager
def nginx(work: Path, packaging_file: str, *, tls_nodes: Sequence[int], plain_nodes: Sequence[int],
          cert: Path, key: Path) -> Iterator[Nginx]:
    """Run nginx (foreground, its own prefix under ``work``) with one packaging file; stopped after."""
    exe = require_tool("nginx")
    stream = "stream" in packaging_file or "passthrough" in packaging_file
    if stream and not STREAM_MODULE.exists():
        require_tool(str(STREAM_MODULE))  # Debian libnginx-mod-stream
    work.mkdir(parents=True, exist_ok=True)
    https_port, http_port = free_port(), free_port()
    site = work / packaging_file
    site.write_text(render((PACKAGING / packaging_file).read_text(), https_port=https_port, http_port=http_port,
                           tls_nodes=tls_nodes, plain_nodes=plain_nodes, cert=cert, key=key))
    temp = "".join(f"{k}_temp_path {work / k};\n  " for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    context = (f"stream {{\n  proxy_bind {PROXY_SOURCE};\n  include {site};\n}}\n" if stream else
               f"http {{\n  access_log off;\n  {temp}proxy_bind {PROXY_SOURCE};\n  include {site};\n}}\n")
    main = work / "nginx.conf"
    main.write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + (f"load_module {STREAM_MODULE};\n" if stream else "")
        + f"daemon off;\nworker_processes 1;\npid {work / 'nginx.pid'};\nerror_log {work / 'error.log'} info;\n"
        + "events { worker_connections 256; }\n" + context)
    log = work / "nginx.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-p", str(work), "-c", str(main)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(https_port, proc, log, "nginx")
        wait_port(http_port, proc, log, "nginx")
        yield Nginx(https_port, http_port, work / "error.log")
    finally:
        stop_process(proc, signal.SIGQUIT)  # graceful: finish open requests, then exit
