"""One read model for the CLI and the admin API: on the same ledger (real SQLite behind a real
`enroll serve`), `enroll certs list --state S` and GET /admin/api/v1/certificates?state=S list
the same certificates, each named by its ``ca.records.CertState`` (valid, on_hold, revoked,
expired, retired), and `enroll certs summary` counts what the API's overview counts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.records import CertState
from enroll.pki import DevPKI, make_cert
from tests.enroll.admin_helpers import AdminServer, admin_server
from tests.enroll.test_admin_api import enroll_gateway

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _expired_certificate(dev_pki: DevPKI) -> x509.Certificate:
    """A certificate our issuing CA signed that expired a week ago (RFC 5280 §4.1.2.5)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return make_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "state-expired")]), key, dev_pki.issuing,
                     days=2, not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=9))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPKI) -> Iterator[tuple[AdminServer, dict[str, str]]]:
    """One gateway certificate in each state, put there by the CLI and by the admin API."""
    with admin_server(tmp_path_factory.mktemp("states"), dev_pki) as srv:
        serial: dict[CertState, str] = {}
        for s in CertState:
            if s is not CertState.EXPIRED:
                cert = enroll_gateway(srv, "state-" + s.value.replace("_", "-"))  # the profile's CN pattern
                serial[s] = format(cert.serial_number, "x")
        srv.enroll("revoke", serial[CertState.REVOKED], "--reason", "key_compromise")
        status, body = srv.api("POST", f"/certificates/{serial[CertState.ON_HOLD]}/revoke",
                               {"reason": "certificate_hold"})
        assert status == 200, body
        srv.enroll("retire", serial[CertState.RETIRED])
        pem = Path(srv.init.certs_dir) / "expired.pem"
        expired = _expired_certificate(dev_pki)
        pem.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
        srv.enroll("certs", "import", str(pem), "--profile", "gateway")
        serial[CertState.EXPIRED] = format(expired.serial_number, "x")
        yield srv, {s.value: n for s, n in serial.items()}


def _cli_rows(srv: AdminServer, *args: str) -> dict[str, str]:
    """serial -> STATUS column of `enroll certs list`."""
    out = srv.enroll("certs", "list", "--limit", "1000", *args).stdout.splitlines()
    assert out[0].split()[:4] == ["SERIAL", "PROFILE", "VIA", "STATUS"]
    return {line.split()[0]: line.split()[3] for line in out[1:]}


def _api_rows(srv: AdminServer, query: str = "") -> dict[str, str]:
    """serial -> state of GET /certificates."""
    status, page = srv.api("GET", f"/certificates?limit=500{query}")
    assert status == 200 and page["next_cursor"] is None, page
    return {item["serial"]: item["state"] for item in page["items"]}


def test_cli_and_admin_api_name_every_state_alike(fleet: tuple[AdminServer, dict[str, str]]) -> None:
    srv, serial = fleet
    cli, api = _cli_rows(srv), _api_rows(srv)
    assert cli == api
    for state, n in serial.items():
        assert cli[n] == state, (state, n)
    assert set(cli.values()) == {s.value for s in CertState}


@pytest.mark.parametrize("state", [s.value for s in CertState])
def test_state_filter_lists_exactly_the_certificates_in_that_state(fleet: tuple[AdminServer, dict[str, str]],
                                                                   state: str) -> None:
    srv, serial = fleet
    cli, api = _cli_rows(srv, "--state", state), _api_rows(srv, f"&state={state}")
    assert cli == api
    assert serial[state] in cli
    assert set(cli.values()) == {state}
    everything = _cli_rows(srv)
    assert set(cli) == {n for n, s in everything.items() if s == state}


def test_cli_summary_counts_what_the_admin_overview_counts(fleet: tuple[AdminServer, dict[str, str]]) -> None:
    srv, _ = fleet
    lines = srv.enroll("certs", "summary").stdout.splitlines()
    header = lines[0].split()
    assert header[:6] == ["PROFILE"] + [s.value.upper() for s in CertState]
    cli = {cells[0]: [int(v) for v in cells[1:]] for cells in (line.split() for line in lines[1:])}
    status, overview = srv.api("GET", "/overview")
    assert status == 200
    api = {name: [c[s.value] for s in CertState] + [c["expiring_7d"], c["expiring_30d"]]
           for name, c in overview["profiles"].items()}
    assert cli == api
    listed = _api_rows(srv, "&profile=gateway")
    assert cli["gateway"][:5] == [sum(1 for s in listed.values() if s == st.value) for st in CertState]
    assert all(n == 1 for n in cli["gateway"][:5])
