"""End-to-end latency of ``POST /api/search`` against a running server.

Starts nothing: point it at a server (``make serve``) whose index is populated.

    python bench/api_latency.py --url http://127.0.0.1:8000 <images dir> [-n 120] [-k 10] [-c 4]

``-c`` clients upload in parallel, each on its own keep-alive connection, until ``-n``
requests have been measured in all. Prints client-side percentiles (upload to parsed JSON),
the throughput, and the server's own decode / embed / search split from ``timings_ms``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
STAGES = ("decode", "embed", "search", "total")


def multipart(data: bytes, filename: str, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            .encode()
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"'
        "\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
    )
    parts.append(data)
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a measured request)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="folder of photos to upload (recursive)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("-n", type=int, default=120, help="measured requests (default 120)")
    parser.add_argument("-k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="parallel clients")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured requests first")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not files:
        print(f"no images under {args.images}", file=sys.stderr)
        return 2
    url = urlsplit(args.url)
    path = url.path.rstrip("/") + "/api/search"
    client_ms: list[float] = []
    server_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
    errors: list[str] = []
    lock = threading.Lock()

    def client(todo: Iterator[int], measure: bool) -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=120)
        while True:
            with lock:
                i = next(todo, None)
            if i is None or errors:
                break
            photo = files[i % len(files)]
            body, content_type = multipart(photo.read_bytes(), photo.name, {"k": str(args.k)})
            started = time.perf_counter()
            conn.request("POST", path, body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            payload = json.loads(response.read())
            elapsed = (time.perf_counter() - started) * 1000.0
            with lock:
                if response.status != 200:
                    errors.append(f"{photo}: HTTP {response.status}: {payload}")
                elif measure:
                    client_ms.append(elapsed)
                    for stage in STAGES:
                        server_ms[stage].append(payload["timings_ms"][stage])
        conn.close()

    client(iter(range(args.warmup)), measure=False)
    todo = iter(range(args.warmup, args.warmup + args.n))
    threads = [threading.Thread(target=client, args=(todo, True))
               for _ in range(args.concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        print(errors[0], file=sys.stderr)
        return 1

    summary = {
        "requests": args.n,
        "distinct_images": min(args.n, len(files)),
        "k": args.k,
        "concurrency": args.concurrency,
        "requests_per_s": args.n / wall,
        "client_ms": _stats(client_ms),
        "server_ms": {stage: _stats(values) for stage, values in server_ms.items()},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"POST {args.url}{path}: {args.n} uploads (after {args.warmup} warm-up), "
          f"{summary['distinct_images']} distinct images, k={args.k}, "
          f"concurrency {args.concurrency}: {summary['requests_per_s']:.1f} requests/s")
    print(f"{'':>16} {'p50':>8} {'p95':>8} {'p99':>8} {'mean':>8} {'max':>8}  (ms)")
    rows = [("end to end", summary["client_ms"])]
    rows += [(f"server {stage}", summary["server_ms"][stage]) for stage in STAGES]
    for name, s in rows:
        print(f"{name:>16} {s['p50']:8.1f} {s['p95']:8.1f} {s['p99']:8.1f} "
              f"{s['mean']:8.1f} {s['max']:8.1f}")
    return 0


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values),
        "max": max(values),
    }


if __name__ == "__main__":
    sys.exit(main())
