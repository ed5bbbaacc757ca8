"""Relevance feedback: how much one round of marks on the top 10 raises precision.

Indexes a labelled split into a throwaway alias, then, for every image as the query ("more
like this" by its stored vector, itself left out): takes the top 10, likes those with the
query's label and unlikes the others (a person marking with the true labels), and searches
again through the product's path (``SearchService.similar`` with ``Feedback``). Reports:

- P@10 before and after: the new top 10 may show liked images again (unliked ones never);
- P@10 of the unseen: the first 10 results that were not among the marked ones (what the
  marks find that the first page had not shown), against ranks 11-20 without marks (what
  the next page would have shown);
- how many queries got better, the same, worse.

Rocchio's weights are chosen on the validation split (``--choose``: a grid) and reported on
the test split, so the figure is not fitted to the images it is measured on.

    python -m bench.feedback --choose             # grid on validation, then test
    python -m bench.feedback --weights 1,0.75,0.25 --split test

Needs Elasticsearch at ES_URL (``make es-up``).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from elasticsearch import helpers

from bench.throwaway import indexed_folder
from imgsearch.embedder import Embedder
from imgsearch.search import FEEDBACK_WEIGHTS, Feedback, SearchService
from imgsearch.settings import Settings

GRID_LIKE = (0.5, 0.75, 1.0, 1.5, 2.0)
GRID_UNLIKE = (0.0, 0.25, 0.5, 0.75, 1.0)


@contextmanager
def indexed_split(root: Path, settings: Settings, embedder: Embedder):
    """``(service, ids, labels)`` for ``root`` indexed into a throwaway alias; each image's
    label is its folder's, as the indexer recorded it."""
    with indexed_folder(root, settings, embedder, "feedback") as (local, store, _):
        labels = {hit["_id"]: hit["_source"]["label"]
                  for hit in helpers.scan(store.es, index=store.alias, _source=["label"])}
        yield SearchService(local, store, embedder), sorted(labels), labels


def one_round(service: SearchService, ids, labels, weights) -> dict:
    """Every image as the query, one round of true-label marks on its top 10."""
    service.feedback_weights = weights
    before, after, unseen, next_page = [], [], [], []
    started = time.perf_counter()
    for doc_id in ids:
        label = labels[doc_id]
        first = service.similar(doc_id, k=20).hits
        first, following = first[:10], first[10:]
        good = [h.id for h in first if labels[h.id] == label]
        bad = [h.id for h in first if labels[h.id] != label]
        feedback = Feedback(like=tuple(good), unlike=tuple(bad))
        # Enough results to find 10 that the first page did not show (liked ones come back).
        second = service.similar(doc_id, k=10 + len(good), feedback=feedback).hits
        before.append(np.mean([labels[h.id] == label for h in first]))
        after.append(np.mean([labels[h.id] == label for h in second[:10]]))
        fresh = [h for h in second if h.id not in good][:10]
        unseen.append(np.mean([labels[h.id] == label for h in fresh]))
        next_page.append(np.mean([labels[h.id] == label for h in following]))
    seconds = time.perf_counter() - started
    before, after = np.array(before), np.array(after)
    return {
        "weights": weights, "queries": len(ids), "p10_before": before.mean(),
        "p10_after": after.mean(), "p10_unseen": float(np.mean(unseen)),
        "p10_next_page": float(np.mean(next_page)),
        "better": int((after > before).sum()), "same": int((after == before).sum()),
        "worse": int((after < before).sum()),
        "ms_per_round": 1000 * seconds / len(ids),
    }


def row(r: dict) -> str:
    a, b, g = r["weights"]
    return (f"| {a:g} / {b:g} / {g:g} | {r['p10_before']:.4f} | {r['p10_after']:.4f} | "
            f"{r['p10_unseen']:.4f} | {r['p10_next_page']:.4f} | "
            f"{r['better']} / {r['same']} / {r['worse']} |")


HEADER = ("| weights q / like / unlike | P@10 before | P@10 after | P@10 unseen | "
          "ranks 11-20, no marks | better / same / worse |\n|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path,
                   default=Settings.from_env().datasets_dir / "clothing-small")
    p.add_argument("--split", default="test")
    p.add_argument("--choose", action="store_true",
                   help="pick the weights on the validation split first (a grid)")
    p.add_argument("--weights", default=",".join(f"{w:g}" for w in FEEDBACK_WEIGHTS),
                   help="alpha,beta,gamma when not --choose (default: the product's)")
    args = p.parse_args(argv)

    settings = Settings.from_env()
    embedder = Embedder(settings)
    print(f"{platform.node()}: model {embedder.version} ({embedder.runtime})")
    weights = tuple(float(w) for w in args.weights.split(","))
    if args.choose:
        with indexed_split(args.dataset / "images" / "validation", settings,
                           embedder) as (service, ids, labels):
            print(f"\nvalidation split, {len(ids)} queries\n{HEADER}")
            results = []
            for beta, gamma in itertools.product(GRID_LIKE, GRID_UNLIKE):
                results.append(one_round(service, ids, labels, (1.0, beta, gamma)))
                print(row(results[-1]), flush=True)
        weights = max(results, key=lambda r: r["p10_unseen"])["weights"]
        print(f"chosen by P@10 of the unseen: {weights}")
    with indexed_split(args.dataset / "images" / args.split, settings,
                       embedder) as (service, ids, labels):
        chosen = one_round(service, ids, labels, weights)
        product = (one_round(service, ids, labels, FEEDBACK_WEIGHTS)
                   if weights != FEEDBACK_WEIGHTS else chosen)
    print(f"\n{args.split} split, {len(ids)} queries\n{HEADER}\n{row(chosen)}")
    if product is not chosen:
        print(f"{row(product)}   (the product's weights)")
    print(f"two kNN searches and one vector read a query: {chosen['ms_per_round']:.1f} ms")


if __name__ == "__main__":
    main()
