"""ca/names.py: what a requested name may contain, and the device a certificate's names identify.

Every profile refuses control characters and '..' in subject values, and '/' and '\\' unless it
sets ``[subject] allow_path_separators``; ``[subject] patterns`` must match each value of their
attribute in full; SAN entries must be well formed (RFC 5280 §4.2.1.6): host names (RFC 1123
§2.1), wildcards only where ``[san] allow_wildcards`` is on, host addresses, mailboxes, URIs with
a scheme. SANs are shown as ``kind:value``; a device is its profile, subject and SAN set."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID

from ca.api import Issued, Rejected
from ca.errors import ConfigError, PolicyError, RejectReason
from ca.issuer import Issuer
from ca.names import (
    check_subject_value,
    csr_extensions,
    device_key,
    device_key_of_certificate,
    general_name_text,
    is_ip,
    requested_sans,
    requested_subject,
    sans_of,
)
from ca.profile import Profile, validate_profile
from enroll.config import Config, load_config
from enroll.setup import InitResult
from tests.support import make_csr, request, rewrite_config, tlv

#: A profile with no patterns, no opt-outs: only the rules every profile has.
PLAIN = Profile(name="plain", ca="issuing", subject_allow=("CN", "O", "OU", "emailAddress"),
                san_allow=("dns", "ip", "email", "uri"))


def _subject(profile: Profile, cn: str, *extra: x509.NameAttribute[str]) -> x509.Name:
    return requested_subject(make_csr(cn, extra_attrs=list(extra))[0], profile)


def _sans(profile: Profile, *names: x509.GeneralName) -> list[x509.GeneralName]:
    return requested_sans(make_csr("san-holder", sans=list(names))[0], profile)


#: GeneralName context tags (RFC 5280 §4.2.1.6): rfc822Name [1], dNSName [2], URI [6], IA5String.
_SAN_TAGS = {x509.RFC822Name: 0x81, x509.DNSName: 0x82, x509.UniformResourceIdentifier: 0x86}


def _raw_san(profile: Profile, kind: type[x509.RFC822Name | x509.DNSName | x509.UniformResourceIdentifier],
             value: str) -> list[x509.GeneralName]:
    """The profile's verdict on one SAN entry encoded as a peer may send it (cryptography's
    constructors refuse some of these values, so the extension is written as DER)."""
    der = tlv(0x30, tlv(_SAN_TAGS[kind], value.encode("latin-1")))
    ext = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, der)
    return requested_sans(make_csr("san-holder", extensions=[(ext, False)])[0], profile)


# --- subject: path characters and control characters, in every profile ------------------------

TRAVERSAL = ["../../../../x", "..", "x/../y", "..\\..\\x", "gw..example", "a/b", "/etc/passwd", "a\\b",
             "C:\\x", "dir/"]


@pytest.mark.parametrize("value", TRAVERSAL)
def test_subject_refuses_path_traversal_cn(value: str) -> None:
    with pytest.raises(PolicyError, match="subject CN contains"):
        _subject(PLAIN, value)


@pytest.mark.parametrize("value", ["../x", "a/b", "a\\b"])
def test_subject_refuses_path_characters_in_every_attribute(value: str) -> None:
    with pytest.raises(PolicyError, match="subject OU contains"):
        _subject(PLAIN, "device-1", x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, value))


@pytest.mark.parametrize("value", ["a\x00b", "a\nb", "a\rb", "a\tb", "a\x1fb", "a\x7fb"])
def test_subject_refuses_control_characters(value: str) -> None:
    opted_out = dataclasses.replace(PLAIN, subject_allow_path_separators=True)
    for profile in (PLAIN, opted_out):
        with pytest.raises(PolicyError, match="control character"):
            _subject(profile, value)


def test_path_separators_only_where_profile_opts_in_and_dot_dot_never() -> None:
    opted_out = dataclasses.replace(PLAIN, subject_allow_path_separators=True)
    for value in ("host/service", "Sales/EMEA", "DOMAIN\\device"):
        with pytest.raises(PolicyError, match="path separator"):
            _subject(PLAIN, value)
        assert _subject(opted_out, value).get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == value
    for value in ("../../../../x", "a/../b", "..\\x"):
        with pytest.raises(PolicyError, match=r"'\.\.'"):
            _subject(opted_out, value)


def test_ordinary_names_pass_the_path_rules() -> None:
    for value in ("gw-1.example.net", "Example Devices GmbH", "sensor_0001", "v1.2", "O'Brien"):
        assert len(_subject(PLAIN, value)) == 1


# --- subject: per-attribute patterns ------------------------------------------------------------

PATTERNED = dataclasses.replace(PLAIN, subject_patterns=(("CN", "[a-z][a-z0-9-]*"), ("OU", "ops|lab"),
                                                         ("emailAddress", "[a-z]+@example[.]com")))


@pytest.mark.parametrize("value", ["Device-1", "1device", "device 1", "device_1", "device-1.example", "-device"])
def test_subject_pattern_mismatch_is_refused_naming_the_attribute(value: str) -> None:
    with pytest.raises(PolicyError, match=f"subject CN {value!r} does not match the pattern of profile 'plain'"):
        _subject(PATTERNED, value)


def test_subject_pattern_matches_in_full_not_as_a_search() -> None:
    for value in ("device-1;rm", "xdevice-1!"):  # a prefix or substring matches; the value does not
        with pytest.raises(PolicyError, match="does not match the pattern"):
            _subject(PATTERNED, value)
    with pytest.raises(PolicyError, match="subject OU"):
        _subject(PATTERNED, "device-1", x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "opsx"))


def test_subject_pattern_applies_to_every_value_of_its_attribute() -> None:
    ok = x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops")
    bad = x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "finance")
    assert len(_subject(PATTERNED, "device-1", ok, ok)) == 3
    with pytest.raises(PolicyError, match="subject OU 'finance' does not match"):
        _subject(PATTERNED, "device-1", ok, bad)


def test_subject_pattern_error_repeats_at_most_64_characters_of_the_value() -> None:
    value = "b" * 200 + "@evil.example"
    with pytest.raises(PolicyError, match="subject emailAddress") as err:
        _subject(PATTERNED, "device-1", x509.NameAttribute(NameOID.EMAIL_ADDRESS, value))
    assert "b" * 64 in err.value.detail and "b" * 65 not in err.value.detail
    assert "evil" not in err.value.detail


def test_subject_attribute_without_pattern_is_only_bound_by_the_common_rules() -> None:
    assert len(_subject(PATTERNED, "device-1", x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Any Org, Inc."))) == 2


# --- SAN: host names, wildcards, addresses, mailboxes, URIs -------------------------------------

INVALID_HOSTNAMES = [
    "-gw.example.com", "gw-.example.com", "gw..example.com", "gw.example.com.", ".gw.example.com",
    "gw_1.example.com", "gw 1.example.com", "gw!.example.com", "a" * 64 + ".example.com",
    ".".join(["a" * 63] * 4),  # 255 characters
    "192.0.2.7", "host.123", "ab--cd.example.com", "xn--.example.com", "xn--zz.example.com",
    "gw.*.example.com", "*gw.example.com", "g*.example.com", "*", "", "../etc/passwd",
]


@pytest.mark.parametrize("name", INVALID_HOSTNAMES)
def test_dns_san_refuses_invalid_hostname(name: str) -> None:
    wildcards = dataclasses.replace(PLAIN, san_allow_wildcards=True)
    for profile in (PLAIN, wildcards):
        with pytest.raises(PolicyError, match="dns SAN"):
            _raw_san(profile, x509.DNSName, name)


VALID_HOSTNAMES = ["localhost", "gw-1.example.net", "GW-1.EXAMPLE.NET", "xn--bcher-kva.example", "a.b.c.d.example",
                   "a" * 63 + ".example", ".".join(["a" * 63] * 3 + ["a" * 61]), "0gw.example.com", "123.example.com"]


@pytest.mark.parametrize("name", VALID_HOSTNAMES)
def test_dns_san_accepts_rfc1123_hostnames_and_a_labels(name: str) -> None:
    assert _sans(PLAIN, x509.DNSName(name)) == [x509.DNSName(name)]


@pytest.mark.parametrize("name", ["*.example.com", "*.gw.example.net", "*.xn--bcher-kva.example"])
def test_wildcard_san_only_where_profile_opts_in(name: str) -> None:
    with pytest.raises(PolicyError, match="san.allow_wildcards"):
        _sans(PLAIN, x509.DNSName(name))
    wildcards = dataclasses.replace(PLAIN, san_allow_wildcards=True)
    assert _sans(wildcards, x509.DNSName(name)) == [x509.DNSName(name)]


@pytest.mark.parametrize("name", ["*.com", "*.*.example.com", "*.", "**.example.com"])
def test_wildcard_must_be_the_whole_leftmost_label_over_two_labels(name: str) -> None:
    wildcards = dataclasses.replace(PLAIN, san_allow_wildcards=True)
    with pytest.raises(PolicyError, match="dns SAN"):
        _raw_san(wildcards, x509.DNSName, name)


def test_wildcard_stays_inside_the_profile_domains() -> None:
    scoped = dataclasses.replace(PLAIN, san_allow_wildcards=True, san_dns_suffixes=("example.com",))
    assert _sans(scoped, x509.DNSName("*.gw.example.com"))
    with pytest.raises(PolicyError, match="outside the profile's domains"):
        _sans(scoped, x509.DNSName("*.example.org"))


@pytest.mark.parametrize("ip", [ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"),
                                ipaddress.ip_address("224.0.0.1"), ipaddress.ip_address("ff02::1"),
                                ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")])
def test_ip_san_refuses_what_is_not_one_host_address(
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    with pytest.raises(PolicyError, match="IP SAN"):
        _sans(PLAIN, x509.IPAddress(ip))


def test_ip_san_accepts_host_addresses() -> None:
    ips = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("192.0.2.7", "10.1.2.3", "127.0.0.1", "2001:db8::1",
                                                               "fe80::1")]
    assert _sans(PLAIN, *ips) == ips


@pytest.mark.parametrize("value", ["no-at.example.com", "@example.com", "user@", "a..b@example.com", ".a@example.com",
                                   "a.@example.com", "a b@example.com", "a@b@example.com", "\"q\"@example.com",
                                   "user@-bad.example", "user@exa_mple.com", "user@192.0.2.7", "x" * 65 + "@example.com",
                                   "user@*.example.com"])
def test_email_san_must_be_local_at_a_valid_domain(value: str) -> None:
    with pytest.raises(PolicyError, match="email SAN"):
        _raw_san(PLAIN, x509.RFC822Name, value)


def test_email_san_accepts_dot_atom_mailboxes() -> None:
    names = [x509.RFC822Name(v) for v in ("boss@example.com", "first.last+tag@mail.example.org", "o'neil@example.com")]
    assert _sans(PLAIN, *names) == names


@pytest.mark.parametrize("value", ["no-scheme", "//host/path", "1http://example.com", "http:", "http://",
                                   "http:///path", "https://exa mple.com/", "https://bad_host.example/",
                                   "https://example.com:port/", "https://example.com/<script>", "ht tp://example.com"])
def test_uri_san_must_parse_with_a_scheme(value: str) -> None:
    with pytest.raises(PolicyError, match="uri SAN"):
        _raw_san(PLAIN, x509.UniformResourceIdentifier, value)


def test_uri_san_accepts_urls_and_urns() -> None:
    names = [x509.UniformResourceIdentifier(v) for v in (
        "https://device.example.com/id/42", "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        "spiffe://example.org/ns/prod/sa/gw", "https://[2001:db8::1]:8443/x", "http://192.0.2.7/")]
    assert _sans(PLAIN, *names) == names


# --- config: keys, validation at load -------------------------------------------------------------

GATEWAY_PATTERNS = "patterns = { CN = '"  # the first profile (gateway) in enroll/default_config.py


@pytest.mark.parametrize(("old", "new", "key"), [
    (GATEWAY_PATTERNS, "patterns = { XX = 'a', CN = '", "profiles.gateway.subject.patterns.XX"),
    (GATEWAY_PATTERNS, "patterns = { UID = 'a', CN = '", "profiles.gateway.subject.patterns.UID"),
    (GATEWAY_PATTERNS, "patterns = { CN = '(unclosed", "profiles.gateway.subject.patterns.CN"),
    (GATEWAY_PATTERNS, "patterns = { O = 5, CN = '", "profiles.gateway.subject.patterns.O"),
    ('require = ["CN"]\n', 'require = ["CN"]\nallow_path_separators = 1\n',
     "profiles.gateway.subject.allow_path_separators"),
    ("[profiles.gateway.san]\n", "[profiles.gateway.san]\nallow_wildcards = \"yes\"\n",
     "profiles.gateway.san.allow_wildcards"),
    ("[profiles.gateway.san]\n", "[profiles.gateway.san]\nwildcards = true\n", "profiles.gateway.san.wildcards"),
])
def test_config_refuses_bad_name_policy_naming_the_key(embedded: InitResult, old: str, new: str, key: str) -> None:
    rewrite_config(embedded, old, new)
    with pytest.raises(ConfigError) as err:
        load_config(embedded.config_path)
    assert err.value.key == key, str(err.value)


def test_config_reads_name_policy_keys(embedded: InitResult) -> None:
    rewrite_config(embedded, "[profiles.gateway.san]\n", "[profiles.gateway.san]\nallow_wildcards = true\n")
    rewrite_config(embedded, 'require = ["CN"]\n', 'require = ["CN"]\nallow_path_separators = true\n')
    gateway = load_config(embedded.config_path).profiles["gateway"]
    assert gateway.san_allow_wildcards and gateway.subject_allow_path_separators
    assert [a for a, _ in gateway.subject_patterns] == ["CN"]


def test_validate_profile_refuses_a_bad_pattern_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        validate_profile(dataclasses.replace(PLAIN, subject_patterns=(("CN", "a{2,1}"),)))
    assert err.value.key == "profiles.plain.subject.patterns.CN" and "regular expression" in err.value.problem


# --- the shipped profiles -----------------------------------------------------------------------

def test_shipped_profiles_refuse_path_separators_and_constrain_cn(config: Config) -> None:
    for profile in config.profiles.values():
        assert not profile.subject_allow_path_separators and not profile.san_allow_wildcards, profile.name
        assert "CN" in dict(profile.subject_patterns), profile.name
        for value in ("../../../../x", "a/b", "a\\b", "x\x00y"):
            with pytest.raises(PolicyError):
                check_subject_value(profile, "CN", value)


#: CNs that tests, captures and interop clients request, per shipped profile.
CLIENT_CNS = {
    "gateway": ["gw-1", "k", "gw-strongswan", "strongswan-est-capture", "estclient-capture", "curl-capture-b64-64",
                "cli-dev", "conformance-a1b2c3-skg", "pending-est-0f1e2d", "gw-1.example.net"],
    "sensor": ["sensor-9", "sensor-000001", "v-sensor"],
    "bootstrap": ["v-bootstrap", "SN.0042_A"],
    "router": ["router-1", "strongswan-interop", "sscep-capture-aes128", "certmonger-capture", "scepclient-capture",
               "pyscep-capture", "conformance-a1b2c3-pkcsreq", "R1.example.com"],
    "mdm": ["phone", "m1", "4C4C4544-0051-3010-8052-B4C04F503432", "jane.doe@example.com"],
    "manual": ["waiting-laptop", "strongswan-manual", "Jane Doe"],
}


@pytest.mark.parametrize("profile", sorted(CLIENT_CNS))
def test_shipped_cn_patterns_accept_the_names_clients_request(config: Config, profile: str) -> None:
    for cn in CLIENT_CNS[profile]:
        check_subject_value(config.profiles[profile], "CN", cn)


def test_shipped_gateway_cn_is_a_host_name(config: Config) -> None:
    gateway = config.profiles["gateway"]
    for cn in ("-gw", "gw-", "gw_1", "gw 1", "gw..x", "<img src=x onerror=alert(1)>", "gw.example.", "$(reboot)"):
        with pytest.raises(PolicyError):
            check_subject_value(gateway, "CN", cn)


# --- through the issuance core: refused, nothing issued -----------------------------------------

async def test_issuer_rejects_traversal_cn_on_shipped_gateway_and_issues_nothing(issuer: Issuer) -> None:
    issued, reserved = (await issuer.ledger.count_certificates("issued"),
                        await issuer.ledger.count_certificates("reserved"))
    audits = len(await issuer.ledger.audit_records(10_000))
    out = await issuer.issue(request(make_csr("../../../../x")[0], "gateway"))
    assert isinstance(out, Rejected) and out.reason is RejectReason.POLICY, out
    assert "subject CN" in out.detail
    assert await issuer.ledger.count_certificates("issued") == issued
    assert await issuer.ledger.count_certificates("reserved") == reserved
    records = await issuer.ledger.audit_records(10_000)
    assert len(records) == audits + 1 and not records[0].ok and "subject CN" in (records[0].reason or "")


async def test_issuer_rejects_invalid_dns_san_on_shipped_gateway_and_issues_nothing(issuer: Issuer) -> None:
    issued = await issuer.ledger.count_certificates("issued")
    out = await issuer.issue(request(make_csr("gw-2", sans=[x509.DNSName("*.example.com")])[0], "gateway"))
    assert isinstance(out, Rejected) and out.reason is RejectReason.POLICY, out
    assert await issuer.ledger.count_certificates("issued") == issued


# --- SANs as text and the device key --------------------------------------------------------

def test_general_name_text_names_the_kind_and_the_value() -> None:
    assert general_name_text(x509.DNSName("gw.example.com")) == "dns:gw.example.com"
    assert general_name_text(x509.IPAddress(ipaddress.ip_address("10.0.0.1"))) == "ip:10.0.0.1"
    assert general_name_text(x509.RFC822Name("a@example.com")) == "email:a@example.com"
    assert general_name_text(x509.UniformResourceIdentifier("urn:x:1")) == "uri:urn:x:1"


def test_sans_of_reads_certificate_extensions_and_template_pairs() -> None:
    san = x509.SubjectAlternativeName([x509.DNSName("a.example"), x509.IPAddress(ipaddress.ip_address("::1"))])
    pairs: list[tuple[x509.ExtensionType, bool]] = [(x509.BasicConstraints(ca=False, path_length=None), True),
                                                    (san, False)]
    assert sans_of(pairs) == ["dns:a.example", "ip:::1"]
    csr = make_csr("x", sans=list(san))[0]
    assert sans_of(csr_extensions(csr)) == ["dns:a.example", "ip:::1"]
    assert sans_of(make_csr("no-sans")[0].extensions) == []


def test_is_ip_accepts_address_literals_only() -> None:
    assert is_ip("192.0.2.1") and is_ip("2001:db8::1")
    assert not is_ip("gw.example.com") and not is_ip("192.0.2.1/24") and not is_ip("")


def test_device_key_ignores_san_order_and_case_and_separates_profiles_and_subjects() -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1")])
    key = device_key("gateway", subject, ["dns:A.example", "dns:b.example"])
    assert len(key) == 32 and int(key, 16) >= 0
    assert device_key("gateway", subject, ["dns:b.example", "dns:a.example"]) == key
    assert device_key("other", subject, ["dns:a.example", "dns:b.example"]) != key
    assert device_key("gateway", subject, ["dns:a.example"]) != key
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-2")])
    assert device_key("gateway", other, ["dns:a.example", "dns:b.example"]) != key


async def test_device_key_of_an_issued_certificate_is_its_subject_and_sans(issuer: Issuer) -> None:
    csr = make_csr("gw-dev.example.com", sans=[x509.DNSName("gw-dev.example.com")])[0]
    out = await issuer.issue(request(csr, "gateway"))
    assert isinstance(out, Issued), out
    key = device_key_of_certificate("gateway", out.certificate)
    assert key == device_key("gateway", out.certificate.subject, ["dns:gw-dev.example.com"])
    rec = await issuer.ledger.find_by_serial("issuing", out.certificate.serial_number)
    assert rec is not None and rec.device == key
