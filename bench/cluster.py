"""Beyond one machine: a 3-node cluster on loopback and the Ray indexer, measured.

    python -m bench.cluster --dataset ../shared/datasets/clothing-small \\
        [--vectors 20000] [--queries 200] [--candidates 50 100 200] [--skip-ray] \\
        [--ray-workers 1 2] [--es-url URL]

1. **Formation and recovery** (:func:`imgsearch.localcluster.throwaway_cluster`, 3 nodes of
   512 MiB heap): seconds from launch to green; with an index of 3 shards x 1 replica holding
   ``--vectors`` vectors, the node holding most primaries is SIGKILLed: seconds until every
   primary is active again (yellow, 2 nodes), and after its restart until green.
2. **1 vs 3 shards**: the same ``--vectors`` (perturbed copies of the clothing set's real
   embeddings, as bench/scale.py makes them) in a 1-shard and a 3-shard ``hnsw`` index on the
   cluster; recall@10 against exact search and client-side p50/p95 at each ``--candidates``.
3. **Bytes per vector** of ``hnsw``, ``int8_hnsw`` and ``bbq_hnsw`` (3 shards, force-merged),
   from ``_stats``: what a search keeps hot and the whole store.
4. **Ray** (unless ``--skip-ray``): the clothing test split indexed by the local indexer, and
   by the Ray engine on a local Ray cluster with 1 and with 2 (``--ray-workers``) one-CPU
   worker nodes (each run a fresh index; model loading of the actors included, as a job pays it).

Needs the ES zip and a JDK (``make es-fetch``); the single node of ``make es-up`` is not used
(the Ray part indexes into it if ES_URL points there, so start it for part 4).

``--es-url`` measures on a running node or cluster instead of starting the throwaway one: parts
2-4 only (part 1 times a cluster's formation and kills one of its nodes, which only the
benchmark's own cluster allows), and the Ray part indexes there too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.machine import cpu_line
from bench.scale import (
    Collection,
    base_vectors,
    digest_of,
    exact_neighbours,
    ingest,
    knn_run,
    sizes,
)
from bench.scale import index_body as scale_index_body
from imgsearch.localcluster import throwaway_cluster
from imgsearch.settings import Settings
from imgsearch.store import connect

SIGMA = 0.15  # bench/scale.py's noise: near-copies of each photo, as a big collection has


def index_body(index_type: str, shards: int) -> dict:
    body = scale_index_body(index_type, 16, 100)
    body["settings"].update(number_of_shards=shards, number_of_replicas=0)
    return body


def formation_and_recovery(cluster, es, collection, labels) -> dict:
    index = "bench-recovery"
    body = index_body("int8_hnsw", 3)
    body["settings"]["number_of_replicas"] = 1
    es.indices.create(index=index, **body)
    ingest(es, index, collection, labels, threads=2, progress=False)
    es.indices.refresh(index=index)
    cluster.wait_for(status="green", nodes=3, timeout=300)
    copies = cluster.shard_copies(index)
    victim = cluster.node_named(Counter(c["node"] for c in copies
                                        if c["prirep"] == "p").most_common(1)[0][0])
    killed = time.perf_counter()
    victim.kill()
    cluster.wait_for(status="yellow", nodes=2, timeout=300)
    primaries_back = time.perf_counter() - killed
    restarted = time.perf_counter()
    victim.start(wait=False)
    cluster.wait_for(status="green", nodes=3, timeout=600)
    green_again = time.perf_counter() - restarted
    count = es.count(index=index).body["count"]
    es.indices.delete(index=index)
    return {"primaries_active_after_kill_s": round(primaries_back, 1),
            "green_after_restart_s": round(green_again, 1), "count_after": count}


def shards_and_candidates(es, collection, labels, queries, truth, candidates) -> list[dict]:
    rows = []
    for shards in (1, 3):
        index = f"bench-shards-{shards}"
        es.indices.create(index=index, **index_body("hnsw", shards))
        ingest(es, index, collection, labels, threads=2, progress=False)
        es.indices.refresh(index=index)
        es.indices.forcemerge(index=index, max_num_segments=1)
        for n in candidates:
            r = knn_run(es, index, queries, truth, n, None)
            rows.append({"shards": shards, "num_candidates": n,
                         "recall@10": round(r["recall_at_10"], 4),
                         "p50_ms": r["client_p50_ms"],
                         "p95_ms": r["client_p95_ms"]})
        es.indices.delete(index=index)
    return rows


def bytes_per_vector(es, collection, labels) -> list[dict]:
    rows = []
    for index_type in ("hnsw", "int8_hnsw", "bbq_hnsw"):
        index = f"bench-bytes-{index_type.replace('_', '-')}"
        es.indices.create(index=index, **index_body(index_type, 3))
        ingest(es, index, collection, labels, threads=2, progress=False)
        es.indices.refresh(index=index)
        es.indices.forcemerge(index=index, max_num_segments=1)
        size = sizes(es, index, index_type)
        rows.append({"type": index_type,
                     "hot_bytes_per_vector": round(size["hot_bytes"] / collection.size),
                     "disk_bytes_per_vector": round(size["disk_bytes"] / collection.size)})
        es.indices.delete(index=index)
    return rows


def ray_rates(images: Path, worker_counts: list[int], es_url: str | None = None) -> list[dict]:
    """Images/s of the local indexer and of the Ray engine with each of ``worker_counts``
    worker nodes, indexing into ``es_url`` (default: ES_URL)."""
    import ray
    from ray.cluster_utils import Cluster

    from imgsearch.embedder import Embedder
    from imgsearch.store import ImageStore
    from indexer.distributed import RayEngine
    from indexer.index import index_folder

    rows = []
    with tempfile.TemporaryDirectory() as thumbs:
        base = Settings.from_env(thumbnail_dir=Path(thumbs))
        if es_url:
            base = base.with_(es_url=es_url)
        embedder = Embedder(base)

        def fresh() -> tuple[Settings, ImageStore]:
            settings = base.with_(es_index=f"bench-ray-{uuid.uuid4().hex[:8]}")
            return settings, ImageStore.from_settings(settings)

        settings, store = fresh()
        report = index_folder(images, settings=settings, embedder=embedder, store=store,
                              progress=False)
        store.es.indices.delete(index=f"{settings.es_index}-*")
        rows.append({"engine": "local", "workers": None, "images": report.embedded,
                     "seconds": report.seconds})
        for workers in worker_counts:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
            for _ in range(workers):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            try:
                settings, store = fresh()
                report = index_folder(
                    images, settings=settings, embedder=embedder, store=store, progress=False,
                    engine=RayEngine(cluster.address, max_workers=workers, progress=False))
                store.es.indices.delete(index=f"{settings.es_index}-*")
            finally:
                ray.shutdown()
                cluster.shutdown()
            rows.append({"engine": "ray", "workers": workers, "images": report.embedded,
                         "seconds": report.seconds})
    # The rate from the unrounded time: a short run's rounding would skew it.
    for row in rows:
        row["images_per_second"] = round(row["images"] / row["seconds"], 2)
        row["seconds"] = round(row["seconds"], 1)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--vectors", type=int, default=20_000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--candidates", type=int, nargs="+", default=[50, 100, 200])
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--ray-workers", type=int, nargs="+", default=[1, 2],
                   help="worker nodes of each Ray run (default 1 2)")
    p.add_argument("--es-url", help="a running Elasticsearch to measure on instead of a "
                   "throwaway 3-node cluster (no formation and recovery part)")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    base, labels = base_vectors(settings, args.dataset)
    collection = Collection(base, args.vectors, SIGMA)
    queries = collection.queries(args.queries)
    truth = exact_neighbours(collection, queries, 10, settings.cache_dir / "bench" /
                             f"cluster-truth-{args.vectors}-{args.queries}-{digest_of(base)}.npy")
    out: dict = {"cpu": cpu_line(), "vectors": args.vectors}
    with contextlib.ExitStack() as stack:
        cluster = None
        if not args.es_url:
            started = time.perf_counter()
            cluster = stack.enter_context(throwaway_cluster(3, heap="512m"))
            out["formation_s"] = round(time.perf_counter() - started, 1)
        es = connect(settings.with_(es_url=args.es_url or cluster.es_url,
                                    es_request_timeout=120))
        if cluster is not None:
            out["recovery"] = formation_and_recovery(cluster, es, collection, labels)
        out["shards"] = shards_and_candidates(es, collection, labels, queries, truth,
                                              args.candidates)
        out["bytes"] = bytes_per_vector(es, collection, labels)
    if not args.skip_ray:
        out["ray"] = ray_rates(args.dataset / "images" / "test", args.ray_workers, args.es_url)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
