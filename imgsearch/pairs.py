"""The near-duplicate pairs of one concrete image index, kept as images arrive.

Where they live: an index of their own beside the image index, ``<concrete index>-duplicates``
(so a cleanup of ``<alias>-*`` removes it with its images, and a backup finds it by name).
Three kinds of document, each keyed so that writing it twice is one document:

- ``pair:<a>:<b>`` (``a < b``): two images whose vectors have at least the state's ``floor``
  cosine, with that ``cosine``;
- ``image:<id>``: that image's neighbours were searched (it has its pairs state); what
  ``python -m indexer duplicates --update`` visits is the images without one;
- ``state``: the ``floor`` the pairs were found at, and ``changed_at`` / ``version``, renewed by
  every change (pairs written or removed, a decision about duplicates): readers key what they
  keep on ``version``, read by id (real-time), so a change made through one web worker is seen
  by the next request to any other.

How pairs are found (:class:`PairFinder`): after a batch of images is written, the image index
is refreshed and each new image is one kNN query (one ``_msearch`` for the batch) with
``similarity`` at the floor. Because each batch is searchable before its own queries run, of
any two images written by two processes at once, the one refreshed later sees the other:
every pair is found by at least one side, whatever the engine (local, Ray, the watcher, the
write API).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from elasticsearch import BadRequestError, Elasticsearch, NotFoundError, helpers

from .esclient import StoreError, translated

log = logging.getLogger(__name__)

SUFFIX = "-duplicates"
STATE_ID = "state"
# Neighbours asked of each new image besides itself: a photo with more near-copies than this
# keeps its pairs with the closest 10 (its group still forms through their pairs); the
# benchmark's originals have 9 copies each.
DEFAULT_K = 10
# HNSW candidates per query: at k = 10, 100 finds every pair the exact search finds at 0.85
# and above on the benchmark's set. 50, 30 and 20 found the same 5,877 pairs there too, but
# once the node is warm they cost Elasticsearch no measurably less (0.8-1.0 core-ms a photo
# for 20-100 in bench/stages.py), so the wider search stays: a photo with many near-copies
# keeps its closest ones (docs/BENCHMARKS.md, "Kept near-duplicate pairs").
NUM_CANDIDATES = 100
# Ids per mget / deletes per request / pairs per scroll page.
CHUNK = 1000

MAPPING = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0},
    "mappings": {
        "dynamic": "strict",
        "properties": {
            "kind": {"type": "keyword"},  # pair, image or state
            "images": {"type": "keyword"},  # the pair (sorted), or the one image
            "cosine": {"type": "float"},
            "floor": {"type": "float"},
            "changed_at": {"type": "date"},
            "version": {"type": "keyword", "index": False},
        },
    },
}


def state_index_name(index: str) -> str:
    """The pairs index of the concrete image index ``index``."""
    return f"{index}{SUFFIX}"


def pair_id(a: str, b: str) -> str:
    return "pair:" + ":".join(sorted((a, b)))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class StateInfo:
    floor: float
    changed_at: str
    version: str


class PairState:
    """Reads and writes the pairs state of one concrete image index."""

    def __init__(self, es: Elasticsearch, index: str):
        self.es = es
        self.image_index = index
        self.name = state_index_name(index)

    # -- the state document ----------------------------------------------------------------

    @translated
    def info(self) -> StateInfo | None:
        """The state's floor and last change; None when the index has no pairs state."""
        try:
            source = self.es.get(index=self.name, id=STATE_ID).body["_source"]
        except NotFoundError:
            return None
        return StateInfo(float(source["floor"]), source["changed_at"], source["version"])

    @translated
    def ensure(self, floor: float) -> float:
        """Create the state (at ``floor``) unless there is one; the floor it holds."""
        info = self.info()
        if info is not None:
            return info.floor
        try:
            self.es.indices.create(index=self.name, body=MAPPING)
        except BadRequestError as exc:  # another process made it first
            if exc.error != "resource_already_exists_exception":
                raise
        try:
            self.es.create(index=self.name, id=STATE_ID, refresh="wait_for",
                           document=self._state_doc(floor))
        except Exception as exc:  # ConflictError: another writer made it first
            if getattr(exc, "status_code", None) != 409:
                raise
        return self.info().floor

    def _state_doc(self, floor: float) -> dict:
        return {"kind": "state", "floor": floor, "changed_at": _now(),
                "version": uuid.uuid4().hex}

    def _touch_op(self) -> list[dict]:
        """The bulk operations that mark a change (a new version), the floor kept."""
        return [{"update": {"_index": self.name, "_id": STATE_ID}},
                {"doc": {"changed_at": _now(), "version": uuid.uuid4().hex}}]

    @translated
    def touch(self) -> None:
        """Mark a change that is not in the pairs (a decision about duplicates), so that
        every reader's kept groups are made again."""
        if self.es.indices.exists(index=self.name):
            self.es.bulk(operations=self._touch_op(), refresh=True)

    @translated
    def drop(self) -> None:
        self.es.indices.delete(index=self.name, ignore_unavailable=True)

    # -- writes ----------------------------------------------------------------------------

    @translated
    def record(self, visited: Iterable[str], pairs: Iterable[tuple[str, str, float]]) -> None:
        """Store ``pairs`` and mark ``visited`` as searched, in one bulk request (and the
        change), visible to searches when it returns."""
        operations: list[dict] = []
        for a, b, cosine in pairs:
            operations += [{"index": {"_index": self.name, "_id": pair_id(a, b)}},
                           {"kind": "pair", "images": sorted((a, b)),
                            "cosine": round(float(cosine), 6)}]
        for doc_id in visited:
            operations += [{"index": {"_index": self.name, "_id": f"image:{doc_id}"}},
                           {"kind": "image", "images": [doc_id]}]
        if not operations:
            return
        resp = self.es.bulk(operations=operations + self._touch_op(), refresh=True).body
        if resp.get("errors"):
            failed = next(i for i in resp["items"] if "error" in next(iter(i.values())))
            raise StoreError(f"Elasticsearch refused a near-duplicate pairs write: "
                             f"{next(iter(failed.values())).get('error')}")

    @translated
    def remove(self, ids: Iterable[str]) -> int:
        """Forget ``ids``: their pairs and their visited marks (deleted images). Returns the
        documents removed."""
        ids = list(dict.fromkeys(ids))
        if not ids or not self.es.indices.exists(index=self.name):
            return 0
        self.es.indices.refresh(index=self.name)
        # Found, then deleted by id (the local node's distribution has no delete-by-query):
        # a search per 1,000 images, as many documents as they have pairs.
        doomed: list[str] = []
        for start in range(0, len(ids), CHUNK):
            doomed += [hit["_id"] for hit in helpers.scan(
                self.es, index=self.name, size=CHUNK, _source=False,
                query={"query": {"terms": {"images": ids[start:start + CHUNK]}}})]
        if not doomed:
            return 0
        operations = [{"delete": {"_index": self.name, "_id": d}} for d in doomed]
        self.es.bulk(operations=operations + self._touch_op(), refresh=True)
        return len(doomed)

    # -- reads -----------------------------------------------------------------------------

    @translated
    def visited(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` whose neighbours were searched (by id: real-time)."""
        out: set[str] = set()
        ids = list(ids)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            try:
                docs = self.es.mget(index=self.name, ids=[f"image:{i}" for i in chunk],
                                    source=False).body["docs"]
            except NotFoundError:
                return set()
            out |= {i for i, d in zip(chunk, docs, strict=True) if d.get("found")}
        return out

    @translated
    def counts(self) -> tuple[int, int]:
        """``(images visited, pairs)``: two counts, whatever the size."""
        visited = self.es.count(index=self.name, query={"term": {"kind": "image"}}).body
        pairs = self.es.count(index=self.name, query={"term": {"kind": "pair"}}).body
        return int(visited["count"]), int(pairs["count"])

    @translated
    def pairs_at_least(self, threshold: float) -> list[tuple[str, str, float]]:
        """Every stored pair with a cosine of at least ``threshold``: one scroll over the
        pairs (never over the images)."""
        out = []
        for hit in helpers.scan(
            self.es, index=self.name, size=CHUNK, scroll="1m",
            query={"query": {"bool": {"filter": [
                {"term": {"kind": "pair"}},
                {"range": {"cosine": {"gte": threshold}}}]}}},
            _source=["images", "cosine"],
        ):
            a, b = hit["_source"]["images"]
            out.append((a, b, float(hit["_source"]["cosine"])))
        return out


def forget_images(es: Elasticsearch, index: str, ids: Iterable[str]) -> int:
    """Remove the pairs of deleted images from the state of concrete index ``index``."""
    return PairState(es, index).remove(ids)


class PairFinder:
    """Finds and stores the pairs of newly written images of ``index`` (see the module's
    docstring). ``floor`` is used when the index has no state yet; an existing state keeps
    its own."""

    # ``store`` is an imgsearch.store.ImageStore, not imported: the store imports this module
    # (its deletes remove their pairs).
    def __init__(self, store, index: str, floor: float, *, k: int = DEFAULT_K,
                 num_candidates: int = NUM_CANDIDATES):
        self.store = store
        self.index = index
        self.state = PairState(store.es, index)
        self._floor = floor
        self._ensured = False
        self.k = k
        self.num_candidates = num_candidates

    @property
    def floor(self) -> float:
        """The state's floor (the state made at the asked floor on first use)."""
        if not self._ensured:
            self._floor, self._ensured = self.state.ensure(self._floor), True
        return self._floor

    def after_write(self, docs: list[dict], failed: Iterable[str] = ()) -> None:
        """The hook of a bulk write: ``docs`` (documents with ``content_hash`` and
        ``vector``) were written, but for the ids in ``failed``."""
        failed = set(failed)
        written = [d for d in docs if d["content_hash"] not in failed]
        try:
            self.visit([d["content_hash"] for d in written], [d["vector"] for d in written])
        except StoreError as exc:
            # The images are stored; only their pairs wait: the run's finish step (or
            # `python -m indexer duplicates --update`) visits the images without pairs state.
            log.warning("near-duplicate pairs of %d images not stored (%s); they are found "
                        "again at the end of the run", len(written), exc)

    def visit(self, ids: list[str], vectors: list, *, refresh: bool = True) -> int:
        """Search the neighbours of ``ids`` (written images, with their vectors) at the floor
        and store the pairs; returns the pairs found."""
        if not ids:
            return 0
        if refresh:  # the batch itself, and every earlier write, searchable first
            self.store.refresh(self.index)
        answers = self.store.knn_many(list(vectors), index=self.index, k=self.k + 1,
                                      num_candidates=self.num_candidates, min_cosine=self.floor)
        # A pair of two images of the batch is found from both sides: stored once.
        pairs = {tuple(sorted((doc_id, other))): cosine
                 for doc_id, neighbours in zip(ids, answers, strict=True)
                 for other, cosine in neighbours
                 if other != doc_id and cosine >= self.floor}
        self.state.record(ids, [(a, b, cosine) for (a, b), cosine in pairs.items()])
        return len(pairs)

    def visit_missing(self, ids: Iterable[str] | None = None, *, page: int = 200,
                      progress=None) -> tuple[int, int]:
        """Visit those of ``ids`` (default: every image of the index) that are indexed and
        have no pairs state yet: ``(images visited, pairs found)``. The catch-up of an index
        built before pairs were kept, of a run that stopped between its writes and their
        pairs, and of ``--rebuild``."""
        self.store.refresh(self.index)
        if ids is None:
            ids = (hit["_id"] for hit in helpers.scan(
                self.store.es, index=self.index, query={"query": {"match_all": {}}},
                _source=False, size=CHUNK))
        visited = pairs = done = 0
        chunk: list[str] = []

        def flush(chunk: list[str]) -> None:
            nonlocal visited, pairs
            known = self.state.visited(chunk)
            missing = [i for i in chunk if i not in known]
            vectors = self.store.vectors(missing, index=self.index) if missing else {}
            missing = [i for i in missing if i in vectors]  # deleted meanwhile, or never here
            pairs += self.visit(missing, [vectors[i] for i in missing], refresh=False)
            visited += len(missing)

        for doc_id in ids:
            chunk.append(doc_id)
            if len(chunk) == page:
                flush(chunk)
                done += len(chunk)
                chunk = []
                if progress:
                    progress(done)
        if chunk:
            flush(chunk)
            done += len(chunk)
            if progress:
                progress(done)
        return visited, pairs
