"""``GET /metrics`` (``admin``; Prometheus scrapes it with a bearer token) and the request
counters and latency histograms behind it (imgsearch/telemetry.py defines them).

A scrape answers the sum over every gunicorn worker (multiprocess mode) plus two values read
at scrape time, not stored: the serving model's version (``imgsearch_model_info``) and the
number of documents behind the alias (``imgsearch_index_documents``; absent while
Elasticsearch does not answer, which ``imgsearch_up`` then says), and behind nginx the
refusals nginx made itself (``imgsearch_proxy_refusals_total``).
"""

from __future__ import annotations

import os
import threading
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from imgsearch import telemetry

from .auth import ADMIN, requires

bp = Blueprint("metrics", __name__)


class _Live:
    """Values read when scraped: the model serving and the index's document count."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        model = self.service.model
        info = GaugeMetricFamily("imgsearch_model_info", "The model serving queries",
                                 labels=["model_version", "precision", "runtime"])
        info.add_metric([model.version, str(model.precision), str(model.runtime)], 1)
        yield info
        up = GaugeMetricFamily("imgsearch_up", "1 if Elasticsearch answered this scrape")
        try:
            documents = self.service.store.count()
        except Exception:  # unreachable, or nothing indexed yet: said by imgsearch_up
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            count = GaugeMetricFamily("imgsearch_index_documents",
                                      "Documents behind the alias", labels=["alias"])
            count.add_metric([self.service.store.alias], documents)
            yield count
        yield up


class _ProxyRefusals:
    """nginx's own refusals (webapp/nginx.conf: 400, 404, 405, 413, 414, 429, 431, 503 made
    before the app sees a request), read from the file nginx writes them to, one status a
    line (``WEBAPP_PROXY_REFUSALS``, set by webapp/serve.py). Each worker reads the file
    from its start, then only what was added, so every worker answers the same totals; the
    file lasts as long as the server's run directory (a restart starts the counts again,
    which Prometheus' rate() takes as a counter reset) and grows 4 bytes a refusal."""

    def __init__(self, path: str):
        self.path = path
        self._offset = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            try:
                with open(self.path, "rb") as log:
                    log.seek(self._offset)
                    chunk = log.read()
            except FileNotFoundError:  # no refusal yet
                chunk = b""
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line nginx is writing waits
            self._offset += len(complete)
            for line in complete.split():
                status = line.decode("ascii", "replace")
                self._counts[status] = self._counts.get(status, 0) + 1
            family = CounterMetricFamily(
                "imgsearch_proxy_refusals", "Requests nginx refused itself, by status",
                labels=["status"])
            for status, count in sorted(self._counts.items()):
                family.add_metric([status], count)
        yield family


@bp.get("/metrics")
@requires(ADMIN)
def metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        workers = CollectorRegistry()
        MultiProcessCollector(workers)
    else:
        workers = REGISTRY
    live = CollectorRegistry()
    live.register(_Live(current_app.extensions["imgsearch"]))
    refusals = current_app.extensions.get("imgsearch.proxy_refusals")
    if refusals is not None:  # behind nginx (make serve, the compose stack)
        live.register(refusals)
    body = generate_latest(workers) + generate_latest(live)
    return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Cache-Control": "no-store"})


def _start():
    g.metrics_started = time.perf_counter()


def _count(response):
    started = g.pop("metrics_started", None)
    if started is not None:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        status = str(response.status_code)
        telemetry.REQUESTS.labels(endpoint, request.method, status).inc()
        telemetry.LATENCY.labels(endpoint, status).observe(time.perf_counter() - started)
    return response


def register(app) -> None:
    app.register_blueprint(bp)
    # One reader of nginx's refusals a worker: its offset and counts carry over between scrapes.
    refusals = os.environ.get("WEBAPP_PROXY_REFUSALS")
    app.extensions["imgsearch.proxy_refusals"] = _ProxyRefusals(refusals) if refusals else None
    # First of the before_request hooks, so that refusals (401, 403, 400) are counted too.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_count)
