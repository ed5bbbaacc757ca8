"""How long the indexer takes to give up on a dead Elasticsearch, and how many HTTP requests
it sends on the way.

    python -m bench.giveup --images ../shared/datasets/clothing-small/images/test \\
        [--photos 24] [--batch-size 8] [--only hung,overloaded] [--json]

Dead and sick nodes, with the retry policy of the environment (``IMGSEARCH_BULK_RETRIES``,
``IMGSEARCH_BULK_BACKOFF``, ``IMGSEARCH_BULK_MAX_BACKOFF``; 6, 1 s and 30 s by default):

1. **stopped mid-run**: a throwaway node (its own port and directory) is stopped, as
   ``make es-down`` does, when the indexer is about to write its second batch; from then on
   every request is refused. Timed from the moment the node is down to the run's end, and
   the ``_bulk`` requests sent after it counted per batch attempted;
2. **unused port**: ``ES_URL`` names a port nothing listens on; the run gives up on its first
   request (the index check, before any file is read);
3. **a search** (what the web app sends) against that port;
4. **overloaded**: a stand-in server that answers every request with 429 (Elasticsearch's
   ``es_rejected_execution_exception``); one batch written with a short policy of its own
   (2 retries from 0.1 s), to count how the layers multiply;
5. **hung**: a stand-in server that accepts every request and never answers; one batch with
   that short policy and a 1 s request timeout (``ES_REQUEST_TIMEOUT``, 30 s by default).

``--only`` runs some of them (4 and 5 need neither Elasticsearch nor the model).

Every HTTP request the client sends is counted, with its endpoint, by wrapping the
transport's node class, so that the retries of every layer show. Needs the ES zip and a JDK
(``make es-fetch``) and the weights; the node of ``make es-up`` is not used.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from elastic_transport import Urllib3HttpNode

from bench.machine import cpu_line
from imgsearch.embedder import Embedder
from imgsearch.localnode import free_port, throwaway_node
from imgsearch.settings import Settings
from imgsearch.store import ImageStore, StoreError
from indexer.index import index_folder


class RequestLog:
    """Every request any Elasticsearch client of this process sends: (time, endpoint)."""

    def __init__(self):
        self.sent: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._real = Urllib3HttpNode.perform_request

    def __enter__(self) -> RequestLog:
        log, real = self, self._real

        def perform_request(node, method, target, *args, **kwargs):
            endpoint = next((p for p in reversed(target.split("?")[0].split("/"))
                             if p.startswith("_")), "/<index>")
            with log._lock:
                log.sent.append((time.monotonic(), f"{method} {endpoint}"))
            return real(node, method, target, *args, **kwargs)

        Urllib3HttpNode.perform_request = perform_request
        return self

    def __exit__(self, *exc) -> None:
        Urllib3HttpNode.perform_request = self._real

    def since(self, moment: float) -> Counter:
        with self._lock:
            return Counter(endpoint for at, endpoint in self.sent if at >= moment)


def some_photos(images: Path, count: int, into: Path) -> Path:
    """``count`` photos of ``images`` (its label folders in turn) copied into ``into``."""
    labels = sorted(p for p in images.iterdir() if p.is_dir())
    files = [sorted(label.glob("*.jpg")) for label in labels]
    taken = 0
    for i in range(count):
        for label, photos in zip(labels, files, strict=True):
            if taken == count:
                return into
            if i < len(photos):
                (into / label.name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(photos[i], into / label.name / photos[i].name)
                taken += 1
    return into


def stopped_mid_run(settings: Settings, embedder, folder: Path, requests: RequestLog) -> dict:
    """Index ``folder`` into a node of its own that stops before the second batch's write."""
    with throwaway_node(heap="512m") as node, tempfile.TemporaryDirectory() as thumbs:
        local = settings.with_(es_url=node.url, es_index=f"bench-giveup-{uuid.uuid4().hex[:8]}",
                               thumbnail_dir=Path(thumbs))
        store = ImageStore.from_settings(local)
        real_bulk = store.bulk_index
        calls: list[int] = []
        down: list[float] = []

        def bulk_then_stop(docs, index=None):
            calls.append(len(docs))
            if len(calls) == 2:
                node.stop()
                down.append(time.monotonic())
            return real_bulk(docs, index)

        store.bulk_index = bulk_then_stop
        report = index_folder(folder, settings=local, embedder=embedder, store=store,
                              progress=False)
        ended = time.monotonic()
    after = requests.since(down[0])
    attempted = len(calls) - 1  # the batches whose write began once the node was down
    bulks = after.get("PUT _bulk", 0) + after.get("POST _bulk", 0)
    return {
        "seconds_to_give_up": round(ended - down[0], 1),
        "batches_written_before": 1,
        "batches_attempted_after": attempted,
        "bulk_requests_per_batch": round(bulks / attempted, 1) if attempted else None,
        "requests_after_stop": dict(after),
        "indexed": report.stats.indexed,
        "exit_code": report.exit_code,
        "aborted": report.aborted,
    }


def unused_port(settings: Settings, embedder, folder: Path, requests: RequestLog) -> dict:
    """Index ``folder`` with ES_URL on a port nothing listens on."""
    local = settings.with_(es_url=f"http://127.0.0.1:{free_port()}")
    store = ImageStore.from_settings(local)
    started = time.monotonic()
    error = None
    try:
        index_folder(folder, settings=local, embedder=embedder, store=store, progress=False)
    except StoreError as exc:  # the CLI says "not reachable" and exits 1
        error = f"{type(exc).__name__}: {exc}"
    return {"seconds_to_give_up": round(time.monotonic() - started, 2),
            "requests": dict(requests.since(started)), "error": error}


def search_unused_port(settings: Settings, requests: RequestLog) -> dict:
    """One kNN search, as the web app sends it, against a port nothing listens on."""
    store = ImageStore.from_settings(settings.with_(es_url=f"http://127.0.0.1:{free_port()}"))
    vector = np.zeros(2048, np.float32)
    vector[0] = 1.0
    started = time.monotonic()
    error = None
    try:
        store.knn(vector, k=10)
    except StoreError as exc:
        error = type(exc).__name__
    return {"seconds_to_fail": round(time.monotonic() - started, 3),
            "requests": dict(requests.since(started)), "error": error}


SCENARIOS = ("stopped_mid_run", "unused_port", "search_unused_port", "overloaded", "hung")
QUICK = {"retries": 2, "backoff": 0.1, "max_backoff": 1.0}


class _Overloaded(BaseHTTPRequestHandler):
    BODY = json.dumps({"error": {"type": "es_rejected_execution_exception",
                                 "reason": "rejected (a stand-in for an overloaded node)"},
                       "status": 429}).encode()

    def _reject(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(429)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    do_GET = do_PUT = do_POST = do_HEAD = _reject

    def log_message(self, *args) -> None:
        pass


class _Hung(_Overloaded):
    def _reject(self) -> None:
        time.sleep(5)  # longer than the client waits

    do_GET = do_PUT = do_POST = do_HEAD = _reject


def one_batch_against(handler, settings: Settings, requests: RequestLog) -> dict:
    """One batch of 8 documents written, with the QUICK policy, to a stand-in server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = ImageStore.from_settings(
            settings.with_(es_url=f"http://127.0.0.1:{server.server_address[1]}"))
        docs = [{"content_hash": f"{i:064x}", "label": "x"} for i in range(8)]
        started = time.monotonic()
        outcome = None
        try:
            written = store.bulk_index(docs, "bench-giveup", max_retries=QUICK["retries"],
                                       initial_backoff=QUICK["backoff"],
                                       max_backoff=QUICK["max_backoff"])
            outcome = f"{written.indexed} indexed, {len(written.failed)} failed"
        except StoreError as exc:
            outcome = f"{type(exc).__name__}: {str(exc)[:100]}"
        return {"policy": QUICK, "request_timeout": settings.es_request_timeout,
                "seconds": round(time.monotonic() - started, 2),
                "requests": dict(requests.since(started)), "outcome": outcome}
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True, help="a folder of label folders")
    p.add_argument("--photos", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--only", default=",".join(SCENARIOS),
                   help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    only = [name for name in args.only.split(",") if name]
    if set(only) - set(SCENARIOS):
        p.error(f"--only takes {', '.join(SCENARIOS)}")

    settings = Settings.from_env(batch_size=args.batch_size)
    embedder = None
    if {"stopped_mid_run", "unused_port"} & set(only):
        embedder = Embedder(settings)
        embedder.warm_up()
    out: dict = {
        "cpu": cpu_line(),
        "date": datetime.now(UTC).date().isoformat(),
        "policy": {"retries": settings.bulk_retries, "backoff": settings.bulk_backoff,
                   "max_backoff": settings.bulk_max_backoff,
                   "window_seconds": settings.bulk_retry_window},
        "photos": args.photos,
        "batch_size": args.batch_size,
    }
    with tempfile.TemporaryDirectory() as tmp, RequestLog() as requests:
        folder = some_photos(args.images, args.photos, Path(tmp))
        if "stopped_mid_run" in only:
            out["stopped_mid_run"] = stopped_mid_run(settings, embedder, folder, requests)
        if "unused_port" in only:
            out["unused_port"] = unused_port(settings, embedder, folder, requests)
        if "search_unused_port" in only:
            out["search_unused_port"] = search_unused_port(settings, requests)
        if "overloaded" in only:
            out["overloaded"] = one_batch_against(_Overloaded, settings, requests)
        if "hung" in only:
            out["hung"] = one_batch_against(_Hung, settings.with_(es_request_timeout=1.0),
                                            requests)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"CPU: {out['cpu']}; {out['date']}; policy {out['policy']}")
    for name in only:
        print(f"{name}: {json.dumps(out[name])}")


if __name__ == "__main__":
    main()
