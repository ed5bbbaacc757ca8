"""``GET /metrics`` (``admin``; Prometheus scrapes it with a bearer token) and the request
counters and latency histograms behind it (imgsearch/telemetry.py defines them).

A scrape answers the sum over every gunicorn worker (multiprocess mode) plus two values read
at scrape time, not stored: the serving model's version (``imgsearch_model_info``) and the
number of documents behind the alias (``imgsearch_index_documents``; absent while
Elasticsearch does not answer, which ``imgsearch_up`` then says).
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
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
    # First of the before_request hooks, so that refusals (401, 403, 400) are counted too.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_count)
