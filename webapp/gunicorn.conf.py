"""gunicorn settings for ``make serve``, sized for a small (2-core) machine.

Two worker processes, each with its own copy of the model, so one slow request (a big JPEG
to decode) never stalls the other; sixteen threads per worker, most of them waiting: the
model serialises on its lock, and admission control (webapp/limits.py) must see a request to
refuse it, so requests wait in the app, where their wait is known, and not in gunicorn's own
queue of accepted connections, where nothing is (with 4 threads, 4x overload made p95 97 s:
docs/BENCHMARKS.md). nginx in front (webapp/serve.py) passes on at most workers x threads
requests at once, so that queue stays empty; slow clients never reach a thread. Override
with WEBAPP_BIND, WEBAPP_WORKERS, WEBAPP_THREADS, WEBAPP_TIMEOUT.
"""

import os
import shutil
import tempfile

bind = os.environ.get("WEBAPP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEBAPP_WORKERS", "2"))
threads = int(os.environ.get("WEBAPP_THREADS", "16"))
worker_class = "gthread"

# TensorFlow is not fork-safe: every worker imports it and loads the model after the fork.
preload_app = False
# Loading ResNet50 and tracing its graph takes a while on a busy 2-core machine.
timeout = int(os.environ.get("WEBAPP_TIMEOUT", "180"))
graceful_timeout = 30
keepalive = 5

# Upload size is enforced by the app (MAX_CONTENT_LENGTH -> 413 with the limit stated), and
# in front of it by nginx, which also bounds the request line and headers (JSON refusals);
# these are gunicorn's own, for a gunicorn run without nginx.
limit_request_line = 8190
limit_request_fields = 100

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("WEBAPP_LOG_LEVEL", "info")
# Keeps the access log short: client, method, path, status, size, milliseconds. Behind nginx
# (webapp/serve.py) the client is the address nginx saw, not the Unix socket's empty one.
# Key-like query parameters' values redacted from the request line (webapp/accesslog.py).
logger_class = "webapp.accesslog.RedactingLogger"
access_log_format = ('%({x-real-ip}i)s' if "WEBAPP_BEHIND_PROXY" in os.environ else '%(h)s') \
    + ' "%(r)s" %(s)s %(b)s %(M)sms'

# The workers' shared rate-limit buckets (webapp/limits.py): one directory per server, made
# here in the master before the workers fork, unless webapp/serve.py gave its run directory.
_made_state_dir = None
if "WEBAPP_STATE_DIR" not in os.environ:
    _made_state_dir = os.environ.setdefault(
        "WEBAPP_STATE_DIR", tempfile.mkdtemp(prefix="imgsearch-gunicorn-"))


def on_exit(server):
    if _made_state_dir:
        shutil.rmtree(_made_state_dir, ignore_errors=True)

# Prometheus multiprocess mode (imgsearch/telemetry.py): every worker writes its metrics to
# files in one directory, which a scrape of any worker sums. Set before any worker starts (they
# inherit it), emptied at each start (old workers' counts are not this server's), and a dead
# worker's live gauges are dropped.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imgsearch-metrics-")


def on_starting(server):
    from pathlib import Path

    for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
