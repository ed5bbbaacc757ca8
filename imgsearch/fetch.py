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
IPV4_COMPATIBLE = ip_network("::/96")  # deprecated ::a.b.c.d

# Characters left as they are in a request target; anything else (spaces, non-ASCII) is
# percent-encoded, and "%" stays so that an already-encoded URL is not encoded twice.
_TARGET_SAFE = "/%:@!$&'()*+,;=-._~?"
_HOST_NAME = re.compile(r"^(?=.{1,253}\.?$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)"
                        r"(\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


class FetchError(ReasonedError):
    """A URL that was refused or whose fetch failed; ``reason`` is a short stable code:
    invalid_url, unsupported_scheme, forbidden_address, unreachable, bad_response,
    too_many_redirects, too_slow, too_large, http_status or not_an_image."""


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


def host_key(host: str) -> str:
    """The form in which hosts are compared with the allow list: lower case, no trailing dot,
    no brackets, addresses in their canonical form (``::FFFF:7f00:1`` is ``::ffff:7f00:1``)."""
    host = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    ip = _address_literal(host)
    return str(ip) if ip is not None else host


def refusal(ip: IPv4Address | IPv6Address) -> str | None:
    """What kind of address ``ip`` is when the server must not connect to it (for a message:
    "a loopback address"), or None for a public address."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, IPv6Address):
        if ip.is_loopback or ip.is_unspecified:
            return "a loopback address" if ip.is_loopback else "the unspecified address"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return refusal(embedded)  # the IPv4 address is where the packets end up
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved or shared address"  # 240/4, most of ::/8
    if ip.is_private:
        return "a private address"  # 10/8, 172.16/12, 192.168/16, fc00::/7, 2001:db8::/32 ...
    if not ip.is_global:
        return "a reserved or shared address"  # 100.64/10 (carrier-grade NAT), 192.0.0/24
    return None


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address that an IPv4-mapped, 6to4, NAT64 or IPv4-compatible address reaches."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64 or ip in IPV4_COMPATIBLE:
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
    ):
        self.allow_hosts = frozenset(host_key(h) for h in allow_hosts if h.strip())
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.resolve = resolve
        self.ssl_context = ssl_context or ssl.create_default_context()

    @classmethod
    def from_settings(cls, settings, **options) -> UrlFetcher:
        return cls(
            allow_hosts=settings.url_allow_hosts, timeout=settings.url_timeout,
            max_bytes=settings.max_upload_bytes, **options,
        )

    def fetch(self, url: str) -> FetchedImage:
        """The image at ``url`` (following at most MAX_REDIRECTS redirects), or FetchError."""
        deadline = _Deadline(self.timeout)
        try:
            target = parse_url(url)
            addresses = self.check_addresses(target, self._lookup(target, deadline))
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
                    addresses = self.check_addresses(target, self._lookup(target, deadline))
                except FetchError as exc:
                    if exc.reason not in REFUSALS:
                        raise
                    raise FetchError(exc.reason, f"it redirects to a URL that is refused: "
                                                 f"{exc.message}") from None
        finally:
            deadline.cancel()

    def check_addresses(self, target: Target, addresses: Iterable[str]) -> list[str]:
        """``addresses`` (of ``target.host``) when every one of them may be connected to;
        FetchError (forbidden_address) as soon as one may not."""
        allowed = host_key(target.host) in self.allow_hosts
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
                # The kind of address, never the address itself: a name's private address
                # is the intranet's business.
                where = "is" if target.ip is not None else "resolves to"
                raise FetchError(
                    "forbidden_address",
                    f"{target.host} {where} {why}; only public addresses are fetched",
                )
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
