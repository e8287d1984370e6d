"""The SSRF guard of taskrunner.fetch: which addresses a name may reach under which
allowlist, and that a fetch connects to exactly the address it checked (DNS rebinding),
over TLS too.

DNS is a stub of the system's lookup (`socket.getaddrinfo`, which both the guard and the
HTTP client go through): chosen names get chosen answers, anything else goes to the real
resolver. Fixture servers listen on 127.0.0.1 and 127.0.0.2 only; every address outside
127.0.0.0/8 below is only classified, never connected to.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from taskrunner.embedded import free_port
from taskrunner.fetch import FetchRefused, check_url, fetch, is_public
from tests.support.dns import InstallDns, counting_server
from tests.support.servers import serve

# --- which addresses a name may reach ------------------------------------------------


def _teredo(client: str) -> str:
    """A Teredo address (2001::/32) whose client is `client` (stored inverted)."""
    inverted = int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    server = int(ipaddress.IPv4Address("65.54.227.120"))
    return str(ipaddress.IPv6Address((0x20010000 << 96) | (server << 64) | inverted))


LOCAL_ANSWERS = [
    "127.0.0.1",
    "127.1.2.3",
    "0.0.0.0",
    "::1",
    "::",
    "169.254.169.254",  # cloud metadata (link-local)
    "169.254.1.1",
    "fe80::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "100.100.100.200",  # Alibaba Cloud metadata
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::7f00:1",  # local-use NAT64 prefix
    _teredo("127.0.0.1"),
]
PRIVATE_ANSWERS = [
    "10.0.0.1",
    "192.168.1.1",
    "172.16.0.1",
    "100.64.0.1",
    "fd00::1",
    "fec0::1",  # site-local (deprecated; Python calls it global)
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "::ffff:10.0.0.1",
    _teredo("10.0.0.1"),
    _teredo("8.8.8.8"),  # Teredo is a tunnel, not an ordinary public address
]


@pytest.mark.parametrize("answer", LOCAL_ANSWERS)
async def test_a_wildcard_never_lets_a_name_reach_a_local_or_metadata_address(
    dns: InstallDns, answer: str
) -> None:
    dns({"app.example.com": [[answer]]})
    with pytest.raises(FetchRefused) as refused:
        await check_url("http://app.example.com/", "*.example.com")
    message = str(refused.value)
    assert "app.example.com" in message
    assert answer not in message and str(ipaddress.ip_address(answer)) not in message
    assert not is_public(ipaddress.ip_address(answer))


@pytest.mark.parametrize("answer", LOCAL_ANSWERS)
async def test_a_pattern_naming_the_host_or_the_ip_lets_a_local_address_through(
    dns: InstallDns, answer: str
) -> None:
    dns({"app.example.com": [[answer]]})
    await check_url("http://app.example.com/", "*.example.com,APP.example.com")
    await check_url("http://app.example.com/", f"*.example.com,{answer}")


@pytest.mark.parametrize("answer", PRIVATE_ANSWERS)
async def test_private_addresses_embedded_or_not_need_a_pattern_other_than_star(
    dns: InstallDns, answer: str
) -> None:
    dns({"app.example.com": [[answer]]})
    with pytest.raises(FetchRefused) as refused:
        await check_url("http://app.example.com/", "*")
    assert answer not in str(refused.value)
    assert "app.example.com" in str(refused.value)
    assert not is_public(ipaddress.ip_address(answer))
    await check_url("http://app.example.com/", "*.example.com")


@pytest.mark.parametrize(
    "answer",
    [
        "8.8.8.8",
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",
        "2002:808:808::1",  # 6to4 of a public address
        "64:ff9b::808:808",  # NAT64 (DNS64 on an IPv6-only network) of a public address
    ],
)
async def test_public_addresses_pass_under_star(dns: InstallDns, answer: str) -> None:
    dns({"app.example.com": [[answer]]})
    await check_url("http://app.example.com/", "*")
    assert is_public(ipaddress.ip_address(answer))


async def test_one_local_answer_among_public_ones_refuses_the_name(dns: InstallDns) -> None:
    dns({"app.example.com": [["8.8.8.8", "127.0.0.1"]]})
    with pytest.raises(FetchRefused):
        await check_url("http://app.example.com/", "*.example.com")


@pytest.mark.parametrize(
    ("url", "allowlist"),
    [
        ("http://127.0.0.1/", "127.0.0.*"),  # a glob over IPs is no exact IP
        ("http://127.0.0.1/", "*"),
        ("http://[::1]/", "*"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.*"),
    ],
)
async def test_ip_literals_of_local_addresses_need_that_exact_ip(url: str, allowlist: str) -> None:
    with pytest.raises(FetchRefused):
        await check_url(url, allowlist)
    exact = url.split("/")[2].strip("[]")
    await check_url(url, f"{allowlist},{exact}")


# --- the connection goes to the checked address -----------------------------------------


def _site() -> Starlette:
    async def page(request: Request) -> Response:
        host = request.headers.get("host", "")
        return HTMLResponse(f"<title>pinned</title><p id=host>{host}</p>")

    async def hop(request: Request) -> Response:
        return RedirectResponse(f"http://second.test:{request.url.port}/page", status_code=302)

    return Starlette(routes=[Route("/page", page), Route("/hop", hop)])


async def test_each_redirect_hop_connects_to_the_address_it_checked(dns: InstallDns) -> None:
    """The second hop's name answers 127.0.0.1 (allowed by its exact IP) to the check and
    127.0.0.2 (allowed by nothing) to any later lookup: the fetch must still go to
    127.0.0.1, and 127.0.0.2 must see no connection."""
    port = free_port()
    stub = dns({"second.test": [["127.0.0.1"], ["127.0.0.2"]]})
    async with serve(_site(), port), counting_server("127.0.0.2", port) as rebound:
        page = await fetch(
            f"http://127.0.0.1:{port}/hop",
            allowlist="127.0.0.1,*.test",
            max_bytes=10_000,
            max_redirects=1,
        )
    assert rebound == [0], "a connection reached the address the name was rebound to"
    assert stub.lookups["second.test"] == 1
    assert page.final_url == f"http://second.test:{port}/page"
    assert f"<p id=host>second.test:{port}</p>" in page.body.decode()


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `name` signed by it: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    later = now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fixture CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_a_pinned_https_fetch_keeps_sni_certificate_check_and_host(
    dns: InstallDns, tmp_path: Path
) -> None:
    """Connecting to the checked IP must not change what TLS sees: the certificate is
    verified for the name (it is not valid for 127.0.0.1), and Host names it too."""
    ca, cert, key = _certificate(tmp_path, "pinned.test")
    trust = ssl.create_default_context(cafile=str(ca))
    port = free_port()
    dns({"pinned.test": [["127.0.0.1"], ["127.0.0.2"]], "other.test": [["127.0.0.1"]]})
    tls = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    async with serve(_site(), port, **tls), counting_server("127.0.0.2", port) as rebound:
        page = await fetch(
            f"https://pinned.test:{port}/page",
            allowlist="pinned.test",
            max_bytes=10_000,
            max_redirects=0,
            verify=trust,
        )
        assert f"<p id=host>pinned.test:{port}</p>" in page.body.decode()
        assert page.final_url == f"https://pinned.test:{port}/page"
        with pytest.raises(Exception, match="certificate"):  # a name the cert lacks
            await fetch(
                f"https://other.test:{port}/page",
                allowlist="other.test",
                max_bytes=10_000,
                max_redirects=0,
                verify=trust,
            )
    assert rebound == [0]
