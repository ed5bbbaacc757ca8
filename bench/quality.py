"""Retrieval quality on a labelled folder, through the real index and by exact search.

Indexes the images listed in ``labels.csv`` (``path,label[,split]``, paths relative to
``images/``) into a throwaway alias, then queries every indexed image by its stored vector
("more like this", the image itself excluded) and reports, with same-label as relevant:

- precision@10 and mAP@10 of Elasticsearch's approximate kNN (the product's search path);
- precision@10, mAP@10 and full mAP of exact brute-force search over the same vectors (numpy);
- recall@10 of the approximate neighbours against the exact ones.

    python -m bench.quality --dataset ../shared/datasets/clothing-small --split test

Needs Elasticsearch at ES_URL (``make es-up``).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from elasticsearch import helpers

from imgsearch.embedder import Embedder
from imgsearch.search import SearchService
from imgsearch.settings import Settings
from imgsearch.store import VECTOR_FIELD, ImageStore
from indexer.index import index_folder


def average_precision(relevant: np.ndarray, total_relevant: int) -> float:
    """AP of one ranked list of relevance flags, normalised by ``total_relevant``."""
    if total_relevant == 0:
        return 0.0
    hits = np.cumsum(relevant)
    ranks = np.arange(1, len(relevant) + 1)
    return float((hits / ranks * relevant).sum() / total_relevant)


def fetch_vectors(store: ImageStore) -> tuple[list[str], np.ndarray, np.ndarray]:
    ids, labels, vectors = [], [], []
    for hit in helpers.scan(store.es, index=store.alias, _source=["label", VECTOR_FIELD],
                            source_exclude_vectors=False, size=500):
        ids.append(hit["_id"])
        labels.append(hit["_source"]["label"])
        vectors.append(hit["_source"][VECTOR_FIELD])
    return ids, np.array(labels), np.asarray(vectors, dtype=np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path,
                   default=Settings.from_env().datasets_dir / "clothing-small")
    p.add_argument("--split", default="test", help="a split of labels.csv, or 'all'")
    p.add_argument("--num-candidates", type=int, default=100)
    args = p.parse_args()

    images = args.dataset / "images"
    root = images / args.split if args.split != "all" else images
    with open(args.dataset / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if args.split in ("all", r.get("split"))]
    with tempfile.TemporaryDirectory() as thumbs:
        settings = Settings.from_env(es_index=f"bench-quality-{uuid.uuid4().hex[:8]}",
                                     thumbnail_dir=Path(thumbs))
        store = ImageStore.from_settings(settings)
        embedder = Embedder(settings)
        try:
            report = index_folder(root, settings=settings, embedder=embedder, store=store,
                                  progress=False)
            assert report.stats.indexed == len(rows), "labels.csv and the folder disagree"
            service = SearchService(settings, store, embedder)
            ids, labels, vectors = fetch_vectors(store)
            position = {doc_id: i for i, doc_id in enumerate(ids)}

            started = time.perf_counter()
            approx = [
                [position[h.id] for h in service.similar(
                    doc_id, k=10, num_candidates=args.num_candidates).hits]
                for doc_id in ids
            ]
            knn_seconds = time.perf_counter() - started
        finally:
            store.es.indices.delete(index=f"{settings.es_index}-*", ignore_unavailable=True)

    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1)[:, :-1]  # every other image, best first
    n = len(ids)
    same = labels[order] == labels[:, None]
    per_label = {label: int((labels == label).sum()) - 1 for label in set(labels)}
    totals = np.array([per_label[label] for label in labels])

    exact_p10 = same[:, :10].mean()
    exact_map10 = np.mean([average_precision(same[i, :10], min(10, totals[i]))
                           for i in range(n)])
    exact_map = np.mean([average_precision(same[i], totals[i]) for i in range(n)])
    approx_same = np.array([labels[a] == labels[i] for i, a in enumerate(approx)])
    approx_p10 = approx_same.mean()
    approx_map10 = np.mean([average_precision(approx_same[i], min(10, totals[i]))
                            for i in range(n)])
    recall10 = np.mean([len(set(a) & set(order[i, :10])) / 10 for i, a in enumerate(approx)])

    print(f"dataset {args.dataset.name}, split {args.split}: {n} images, "
          f"{len(per_label)} labels; model {embedder.version}; "
          f"{settings.vector_index_type} m={settings.hnsw_m} "
          f"ef_construction={settings.hnsw_ef_construction}, "
          f"num_candidates={args.num_candidates}")
    print(f"{'':28s} {'P@10':>7s} {'mAP@10':>7s} {'mAP':>7s}")
    print(f"{'Elasticsearch kNN':28s} {approx_p10:7.4f} {approx_map10:7.4f} {'':>7s}")
    print(f"{'exact (numpy brute force)':28s} {exact_p10:7.4f} {exact_map10:7.4f} "
          f"{exact_map:7.4f}")
    print(f"recall@10 of kNN against exact: {recall10:.4f}")
    print(f"indexing: {report.embedded / report.seconds:.1f} images/s; "
          f"kNN 'more like this': {1000 * knn_seconds / n:.1f} ms/query (sequential)")


if __name__ == "__main__":
    main()
