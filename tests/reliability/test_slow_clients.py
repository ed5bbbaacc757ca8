"""Slow and malformed clients against the server as ``make serve`` runs it (nginx in front of
gunicorn, ``python -m webapp.serve``), on the session's node and indexed photos.

Measured on 2026-12-01 (docs/RELIABILITY.md): with gunicorn alone (2 workers x 4 threads), 16
connections trickling a body one byte a second made 9 of 10 /healthz and search requests time
out after 5 s; with nginx in front, all 10 answered in 10-50 ms.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from urllib.parse import urlencode

import pytest

from bench.api_latency import multipart
from tests.support import served

# The server's own deadlines are shortened so that the timeouts can be seen in seconds.
BODY_GAP_S = 2
HEADER_S = 2
TRICKLERS = 16


@pytest.fixture(scope="module")
def server(clothing_index, tmp_path_factory):
    settings, _, _ = clothing_index
    log = tmp_path_factory.mktemp("served") / "serve.log"
    with served(settings, log, WEBAPP_BODY_TIMEOUT=str(BODY_GAP_S),
                WEBAPP_HEADER_TIMEOUT=str(HEADER_S)) as (_, port):
        yield port


@pytest.fixture(scope="module")
def shoe_upload(clothing_test_dir):
    photo = sorted((clothing_test_dir / "shoes").glob("*.jpg"))[0]
    return multipart(photo.read_bytes(), photo.name, {"k": "5"})


def _raw(port: int, data: bytes, wait: float = 10) -> bytes:
    """What the server answers to ``data`` sent as is: one response (headers and a body of
    its Content-Length), or what came before it closed (or ``wait`` s passed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
                head, sep, body = out.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def _status_and_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)["error"]


def _timed(port: int, method: str, path: str, body=None, headers=None) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        conn.close()


def test_trickling_connections_do_not_starve_the_workers(server, shoe_upload):
    """16 connections send a search body one byte a second (never pausing as long as the
    body deadline) for the whole test; meanwhile /healthz and a real photo search each
    answer within a second, five times each."""
    stop = threading.Event()
    opened = []

    def trickle():
        with socket.create_connection(("127.0.0.1", server), timeout=30) as sock:
            sock.sendall(b"POST /api/search HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
            opened.append(sock)
            while not stop.wait(BODY_GAP_S / 2):
                sock.sendall(b"-")

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(TRICKLERS)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        assert len(opened) == TRICKLERS
        body, ctype = shoe_upload
        for _ in range(5):
            status, seconds = _timed(server, "GET", "/healthz")
            assert status == 200 and seconds < 1.0, (status, seconds)
            status, seconds = _timed(server, "POST", "/api/search", body,
                                     {"Content-Type": ctype})
            assert status == 200 and seconds < 1.0, (status, seconds)
        assert all(t.is_alive() for t in threads), "a trickling connection was cut off"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)


def test_a_slow_but_steady_upload_is_served(server, shoe_upload):
    """A body that takes twice the body deadline in all, never pausing that long, works."""
    body, ctype = shoe_upload
    head = (f"POST /api/search HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server), timeout=30) as sock:
        sock.sendall(head)
        pieces = 5
        step = -(-len(body) // pieces)
        for i in range(pieces):
            sock.sendall(body[i * step:(i + 1) * step])
            time.sleep(BODY_GAP_S * 0.45)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert time.monotonic() - started > 2 * BODY_GAP_S
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["hits"]


def test_a_body_that_stops_is_cut_off(server):
    """A body that pauses longer than the deadline loses its connection (nginx closes it
    without an answer: it never answers a request it stopped reading), and holds nothing."""
    started = time.monotonic()
    answer = _raw(server, b"POST /api/search HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n"
                          b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b", wait=20)
    assert answer == b"" and time.monotonic() - started < BODY_GAP_S + 5
    # Headers that never end too.
    started = time.monotonic()
    assert _raw(server, b"GET /healthz HTTP/1.1\r\nHost: t\r\n", wait=20) == b""
    assert time.monotonic() - started < HEADER_S + 5


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GET /api/facets?label=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
     414, "request_line_too_long"),
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Long: " + b"b" * 9000 + b"\r\n\r\n",
     431, "headers_too_large"),
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: many\r\n\r\n", 400, "bad_request"),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(40), 400, "bad_request"),
    (b"POST /api/search HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n",
     413, "upload_too_large"),
    (b"TRACE /api/search HTTP/1.1\r\nHost: t\r\n\r\n", 405, "method_not_allowed"),
    (b"GET /.refused/400 HTTP/1.1\r\nHost: t\r\n\r\n", 404, "not_found"),
], ids=["request-line", "header", "garbage", "content-length", "tls-hello", "huge-body",
        "trace", "nginx-internal"])
def test_refusals_before_the_app_are_json(server, request_bytes, status, code):
    answer = _raw(server, request_bytes)
    got, error = _status_and_error(answer)
    assert (got, error["code"]) == (status, code)
    assert error["message"]
    if status == 405:  # what the address does take, as the app's own 405s say
        assert b"\r\nAllow: OPTIONS, POST\r\n" in answer


def test_the_proxys_refusals_are_counted_in_the_metrics(server, admin_headers):
    """Refusals nginx makes itself never reach the app; /metrics counts them by status, the
    same totals whichever worker answers the scrape."""
    def counts() -> dict[str, float]:
        totals = []
        for _ in range(4):  # two workers: each one answers some of the scrapes
            conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
            conn.request("GET", "/metrics", headers=admin_headers)
            body = conn.getresponse().read().decode()
            conn.close()
            totals.append({line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                           for line in body.splitlines()
                           if line.startswith("imgsearch_proxy_refusals_total{")})
        assert all(t == totals[0] for t in totals), totals
        return totals[0]

    before = counts()
    for _ in range(3):
        _raw(server, b"GARBAGE\r\n\r\n")
    _raw(server, b"GET /api/facets?label=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    after = counts()
    assert after.get("400", 0) - before.get("400", 0) == 3
    assert after.get("414", 0) - before.get("414", 0) == 1


def test_long_lists_fit_in_a_post_body(server, clothing_index):
    """The documented maxima (100 values of 512 characters a filter field, 100 like ids) do
    not fit a request line (414, above); POSTed as form fields they are searched with."""
    _, store, _ = clothing_index
    hits = store.es.search(index=store.alias, size=100, source=False).body["hits"]["hits"]
    ids = [h["_id"] for h in hits]
    # One real value and 99 others of 512 characters in each list field (OR within a field).
    form = [("k", "5")] + [("like", i) for i in ids[1:]]
    for field, real in (("label", "shoes"), ("format", "JPEG")):
        form += [(field, real)] + [(field, f"{n:03d}" + "x" * 509) for n in range(99)]
    body = urlencode(form)
    assert len(body) > 100_000
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.request("POST", f"/api/images/{ids[0]}/similar", body,
                 {"Content-Type": "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 200, answer
    assert len(answer["query"]["filters"]["label"]) == 100
    assert answer["hits"] and {h["metadata"]["label"] for h in answer["hits"]} == {"shoes"}
