"""Fetching an image by URL with every SSRF guard, against a real HTTP server on 127.0.0.1.

Private, link-local and metadata addresses are only ever given by a resolver the test
controls (``intranet.test`` -> 10.1.2.3, ``metadata.test`` -> 169.254.169.254): the guard must
refuse them before any connection, so nothing here leaves this machine's loopback.
"""

from __future__ import annotations

import ssl
import time
from ipaddress import ip_address
from types import SimpleNamespace

import hypothesis
import pytest
from hypothesis import strategies as st

from imgsearch.fetch import (
    CARRIES_IPV4,
    MAX_URL_CHARS,
    SPECIAL_PURPOSE,
    SPECIAL_PURPOSE_INSIDE,
    FetchError,
    UrlFetcher,
    parse_url,
    refusal,
)
from imgsearch.limits import Busy
from imgsearch.settings import Settings
from tests.imagehost import ImageHost, resolver, tls_context

NAMES = {
    "intranet.test": "10.1.2.3",
    "metadata.test": "169.254.169.254",
    "metadata6.test": "fd00:ec2::254",
    "photos.test": "127.0.0.1",
    # One public address and one private one: any non-public address refuses the host.
    "mixed.test": ["93.184.215.14", "10.9.9.9"],
}


@pytest.fixture(scope="module")
def photo(clothing_test_dir) -> bytes:
    return sorted((clothing_test_dir / "shoes").glob("*.jpg"))[0].read_bytes()


# The test server's port, once the host fixture has started it: the allow list names it.
PORT: list[int] = [0]


@pytest.fixture(scope="module")
def host(photo):
    with ImageHost(photo) as host:
        PORT[0] = host.port
        yield host


def fetcher(allow=None, **options) -> UrlFetcher:
    """A fetcher that may reach the test server (127.0.0.1 on its port), with the test's
    resolver."""
    options.setdefault("resolve", resolver(NAMES))
    options.setdefault("timeout", 5.0)
    allow = (f"127.0.0.1:{PORT[0]}",) if allow is None else allow
    return UrlFetcher(allow_hosts=allow, **options)


# What the client is told of any failure on an allowed host's private address (the test
# server's): nothing of what answered there.
WITHHELD = "no image could be fetched from {} (what happened on a private address is in the " \
           "server's log, not told here)"


def refused(fetch, url: str, reason: str):
    """The refusal of ``url`` with ``reason``: ``.reason`` and ``.message`` as the fetcher
    found them (for a private address, what it withheld from the client), ``.public`` as
    told."""
    with pytest.raises(FetchError) as caught:
        fetch.fetch(url)
    error = caught.value
    assert error.message
    if error.reason == "failed":
        assert error.message == WITHHELD.format(parse_url(url).host)
        assert error.withheld is not None
        found_reason, found = error.withheld
    else:
        assert error.withheld is None
        found_reason, found = error.reason, error.message
    assert found_reason == reason, found
    return SimpleNamespace(reason=found_reason, message=found, public=error.message)


# -- fetching ---------------------------------------------------------------------------------


def test_fetches_the_photo(host, photo):
    fetched = fetcher().fetch(host.url("/photo.jpg"))
    assert fetched.data == photo
    assert fetched.format == "JPEG" and fetched.redirects == 0
    assert fetched.url == host.url("/photo.jpg")


@pytest.mark.parametrize("hops", [1, 3])
def test_follows_up_to_three_redirects(host, photo, hops):
    fetched = fetcher().fetch(host.url(f"/hops/{hops}"))
    assert fetched.data == photo
    assert fetched.redirects == hops
    assert fetched.url == host.url("/hops/0")  # the URL the image came from


def test_a_fourth_redirect_is_refused(host):
    before = len(host.requests)
    error = refused(fetcher(), host.url("/hops/4"), "too_many_redirects")
    assert "more than 3" in error.message
    assert len(host.requests) - before == 4  # the fourth redirect is not followed


def test_the_connection_goes_to_the_checked_address_with_the_host_name(host, photo):
    """photos.test exists only in the test's resolver, so a fetch that works connected to the
    address the resolver gave and checked (no second lookup), while the request still named
    the host; one lookup per fetch."""
    resolve = resolver(NAMES)
    fetched = UrlFetcher(allow_hosts=[f"photos.test:{host.port}"], resolve=resolve).fetch(
        host.url("/photo.jpg", "photos.test"))
    assert fetched.data == photo
    assert host.requests[-1] == ("/photo.jpg", f"photos.test:{host.port}")
    assert resolve.calls == ["photos.test"]


# -- what the server would reach: refused before any connection -------------------------------


def test_the_test_server_is_refused_by_default(host):
    before = len(host.requests)
    error = refused(fetcher(allow=()), host.url("/photo.jpg"), "forbidden_address")
    assert error.message == ("127.0.0.1 is a loopback address (RFC 1122); only public "
                             "addresses are fetched")
    assert len(host.requests) == before  # never connected


def test_the_default_settings_refuse_loopback_and_allow_hosts_opens_it(host, photo):
    default = UrlFetcher.from_settings(Settings())
    assert default.allow_hosts == frozenset() and default.timeout == 10.0
    assert default.max_bytes == Settings().max_upload_bytes
    refused(default, host.url("/photo.jpg"), "forbidden_address")
    refused(default, host.url("/photo.jpg", "localhost"), "forbidden_address")
    opened = UrlFetcher.from_settings(Settings(url_allow_hosts=(f"127.0.0.1:{host.port}",)))
    assert opened.fetch(host.url("/photo.jpg")).data == photo
    # The allow list names hosts: another name for the same address stays refused.
    refused(opened, host.url("/photo.jpg", "localhost"), "forbidden_address")


def test_an_allowed_host_admits_only_its_port(host, photo):
    """An entry without a port admits 80 and 443 only; one with a port, that port only: the
    allow list cannot be used to try every port of an intranet host. Refused before any
    connection, with the same words as a host that is not allowed."""
    before = len(host.requests)
    bare = UrlFetcher.from_settings(Settings(url_allow_hosts=("127.0.0.1",)))
    other = UrlFetcher.from_settings(Settings(url_allow_hosts=(f"127.0.0.1:{host.port + 1}",)))
    for fetch in (bare, other):
        error = refused(fetch, host.url("/photo.jpg"), "forbidden_address")
        assert error.public == ("127.0.0.1 is a loopback address (RFC 1122); only public "
                                "addresses are fetched")
    assert len(host.requests) == before
    assert bare.allow_hosts == {("127.0.0.1", 80), ("127.0.0.1", 443)}
    names = {"photos.test": "127.0.0.1"}
    named = UrlFetcher(allow_hosts=[f"photos.test:{host.port}"], resolve=resolver(names))
    assert named.fetch(host.url("/photo.jpg", "photos.test")).data == photo


def test_allow_hosts_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMGSEARCH_URL_ALLOW_HOSTS",
                       " 127.0.0.1:8000, images.intranet ,[::1]:8443, ::1, [fd00::7]")
    monkeypatch.setenv("IMGSEARCH_URL_TIMEOUT", "2.5")
    settings = Settings.from_env()
    assert settings.url_allow_hosts == (
        "127.0.0.1:8000", "images.intranet", "[::1]:8443", "::1", "[fd00::7]")
    assert settings.url_timeout == 2.5
    assert UrlFetcher.from_settings(settings).allow_hosts == {
        ("127.0.0.1", 8000), ("images.intranet", 80), ("images.intranet", 443),
        ("::1", 8443), ("::1", 80), ("::1", 443), ("fd00::7", 80), ("fd00::7", 443)}


@pytest.mark.parametrize("name,value", [
    ("IMGSEARCH_URL_TIMEOUT", "0"), ("IMGSEARCH_URL_TIMEOUT", "-1"),
    ("IMGSEARCH_URL_ALLOW_HOSTS", "http://127.0.0.1/"), ("IMGSEARCH_URL_ALLOW_HOSTS", "a b"),
    ("IMGSEARCH_URL_ALLOW_HOSTS", "127.0.0.1:0"), ("IMGSEARCH_URL_ALLOW_HOSTS", "host:x"),
    ("IMGSEARCH_URL_ALLOW_HOSTS", "[::1]:99999"), ("IMGSEARCH_URL_ALLOW_HOSTS", ":80"),
    ("IMGSEARCH_URL_FETCH_SLOTS", "0"),
])
def test_bad_url_settings_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        Settings.from_env()


@pytest.mark.parametrize("name", ["intranet.test", "metadata.test", "metadata6.test",
                                  "mixed.test"])
def test_names_that_resolve_to_private_addresses_are_refused(name):
    resolve = resolver(NAMES)
    error = refused(fetcher(resolve=resolve), f"http://{name}/photo.jpg", "forbidden_address")
    # Neither the address nor its kind: which private block a name is in is the intranet's.
    assert error.message == (f"{name} resolves to an address that is not public; only public "
                             "addresses are fetched")
    assert resolve.calls == [name]


def test_fetches_at_once_are_bounded_and_one_more_fails_fast(host, photo):
    """With one slot, a second fetch while a slow one runs is refused at once (Busy: 503 with
    Retry-After in the web app) instead of waiting for its thread; the slot comes back."""
    import threading

    fetch = fetcher(timeout=1.5, max_concurrent=1)
    slow = threading.Thread(target=lambda: pytest.raises(FetchError, fetch.fetch,
                                                          host.url("/drip")))
    slow.start()
    try:
        while fetch.slots._free._value:  # until the slow fetch holds the slot
            time.sleep(0.01)
        with pytest.raises(Busy) as caught:
            fetch.fetch(host.url("/photo.jpg"))
        assert slow.is_alive()  # refused while the slow fetch still held its slot
        assert caught.value.retry_after == 2 and "1 at once" in str(caught.value)
    finally:
        slow.join(10)
    assert fetch.fetch(host.url("/photo.jpg")).data == photo
    refused(fetch, "ftp://x/", "unsupported_scheme")  # a malformed URL needs no slot


def test_metadata_is_refused_even_for_an_allowed_host():
    fetch = fetcher(allow=("metadata.test", "169.254.169.254"))
    refused(fetch, "http://metadata.test/latest/meta-data/", "forbidden_address")
    error = refused(fetch, "http://169.254.169.254/latest/", "forbidden_address")
    assert "cloud metadata" in error.message


@pytest.mark.parametrize("to", ["intranet.test", "metadata.test", "localhost"])
def test_a_redirect_to_a_private_address_is_refused(host, to):
    """The first hop (127.0.0.1) is allowed; the redirect target is checked again. That the
    allowed private host redirected is itself withheld from the client."""
    names = {**NAMES, "localhost": "127.0.0.1"}
    before = len(host.requests)
    error = refused(fetcher(resolve=resolver(names)), host.url(f"/to/{to}"), "forbidden_address")
    assert "not public" in error.message and error.message.startswith("it redirects to a URL")
    assert error.public == WITHHELD.format("127.0.0.1")
    assert [path for path, _ in host.requests[before:]] == [f"/to/{to}"]


def test_a_redirect_to_another_scheme_is_refused(host):
    error = refused(fetcher(), host.url("/to-file"), "unsupported_scheme")
    assert "file:" in error.message


def test_failures_on_a_private_address_say_nothing_of_what_answered(host):
    """A 404, a web page, a redirect without Location, a closed port, a body over the cap: the
    client hears one sentence for all of them (a port probe learns nothing), while the
    fetcher keeps what happened for the server's log."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, not listening
        fetch = fetcher(allow=(f"127.0.0.1:{host.port}", f"127.0.0.1:{closed}"))
        cases = [(host.url("/missing"), "http_status"), (host.url("/page.jpg"), "not_an_image"),
                 (host.url("/no-location"), "bad_response"), (host.url("/big"), "too_large"),
                 (f"http://127.0.0.1:{closed}/photo.jpg", "unreachable")]
        told = {refused(fetch, url, reason).public for url, reason in cases}
    assert told == {WITHHELD.format("127.0.0.1")}


# The address check on its own (nothing connects): the kind of address, or None for public.
ADDRESSES = [
    ("127.0.0.1", "a loopback address (RFC 1122)"),
    ("127.255.0.9", "a loopback address (RFC 1122)"),
    ("10.0.0.1", "a private address (RFC 1918)"),
    ("10.255.255.255", "a private address (RFC 1918)"),
    ("172.16.0.1", "a private address (RFC 1918)"),
    ("172.31.255.254", "a private address (RFC 1918)"),
    ("192.168.1.1", "a private address (RFC 1918)"),
    ("169.254.169.254", "a cloud metadata address"),
    ("169.254.170.2", "a cloud metadata address"),
    ("100.100.100.200", "a cloud metadata address"),
    ("fd00:ec2::254", "a cloud metadata address"),
    ("169.254.1.1", "a link-local address (RFC 3927)"),
    ("100.64.0.1", "a shared (carrier-grade NAT) address (RFC 6598)"),
    ("100.127.255.254", "a shared (carrier-grade NAT) address (RFC 6598)"),
    ("0.0.0.0", "a 'this network' address (RFC 791)"),
    ("240.0.0.1", "a reserved address (RFC 1112)"),
    ("224.0.0.1", "a multicast address (RFC 5771)"),
    ("192.0.0.8", "an IETF protocol assignment (RFC 6890)"),  # IPv4 dummy address (RFC 7600)
    ("::1", "a loopback address (RFC 4291)"),
    ("::", "the unspecified address (RFC 4291)"),
    ("fe80::1", "a link-local address (RFC 4291)"),
    ("fec0::1", "a site-local address (deprecated, RFC 3879)"),
    ("fc00::1", "a private (unique local) address (RFC 4193)"),
    ("fd12:3456::1", "a private (unique local) address (RFC 4193)"),
    ("::ffff:127.0.0.1", "a loopback address (RFC 1122)"),  # IPv4-mapped
    ("::ffff:10.1.2.3", "a private address (RFC 1918)"),
    ("::ffff:169.254.169.254", "a cloud metadata address"),
    ("2002:7f00:1::", "a loopback address (RFC 1122)"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "a cloud metadata address"),
    ("64:ff9b::10.1.2.3", "a private address (RFC 1918)"),  # NAT64
    ("::127.0.0.1", "a reserved address (outside 2000::/3, RFC 4291)"),  # IPv4-compatible
    ("4000::1", "a reserved address (outside 2000::/3, RFC 4291)"),
    ("2001:db8::1", "a documentation address (RFC 3849)"),
    ("93.184.215.14", None),
    ("8.8.8.8", None),
    ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", None),
    ("::ffff:93.184.215.14", None),
    ("64:ff9b::93.184.215.14", None),
    ("2002:5db8:d70e::1", None),
]


@pytest.mark.parametrize("address,kind", ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_address_kinds(address, kind):
    assert refusal(ip_address(address)) == kind


def test_a_public_address_passes_the_check_without_connecting():
    target = parse_url("http://public.test/photo.jpg")
    fetch = fetcher(allow=())
    assert fetch.check_addresses(target, ["93.184.215.14"]) == ["93.184.215.14"]
    with pytest.raises(FetchError, match="not public"):
        fetch.check_addresses(target, ["93.184.215.14", "192.168.0.7"])


def _ends(block: str):
    from ipaddress import ip_network

    network = ip_network(block)
    return network[0], network[-1]


@pytest.mark.parametrize("block", [str(b) for b, _ in SPECIAL_PURPOSE] + list(
    SPECIAL_PURPOSE_INSIDE))
def test_every_iana_special_purpose_block_is_refused(block):
    """The first and last address of every block in IANA's special-purpose registries (and of
    the blocks registered inside a wider one): refused by the check on its own, and by a fetch
    of a name that the test's resolver points there, before any connection (nothing here
    could connect: none of these is a loopback address the test server listens on)."""
    for ip in _ends(block):
        assert refusal(ip) is not None, ip
        resolve = resolver({"special.test": str(ip)})
        fetch = UrlFetcher(resolve=resolve, timeout=2.0)
        error = refused(fetch, "http://special.test/photo.jpg", "forbidden_address")
        assert error.message.startswith("special.test resolves to an address that is not public")
        assert str(ip) not in error.message


def _python_non_global_blocks() -> list[str]:
    """The blocks Python's ``ipaddress`` module holds as not global (its own transcription of
    the same IANA registries, made by other people at another time) and as reserved,
    multicast or link-local."""
    import ipaddress

    blocks = []
    for constants in (ipaddress._IPv4Constants, ipaddress._IPv6Constants):
        blocks += [str(n) for n in constants._private_networks]
        blocks += [str(n) for n in getattr(constants, "_reserved_networks", ())]
        for name in ("_reserved_network", "_multicast_network", "_linklocal_network"):
            if getattr(constants, name, None) is not None:
                blocks.append(str(getattr(constants, name)))
    return sorted(set(blocks))


@pytest.mark.parametrize("block", _python_non_global_blocks())
def test_every_block_python_holds_as_not_global_is_refused_too(block):
    """A second, independent source for the table: our registry transcription was made
    offline, so each block Python's standard library lists as private, reserved, multicast
    or link-local must be refused as well (first and last address)."""
    for ip in _ends(block):
        assert refusal(ip) is not None, ip


@pytest.mark.parametrize("block", CARRIES_IPV4)
def test_blocks_that_carry_an_ipv4_address_are_judged_by_it(block):
    """IPv4-mapped, NAT64 and 6to4 addresses go where the IPv4 address in them goes: refused
    for every special-purpose IPv4 block, fetched for a public one."""
    from ipaddress import IPv6Address, ip_network

    network = ip_network(block)
    shift = 80 if block == "2002::/16" else 0  # 6to4 carries it in bits 16-47

    def carrying(v4: str) -> IPv6Address:
        return IPv6Address(int(network[0]) | (int(ip_address(v4)) << shift))

    for inner, _ in SPECIAL_PURPOSE:
        if inner.version == 4:
            for v4 in _ends(str(inner)):
                assert refusal(carrying(str(v4))) is not None, (block, v4)
    assert refusal(carrying("93.184.215.14")) is None


@pytest.mark.parametrize("url", [
    "http://127.1/photo.jpg", "http://2130706433/photo.jpg", "http://0x7f000001/photo.jpg",
    "http://[::1]/photo.jpg", "http://[::ffff:127.0.0.1]/photo.jpg", "http://0.0.0.0/",
    "http://[fe80::1%25eth0]/photo.jpg",
])
def test_other_spellings_of_loopback_are_refused(url):
    # The system resolver reads "127.1" and "2130706433" as 127.0.0.1: the address decides.
    refused(UrlFetcher(), url, "forbidden_address")


# -- bodies -----------------------------------------------------------------------------------


def test_a_body_announced_over_the_cap_is_refused_unread(host):
    start = time.monotonic()
    error = refused(fetcher(), host.url("/big"), "too_large")
    assert f"{30 * 1024 * 1024:,} bytes" in error.message and "20,971,520" in error.message
    assert time.monotonic() - start < 2


def test_a_body_without_length_stops_at_the_cap(host):
    error = refused(fetcher(max_bytes=1024 * 1024), host.url("/endless"), "too_large")
    assert "1,048,576 bytes" in error.message
    refused(fetcher(), host.url("/endless"), "too_large")  # the default 20 MB too


def test_a_slow_drip_hits_the_deadline(host):
    start = time.monotonic()
    error = refused(fetcher(timeout=2.0), host.url("/drip"), "too_slow")
    assert time.monotonic() - start < 3.0
    assert "within 2 seconds" in error.message


def test_headers_dripping_hit_the_deadline_too(host):
    start = time.monotonic()
    refused(fetcher(timeout=2.0), host.url("/drip-headers"), "too_slow")
    assert time.monotonic() - start < 3.0


def test_html_served_as_jpeg_is_not_an_image(host):
    error = refused(fetcher(), host.url("/page.jpg"), "not_an_image")
    assert error.message == (
        "127.0.0.1 sent content labelled image/jpeg that is not a JPEG, PNG, GIF, WebP, BMP or "
        "TIFF image; link to the image itself, not to a page that shows it")
    refused(fetcher(), host.url("/empty"), "not_an_image")


def test_a_404_is_refused(host):
    error = refused(fetcher(), host.url("/missing"), "http_status")
    assert "404" in error.message


def test_a_redirect_without_location(host):
    refused(fetcher(), host.url("/no-location"), "bad_response")


def test_nothing_listening_is_unreachable(host):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        error = refused(fetcher(allow=(f"127.0.0.1:{port}",)),
                        f"http://127.0.0.1:{port}/photo.jpg", "unreachable")
    assert f"port {port}" in error.message


def test_an_unknown_name_is_unreachable():
    error = refused(fetcher(), "http://no-such-host.test/photo.jpg", "unreachable")
    assert "could not be found" in error.message


@pytest.fixture(scope="module")
def tls_host(photo, tmp_path_factory):
    """The image host over HTTPS, with a certificate for photos.test from a throwaway CA:
    ``(host, CA file)``."""
    context, ca = tls_context("photos.test", tmp_path_factory.mktemp("tls"))
    with ImageHost(photo, tls=context) as host:
        yield host, ca


def test_https_checks_the_certificate_against_the_host_name(tls_host, photo):
    """The connection goes to the checked address (photos.test and other.test exist only in
    the test's resolver), yet TLS names the host: SNI and the certificate check use it."""
    host, ca = tls_host
    names = {"photos.test": "127.0.0.1", "other.test": "127.0.0.1"}
    allow = [f"{name}:{host.port}" for name in ("photos.test", "other.test", "127.0.0.1")]
    fetch = UrlFetcher(allow_hosts=allow, resolve=resolver(names),
                       ssl_context=ssl.create_default_context(cafile=ca))
    fetched = fetch.fetch(host.url("/hops/1", "photos.test"))
    assert fetched.data == photo
    assert fetched.url == f"https://photos.test:{host.port}/hops/0"
    # The same server under a name or address that its certificate does not give.
    for name in ("other.test", "127.0.0.1"):
        error = refused(fetch, host.url("/photo.jpg", name), "unreachable")
        assert error.message == f"the certificate of {name} could not be verified"
    # The system's CAs (the default) do not trust the test's CA.
    untrusting = UrlFetcher(allow_hosts=[f"photos.test:{host.port}"], resolve=resolver(names))
    refused(untrusting, host.url("/photo.jpg", "photos.test"), "unreachable")


def test_https_to_a_server_without_tls_fails_cleanly(host):
    error = refused(fetcher(), f"https://127.0.0.1:{host.port}/photo.jpg", "unreachable")
    assert "secure connection" in error.message


# -- the URL itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.com/photo.jpg", "gopher://127.0.0.1:70/_x",
    "data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)", "dict://127.0.0.1:11211/",
    "FILE:///etc/passwd",
])
def test_unsupported_schemes(url):
    error = refused(fetcher(), url, "unsupported_scheme")
    assert "only http and https" in error.message


@pytest.mark.parametrize("url,says", [
    ("", "empty"),
    ("   ", "empty"),
    ("example.com/photo.jpg", "must start with http"),
    ("//example.com/photo.jpg", "must start with http"),
    ("http:example.com/photo.jpg", "must start with http://"),
    ("http://", "no host"),
    ("http:///photo.jpg", "no host"),
    ("http://example.com:99999/", "port"),
    ("http://example.com:0/", "port"),
    ("http://example.com:abc/", "port"),
    ("http://[::1/", "malformed"),
    ("http://[example.com]/", "malformed"),
    ("http://exa mple.com/", "not a valid host name"),
    ("http://exa<mple.com/", "not a valid host name"),
    ("http://example.com\n.evil/", "control characters"),
    ("http://" + "a" * 70 + ".com/", "not a valid host name"),
    ("http://example.com/" + "a" * MAX_URL_CHARS, "at most 2,000"),
])
def test_malformed_urls(url, says):
    error = refused(fetcher(), url, "invalid_url")
    assert says in error.message


@pytest.mark.parametrize("url", [
    "http://user:secret@127.0.0.1/photo.jpg", "http://user@127.0.0.1/photo.jpg",
    "https://:pw@example.com/", "http://example.com@127.0.0.1/",
])
def test_credentials_in_urls_are_refused(url):
    error = refused(fetcher(), url, "invalid_url")
    assert "user name or password" in error.message
    assert "secret" not in error.message


def test_urls_are_normalised():
    target = parse_url("  HTTP://Photos.Example.COM:80/a b/ü.jpg?x=1 2#frag ")
    assert target.url == "http://photos.example.com/a%20b/%C3%BC.jpg?x=1%202"
    assert parse_url("https://[::1]:8443/").url == "https://[::1]:8443/"
    assert parse_url("http://bücher.example/").host == "xn--bcher-kva.example"
    assert parse_url("http://example.com/%20already").path == "/%20already"


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(st.one_of(
    st.text(max_size=200),
    st.builds(lambda scheme, rest: scheme + rest,
              st.sampled_from(["http://", "https://", "HTTP://", "http:", "ftp://"]),
              st.text(max_size=120)),
))
def test_any_text_is_a_checked_url_or_a_fetch_error(text):
    """Whatever is typed, the parser answers with a normalised http(s) URL or a FetchError
    that says why, never another exception; a normalised URL reads back as itself."""
    try:
        target = parse_url(text)
    except FetchError as error:
        assert error.reason in ("invalid_url", "unsupported_scheme") and error.message
        return
    assert target.scheme in ("http", "https") and 1 <= target.port <= 65535
    assert parse_url(target.url) == target
    assert target.url.isascii() and not any(c in target.url for c in " \t\r\n")
