"""scep/quirks.py: every GET decoding quirk with a named test id (RFC 8894 §4.1)."""

from __future__ import annotations

import base64
import os

import pytest
from tests.scep.scep_testpki import CAPTURES

from scep import quirks

DER = bytes(range(256)) * 3 + b"\xfb\xff\xfe"  # base64 of this contains '+', '/' and '='
B64 = base64.b64encode(DER).decode()


def _wrap(text: str, width: int, sep: str) -> str:
    return sep.join(text[i : i + width] for i in range(0, len(text), width))


CASES = [
    pytest.param("message=" + quirks.encode_get_message(DER), id="ok/rfc8894-percent-escaped"),
    pytest.param("message=" + B64.replace("=", "%3D"), id="ok/macos-unescaped-base64"),
    pytest.param("message=" + B64, id="ok/raw-base64-with-plus-slash-equals"),
    pytest.param("message=" + _wrap(B64.replace("+", "%2B"), 64, "%0A"), id="ok/sscep-percent-0a-every-64"),
    pytest.param("message=" + _wrap(B64, 64, "%0D%0A"), id="ok/crlf-line-breaks"),
    pytest.param("message=" + B64.replace("+", " "), id="ok/form-decoded-plus-became-space"),
    pytest.param("message=" + base64.urlsafe_b64encode(DER).decode(), id="ok/urlsafe-alphabet"),
    pytest.param("message=" + B64.rstrip("="), id="ok/padding-stripped"),
    pytest.param("operation=PKIOperation&Message=" + quirks.encode_get_message(DER), id="ok/cisco-capitalised-name"),
]


@pytest.mark.parametrize("query", CASES)
def test_get_message_quirks_decode(query: str) -> None:
    assert quirks.decode_get_message("operation=PKIOperation&" + query) == DER


def test_certmonger_capture_query_decodes() -> None:
    query = (CAPTURES / "certmonger-0.79.17" / "pkcsreq-query.txt").read_text()
    assert quirks.decode_get_message(query) == (CAPTURES / "certmonger-0.79.17" / "pkcsreq.der").read_bytes()


def test_missing_message_is_none() -> None:
    assert quirks.decode_get_message("operation=GetCACaps") is None


@pytest.mark.parametrize("bad", ["message=%%%", "message=ab*d", "message=" + "A" * (quirks.MAX_GET_MESSAGE * 3 + 1)])
def test_not_base64_is_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        quirks.decode_get_message(bad)


def test_random_round_trips() -> None:
    for _ in range(50):
        der = os.urandom(300)
        assert quirks.decode_get_message("message=" + quirks.encode_get_message(der)) == der


def test_raw_query_param_does_not_form_decode() -> None:
    assert quirks.raw_query_param("operation=GetCACert&message=a+b", "message") == "a+b"
    assert quirks.raw_query_param("operation=GetCACert&message", "message") == ""
