"""The scope table through the product's server (gunicorn as ``make serve`` runs it, two
workers) with public reads off and on; a revocation holding on every worker within a second;
metrics summed over the workers; and no key in the server's log."""

from __future__ import annotations

import http.client
import time
import uuid

import pytest

from imgsearch.esclient import connect
from imgsearch.keys import KeyStore
from tests.support import gunicorn_server

SCOPES = ("read", "write", "admin")
# (path, scope it needs); /healthz is public, its details admin's.
ENDPOINTS = (("/api/facets", "read"), ("/", "read"), ("/api/keys", "admin"),
             ("/metrics", "admin"))


def get(port: int, path: str, key: str | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def keyed(clothing_index):
    settings, _, _ = clothing_index
    index = f"t-keys-{uuid.uuid4().hex[:12]}"
    store = KeyStore(connect(settings), index)
    keys = {scope: store.create(f"{scope}-key", scope)[0] for scope in SCOPES}
    yield settings, index, store, keys
    store.es.indices.delete(index=index, ignore_unavailable=True)


@pytest.fixture(scope="module", params=["public", "private"])
def server(request, keyed, tmp_path_factory):
    settings, index, store, keys = keyed
    log = tmp_path_factory.mktemp("gunicorn") / f"{request.param}.log"
    with gunicorn_server(settings, log, WEBAPP_WORKERS="2", WEBAPP_THREADS="2",
                         IMGSEARCH_KEYS_INDEX=index,
                         IMGSEARCH_PUBLIC_READ="1" if request.param == "public" else "0") as (
            _, port):
        yield request.param, port, log


def expected(public: bool, who: str | None, needed: str) -> int:
    if who is None:
        return 200 if public and needed == "read" else 401
    return 200 if SCOPES.index(who) >= SCOPES.index(needed) else 403


def test_the_scope_table(server, keyed):
    mode, port, log = server
    _, _, _, keys = keyed
    table = {}
    for who in (None, *SCOPES):
        for path, needed in ENDPOINTS:
            status, headers, body = get(port, path, keys[who] if who else None)
            table[(who, path)] = status
            want = expected(mode == "public", who, needed)
            assert status == want, (mode, who, path, status, body[:300])
            if status in (401, 403):
                assert headers["WWW-Authenticate"].startswith('Bearer realm="imgsearch"')
                if path != "/":
                    assert body.startswith(b'{"error":{"code":')
        status, _, body = get(port, "/healthz", keys[who] if who else None)
        assert status == 200
        assert (b'"alias"' in body) == (who == "admin")  # details for admin only
    print(mode, table)
    # A key put in the query string is refused, and its request line logged without it.
    status, _, body = get(port, f"/api/facets?key={keys['read']}&label=x", None)
    assert status == 400 and b"key_in_query" in body
    # No key, not even a piece of one, reached the server's log.
    text = log.read_text()
    assert "isk_" not in text and not any(k[4:20] in text for k in keys.values())


def test_metrics_sum_over_the_workers(server, keyed):
    mode, port, _ = server
    _, _, _, keys = keyed
    for _ in range(20):  # on fresh connections, so both workers serve some
        get(port, "/api/facets", keys["read"])
    _, _, body = get(port, "/metrics", keys["admin"])
    text = body.decode()
    line = next(x for x in text.splitlines() if x.startswith(
        'imgsearch_http_requests_total{endpoint="/api/facets",method="GET",status="200"}'))
    assert float(line.split()[-1]) >= 20, line
    assert "imgsearch_index_documents" in text


def test_a_revoked_key_is_refused_by_every_worker_within_a_second(server, keyed):
    mode, port, _ = server
    if mode != "private":
        pytest.skip("once is enough")
    _, _, store, _ = keyed
    key, _ = store.create(f"soon-gone-{uuid.uuid4().hex[:6]}", "read")
    name = store.authenticate(key).name
    # Every worker has it cached (fresh connections land on both of the two).
    assert all(get(port, "/api/facets", key)[0] == 200 for _ in range(20))
    store.revoke(name)
    revoked = time.monotonic()
    time.sleep(1.0)
    statuses = [get(port, "/api/facets", key)[0] for _ in range(20)]
    assert statuses == [401] * 20, statuses
    assert time.monotonic() - revoked < 10
