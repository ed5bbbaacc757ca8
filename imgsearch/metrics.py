"""Retrieval quality with labels: a query's relevant images are the others of its label.

One implementation for the quality benchmark, the resize and fine-tuning benchmarks and the
fine-tuning loop's validation, so that their figures can be compared.
"""

from __future__ import annotations

import numpy as np


def average_precision(relevant: np.ndarray, total_relevant: int) -> float:
    """AP of one ranked list of relevance flags, normalised by ``total_relevant``."""
    if total_relevant == 0:
        return 0.0
    hits = np.cumsum(relevant)
    ranks = np.arange(1, len(relevant) + 1)
    return float((hits / ranks * relevant).sum() / total_relevant)


def exact_ranking(vectors: np.ndarray) -> np.ndarray:
    """For each vector, every other one by descending dot product (brute force)."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :-1]


def retrieval_scores(
    vectors: np.ndarray, labels, *, k: int = 10, full_map: bool = False
) -> dict[str, float]:
    """Leave-one-out exact search over ``vectors``: mean precision@k, mAP@k (normalised by
    min(k, relevant)) and, with ``full_map``, mAP over the whole ranking."""
    labels = np.asarray(labels)
    order = exact_ranking(np.asarray(vectors, np.float32))
    return ranking_scores(order, labels, k=k, full_map=full_map)


def ranking_scores(
    order, labels: np.ndarray, *, k: int = 10, full_map: bool = False
) -> dict[str, float]:
    """The same scores for given rankings (``order[i]``: indices returned for query ``i``,
    best first, the query itself left out)."""
    labels = np.asarray(labels)
    counts = {label: int((labels == label).sum()) - 1 for label in set(labels.tolist())}
    totals = np.array([counts[label] for label in labels.tolist()])
    same = [labels[np.asarray(o, dtype=int)] == labels[i] for i, o in enumerate(order)]
    out = {
        f"p@{k}": float(np.mean([s[:k].mean() if len(s) else 0.0 for s in same])),
        f"map@{k}": float(np.mean([
            average_precision(s[:k], min(k, totals[i])) for i, s in enumerate(same)
        ])),
    }
    if full_map:
        out["map"] = float(np.mean([average_precision(s, totals[i]) for i, s in enumerate(same)]))
    return out
