"""gunicorn settings for ``make serve``, sized for a small (2-core) machine.

Two worker processes, each with its own copy of the model, so one slow request (a big JPEG
to decode) never stalls the other; four threads per worker to overlap the I/O waits
(upload, Elasticsearch) while the model itself serialises on its lock. Override with
WEBAPP_BIND, WEBAPP_WORKERS, WEBAPP_THREADS, WEBAPP_TIMEOUT.
"""

import os

bind = os.environ.get("WEBAPP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEBAPP_WORKERS", "2"))
threads = int(os.environ.get("WEBAPP_THREADS", "4"))
worker_class = "gthread"

# TensorFlow is not fork-safe: every worker imports it and loads the model after the fork.
preload_app = False
# Loading ResNet50 and tracing its graph takes a while on a busy 2-core machine.
timeout = int(os.environ.get("WEBAPP_TIMEOUT", "180"))
graceful_timeout = 30
keepalive = 5

# Upload size is enforced by the app (MAX_CONTENT_LENGTH -> 413 with the limit stated);
# these only bound the request line and headers.
limit_request_line = 8190
limit_request_fields = 100

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("WEBAPP_LOG_LEVEL", "info")
# Keeps the access log short: method, path, status, size, milliseconds.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'

# Prometheus multiprocess mode (imgsearch/telemetry.py): every worker writes its metrics to
# files in one directory, which a scrape of any worker sums. Set before any worker starts (they
# inherit it), emptied at each start (old workers' counts are not this server's), and a dead
# worker's live gauges are dropped.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imgsearch-metrics-")


def on_starting(server):
    from pathlib import Path

    for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
