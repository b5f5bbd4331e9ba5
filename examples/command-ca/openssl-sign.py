#!/usr/bin/env python3
"""An external CA for enroll's ``backend = "command"``: signs with ``openssl x509 -req``.

Usage (in ``[cas.NAME]``)::

    backend = "command"
    cert = "certs/issuing-ca.pem"                 # the CA this command signs with (published)
    chain = ["certs/root-ca.pem"]
    command = ["/usr/share/enroll/examples/command-ca/openssl-sign.py",
               "/etc/enroll/certs/issuing-ca.pem", "/etc/enroll/certs/issuing-ca.key"]

stdin: the CSR (PEM) then the template (JSON) enroll decided; stdout: the certificate (PEM).
Exit 0 issued, 75 pending (try later), 77 rejected; anything else is a failure. It uses the
template's serial (``-set_serial``), subject (``-subj``), validity and extensions; the CSR's own
extensions are never copied (``openssl x509 -req`` drops them unless ``-copy_extensions``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

EXIT_REJECTED = 77


def subj(rdns: list[list[str]]) -> str:
    """``/O=Example/CN=device`` with ``/`` ``+`` ``\\`` escaped (openssl's -subj syntax)."""
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("/", "\\/").replace("+", "\\+")
    return "".join(f"/{k}={esc(v)}" for k, v in rdns)


def extfile(t: dict) -> str:
    """An OpenSSL extension section (x509v3_config(5)) for the template's extensions."""
    lines = ["basicConstraints = critical, CA:FALSE",
             "subjectKeyIdentifier = hash",
             "authorityKeyIdentifier = keyid"]
    if t["key_usage"]:
        names = {"digital_signature": "digitalSignature", "content_commitment": "nonRepudiation",
                 "key_encipherment": "keyEncipherment", "data_encipherment": "dataEncipherment",
                 "key_agreement": "keyAgreement"}
        lines.append("keyUsage = critical, " + ", ".join(names[k] for k in t["key_usage"] if k in names))
    if t["extended_key_usage"]:
        lines.append("extendedKeyUsage = " + ", ".join(t["extended_key_usage"]))
    kinds = {"dns": "DNS", "ip": "IP", "email": "email", "uri": "URI"}
    sans = [f"{kinds[s['type']]}:{s['value']}" for s in t["sans"] if s["type"] in kinds]
    if sans:
        lines.append("subjectAltName = " + ", ".join(sans))
    if t["crl_urls"]:
        lines.append("crlDistributionPoints = " + ", ".join(f"URI:{u}" for u in t["crl_urls"]))
    aia = [f"OCSP;URI:{u}" for u in t["ocsp_urls"]] + [f"caIssuers;URI:{u}" for u in t["ca_issuers_urls"]]
    if aia:
        lines.append("authorityInfoAccess = " + ", ".join(aia))
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: openssl-sign.py CA_CERT CA_KEY", file=sys.stderr)
        return 64
    ca_cert, ca_key = sys.argv[1], sys.argv[2]
    data = sys.stdin.read()
    end = "-----END CERTIFICATE REQUEST-----"
    if end not in data:
        print("no CSR on stdin", file=sys.stderr)
        return EXIT_REJECTED
    csr, _, rest = data.partition(end)
    t = json.loads(rest)
    with tempfile.TemporaryDirectory() as tmp:
        csr_path, ext_path = os.path.join(tmp, "req.pem"), os.path.join(tmp, "ext.cnf")
        with open(csr_path, "w") as f:
            f.write(csr + end + "\n")
        with open(ext_path, "w") as f:
            f.write(extfile(t))
        run = subprocess.run(
            ["openssl", "x509", "-req", "-in", csr_path, "-CA", ca_cert, "-CAkey", ca_key,
             "-set_serial", t["serial_hex"], "-subj", subj(t["subject_rdns"]),
             "-days", str(t["validity_days"]), "-sha256", "-extfile", ext_path],
            capture_output=True, text=True, check=False)
    sys.stderr.write(run.stderr)
    if run.returncode != 0:
        return 1
    sys.stdout.write(run.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
