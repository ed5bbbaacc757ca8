"""Near-duplicate groups: indexed images whose vectors lie within a cosine threshold.

Exact copies are one document already (the id is the content hash); this finds the others, a
photo re-encoded, resized, cropped, brightened or watermarked. It reads every vector of the
index in pages and asks, for each page, one ``_msearch`` of kNN queries whose ``similarity``
is the threshold, so Elasticsearch returns only neighbours that close: N approximate kNN
queries rather than N^2 / 2 comparisons. The edges are joined with union-find into groups of
two or more; each group's first member is its medoid (the member most like the others) and
every member carries its cosine to it. Nothing is written to the index.

Cost, measured on a 2-core AVX2 EPYC (docs/BENCHMARKS.md, "Near-duplicate groups"): 1,452
images grouped in 11.9 s at 0.94, 8.2 ms an image, so about 8 s per 1,000 images (6.7-18.5 ms
an image over eleven thresholds, with other work sharing the two cores); an HNSW query costs
about log N, so the whole about N log N. Every pair an exact all-pairs search finds at the
threshold ends up in one group (k = 10, 100 candidates; 0.999 at 0.75-0.80, where the groups
swallow most of the set anyway).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from .esclient import IndexMissing
from .indices import VECTOR_FIELD
from .recent import Recent
from .search import QueryError
from .settings import DUPLICATE_THRESHOLDS
from .store import ImageStore

# Neighbours asked of each image besides itself: a group larger than this still forms, by
# chains of edges, but a photo with more than DEFAULT_K near-copies may miss some direct ones.
DEFAULT_K = 10
# HNSW candidates per query: at k = 10, 100 finds every pair the exact search finds at 0.85
# and above on the benchmark's set (docs/BENCHMARKS.md).
NUM_CANDIDATES = 100
# Vectors read per scroll page, and kNN queries per _msearch: 200 x 2048 floats is ~5 MB of
# JSON each way, and keeps ES's search threads busy without queueing.
PAGE_SIZE = 200


def check_threshold(value: float) -> float:
    """``value`` when it is a cosine in the allowed range; QueryError (a 400) otherwise."""
    low, high = DUPLICATE_THRESHOLDS
    if not (low <= value <= high):  # NaN fails this too
        raise QueryError(f"threshold must be a cosine from {low} to {high}, not {value}")
    return float(value)


@dataclass
class Member:
    id: str
    cosine: float  # to the group's first member (1.0 for the first itself)
    source: dict  # the document without its vectors


@dataclass
class Group:
    members: list[Member]

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def min_cosine(self) -> float:
        """The least cosine of a member to the first: how far apart the group goes."""
        return min(m.cosine for m in self.members[1:])


@dataclass
class DuplicateReport:
    groups: list[Group]
    threshold: float
    index: str
    model_version: str | None
    documents: int  # in the index when the vectors were read
    queries: int  # kNN queries run (one per document)
    seconds: float
    computed_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def images(self) -> int:
        """Images that belong to some group."""
        return sum(g.size for g in self.groups)


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent.setdefault(x, x)
        while parent != x:  # path halving
            self.parent[x] = self.parent[parent]
            x, parent = parent, self.parent[self.parent[parent]]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return out


def find_duplicates(
    store: ImageStore,
    threshold: float,
    *,
    index: str | None = None,
    k: int = DEFAULT_K,
    num_candidates: int = NUM_CANDIDATES,
    page_size: int = PAGE_SIZE,
    min_size: int = 2,
    progress: Callable[[int], None] | None = None,
) -> DuplicateReport:
    """Groups of near-duplicates among the documents of ``index`` (default: the concrete
    index behind the alias, so every vector read and searched is one model's), largest first,
    then the tightest. ``progress(done)`` is told the documents done after each page."""
    threshold = check_threshold(threshold)
    if min_size < 2:
        raise QueryError("min_size must be at least 2 (a group of one is no duplicate)")
    started = time.perf_counter()
    index = index or store.indices.current_index()
    if index is None:
        raise IndexMissing(f"no index behind the alias {store.alias!r}")
    model_version = store.indices.index_model_version(index)
    documents = store.count(index)
    edges = _UnionFind()
    done = 0
    for page in store.vector_pages(index, page_size):
        ids = [doc_id for doc_id, _ in page]
        # float32 rows: the client writes them in their shortest float32 form.
        vectors = np.asarray([vector for _, vector in page], dtype=np.float32)
        answers = store.knn_many(list(vectors), index=index, k=k + 1,
                                 num_candidates=num_candidates, min_cosine=threshold)
        for doc_id, neighbours in zip(ids, answers, strict=True):
            for other, cosine in neighbours:
                if other != doc_id and cosine >= threshold:
                    edges.union(doc_id, other)
        done += len(page)
        if progress:
            progress(done)
    components = [ids for ids in edges.components().values() if len(ids) >= min_size]
    groups = _groups(store, index, components)
    groups.sort(key=lambda g: (-g.size, -g.min_cosine, g.members[0].id))
    return DuplicateReport(groups, threshold, index, model_version, documents, done,
                           time.perf_counter() - started)


def _groups(store: ImageStore, index: str, components: list[list[str]]) -> list[Group]:
    """Each component with its sources, its medoid first and every member's cosine to it."""
    wanted = [doc_id for ids in components for doc_id in ids]
    sources: dict[str, dict] = {}
    for start in range(0, len(wanted), PAGE_SIZE):
        sources.update(store.sources_with_vectors(wanted[start : start + PAGE_SIZE], index))
    groups = []
    for ids in components:
        ids = sorted(i for i in ids if i in sources)  # one deleted meanwhile is left out
        if len(ids) < 2:
            continue
        vectors = np.asarray([sources[i].pop(VECTOR_FIELD) for i in ids], dtype=np.float32)
        sims = vectors @ vectors.T
        first = int(np.argmax(sims.sum(axis=1)))  # the medoid; ties: the smaller id
        order = sorted(range(len(ids)), key=lambda j: (j != first, -sims[first, j], ids[j]))
        groups.append(Group([
            Member(ids[j], 1.0 if j == first else round(float(sims[first, j]), 6),
                   sources[ids[j]])
            for j in order
        ]))
    return groups


class DuplicateFinder:
    """Near-duplicate groups of the index behind the alias for the web app, computed once per
    (concrete index, document count, threshold) and kept: a computation is one kNN query per
    document (about 8 s per 1,000 images on two cores), too slow to repeat per request. One
    computation runs at a time; requests for another wait for it rather than running side by
    side on the same CPUs."""

    def __init__(self, store: ImageStore, default_threshold: float, *, keep: int = 4):
        self.store = store
        self.default_threshold = default_threshold
        # Reports kept (e.g. a few thresholds of the current index).
        self._reports: Recent[DuplicateReport] = Recent(keep)
        self._lock = threading.Lock()  # one computation at a time

    def report(self, threshold: float | None = None) -> tuple[DuplicateReport, bool]:
        """``(report, from_cache)`` for the index the alias points at now."""
        threshold = check_threshold(self.default_threshold if threshold is None else threshold)
        index = self.store.indices.current_index()
        if index is None:
            raise IndexMissing(f"no index behind the alias {self.store.alias!r}")
        key = (index, self.store.count(index), threshold)
        with self._lock:
            report = self._reports.get(key)
            if report is not None:
                return report, True
            report = find_duplicates(self.store, threshold, index=index)
            self._reports.put(key, report)
            return report, False
