"""Fetch an image from a URL that a stranger typed, without letting it reach what we can reach.

Search by URL makes the server an HTTP client of any address: left alone, a URL could read the
cloud metadata service (credentials), an intranet page or a port on this machine (SSRF). So
every step is checked, and :class:`FetchError` names what was refused:

- the URL: http or https only, a host name or address, no user name or password, a port from
  1 to 65535, at most :data:`MAX_URL_CHARS` characters;
- the address: the host is resolved once and refused if *any* of its addresses is not public
  (loopback, private, link-local, shared, reserved, multicast; IPv4 inside IPv6 is judged as
  the IPv4 it carries), then the connection goes to that checked address, never to a second
  lookup of the name (which DNS rebinding would answer differently). The Host header, TLS SNI
  and the certificate check still use the name. ``allow_hosts`` lists hosts whose addresses
  may be private (tests on 127.0.0.1, an intranet deployment); cloud metadata addresses are
  refused even for them;
- every redirect (at most :data:`MAX_REDIRECTS`) is checked again as a new URL;
- one deadline covers the whole fetch, lookups and every redirect included: a watchdog cuts
  the socket when it passes, so a server that drips one byte at a time gains nothing;
- the body: refused from its Content-Length when that is over ``max_bytes``, and reading
  stops as soon as it passes ``max_bytes``; only a 200 answer counts, and its first bytes must
  be a JPEG, PNG, GIF, WebP, BMP or TIFF whatever Content-Type says.

No proxy from the environment is used (``http.client`` reads none), and nothing is cached.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from urllib.parse import quote, urljoin, urlsplit

from .errors import ReasonedError
from .images import sniff_format
from .limits import Slots
from .settings import split_host_port

MAX_URL_CHARS = 2000
MAX_REDIRECTS = 3
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
DEFAULT_PORTS = {"http": 80, "https": 443}
CHUNK = 64 * 1024
# Bytes that must have arrived before the content can be sniffed (sniff_format reads 32).
SNIFF_BYTES = 32
# Reasons that mean the server will not fetch a URL at all (the others: it tried and failed).
REFUSALS = ("invalid_url", "unsupported_scheme", "forbidden_address")
USER_AGENT = "imgsearch-url-search/0.1"

# Instance metadata services hand out credentials to whatever asks from inside the cloud; they
# are named in the refusal and refused even for allowed hosts.
METADATA_ADDRESSES = frozenset(ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
    "169.254.170.2",  # AWS ECS task credentials
    "fd00:ec2::254",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
))
NAT64 = ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits

# Every block of IANA's IPv4 and IPv6 Special-Purpose Address Registries
# (https://www.iana.org/assignments/iana-ipv4-special-registry/,
# https://www.iana.org/assignments/iana-ipv6-special-registry/; the IPv6 one last updated
# 2025-10-09), transcribed 2026-12-01, with the blocks outside them that are no destination on
# the internet either (multicast, IPv6 site-local, everything outside 2000::/3). None is
# fetched from: an image host is a unicast server on a global address, and a block a registry
# marks "globally reachable" (AS112, AMT, anycast relays) serves DNS or tunnels, never images.
# The three blocks that carry an IPv4 address (IPv4-mapped, NAT64 and 6to4) are judged as the
# IPv4 address they carry instead, which is where the packets go: a DNS64 network hands out
# NAT64 addresses for every public IPv4 site.
SPECIAL_PURPOSE = tuple((ip_network(block), name) for block, name in (
    ("0.0.0.0/8", "a 'this network' address (RFC 791)"),
    ("10.0.0.0/8", "a private address (RFC 1918)"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address (RFC 6598)"),
    ("127.0.0.0/8", "a loopback address (RFC 1122)"),
    ("169.254.0.0/16", "a link-local address (RFC 3927)"),
    ("172.16.0.0/12", "a private address (RFC 1918)"),
    ("192.0.0.0/24", "an IETF protocol assignment (RFC 6890)"),  # holds /29, .8, .9, .10, .170
    ("192.0.2.0/24", "a documentation address (RFC 5737)"),
    ("192.31.196.0/24", "an AS112 DNS address (RFC 7535)"),
    ("192.52.193.0/24", "an AMT relay address (RFC 7450)"),
    ("192.88.99.0/24", "a 6to4 relay anycast address (RFC 7526)"),
    ("192.168.0.0/16", "a private address (RFC 1918)"),
    ("192.175.48.0/24", "an AS112 DNS address (RFC 7534)"),
    ("198.18.0.0/15", "a benchmarking address (RFC 2544)"),
    ("198.51.100.0/24", "a documentation address (RFC 5737)"),
    ("203.0.113.0/24", "a documentation address (RFC 5737)"),
    ("224.0.0.0/4", "a multicast address (RFC 5771)"),
    ("240.0.0.0/4", "a reserved address (RFC 1112)"),  # 255.255.255.255 (broadcast) included
    ("::/128", "the unspecified address (RFC 4291)"),
    ("::1/128", "a loopback address (RFC 4291)"),
    ("64:ff9b:1::/48", "a local-use IPv4/IPv6 translation address (RFC 8215)"),
    ("100::/64", "a discard-only address (RFC 6666)"),
    ("100:0:0:1::/64", "a dummy IPv6 prefix address (RFC 9780)"),
    ("2001::/23", "an IETF protocol assignment (RFC 2928)"),  # TEREDO, PCP, TURN, ORCHID ...
    ("2001:db8::/32", "a documentation address (RFC 3849)"),
    ("2620:4f:8000::/48", "an AS112 DNS address (RFC 7534)"),
    ("3fff::/20", "a documentation address (RFC 9637)"),
    ("5f00::/16", "a segment routing (SRv6) identifier (RFC 9602)"),
    ("fc00::/7", "a private (unique local) address (RFC 4193)"),
    ("fe80::/10", "a link-local address (RFC 4291)"),
    ("fec0::/10", "a site-local address (deprecated, RFC 3879)"),
    ("ff00::/8", "a multicast address (RFC 4291)"),
))
# Blocks of the registries that lie inside a wider one above, listed so that the test of each
# block keeps the table honest (each must be refused as its wider block is).
SPECIAL_PURPOSE_INSIDE = (
    "0.0.0.0/32", "192.0.0.0/29", "192.0.0.8/32", "192.0.0.9/32", "192.0.0.10/32",
    "192.0.0.170/32", "192.0.0.171/32", "192.88.99.2/32", "255.255.255.255/32",
    "2001::/32", "2001:1::1/128", "2001:1::2/128", "2001:1::3/128", "2001:2::/48",
    "2001:3::/32", "2001:4:112::/48", "2001:10::/28", "2001:20::/28", "2001:30::/28",
)
# The blocks judged by the IPv4 address they carry (see above), and where it sits.
CARRIES_IPV4 = ("::ffff:0:0/96", "64:ff9b::/96", "2002::/16")
GLOBAL_UNICAST = ip_network("2000::/3")  # RFC 4291: all IPv6 unicast space IANA assigns

# Characters left as they are in a request target; anything else (spaces, non-ASCII) is
# percent-encoded, and "%" stays so that an already-encoded URL is not encoded twice.
_TARGET_SAFE = "/%:@!$&'()*+,;=-._~?"
_HOST_NAME = re.compile(r"^(?=.{1,253}\.?$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)"
                        r"(\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


class FetchError(ReasonedError):
    """A URL that was refused or whose fetch failed; ``reason`` is a short stable code:
    invalid_url, unsupported_scheme, forbidden_address, unreachable, bad_response,
    too_many_redirects, too_slow, too_large, http_status, not_an_image, or failed (a fetch
    from a private address of an allowed host failed: what answered there is not told).

    ``withheld`` is the ``(reason, message)`` that ``failed`` replaces, for the server's log
    and for tests; None otherwise."""

    withheld: tuple[str, str] | None = None


@dataclass(frozen=True)
class FetchedImage:
    data: bytes
    url: str  # the URL the image came from, after redirects
    format: str  # as sniffed from the content
    redirects: int


@dataclass(frozen=True)
class Target:
    """A URL that passed the checks, normalised."""

    scheme: str
    host: str  # lower case, brackets off an IPv6 literal, IDNA-encoded
    port: int
    path: str  # the request target: path and query, percent-encoded; no fragment
    ip: IPv4Address | IPv6Address | None  # when the host is an address literal

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if isinstance(self.ip, IPv6Address) else self.host
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"


Resolver = Callable[[str, int], Iterable[str]]


def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses as the system resolver gives them, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def parse_url(url: str) -> Target:
    """Check and normalise ``url``; FetchError (invalid_url, unsupported_scheme) if refused."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError("invalid_url", "the URL is empty")
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise FetchError(
            "invalid_url", f"the URL is {len(url):,} characters long; at most "
                           f"{MAX_URL_CHARS:,} are accepted")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise FetchError("invalid_url", "the URL contains control characters")
    scheme = _SCHEME.match(url)
    if scheme is None:
        raise FetchError("invalid_url", "the URL must start with http:// or https://")
    name = scheme.group(1).lower()
    if name not in DEFAULT_PORTS:
        raise FetchError(
            "unsupported_scheme", f"{name[:20]}: URLs are not fetched; only http and https are")
    if not url[scheme.end():].startswith("//"):
        raise FetchError("invalid_url", f"the URL must start with {name}://")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a bad port, or brackets that hold no IPv6 address
        raise FetchError(
            "invalid_url", "the URL's host or port is malformed (a port is a number from 1 "
                           "to 65535)") from None
    if "@" in parts.netloc:
        raise FetchError(
            "invalid_url", "the URL carries a user name or password; those are never sent")
    if not host:
        raise FetchError("invalid_url", "the URL has no host name")
    if port is not None and not 1 <= port <= 65535:
        raise FetchError("invalid_url", "the port must be a number from 1 to 65535")
    ip = _address_literal(host)
    if ip is None:
        if "[" in parts.netloc:
            raise FetchError("invalid_url", "the brackets in the URL hold no IPv6 address")
        host = _host_name(host)
    else:
        host = str(ip)
    path = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return Target(name, host, port or DEFAULT_PORTS[name], path, ip)


def _address_literal(host: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def _host_name(host: str) -> str:
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise FetchError("invalid_url", "the URL's host is not a valid host name") from None
    if not _HOST_NAME.match(ascii_host):
        raise FetchError("invalid_url", "the URL's host is not a valid host name")
    return ascii_host


def allowed_ports(entries: Iterable[str]) -> frozenset[tuple[str, int]]:
    """Allow-list entries (``host``, ``host:port``, ``[v6]:port``) as the ``(host key, port)``
    pairs they admit: an entry without a port admits 80 and 443 only. ValueError for an entry
    that is neither (Settings checks them first)."""
    pairs = set()
    for entry in entries:
        if not entry.strip():
            continue
        host, port = split_host_port(entry)
        pairs.update((host_key(host), p) for p in ((port,) if port else (80, 443)))
    return frozenset(pairs)


def host_key(host: str) -> str:
    """The form in which hosts are compared with the allow list: lower case, no trailing dot,
    no brackets, addresses in their canonical form (``::FFFF:7f00:1`` is ``::ffff:7f00:1``)."""
    host = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    ip = _address_literal(host)
    return str(ip) if ip is not None else host


def refusal(ip: IPv4Address | IPv6Address) -> str | None:
    """What kind of address ``ip`` is when the server must not connect to it (for a message:
    "a loopback address (RFC 1122)"), or None for a public address: the metadata addresses,
    then SPECIAL_PURPOSE; IPv6 outside 2000::/3 is refused too."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return refusal(embedded)  # the IPv4 address is where the packets end up
    for block, name in SPECIAL_PURPOSE:
        if ip.version == block.version and ip in block:
            return name
    if isinstance(ip, IPv6Address) and ip not in GLOBAL_UNICAST:
        return "a reserved address (outside 2000::/3, RFC 4291)"
    return None


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address that an IPv4-mapped, NAT64 or 6to4 address reaches."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class UrlFetcher:
    """Fetches one image a call, with the checks of this module; safe to share between
    threads. ``resolve(host, port)`` returns a host's addresses (tests pass their own, so no
    test needs a real DNS answer); ``ssl_context`` verifies certificates (the system's CAs by
    default)."""

    def __init__(
        self,
        *,
        allow_hosts: Sequence[str] = (),
        timeout: float = 10.0,
        max_bytes: int = 20 * 1024 * 1024,
        resolve: Resolver = system_resolve,
        ssl_context: ssl.SSLContext | None = None,
        max_concurrent: int = 2,
    ):
        self.allow_hosts = allowed_ports(allow_hosts)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.resolve = resolve
        self.ssl_context = ssl_context or ssl.create_default_context()
        # Fetches at once; one more is refused at once (Busy, 503): a fetch may hold its
        # thread for the whole deadline, and a slow remote server must not hold them all.
        self.slots = Slots("fetches of images by URL", max_concurrent, wait=0.0,
                           retry_after=2.0)

    @classmethod
    def from_settings(cls, settings, **options) -> UrlFetcher:
        return cls(
            allow_hosts=settings.url_allow_hosts, timeout=settings.url_timeout,
            max_bytes=settings.max_upload_bytes, max_concurrent=settings.url_fetch_slots,
            **options,
        )

    def fetch(self, url: str) -> FetchedImage:
        """The image at ``url`` (following at most MAX_REDIRECTS redirects), or FetchError;
        Busy when max_concurrent fetches are running already."""
        target = parse_url(url)  # a malformed URL costs no slot
        with self.slots.hold():
            deadline = _Deadline(self.timeout)
            private = [False]  # set once a hop goes to an allowed host's private address
            try:
                return self._fetch(target, deadline, private)
            except FetchError as exc:
                if not private[0]:
                    raise
                # Whatever answered on a private address (a closed port, another service, an
                # error page, a redirect) is not the client's to learn: the allow list is no
                # port probe. (Refusals before any connection are told as they are.)
                hidden = FetchError(
                    "failed", f"no image could be fetched from {target.host} (what happened on "
                              "a private address is in the server's log, not told here)")
                hidden.withheld = (exc.reason, exc.message)
                raise hidden from None
            finally:
                deadline.cancel()

    def _fetch(self, target: Target, deadline: _Deadline, private: list[bool]) -> FetchedImage:
        addresses = self._checked(target, deadline, private)
        redirects = 0
        while True:
            data, location = self._get(target, addresses, deadline)
            if location is None:
                return FetchedImage(data, target.url, sniff_format(data), redirects)
            if redirects == MAX_REDIRECTS:
                raise FetchError(
                    "too_many_redirects",
                    f"the URL redirects more than {MAX_REDIRECTS} times; link to the "
                    "image itself",
                )
            redirects += 1
            # Each redirect is a new URL, checked as the first one was.
            try:
                target = parse_url(urljoin(target.url, location))
                addresses = self._checked(target, deadline, private)
            except FetchError as exc:
                if exc.reason not in REFUSALS:
                    raise
                raise FetchError(exc.reason, f"it redirects to a URL that is refused: "
                                             f"{exc.message}") from None

    def _checked(self, target: Target, deadline: _Deadline, private: list[bool]) -> list[str]:
        addresses = self.check_addresses(target, self._lookup(target, deadline))
        if any(refusal(ip_address(a)) is not None for a in addresses):
            private[0] = True
        return addresses

    def check_addresses(self, target: Target, addresses: Iterable[str]) -> list[str]:
        """``addresses`` (of ``target.host``) when every one of them may be connected to;
        FetchError (forbidden_address) as soon as one may not. A private address may be
        connected to only for an allowed host and port."""
        allowed = (host_key(target.host), target.port) in self.allow_hosts
        checked = []
        for address in addresses:
            try:
                ip = ip_address(address.split("%", 1)[0])  # no IPv6 zone ("%eth0")
            except ValueError:
                raise FetchError(
                    "unreachable", f"the address of {target.host} could not be found"
                ) from None
            why = refusal(ip)
            if why is not None and (not allowed or ip in METADATA_ADDRESSES):
                # For an address typed in the URL, the kind of address; for a name, only
                # that it is not public: which private block an intranet name resolves to
                # is the intranet's business.
                if target.ip is not None:
                    said = f"{target.host} is {why}"
                else:
                    said = f"{target.host} resolves to an address that is not public"
                raise FetchError("forbidden_address", f"{said}; only public addresses are fetched")
            checked.append(str(ip))
        if not checked:
            raise FetchError("unreachable", f"the host {target.host} has no address")
        return checked

    # -- one request --------------------------------------------------------------------

    def _lookup(self, target: Target, deadline: _Deadline) -> list[str]:
        if target.ip is not None:
            return [str(target.ip)]
        # getaddrinfo cannot be interrupted, so it runs in a thread that the deadline leaves
        # behind: a resolver that hangs costs its thread, not the request.
        answer: dict = {}

        def lookup():
            try:
                answer["addresses"] = list(self.resolve(target.host, target.port))
            except (OSError, UnicodeError) as exc:
                answer["error"] = exc

        thread = threading.Thread(target=lookup, daemon=True, name="url-fetch-lookup")
        thread.start()
        thread.join(deadline.left(target))
        if thread.is_alive():
            raise deadline.too_slow(target)
        if "error" in answer:
            raise FetchError("unreachable", f"the host {target.host} could not be found")
        return answer["addresses"]

    def _get(self, target: Target, addresses: list[str], deadline: _Deadline):
        """``(body, None)`` for a 200 answer, ``(b"", location)`` for a redirect."""
        conn = self._connect(target, addresses, deadline)
        sock = conn.sock  # kept: http.client drops conn.sock once a response will close
        deadline.watch(sock)
        try:
            conn.putrequest("GET", target.path, skip_accept_encoding=True)
            conn.putheader("User-Agent", USER_AGENT)
            conn.putheader("Accept", "image/*")
            conn.putheader("Accept-Encoding", "identity")  # bytes as they are: sniffable
            conn.putheader("Connection", "close")
            conn.endheaders()
            response = conn.getresponse()
            if response.status in REDIRECT_STATUSES:
                location = response.getheader("Location")
                if not location:
                    raise FetchError(
                        "bad_response", f"{target.host} answered a redirect without a Location")
                return b"", location
            if response.status != 200:
                raise FetchError(
                    "http_status",
                    f"{target.host} answered {response.status} {response.reason[:60]}"
                    .rstrip() + " instead of the image",
                )
            return self._read(response, sock, target, deadline), None
        except FetchError:
            if deadline.expired:  # the cut socket read as an early end
                raise deadline.too_slow(target) from None
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise self._failure(exc, target, deadline, connected=True) from None
        finally:
            deadline.watch(None)
            conn.close()
            with suppress(OSError):
                sock.close()

    def _connect(self, target: Target, addresses: list[str], deadline: _Deadline):
        """A connection to the first checked address that answers (TLS set up for https)."""
        error: Exception | None = None
        for address in addresses:
            if target.scheme == "https":
                conn = _PinnedHTTPS(target.host, target.port, timeout=deadline.left(target),
                                    context=self.ssl_context)
            else:
                conn = _PinnedHTTP(target.host, target.port, timeout=deadline.left(target))
            conn.address = address
            try:
                conn.connect()
                return conn
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                error = exc
                if isinstance(exc, ssl.SSLError) or deadline.expired:
                    break  # the same certificate or the same clock on every address
        raise self._failure(error, target, deadline, connected=False)

    def _read(self, response, sock, target: Target, deadline: _Deadline) -> bytes:
        length = response.getheader("Content-Length", "")
        if length.strip().isdigit() and int(length) > self.max_bytes:
            raise self._too_large(target, int(length))
        chunks, size, sniffed = [], 0, False
        while True:
            sock.settimeout(deadline.left(target))
            chunk = response.read1(CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large(target)
            if not sniffed and size >= SNIFF_BYTES:
                # Stop at once on a web page rather than read megabytes of it.
                self._sniff(b"".join(chunks), target, response)
                sniffed = True
        if response.length:  # Content-Length promised more than came
            raise FetchError(
                "bad_response", f"{target.host} closed the connection before the whole image "
                                "was sent")
        data = b"".join(chunks)
        if not sniffed:  # fewer than SNIFF_BYTES came
            self._sniff(data, target, response)
        return data

    @staticmethod
    def _sniff(data: bytes, target: Target, response) -> None:
        if sniff_format(data) is not None:
            return
        served = (response.getheader("Content-Type") or "").split(";")[0].strip()[:60]
        what = (
            "an empty answer, not an image" if not data else
            f"content {f'labelled {served} ' if served else ''}that is not a JPEG, PNG, GIF, "
            "WebP, BMP or TIFF image"
        )
        raise FetchError(
            "not_an_image",
            f"{target.host} sent {what}; link to the image itself, not to a page that shows it",
        )

    def _too_large(self, target: Target, length: int | None = None) -> FetchError:
        size = f" ({length:,} bytes)" if length is not None else ""
        return FetchError(
            "too_large",
            f"the image at {target.host} is larger{size} than the {self.max_bytes:,} bytes "
            "allowed",
        )

    def _failure(self, exc, target: Target, deadline: _Deadline, *, connected: bool):
        if isinstance(exc, FetchError):
            return exc
        if deadline.expired or isinstance(exc, TimeoutError):
            return deadline.too_slow(target)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return FetchError(
                "unreachable", f"the certificate of {target.host} could not be verified")
        if isinstance(exc, ssl.SSLError):
            return FetchError(
                "unreachable", f"a secure connection to {target.host} could not be made")
        if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
            return FetchError("bad_response", f"{target.host} did not answer with valid HTTP")
        if connected:
            return FetchError(
                "bad_response", f"the connection to {target.host} broke off during the answer")
        return FetchError(
            "unreachable", f"could not connect to {target.host} on port {target.port}")


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to the address that was checked (``address``), never to a fresh lookup of the host
    name; the Host header still names the host."""

    address: str

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection, _PinnedHTTP):
    """HTTPSConnection.connect calls super().connect(), which is _PinnedHTTP's, then wraps the
    socket with SNI and the certificate checked against the host name."""


class _Deadline:
    """One clock for a whole fetch. When it runs out, a timer shuts the socket being read,
    which ends any blocking call on it (a socket timeout alone restarts with every byte)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def left(self, target: Target) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.too_slow(target)
        return left

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            expired = self.expired
        if expired and sock is not None:
            self._cut(sock)

    def too_slow(self, target: Target) -> FetchError:
        return FetchError(
            "too_slow", f"{target.host} did not send the image within {self.seconds:g} seconds")

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sock = self._sock
        if sock is not None:
            self._cut(sock)

    @staticmethod
    def _cut(sock: socket.socket) -> None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
