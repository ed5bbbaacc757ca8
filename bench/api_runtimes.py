"""``POST /api/search`` latency per runtime: the product's gunicorn server, one runtime at a time.

    python -m bench.api_runtimes --images ../shared/datasets/clothing-small/images/test \
        [--int8 var/models/base-int8] [-n 120] [--runtimes tensorflow,openvino]

Indexes the photos into a throwaway alias (and, with ``--int8``, into a second one with the int8
model, whose vectors are another model version), then for each runtime starts
``gunicorn webapp:create_app()`` with the product's configuration (2 workers x 4 threads) and
``IMGSEARCH_RUNTIME`` set (each of ``--runtimes``), and runs bench/api_latency.py against it at
concurrency 1 and 4.
Needs Elasticsearch at ES_URL (``make es-up``); deletes its indices afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from bench.child import run_child
from bench.machine import cpu_line
from imgsearch.embedder import Embedder
from imgsearch.localnode import free_port
from imgsearch.settings import PROJECT_ROOT, Settings
from imgsearch.store import ImageStore
from indexer.index import index_folder

RUNTIMES = ("tensorflow", "openvino")


def build_index(images: Path, settings: Settings, model_dir: Path | None) -> None:
    embedder = Embedder(settings.with_(runtime="openvino"), model_dir=model_dir)
    index_folder(images, settings=settings, embedder=embedder,
                 store=ImageStore.from_settings(settings), progress=False)


def serve_and_measure(env: dict, images: Path, n: int, log: Path) -> dict:
    port = free_port()
    env = {**env, "WEBAPP_BIND": f"127.0.0.1:{port}", "PYTHONPATH": str(PROJECT_ROOT)}
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "webapp/gunicorn.conf.py",
             "webapp:create_app()"], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the server did not start; see {log}") from None
                    time.sleep(1)
            results = {}
            for concurrency in (1, 4):
                out_json = run_child(
                    [sys.executable, "-m", "bench.api_latency", str(images), "--url",
                     f"http://127.0.0.1:{port}", "-n", str(n), "-c", str(concurrency),
                     "--warmup", "8", "--json"],
                    cwd=PROJECT_ROOT, env=env,
                )
                results[concurrency] = json.loads(out_json)
            return results
        finally:
            server.terminate()
            server.wait(60)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--int8", type=Path, help="also an int8 model directory (OpenVINO)")
    p.add_argument("-n", type=int, default=120, help="measured requests per concurrency")
    p.add_argument("--runtimes", default=",".join(RUNTIMES),
                   help="comma-separated fp32 runtimes, each a server of its own")
    args = p.parse_args(argv)
    alias = f"bench-api-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(es_index=alias)
    runtimes = [name for name in args.runtimes.split(",") if name]
    if set(runtimes) - set(RUNTIMES):
        p.error(f"--runtimes takes {', '.join(RUNTIMES)}, not {args.runtimes!r}")
    runs = [(name, alias, None) for name in runtimes]
    if args.int8:
        runs.append(("openvino int8", alias + "-int8", args.int8))
    store = ImageStore.from_settings(settings)
    print(f"CPU: {cpu_line()}", flush=True)
    try:
        with tempfile.TemporaryDirectory() as work:
            work = Path(work)
            for _, index, model_dir in runs:
                if not store.es.indices.exists_alias(name=index):
                    build_index(args.images, settings.with_(
                        es_index=index, thumbnail_dir=work / index), model_dir)
            for name, index, model_dir in runs:
                # A loopback server with public reads, as `make serve` runs it.
                env = {"IMGSEARCH_PUBLIC_READ": "1", **os.environ,
                       "IMGSEARCH_RUNTIME": name.split()[0], "ES_INDEX": index,
                       "IMGSEARCH_THUMBNAIL_DIR": str(work / index)}
                if model_dir:
                    env["IMGSEARCH_MODEL"] = str(model_dir)
                results = serve_and_measure(env, args.images, args.n, work / f"{index}.log")
                for concurrency, r in results.items():
                    c, s = r["client_ms"], r["server_ms"]
                    print(f"{name:14s} c={concurrency}: p50 {c['p50']:6.1f} ms  p95 "
                          f"{c['p95']:6.1f} ms  {r['requests_per_s']:5.1f} req/s  (server p50: "
                          f"decode {s['decode']['p50']:.1f}, embed {s['embed']['p50']:.1f}, "
                          f"search {s['search']['p50']:.1f} ms)", flush=True)
    finally:
        for _, index, _ in runs:
            if store.es.indices.exists_alias(name=index):
                for concrete in store.es.indices.get_alias(name=index):
                    # With its near-duplicate state (imgsearch/pairs.py: <index>-duplicates).
                    store.es.indices.delete(index=f"{concrete},{concrete}-*",
                                            ignore_unavailable=True)


if __name__ == "__main__":
    main()
