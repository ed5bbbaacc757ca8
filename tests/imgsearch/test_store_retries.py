"""The one retry layer: the store retries its writes and existence checks, one HTTP request an
attempt, resending only what failed; the client only fails over from node to node, so reads
fail fast and a dead node among live ones costs no error.

Most of these run against a stand-in server (the answers are chosen per request) or a port
nothing listens on; the failover ones use the session's real node."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from elastic_transport import Urllib3HttpNode

import imgsearch.store as store_module
from imgsearch.localnode import free_port
from imgsearch.settings import Settings
from imgsearch.store import ImageStore, RetryPolicy, StoreError, StoreUnavailable

Answer = tuple[int, dict]


@contextmanager
def stand_in(answer: Callable[[str, str, bytes], Answer]) -> Iterator[tuple[str, list]]:
    """A server answering ``answer(method, path, body)`` to every request: its URL and the
    requests it got, as ``(method, path, body)``."""
    got: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got.append((self.command, self.path, body))
            status, payload = answer(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = _any

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", got
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(store_module.time, "sleep", slept.append)
    return slept


@pytest.fixture
def sent(monkeypatch) -> list[str]:
    """Every request any client sends, as ``"<METHOD> <url>"`` (the node that got it)."""
    requests: list[str] = []
    real = Urllib3HttpNode.perform_request

    def perform_request(node, method, target, *args, **kwargs):
        requests.append(f"{method} {node.base_url}{target}")
        return real(node, method, target, *args, **kwargs)

    monkeypatch.setattr(Urllib3HttpNode, "perform_request", perform_request)
    return requests


def _docs(n: int) -> list[dict]:
    return [{"content_hash": f"{i:064x}", "label": "x"} for i in range(n)]


def _bulk_lines(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _items(body: bytes, status_of: Callable[[str], int]) -> dict:
    """A bulk answer giving each document of ``body`` the status ``status_of(its id)``."""
    items = []
    for line in _bulk_lines(body)[::2]:
        doc_id = line["index"]["_id"]
        status = status_of(doc_id)
        item = {"_id": doc_id, "status": status}
        if status >= 300:
            item["error"] = {"type": "es_rejected_execution_exception", "reason": "busy"}
        items.append({"index": item})
    return {"took": 1, "errors": any(i["index"]["status"] >= 300 for i in items), "items": items}


def test_the_policy_bounds_requests_and_waiting():
    policy = RetryPolicy(retries=6, backoff=1.0, max_backoff=30.0)
    assert policy.delays() == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert policy.window == 61.0 == Settings().bulk_retry_window
    assert RetryPolicy(0).delays() == [] and RetryPolicy(0).window == 0


def test_a_dead_node_gets_one_request_an_attempt(sleeps, sent):
    """Before, the client's own retries (3) multiplied the store's: 28 requests a batch."""
    store = ImageStore.from_settings(Settings(es_url=f"http://127.0.0.1:{free_port()}",
                                              bulk_retries=6))
    with pytest.raises(StoreError, match=r"bulk write failed after 7 attempt\(s\)") as err:
        store.bulk_index(_docs(8), "nowhere")
    assert "Connection refused" in str(err.value)  # why, not only "Connection error"
    assert len(sent) == 7 and all("/_bulk" in r for r in sent)
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    sent.clear()
    with pytest.raises(StoreError, match=r"existence check failed after 7 attempt\(s\)"):
        store.existing_ids(["a" * 64], "nowhere")
    assert len(sent) == 7


def test_reads_fail_fast_with_one_request(sleeps, sent):
    """The web app's searches: one node, one request, no waiting (before: 4 requests)."""
    store = ImageStore.from_settings(Settings(es_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(StoreUnavailable, match="Connection refused"):
        store.knn(np.ones(2048, np.float32) / np.sqrt(2048), k=5)
    assert len(sent) == 1 and sleeps == []
    assert "Connection refused" in store.health()["error"]


def test_only_refused_documents_are_sent_again(sleeps):
    """As elasticsearch-py's streaming_bulk: the documents refused with 429/503 go again,
    alone, after the backoff; those refused for what they are (400) are failures at once."""
    attempts: list[list[str]] = []

    def answer(method, path, body):
        ids = [line["index"]["_id"] for line in _bulk_lines(body)[::2]]
        attempts.append(ids)
        first = len(attempts) == 1

        def status_of(doc_id: str) -> int:
            n = int(doc_id, 16)
            if n == 7:
                return 400
            if first and n % 2:
                return 429
            if first and n == 2:
                return 503
            return 201

        return 200, _items(body, status_of)

    with stand_in(answer) as (url, _):
        store = ImageStore.from_settings(Settings(es_url=url, bulk_backoff=0.5))
        result = store.bulk_index(_docs(8), "images-v1")
    assert attempts[0] == [f"{i:064x}" for i in range(8)]
    assert attempts[1] == [f"{i:064x}" for i in (1, 2, 3, 5)]  # 429s and the 503, not 7
    assert len(attempts) == 2 and sleeps == [0.5]
    assert result.indexed == 7
    assert result.failed == [(f"{7:064x}", "es_rejected_execution_exception: busy")]


def test_documents_still_refused_after_the_last_attempt_are_failures(sleeps):
    with stand_in(lambda m, p, body: (200, _items(body, lambda _: 429))) as (url, got):
        store = ImageStore.from_settings(Settings(es_url=url, bulk_retries=2))
        result = store.bulk_index(_docs(3), "images-v1")
    assert len(got) == 3 and sleeps == [1.0, 2.0]
    assert result.indexed == 0 and len(result.failed) == 3


def test_a_request_refused_as_a_whole_is_retried_with_the_same_backoff(sleeps):
    """429 for the whole request: one request an attempt (before: 4 x 3 x 3 = 36 here)."""
    busy = {"error": {"type": "es_rejected_execution_exception", "reason": "busy"},
            "status": 429}
    with stand_in(lambda m, p, b: (429, busy)) as (url, got):
        store = ImageStore.from_settings(Settings(es_url=url, bulk_retries=2,
                                                  bulk_backoff=0.1))
        with pytest.raises(StoreError, match=r"failed after 3 attempt\(s\)"):
            store.bulk_index(_docs(4), "images-v1")
    assert len(got) == 3 and sleeps == [0.1, 0.2]


def test_a_request_refused_for_what_it_is_is_not_retried(sleeps):
    bad = {"error": {"type": "illegal_argument_exception", "reason": "no"}, "status": 400}
    with stand_in(lambda m, p, b: (400, bad)) as (url, got):
        store = ImageStore.from_settings(Settings(es_url=url))
        with pytest.raises(StoreError, match=r"failed after 1 attempt\(s\)"):
            store.bulk_index(_docs(2), "images-v1")
    assert len(got) == 1 and sleeps == []


def test_a_dead_node_among_live_ones_costs_no_failed_read_or_write(settings, store, sent):
    """ES_URL lists a dead node beside the live one: a read that picks the dead node moves on
    to the live one within the request (the client's failover), a write on its next attempt
    (the node is marked dead in the pool they share); nothing fails. The client shuffles its
    nodes, so fresh clients are tried until each kind has picked the dead one."""
    dead = f"http://127.0.0.1:{free_port()}"
    both = settings.with_(es_url=f"{dead},{settings.es_url}", es_index=store.alias,
                          bulk_backoff=0.01)
    store.indices.point_alias(store.indices.create_index("test-model", both))
    docs = _docs(30)
    for i, doc in enumerate(docs):
        fresh = ImageStore.from_settings(both)
        for step in (["read", "write"] if i % 2 else ["write", "read"]):
            if step == "read":
                assert fresh.count() >= 0
            else:
                assert fresh.bulk_index([doc]).indexed == 1
    store.refresh()
    assert store.count() == len(docs)
    at_dead = [r for r in sent if f" {dead}/" in r]
    assert any("/_bulk" in r for r in at_dead) and any("/_count" in r for r in at_dead)
