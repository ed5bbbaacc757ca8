"""Scale: 100k and 1M vectors in ``hnsw``, ``int8_hnsw`` and ``bbq_hnsw``.

    python -m bench.scale --sizes 100000 1000000 --types hnsw int8_hnsw bbq_hnsw

The collection is synthetic but keeps the real distribution: row ``i`` is the ResNet50
embedding of clothing photo ``i mod 3,781`` with small multiplicative noise (each component
scaled by ``exp(sigma * N(0, 1))``, then L2-normalised), so the vectors stay non-negative and
sparse like real post-ReLU features, and every photo has ``size / 3,781`` near-duplicates.
Queries are fresh perturbations of the same photos (not in the index). Rows are generated in
fixed chunks from seeded generators, so the exact neighbours are computed by streaming the
same rows through numpy (cached), never by holding 8 GB of floats.

For each size and index type this reports: the bulk indexing rate (2 client threads,
``refresh_interval: -1``), refresh and force-merge time, the store size on disk and the part
of it the kNN search keeps hot (graph + the vectors it scores), kNN latency p50/p95 as
Elasticsearch reports it (``took``) and as a client sees it, and recall@10 against exact
search, without and with exact rescoring of oversampled candidates (quantized types).

Needs Elasticsearch at ES_URL (``make es-up``); each index is deleted after it is measured
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.api_latency import percentile
from imgsearch.settings import Settings
from imgsearch.store import connect

CHUNK = 4096  # rows per seeded generator; fixes the collection regardless of batch sizes
DIMS = 2048
K = 10


# -- the collection -------------------------------------------------------------------------


def base_vectors(settings: Settings, dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unit ResNet50 vectors and labels of every photo in ``dataset`` (cached by model and by
    the content of labels.csv: another set in a folder of the same name is another cache)."""
    import csv

    from imgsearch.embedder import Embedder

    with open(dataset / "labels.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    embedder = Embedder(settings)
    tag = embedder.version.replace("/", "_").replace("=", "-")
    listed = hashlib.sha256((dataset / "labels.csv").read_bytes()).hexdigest()[:12]
    cache = settings.cache_dir / "bench" / f"{dataset.name}-{listed}-{tag}.npz"
    if cache.exists():
        saved = np.load(cache)
        return saved["vectors"], saved["labels"]
    vectors = []
    for i in range(0, len(rows), settings.batch_size):
        pixels = np.stack([
            embedder.decode((dataset / "images" / r["path"]).read_bytes()).pixels
            for r in rows[i : i + settings.batch_size]
        ])
        vectors.append(embedder.embed(pixels))
    vectors, labels = np.concatenate(vectors), np.array([r["label"] for r in rows])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors, labels=labels)
    return vectors, labels


def digest_of(vectors: np.ndarray) -> str:
    """A short digest of an array's values. The exact neighbours' caches are named by their
    collection's base vectors: those of another dataset or model must never be read back."""
    return hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest()[:12]


def perturb(base: np.ndarray, rows: np.ndarray, sigma: float, rng: np.random.Generator):
    noise = np.exp(sigma * rng.standard_normal((len(rows), base.shape[1]), np.float32))
    out = base[rows] * noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


@dataclass
class Collection:
    """``size`` deterministic rows derived from ``base``; see the module docstring."""

    base: np.ndarray
    size: int
    sigma: float
    seed: int = 0

    def chunk(self, number: int) -> np.ndarray:
        start = number * CHUNK
        rows = np.arange(start, min(start + CHUNK, self.size)) % len(self.base)
        return perturb(self.base, rows, self.sigma, np.random.default_rng([self.seed, number]))

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for number in range(-(-self.size // CHUNK)):
            yield number * CHUNK, self.chunk(number)

    def queries(self, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1_000_003])
        rows = rng.choice(len(self.base), count, replace=False)
        return perturb(self.base, rows, self.sigma, rng)


def exact_neighbours(collection: Collection, queries: np.ndarray, k: int, cache: Path):
    """Ids of the exact top ``k`` by dot product for each query (streamed, cached)."""
    if cache.exists():
        return np.load(cache)
    best_ids = np.zeros((len(queries), 0), np.int64)
    best_sims = np.zeros((len(queries), 0), np.float32)
    for start, rows in collection.chunks():
        sims = np.concatenate([best_sims, queries @ rows.T], axis=1)
        chunk_ids = np.broadcast_to(np.arange(start, start + len(rows)), (len(queries), len(rows)))
        ids = np.concatenate([best_ids, chunk_ids], axis=1)
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        best_sims = np.take_along_axis(sims, top, axis=1)
        best_ids = np.take_along_axis(ids, top, axis=1)
    order = np.argsort(-best_sims, axis=1)
    result = np.take_along_axis(best_ids, order, axis=1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, result)
    return result


# -- indexing -------------------------------------------------------------------------------


def index_body(index_type: str, m: int, ef_construction: int) -> dict:
    return {
        "settings": {
            "number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1",
            # Otherwise merges are IO-throttled from 20 MB/s, and a force merge of 8 GB of
            # float vectors sits idle for most of an hour on a fast disk.
            "merge": {"scheduler": {"auto_throttle": False}},
        },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "label": {"type": "keyword"},
                "vector": {
                    "type": "dense_vector", "dims": DIMS, "index": True,
                    "similarity": "dot_product",
                    "index_options": {"type": index_type, "m": m,
                                      "ef_construction": ef_construction},
                },
            },
        },
    }


def bulk_actions(start: int, vectors: np.ndarray, labels: np.ndarray, n_base: int) -> list:
    """Bulk operations for rows ``start...``; the client's serialisers (``imgsearch.store``)
    write the float32 arrays with orjson, as the indexer's documents are written."""
    actions: list[dict] = []
    for offset, vector in enumerate(vectors):
        i = start + offset
        actions += [{"index": {"_id": str(i)}}, {"label": labels[i % n_base], "vector": vector}]
    return actions


def ingest(es, index: str, collection: Collection, labels: np.ndarray, threads: int,
           progress: bool) -> float:
    """Bulk every row with ``threads`` concurrent requests of one chunk each; seconds taken."""
    from tqdm import tqdm

    bar = tqdm(total=collection.size, unit="vec", disable=not progress, smoothing=0.05)
    lock = threading.Lock()

    def send(item: tuple[int, np.ndarray]) -> None:
        start, rows = item
        resp = es.bulk(index=index, operations=bulk_actions(start, rows, labels,
                                                            len(collection.base)))
        if resp.body["errors"]:
            first = next(i for i in resp.body["items"] if i["index"].get("error"))
            raise RuntimeError(f"bulk item failed: {first}")
        with lock:
            bar.update(len(rows))

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        # Bounded look-ahead: at most 2 chunks per thread generated but not yet sent.
        pending = []
        for item in collection.chunks():
            pending.append(pool.submit(send, item))
            if len(pending) >= 2 * threads:
                pending.pop(0).result()
        for future in pending:
            future.result()
    bar.close()
    return time.perf_counter() - started


# -- sizes and search -----------------------------------------------------------------------

# Lucene's vector files: which ones an HNSW search reads for each index type (vex is the
# graph; vec the floats, veq int8 and veb 1-bit codes). Rescoring reads a few rows of vec.
HOT_FILES = {"hnsw": ("vex", "vec"), "int8_hnsw": ("vex", "veq"), "bbq_hnsw": ("vex", "veb")}


def sizes(es, index: str, index_type: str) -> dict:
    """Store size on disk and the vector files' sizes (the ``dense_vector`` off-heap stats)."""
    stats = es.indices.stats(index=index, metric="store,segments").body
    primaries = stats["indices"][index]["primaries"]
    vectors = es.perform_request(
        "GET", f"/{index}/_stats/dense_vector", headers={"accept": "application/json"}
    ).body["indices"][index]["primaries"]["dense_vector"]["off_heap"]
    files = {ext: vectors.get(f"total_{ext}_size_bytes", 0) for ext in ("vec", "veq", "veb", "vex")}
    return {
        "disk_bytes": primaries["store"]["size_in_bytes"],
        "segments": primaries["segments"]["count"],
        "vector_files": files,
        "hot_bytes": sum(files[ext] for ext in HOT_FILES[index_type]),
    }


def knn_run(es, index: str, queries: np.ndarray, truth: np.ndarray, num_candidates: int,
            oversample: float | None) -> dict:
    """Every query once (measured after a warm-up pass): latency percentiles and recall@10."""
    def one(q: np.ndarray) -> tuple[list[int], float, float]:
        knn = {"field": "vector", "query_vector": q.tolist(), "k": K,
               "num_candidates": num_candidates}
        if oversample is not None:
            knn["rescore_vector"] = {"oversample": oversample}
        started = time.perf_counter()
        body = es.search(index=index, knn=knn, size=K, source=False).body
        wall = (time.perf_counter() - started) * 1000
        return [int(h["_id"]) for h in body["hits"]["hits"]], float(body["took"]), wall

    for q in queries:
        one(q)
    took, wall, recall = [], [], []
    for q, exact in zip(queries, truth, strict=True):
        ids, t, w = one(q)
        took.append(t)
        wall.append(w)
        recall.append(len(set(ids) & set(exact[:K].tolist())) / K)
    return {
        "num_candidates": num_candidates, "oversample": oversample,
        "recall_at_10": float(np.mean(recall)),
        "took_p50_ms": percentile(took, 50), "took_p95_ms": percentile(took, 95),
        "client_p50_ms": round(percentile(wall, 50), 2),
        "client_p95_ms": round(percentile(wall, 95), 2),
    }


@dataclass
class Result:
    size: int
    index_type: str
    ingest_s: float
    refresh_s: float
    merge_s: float
    sizes: dict
    searches: list[dict] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.size / self.ingest_s


def measure(es, collection: Collection, labels: np.ndarray, index_type: str, queries, truth,
            args) -> Result:
    index = f"bench-scale-{index_type.replace('_', '-')}-{collection.size}"
    es.indices.delete(index=index, ignore_unavailable=True)
    es.indices.create(index=index, **index_body(index_type, args.m, args.ef_construction))
    try:
        ingest_s = ingest(es, index, collection, labels, args.threads, not args.quiet)
        started = time.perf_counter()
        es.options(request_timeout=3600).indices.refresh(index=index)
        refresh_s = time.perf_counter() - started
        started = time.perf_counter()
        es.options(request_timeout=7200).indices.forcemerge(index=index, max_num_segments=1)
        merge_s = time.perf_counter() - started
        result = Result(collection.size, index_type, ingest_s, refresh_s, merge_s,
                        sizes(es, index, index_type))
        count = es.count(index=index).body["count"]
        assert count == collection.size, f"{count} documents, expected {collection.size}"
        # Quantized indices: ES rescores by default; oversample 0 turns that off.
        rescoring = [None] if index_type == "hnsw" else [0, *args.oversample]
        for num_candidates in args.num_candidates:
            for oversample in rescoring:
                result.searches.append(
                    knn_run(es, index, queries, truth, num_candidates, oversample))
                print(f"  {index_type} n={collection.size} {result.searches[-1]}", flush=True)
        return result
    finally:
        if not args.keep:
            es.indices.delete(index=index, ignore_unavailable=True)


def report(results: list[Result]) -> None:
    print(f"\n{'size':>9s} {'type':10s} {'docs/s':>7s} {'ingest':>7s} {'merge':>7s} "
          f"{'disk MiB':>9s} {'hot MiB':>8s} {'cand':>5s} {'over':>5s} {'recall':>7s} "
          f"{'took p50':>8s} {'p95':>6s} {'client p50':>10s} {'p95':>6s}")
    for r in results:
        for s in r.searches:
            print(f"{r.size:9d} {r.index_type:10s} {r.rate:7.0f} {r.ingest_s:6.0f}s "
                  f"{r.merge_s:6.0f}s {r.sizes['disk_bytes'] / 2**20:9.0f} "
                  f"{r.sizes['hot_bytes'] / 2**20:8.0f} {s['num_candidates']:5d} "
                  f"{'-' if s['oversample'] is None else s['oversample']:>5} "
                  f"{s['recall_at_10']:7.3f} {s['took_p50_ms']:8.1f} {s['took_p95_ms']:6.1f} "
                  f"{s['client_p50_ms']:10.1f} {s['client_p95_ms']:6.1f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path,
                   default=Settings.from_env().datasets_dir / "clothing-small")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    p.add_argument("--types", nargs="+", default=["hnsw", "int8_hnsw", "bbq_hnsw"])
    p.add_argument("--sigma", type=float, default=0.5,
                   help="multiplicative noise of each copy (log scale)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--num-candidates", type=int, nargs="+", default=[100])
    p.add_argument("--oversample", type=float, nargs="+", default=[3.0],
                   help="rescoring settings to measure besides 0 (off), quantised types only")
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=100)
    p.add_argument("--threads", type=int, default=2, help="concurrent bulk requests")
    p.add_argument("--out", type=Path, help="append results as JSON lines here")
    p.add_argument("--keep", action="store_true", help="keep the indices")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    settings = Settings.from_env()
    base, labels = base_vectors(settings, args.dataset)
    es = connect(settings).options(request_timeout=600)
    results = []
    for size in args.sizes:
        collection = Collection(base, size, args.sigma)
        queries = collection.queries(args.queries)
        truth = exact_neighbours(
            collection, queries, K,
            settings.cache_dir / "bench"
            / f"exact-{size}-s{args.sigma}-q{args.queries}-{digest_of(base)}.npy")
        nn = (queries @ collection.chunk(0)[: min(size, CHUNK)].T).max(axis=1)
        print(f"{size} vectors (sigma {args.sigma}): median best cosine of a query "
              f"in the first chunk {np.median(nn):.3f}", flush=True)
        for index_type in args.types:
            result = measure(es, collection, labels, index_type, queries, truth, args)
            results.append(result)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(asdict(result) | {"rate": result.rate}) + "\n")
    report(results)


if __name__ == "__main__":
    main()
