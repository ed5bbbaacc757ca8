"""The service's Prometheus metrics, defined once (``prometheus_client``), for the web app
(``GET /metrics``, webapp/metrics.py) and whatever else counts (admission control and rate
limits increment their refusal counters here).

Under gunicorn each worker is a process of its own, so the metrics are kept in
``prometheus_client``'s multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` (set by
webapp/gunicorn.conf.py before any worker starts) holds one file per worker and metric, and a
scrape of any worker sums them all. Without it (tests, one process) they live in memory.
Labels are bounded: an endpoint is its route's rule (``/api/images/<doc_id>``), never a path.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Request latency: from 5 ms (a facet read) to 30 s (a URL fetch at its deadline).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# One stage of a search: decoding, embedding (the model's forward pass) or the kNN query.
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter(
    "imgsearch_http_requests_total", "HTTP requests answered, by endpoint, method and status",
    ["endpoint", "method", "status"])
LATENCY = Histogram(
    "imgsearch_http_request_duration_seconds", "Time to answer a request, by endpoint and status",
    ["endpoint", "status"], buckets=LATENCY_BUCKETS)
STAGE = Histogram(
    "imgsearch_search_stage_seconds", "Time of a search's stages: decode, embed, search",
    ["stage"], buckets=STAGE_BUCKETS)
ES_ERRORS = Counter(
    "imgsearch_elasticsearch_errors_total",
    "Requests that failed on Elasticsearch: unavailable (no answer) or refused (an error)",
    ["kind"])
# Refusals of the limits: webapp/limits.py counts them (note_refusal).
ADMISSION_REFUSALS = Counter(
    "imgsearch_admission_refusals_total",
    "Inference requests refused at once because the queue would make them wait too long")
RATE_LIMIT_REFUSALS = Counter(
    "imgsearch_rate_limit_refusals_total", "Requests refused by a client's rate limit")

STAGES = ("decode", "embed", "search")


def observe_stages(timings_ms: dict[str, float]) -> None:
    """Record a search's stage times (its ``timings_ms``; stages it did not have are left)."""
    for stage in STAGES:
        if stage in timings_ms:
            STAGE.labels(stage).observe(timings_ms[stage] / 1000.0)
