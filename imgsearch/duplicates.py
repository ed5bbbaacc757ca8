"""Near-duplicate groups: indexed images whose vectors lie within a cosine threshold.

Exact copies are one document already (the id is the content hash); this finds the others, a
photo re-encoded, resized, cropped, brightened or watermarked.

Two ways, one answer:

- :class:`DuplicateGroups` (the web app, ``python -m indexer duplicates``): from the pairs kept
  as images are indexed (imgsearch/pairs.py, at the floor ``IMGSEARCH_DUPLICATE_FLOOR``). Once
  per state ``version`` a process reads every stored pair (one scroll over the pairs, never
  over the images) and the decisions about them (by id: images hidden as copies, pairs said to
  be distinct, imgsearch/decisions.py); any threshold at or above the floor is then grouped
  in memory, union-find over the pairs that close less those decisions: work proportional
  to the pairs, not the images. Each group's medoid comes from its pairs' cosines; only the
  groups of the page asked for are read from the index (the medoids' vectors, one filtered
  kNN a group for the members' sources and cosines). The version is read by id with every
  request (real-time) and renewed by every change (a batch indexed, an image deleted, a
  decision), so no worker serves groups older than the last change. A threshold below the
  floor is refused (:class:`BelowFloor`).
- :func:`find_duplicates`: the exhaustive check, from the vectors of every image (one kNN
  query each, about 8 s per 1,000 images on two AVX2 cores: docs/BENCHMARKS.md,
  "Near-duplicate groups"); the tests and the benchmark compare the kept groups with it.

Either way, edges are joined with union-find into groups of two or more; each group's first
member is its medoid (the member most like the others) and every member carries its cosine
to it. Every pair an exact all-pairs search finds at the threshold ends up in one group
(k = 10, 100 candidates; 0.999 at 0.75-0.80, where the groups swallow most of the set anyway).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from .decisions import Decisions
from .errors import Conflict
from .esclient import IndexMissing
from .indices import VECTOR_FIELD
from .pairs import DEFAULT_K, NUM_CANDIDATES, PairState, StateInfo  # the same edges both ways
from .recent import Recent
from .search import QueryError
from .settings import DUPLICATE_THRESHOLDS
from .store import ImageStore

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


UPDATE_HINT = ("run `python -m indexer duplicates --update` (one kNN query per image without "
               "pairs; later indexing keeps them current)")


class NoPairsState(Conflict):
    """The index has no near-duplicate pairs state (built before pairs were kept)."""

    def __init__(self, index: str):
        super().__init__(
            "duplicates_not_maintained",
            f"the near-duplicate pairs of {index} are not kept yet (it was indexed before "
            f"they were): {UPDATE_HINT}.")


class BelowFloor(QueryError):
    """A threshold under the floor the pairs were kept at."""

    code = "below_floor"


@dataclass
class PairGroups:
    """The groups of one state version and threshold: member ids, largest group first, then
    the tightest (highest least pair cosine), then the smallest id."""

    components: list[list[str]]
    weakest: list[float]  # each group's least pair cosine
    medoids: list[str]  # each group's member with the highest sum of pair cosines
    threshold: float
    index: str
    floor: float
    version: str
    computed_at: str  # when the pairs state last changed
    pairs: int  # pairs at the threshold or closer, before decisions
    seconds: float  # grouping them (and reading the state, when it had changed)

    @property
    def images(self) -> int:
        return sum(len(c) for c in self.components)


@dataclass
class GroupsPage:
    """What the API and the page show: a page of groups, with the totals."""

    groups: list[Group]
    kept: PairGroups
    model_version: str | None
    documents: int  # in the index now
    unvisited: int  # of them without pairs state (run --update)
    cached: bool


def _chunks(items: list, size: int = 1000):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def group_pairs(pairs: list[tuple[str, str, float]], *, hidden: set[str] = frozenset(),
                distinct: set[frozenset[str]] = frozenset(),
                min_size: int = 2) -> tuple[list[list[str]], list[float], list[str]]:
    """Union-find over ``pairs`` less those touching ``hidden`` images or said ``distinct``:
    ``(components, weakest cosine of each, medoid of each)``, in the order
    :class:`PairGroups` keeps. The medoid is the member whose pairs' cosines sum highest (the
    one most like the others, from the pairs alone: no vector is read); ties, the smaller
    id."""
    edges = _UnionFind()
    kept = []
    closeness: dict[str, float] = {}
    for a, b, cosine in pairs:
        if a in hidden or b in hidden or frozenset((a, b)) in distinct:
            continue
        edges.union(a, b)
        kept.append((a, cosine))
        closeness[a] = closeness.get(a, 0.0) + cosine
        closeness[b] = closeness.get(b, 0.0) + cosine
    weakest: dict[str, float] = {}
    for a, cosine in kept:
        root = edges.find(a)
        weakest[root] = min(weakest.get(root, 1.0), cosine)
    components = [sorted(ids) for root, ids in edges.components().items()
                  if len(ids) >= min_size]
    components.sort(key=lambda ids: (-len(ids), -weakest[edges.find(ids[0])], ids[0]))
    medoids = [min(ids, key=lambda i: (-closeness[i], i)) for ids in components]
    return components, [weakest[edges.find(ids[0])] for ids in components], medoids


class DuplicateGroups:
    """Near-duplicate groups of the index behind the alias, from its kept pairs (see the
    module's docstring); one per process, shared by its threads."""

    def __init__(self, store: ImageStore, decisions: Decisions, default_threshold: float, *,
                 keep: int = 8):
        self.store = store
        self.decisions = decisions
        self.default_threshold = default_threshold
        self._kept: Recent[PairGroups] = Recent(keep)  # a few thresholds of the current state
        # The pairs and decisions of the latest state versions (4,658 pairs at 1,452 images
        # of the benchmark: about 1 MB of Python tuples).
        self._read: Recent[tuple] = Recent(2)

    def state(self, index: str | None = None) -> tuple[str, PairState, StateInfo]:
        """``(index, state, its info)`` for ``index`` (default: the alias's); NoPairsState
        when it has none, IndexMissing when there is no index."""
        index = index or self.store.indices.current_index()
        if index is None:
            raise IndexMissing(f"no index behind the alias {self.store.alias!r}")
        state = PairState(self.store.es, index)
        info = state.info()
        if info is None:
            raise NoPairsState(index)
        return index, state, info

    def groups(self, threshold: float | None = None, *, index: str | None = None,
               min_size: int = 2) -> tuple[PairGroups, bool]:
        """``(groups, from_cache)`` at ``threshold`` (default: the setting's)."""
        threshold = check_threshold(self.default_threshold if threshold is None else threshold)
        index, state, info = self.state(index)
        if threshold < info.floor:
            raise BelowFloor(
                f"the near-duplicate pairs of this index are kept at cosine {info.floor} or "
                f"closer, so groups at {threshold} cannot be answered from them. To group at "
                f"{threshold}, set IMGSEARCH_DUPLICATE_FLOOR={threshold} and run `python -m "
                "indexer duplicates --rebuild` (one kNN query per image; more pairs kept).")
        key = (index, info.version, threshold, min_size)
        kept = self._kept.get(key)
        if kept is not None:
            return kept, True
        started = time.perf_counter()
        every, hidden, distinct = self._state_pairs(index, state, info)
        pairs = [p for p in every if p[2] >= threshold]
        components, weakest, medoids = group_pairs(pairs, hidden=hidden, distinct=distinct,
                                                   min_size=min_size)
        kept = PairGroups(components, weakest, medoids, threshold, index, info.floor,
                          info.version, info.changed_at, len(pairs),
                          time.perf_counter() - started)
        self._kept.put(key, kept)
        return kept, False

    def _state_pairs(self, index: str, state: PairState, info: StateInfo):
        """``(every pair at the floor, hidden images among them, distinct pairs among them)``
        of one state version: read once (a scroll over the pairs, the decisions about them by
        id), then every threshold is grouped from memory."""
        key = (index, info.version)
        found = self._read.get(key)
        if found is None:
            pairs = state.pairs_at_least(info.floor)
            ids = sorted({i for a, b, _ in pairs for i in (a, b)})
            if self.decisions.count("hidden", "distinct") < len(ids):
                # Fewer decisions than images in pairs (the usual case: people act on a few
                # groups): read them all in one scroll rather than look up every image and
                # pair by id (90 mgets, 0.8 s at 90k pairs: docs/BENCHMARKS.md, "A
                # collection that lives"). Either way the answer is the same.
                hidden = {d.images[0] for d in self.decisions.every("hidden")}
                distinct = {frozenset(d.images) for d in self.decisions.every("distinct")}
            else:
                hidden = set()
                for chunk in _chunks(ids):
                    hidden |= set(self.decisions.hidden(chunk))
                distinct = set()
                for chunk in _chunks([(a, b) for a, b, _ in pairs]):
                    distinct |= self.decisions.distinct(chunk)
            found = (pairs, hidden, distinct)
            self._read.put(key, found)
        return found

    def page(self, threshold: float | None = None, *, limit: int | None = 20,
             offset: int = 0, min_size: int = 2) -> GroupsPage:
        """A page of groups (``limit`` None: all of them) with their members' sources."""
        kept, cached = self.groups(threshold, min_size=min_size)
        end = None if limit is None else offset + limit
        groups = self._members(kept.index, kept.components[offset:end], kept.medoids[offset:end])
        documents = self.store.count(kept.index)
        visited, _ = PairState(self.store.es, kept.index).counts()
        return GroupsPage(groups, kept, self.store.indices.index_model_version(kept.index),
                          documents, max(0, documents - visited), cached)

    def _members(self, index: str, components: list[list[str]],
                 medoids: list[str]) -> list[Group]:
        """The groups shown, each member with its source and cosine to the medoid: the
        medoids' vectors (one search), then one filtered kNN query a group (one
        ``_msearch``); a member deleted meanwhile is left out."""
        out: list[Group] = []
        for start in range(0, len(components), PAGE_SIZE // 10):
            chunk = components[start:start + PAGE_SIZE // 10]
            firsts = medoids[start:start + PAGE_SIZE // 10]
            vectors = self.store.vectors(firsts, index=index)
            present = [(ids, m) for ids, m in zip(chunk, firsts, strict=True) if m in vectors]
            answers = self.store.cosines_among([(vectors[m], ids) for ids, m in present], index)
            for (_, first), hits in zip(present, answers, strict=True):
                hits.sort(key=lambda h: (h["id"] != first, -h["cosine"], h["id"]))
                if len(hits) >= 2:
                    out.append(Group([Member(h["id"], 1.0 if h["id"] == first
                                             else round(float(h["cosine"]), 6), h["source"])
                                      for h in hits]))
        return out
