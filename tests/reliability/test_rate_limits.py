"""Rate limits and admission control on the server as ``make serve`` runs it (nginx, gunicorn
with 2 workers), on the session's node and photos. The limits are set low so that a few
requests show them; the load figures (4x overload, bench/load.py --rate) are in
docs/BENCHMARKS.md, not asserted here."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid

import pytest

from bench.api_latency import multipart
from tests.support import served

RATE, BURST = 2, 6
MAX_WAIT_S = 0.3


@pytest.fixture(scope="module")
def read_key(settings):
    """Headers with a new real ``read`` key of the session's keys index: only a verified key
    is a client of its own (made-up tokens count as their address)."""
    from imgsearch.esclient import connect
    from imgsearch.keys import KeyStore

    store = KeyStore(connect(settings), settings.api_keys_index)

    def make() -> dict[str, str]:
        key, _ = store.create(f"limits-{uuid.uuid4().hex[:8]}", "read")
        return {"Authorization": f"Bearer {key}"}

    return make


@pytest.fixture(scope="module")
def server(clothing_index, tmp_path_factory):
    settings, _, _ = clothing_index
    log = tmp_path_factory.mktemp("limits") / "serve.log"
    with served(settings, log, IMGSEARCH_RATE_LIMIT=str(RATE), IMGSEARCH_RATE_BURST=str(BURST),
                IMGSEARCH_ADMISSION_MAX_WAIT=str(MAX_WAIT_S), WEBAPP_WORKERS="2",
                WEBAPP_THREADS="16") as (_, port):
        yield port


def _request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), data, time.perf_counter() - started
    finally:
        conn.close()


def test_one_client_is_limited_across_both_workers_and_told_when_to_return(server, read_key):
    """BURST requests at once pass, whichever worker takes them; the next are 429 with JSON
    and Retry-After; another key has a bucket of its own; /healthz is never counted."""
    key = read_key()
    statuses = [_request(server, "GET", "/api/facets", headers=key)[0] for _ in range(BURST)]
    assert statuses == [200] * BURST
    status, headers, body, seconds = _request(server, "GET", "/api/facets", headers=key)
    assert status == 429 and seconds < 1.0
    assert int(headers["Retry-After"]) >= 1
    error = json.loads(body)["error"]
    assert error["code"] == "rate_limited" and error["retry_after"] >= 1
    assert key["Authorization"].split()[1] not in body.decode()
    assert _request(server, "GET", "/api/facets", headers=read_key())[0] == 200
    assert all(_request(server, "GET", "/healthz")[0] == 200 for _ in range(BURST + 2))
    # A token is back after 1 / RATE s.
    time.sleep(1.0 / RATE + 0.2)
    assert _request(server, "GET", "/api/facets", headers=key)[0] == 200


def test_searches_beyond_the_wait_bound_are_refused_at_once(server, clothing_test_dir,
                                                            read_key):
    """24 searches at once (each under a key of its own, so that no rate limit applies) on
    2 workers of 16 threads (so that nginx passes all 24 on): those that would wait longer
    than the bound for their worker's model get 503 overloaded with Retry-After at once, the
    rest are served; none fails otherwise."""
    photos = sorted((clothing_test_dir / "dress").glob("*.jpg"))[:24]
    keys = [read_key() for _ in photos]
    results = []

    def search(i, photo):
        body, ctype = multipart(photo.read_bytes(), photo.name, {"k": "5"})
        results.append(_request(server, "POST", "/api/search", body, {
            "Content-Type": ctype, **keys[i]}))

    threads = [threading.Thread(target=search, args=(i, p)) for i, p in enumerate(photos)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    statuses = sorted(r[0] for r in results)
    assert len(results) == len(photos) and set(statuses) <= {200, 503}, statuses
    refused = [r for r in results if r[0] == 503]
    assert refused, "24 searches at once on 2 workers should pass a 0.3 s bound"
    assert statuses.count(200) >= 2
    for _, headers, body, seconds in refused:
        assert int(headers["Retry-After"]) >= 1
        assert json.loads(body)["error"]["code"] == "overloaded"
        # Refused at once: no wait for the model (generous for a busy 2-core machine).
        assert seconds < 2.0


def test_an_address_sending_made_up_keys_is_refused_before_any_lookup(server, read_key):
    """Wrong keys are refused with 401 (each one a GET of the keys index) until the address
    has sent BAD_KEYS_BURST of them; then 429 at once, without a lookup, for every key it
    sends, right or wrong, until a token is back; an address's good key still counts as its
    own client elsewhere (its request bucket is untouched)."""
    from webapp.limits import BAD_KEYS_BURST

    made_up = [{"Authorization": f"Bearer isk_{uuid.uuid4().hex}{uuid.uuid4().hex[:11]}"}
               for _ in range(BAD_KEYS_BURST + 3)]
    statuses = [_request(server, "GET", "/api/facets", headers=h)[:3] for h in made_up]
    assert [s for s, _, _ in statuses[:BAD_KEYS_BURST]] == [401] * BAD_KEYS_BURST
    for status, headers, body in statuses[BAD_KEYS_BURST:]:
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert json.loads(body)["error"]["code"] == "too_many_bad_keys"
    good = read_key()
    assert _request(server, "GET", "/api/facets", headers=good)[0] == 429  # no lookup
    assert _request(server, "GET", "/api/facets")[0] == 200  # anonymous reads: no key sent
    time.sleep(1.2)  # one token back
    assert _request(server, "GET", "/api/facets", headers=good)[0] == 200
