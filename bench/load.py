"""Bounded load on a running web app: N concurrent upload clients for T seconds, loopback only.

Starts nothing but (optionally) an indexer run; point it at a server (``make serve`` or
gunicorn) on 127.0.0.1 whose index is populated:

    python bench/load.py <images dir> [--url http://127.0.0.1:8000] [--clients 8]
                         [--seconds 60] [--pids PID ...] [--index-dir DIR] [--json]

While the clients upload photos to ``POST /api/search``, ``/healthz`` is polled once a
second. With ``--index-dir`` an indexer run (``python -m indexer DIR``, same environment:
ES_URL, ES_INDEX) runs alongside, to show that searches keep working while the index grows;
if it has not finished when the load ends it is stopped with SIGTERM (handled like Ctrl-C:
summary, exit 1; a re-run finishes it). Not SIGINT: a shell's background jobs ignore it.

With ``--rate R`` the load is open-loop instead: R uploads a second arrive on a fixed
schedule whatever the server does (each on a connection of its own, at most ``--clients``
outstanding; one that cannot start on time waits client-side, and its latency counts from its
scheduled arrival), the way overload really arrives. Then it also reports the latency of the
admitted requests (200) alone and the share refused at once (429/503, with Retry-After).

Reports requests, status counts, 5xx, client-side p50/p95/p99, healthz failures and the
resident memory (VmRSS) of the gunicorn workers at start and end (``--pids``, else the
processes ``pgrep -f 'gunicorn.*webapp'`` finds). It stops by itself after ``--seconds``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api_latency import SUFFIXES, multipart, percentile  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def gunicorn_workers() -> list[int]:
    """Worker processes of gunicorn serving ``webapp`` (the children of its master)."""
    out = subprocess.run(["pgrep", "-f", "gunicorn.*webapp"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    masters = set(pids)
    workers = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid in masters:
            workers.append(pid)
    return workers or pids


class Load:
    def __init__(self, url: str, images: list[Path], deadline: float, k: int):
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"refusing to load {parts.hostname}: loopback only")
        self.host, self.port = parts.hostname, parts.port or 80
        self.images = images
        self.deadline = deadline
        self.k = k
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self.errors: Counter = Counter()
        self.health: Counter = Counter()
        self.health_failures: list[str] = []
        self.by_status: dict[int, list[float]] = {}
        self.retry_after = 0
        self.retry_503 = 0
        self.codes: Counter = Counter()

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        while time.monotonic() < self.deadline:
            path = rng.choice(self.images)
            body, ctype = multipart(path.read_bytes(), path.name, {"k": str(self.k)})
            started = time.perf_counter()
            try:
                conn.request("POST", "/api/search", body, {"Content-Type": ctype})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.errors[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                continue
            elapsed = time.perf_counter() - started
            with self.lock:
                self.statuses[status] += 1
                self.latencies.append(elapsed)
        conn.close()

    def arrival(self, scheduled: float, path: Path) -> None:
        """One open-loop upload, timed from when it was due (``--rate``)."""
        body, ctype = multipart(path.read_bytes(), path.name, {"k": str(self.k)})
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request("POST", "/api/search", body, {"Content-Type": ctype})
            response = conn.getresponse()
            data = response.read()
            status, retry_after = response.status, response.getheader("Retry-After")
            if status != 200:
                try:
                    code = json.loads(data)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = "not JSON"
                with self.lock:
                    self.codes[f"{status} {code}"] += 1
        except (OSError, http.client.HTTPException) as exc:
            with self.lock:
                self.errors[type(exc).__name__] += 1
            return
        finally:
            conn.close()
        elapsed = time.perf_counter() - scheduled
        with self.lock:
            self.statuses[status] += 1
            self.latencies.append(elapsed)
            self.by_status.setdefault(status, []).append(elapsed)
            if status in (429, 503) and retry_after is not None:
                self.retry_after += 1
                self.retry_503 += status == 503

    def open_loop(self, rate: float, outstanding: int, seed: int = 0) -> None:
        rng = random.Random(seed)
        with ThreadPoolExecutor(max_workers=outstanding) as pool:
            start = time.perf_counter()
            n = 0
            while time.monotonic() < self.deadline:
                due = start + n / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                pool.submit(self.arrival, due, rng.choice(self.images))
                n += 1

    def poll_health(self) -> None:
        while time.monotonic() < self.deadline:
            tick = time.monotonic()
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                body = response.read()
                conn.close()
                self.health[response.status] += 1
                if response.status != 200:
                    self.health_failures.append(body.decode(errors="replace")[:200])
            except (OSError, http.client.HTTPException) as exc:
                self.health["error"] += 1
                self.health_failures.append(repr(exc))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))


def count_docs(es_url: str, index: str) -> int | None:
    parts = urlsplit(es_url)
    try:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 9200, timeout=10)
        conn.request("GET", f"/{index}/_count")
        response = conn.getresponse()
        data = json.loads(response.read())
        conn.close()
        return data.get("count")
    except (OSError, ValueError, http.client.HTTPException):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="folder of photos to upload (recursive)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent clients (8); with --rate, the most outstanding")
    parser.add_argument("--rate", type=float,
                        help="open-loop: uploads arriving per second, whatever the server does")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration (60)")
    parser.add_argument("-k", type=int, default=10, help="results per search (10)")
    parser.add_argument("--pids", type=int, nargs="*", help="gunicorn worker pids to watch")
    parser.add_argument("--index-dir", type=Path,
                        help="run `python -m indexer DIR` alongside (ES_URL, ES_INDEX)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    images = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not images:
        parser.error(f"no images under {args.images}")
    pids = args.pids or gunicorn_workers()
    rss_start = {pid: rss_kib(pid) for pid in pids}
    es_url = os.environ.get("ES_URL", "http://127.0.0.1:9200")
    es_index = os.environ.get("ES_INDEX", "images")
    docs_start = count_docs(es_url, es_index)

    indexer = None
    # The indexer's log goes to a file: a pipe nobody reads until the end would fill up and
    # stall it.
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed at exit)
    if args.index_dir:
        env = dict(os.environ, PYTHONPATH=str(PROJECT))
        indexer = subprocess.Popen(
            [sys.executable, "-m", "indexer", str(args.index_dir), "--no-progress"],
            env=env, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=log, text=True,
        )

    started = time.monotonic()
    load = Load(args.url, images, started + args.seconds, args.k)
    if args.rate:
        threads = [threading.Thread(target=load.open_loop, args=(args.rate, args.clients))]
    else:
        threads = [threading.Thread(target=load.client, args=(i,)) for i in range(args.clients)]
    threads.append(threading.Thread(target=load.poll_health))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started

    indexer_result = None
    if indexer:
        finished = indexer.poll() is not None
        if not finished:
            indexer.send_signal(signal.SIGTERM)
        indexer.wait(timeout=300)
        log.seek(0)
        stderr = log.read()
        indexer_result = {
            "finished_during_load": finished, "exit_code": indexer.returncode,
            "summary": [line for line in stderr.splitlines()
                        if line.startswith(("  ", "Index", "ABORTED"))][:12],
        }
    docs_end = count_docs(es_url, es_index)
    rss_end = {pid: rss_kib(pid) for pid in pids}

    lat = load.latencies
    summary = {
        "url": args.url, "clients": args.clients, "seconds": round(wall, 1),
        "requests": len(lat), "requests_per_second": round(len(lat) / wall, 2),
        "statuses": dict(sorted(load.statuses.items())),
        "5xx": sum(n for s, n in load.statuses.items() if s >= 500),
        "connection_errors": dict(load.errors),
        "latency_ms": {
            f"p{p}": round(percentile(lat, p) * 1000, 1) for p in (50, 95, 99)
        } | {"max": round(max(lat) * 1000, 1)} if lat else {},
        **({"rate": args.rate, "admitted_latency_ms": _percentiles(load.by_status.get(200, [])),
            "refused_share": round(sum(load.statuses[s] for s in (429, 503))
                                   / max(1, sum(load.statuses.values())), 3),
            "refusals_with_retry_after": load.retry_after,
            "refusals": dict(load.codes),
            "refused_latency_ms": _percentiles(load.by_status.get(503, [])
                                               + load.by_status.get(429, []))}
           if args.rate else {}),
        "healthz": {"polls": sum(load.health.values()),
                    "failures": sum(n for s, n in load.health.items() if s != 200),
                    "first_failures": load.health_failures[:3]},
        "worker_rss_mib": {
            str(pid): {"start": _mib(rss_start[pid]), "end": _mib(rss_end[pid])} for pid in pids
        },
        "documents": {"start": docs_start, "end": docs_end},
        "indexer": indexer_result,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key:>20}: {value}")
    # Under --rate, a 503 with Retry-After is a refusal by design, not a failure.
    server_errors = summary["5xx"] - load.retry_503
    healthy = server_errors == 0 and not load.errors and summary["healthz"]["failures"] == 0
    return 0 if healthy and lat else 1


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    return {f"p{p}": round(percentile(values, p) * 1000, 1) for p in (50, 95, 99)} | {
        "max": round(max(values) * 1000, 1), "n": len(values)}


def _mib(kib: int | None) -> float | None:
    return round(kib / 1024, 1) if kib is not None else None


if __name__ == "__main__":
    sys.exit(main())
