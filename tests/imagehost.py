"""A real HTTP server on 127.0.0.1 that serves a photo and every way a URL can go wrong, for
the search-by-URL tests (tests/imgsearch/test_fetch.py, the web app's API and browser tests).

The fetcher refuses 127.0.0.1 unless it is an allowed host, so tests opt in with
``url_allow_hosts=("127.0.0.1",)``; names that should look private or like the metadata
service (``intranet.test``, ``metadata.test``) exist only in the resolver a test passes.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import threading
import time
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HTML = b"<!doctype html><html><head><title>A photo</title></head><body><img src=x></body></html>"
BIG = 30 * 1024 * 1024  # over the default 20 MB cap
DRIP_INTERVAL = 0.5  # seconds between the bytes of a slow answer


class ImageHost:
    """``with ImageHost(photo) as host:`` serves, on ``host.url(path)``:

    - ``/photo.jpg``: the photo; ``/hops/<n>``: n redirects (302), then the photo;
    - ``/to/<host>``: a redirect to ``http://<host>:<port>/photo.jpg``; ``/to-file``: to
      ``file:///etc/passwd``; ``/no-location``: a 302 without Location;
    - ``/big``: 30 MB announced in Content-Length; ``/endless``: JPEG bytes with no
      Content-Length, until the client goes away (at most 30 MB);
    - ``/drip``: a JPEG body one byte every DRIP_INTERVAL s; ``/drip-headers``: the headers so;
    - ``/page.jpg``: HTML served as image/jpeg; ``/half.jpg``: the photo's first half;
      ``/missing``: 404; ``/empty``: no body.

    ``host.requests`` records ``(path, Host header)`` of every request. With ``tls`` (a server
    context, :func:`tls_context`) it speaks HTTPS.
    """

    def __init__(self, photo: bytes, tls: ssl.SSLContext | None = None):
        self.photo = photo
        self.tls = tls
        self.requests: list[tuple[str, str]] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                if host.tls is not None:  # the handshake in this connection's own thread
                    self.request = host.tls.wrap_socket(self.request, server_side=True)
                super().setup()

            def do_GET(self):
                host.requests.append((self.path, self.headers.get("Host", "")))
                with suppress(BrokenPipeError, ConnectionResetError):
                    host.answer(self)  # the fetcher may stop reading, as it should

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A client that gives up (a refused certificate, a cut connection) is no server error.
        self.server.handle_error = lambda request, address: None
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def __enter__(self) -> ImageHost:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        if path == "/photo.jpg":
            send(h, 200, self.photo)
        elif m := re.fullmatch(r"/hops/(\d+)", path):
            n = int(m.group(1))
            if n == 0:
                send(h, 200, self.photo)
            else:
                redirect(h, f"/hops/{n - 1}")
        elif m := re.fullmatch(r"/to/([a-z0-9.-]+)", path):
            redirect(h, f"http://{m.group(1)}:{self.port}/photo.jpg")
        elif path == "/to-file":
            redirect(h, "file:///etc/passwd")
        elif path == "/no-location":
            send(h, 302, b"")
        elif path == "/big":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(BIG))
            h.end_headers()
            h.wfile.write(self.photo[:1024])  # then nothing: the length alone must refuse it
        elif path == "/endless":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(self.photo[:4096])
            block = b"\0" * 65536
            for _ in range(BIG // len(block)):
                h.wfile.write(block)
            h.close_connection = True
        elif path == "/drip":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(self.photo)))
            h.end_headers()
            for i in range(len(self.photo)):
                h.wfile.write(self.photo[i:i + 1])
                h.wfile.flush()
                time.sleep(DRIP_INTERVAL)
        elif path == "/drip-headers":
            head = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: 1\r\n" * 200
            for i in range(len(head)):
                h.wfile.write(head[i:i + 1])
                h.wfile.flush()
                time.sleep(DRIP_INTERVAL)
        elif path == "/half.jpg":
            send(h, 200, self.photo[: len(self.photo) // 2])
        elif path == "/page.jpg":
            send(h, 200, HTML, "image/jpeg")
        elif path == "/empty":
            send(h, 200, b"")
        else:
            send(h, 404, b"not here\n", "text/plain")


def send(h: BaseHTTPRequestHandler, status: int, body: bytes, kind: str = "image/jpeg") -> None:
    h.send_response(status)
    h.send_header("Content-Type", kind)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def redirect(h: BaseHTTPRequestHandler, location: str) -> None:
    h.send_response(302)
    h.send_header("Location", location)
    h.send_header("Content-Length", "0")
    h.end_headers()


def tls_context(name: str, folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A throwaway CA and a certificate for ``name`` signed by it (openssl, in ``folder``):
    ``(server context, CA file)``; a client trusts the server only with the CA file."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key",
            "-out", "ca.pem", "-subj", "/CN=imgsearch test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr",
            "-subj", f"/CN={name}")
    (folder / "leaf.ext").write_text(f"subjectAltName=DNS:{name}\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", "leaf.pem", "-extfile", "leaf.ext")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "leaf.pem", folder / "leaf.key")
    return context, folder / "ca.pem"


def resolver(names: dict[str, str | list[str]]):
    """A resolver that knows only ``names`` (name -> address or addresses) and records every
    lookup in its ``calls``; any other name is not found, as on a network without DNS."""
    import socket

    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        found = names[host]
        return [found] if isinstance(found, str) else list(found)

    resolve.calls = calls
    return resolve
