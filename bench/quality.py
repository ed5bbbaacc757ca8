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
import time
from pathlib import Path

import numpy as np
from elasticsearch import helpers

from bench.throwaway import indexed_folder
from imgsearch.embedder import Embedder
from imgsearch.metrics import exact_ranking, ranking_scores
from imgsearch.search import SearchService
from imgsearch.settings import Settings
from imgsearch.store import VECTOR_FIELD, ImageStore


def fetch_vectors(store: ImageStore) -> tuple[list[str], np.ndarray, np.ndarray]:
    ids, labels, vectors = [], [], []
    for hit in helpers.scan(store.es, index=store.alias, _source=["label", VECTOR_FIELD],
                            source_exclude_vectors=False, size=500):
        ids.append(hit["_id"])
        labels.append(hit["_source"]["label"])
        vectors.append(hit["_source"][VECTOR_FIELD])
    return ids, np.array(labels), np.asarray(vectors, dtype=np.float32)


def measure(root: Path, settings: Settings, embedder: Embedder,
            num_candidates: int = 100) -> dict:
    """Index ``root`` with ``embedder`` into a throwaway alias, then score every image as a
    query: through Elasticsearch ("more like this") and by exact search over the same vectors."""
    with indexed_folder(root, settings, embedder, "quality") as (local, store, report):
        service = SearchService(local, store, embedder)
        ids, labels, vectors = fetch_vectors(store)
        position = {doc_id: i for i, doc_id in enumerate(ids)}
        started = time.perf_counter()
        approx = [
            [position[h.id] for h in service.similar(
                doc_id, k=10, num_candidates=num_candidates).hits]
            for doc_id in ids
        ]
        knn_seconds = time.perf_counter() - started
    exact = exact_ranking(vectors)
    return {
        "images": len(ids),
        "labels": len(set(labels.tolist())),
        "model_version": embedder.version,
        "es": ranking_scores(approx, labels),
        "exact": ranking_scores(exact, labels, full_map=True),
        "recall@10": float(np.mean([len(set(a) & set(exact[i, :10])) / 10
                                    for i, a in enumerate(approx)])),
        "indexing_images_per_second": report.embedded / report.seconds,
        "knn_ms_per_query": 1000 * knn_seconds / len(ids),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path,
                   default=Settings.from_env().datasets_dir / "clothing-small")
    p.add_argument("--split", default="test", help="a split of labels.csv, or 'all'")
    p.add_argument("--num-candidates", type=int, default=100)
    args = p.parse_args(argv)

    images = args.dataset / "images"
    root = images / args.split if args.split != "all" else images
    with open(args.dataset / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if args.split in ("all", r.get("split"))]
    settings = Settings.from_env()
    embedder = Embedder(settings)
    m = measure(root, settings, embedder, args.num_candidates)
    assert m["images"] == len(rows), "labels.csv and the folder disagree"
    print(f"dataset {args.dataset.name}, split {args.split}: {m['images']} images, "
          f"{m['labels']} labels; model {embedder.version}; "
          f"{settings.vector_index_type} m={settings.hnsw_m} "
          f"ef_construction={settings.hnsw_ef_construction}, "
          f"num_candidates={args.num_candidates}")
    print(f"{'':28s} {'P@10':>7s} {'mAP@10':>7s} {'mAP':>7s}")
    print(f"{'Elasticsearch kNN':28s} {m['es']['p@10']:7.4f} {m['es']['map@10']:7.4f} "
          f"{'':>7s}")
    print(f"{'exact (numpy brute force)':28s} {m['exact']['p@10']:7.4f} "
          f"{m['exact']['map@10']:7.4f} {m['exact']['map']:7.4f}")
    print(f"recall@10 of kNN against exact: {m['recall@10']:.4f}")
    print(f"indexing: {m['indexing_images_per_second']:.1f} images/s; "
          f"kNN 'more like this': {m['knn_ms_per_query']:.1f} ms/query (sequential)")


if __name__ == "__main__":
    main()
