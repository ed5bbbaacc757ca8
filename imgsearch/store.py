"""The document store: the image index's documents behind the alias (bulk, kNN, reads, facets).

Writes and existence checks retry what failed with backoff (the indexer's policy from
settings, :class:`RetryPolicy`): the one retry layer of the product, since the client itself
only fails over from node to node (:func:`imgsearch.esclient.connect`). Every public method
raises the store's errors (:mod:`imgsearch.esclient`), never the client's. The index
lifecycle (creating, checking and swapping concrete indices) is :attr:`ImageStore.indices`
(:class:`imgsearch.indices.IndexManager`) on the same connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import (
    ApiError,
    Elasticsearch,
    NotFoundError,
    SerializationError,
    TransportError,
    helpers,
)

from .esclient import (
    RETRY_STATUSES,
    IndexMissing,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    connect,
    translated,
    with_cause,
)
from .indices import (
    REGIONS_FIELD,
    VECTOR_FIELD,
    AliasMoved,
    IndexManager,
    ModelVersionMismatch,
    index_body,
)
from .pairs import forget_images
from .settings import Settings, retry_delays

log = logging.getLogger(__name__)

# Neither kind of vector is metadata: searches and reads leave them out unless asked.
NOT_RETURNED = [VECTOR_FIELD, REGIONS_FIELD]
# What an existence check reads of each document: where its file was, and the tagger.
PATH_FIELDS = ["path", "rel_path", "root", "label", "model_tagger"]

__all__ = [
    "AliasMoved", "BulkResult", "ImageStore", "IndexMissing", "ModelVersionMismatch",
    "RetryPolicy", "StoreError", "StoreRefused", "StoreUnavailable", "connect", "index_body",
]


@dataclass
class BulkResult:
    indexed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)


@dataclass(frozen=True)
class RetryPolicy:
    """How the store's writes and existence checks wait for Elasticsearch: ``retries`` more
    attempts after the first, one request each, after delays doubling from ``backoff``
    seconds and capped at ``max_backoff``. An attempt that fails as a whole (node unreachable,
    timeout, 429/502/503/504) is made again; of a bulk request, only the documents refused
    with those statuses are sent again. So one batch costs at most ``1 + retries`` requests
    and :attr:`window` seconds of waiting (plus each request's own time, up to
    ``ES_REQUEST_TIMEOUT`` against a node that accepts but does not answer)."""

    retries: int = 6
    backoff: float = 1.0
    max_backoff: float = 30.0

    def delays(self) -> list[float]:
        """The wait before each retry."""
        return retry_delays(self.retries, self.backoff, self.max_backoff)

    @property
    def window(self) -> float:
        return sum(self.delays())


@dataclass(frozen=True)
class Again:
    """An attempt's answer that part of it is to be sent again (documents refused with 429/
    502/503/504), and why."""

    why: str


def _retryable(exc: TransportError | ApiError) -> bool:
    """Whether another attempt could succeed: no answer (refused, reset, timed out), or an
    answer saying "later" (429/502/503/504); not a request refused for what it is."""
    if isinstance(exc, ApiError):
        return exc.status_code in RETRY_STATUSES
    return not isinstance(exc, SerializationError)


class ImageStore:
    """All reads and writes of the image index's documents go through here; the lifecycle of
    its indices through :attr:`indices`. Public methods raise :class:`StoreError` and its
    kinds, never the client's exceptions."""

    def __init__(
        self,
        es: Elasticsearch,
        alias: str,
        *,
        retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ):
        self.es = es
        self.alias = alias
        self.indices = IndexManager(es, alias)
        # Retry policy of the indexer's writes and existence checks (settings.bulk_*), and the
        # client they go through: one request an attempt, the node that failed marked dead in
        # the shared pool, so that the next attempt goes to another node.
        self.retry = RetryPolicy(retries, backoff, max_backoff)
        self._once = es.options(max_retries=0)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageStore:
        return cls(
            connect(settings),
            settings.es_index,
            retries=settings.bulk_retries,
            backoff=settings.bulk_backoff,
            max_backoff=settings.bulk_max_backoff,
        )

    def _policy(self, retries: int | None, backoff: float | None,
                cap: float | None) -> RetryPolicy:
        """The store's policy, with whatever a caller gives instead."""
        p = self.retry
        return RetryPolicy(p.retries if retries is None else retries,
                           p.backoff if backoff is None else backoff,
                           p.max_backoff if cap is None else cap)

    def _retrying(self, what: str, attempt: Callable[[bool], Any],
                  policy: RetryPolicy | None = None) -> Any:
        """What ``attempt(last)`` (one request) returns, attempting again after each delay of
        ``policy`` while it fails as a whole and could succeed later, or returns
        :class:`Again` (part of it to send again); finally a StoreError that says what to do."""
        policy = policy or self.retry
        for attempts, delay in enumerate([*policy.delays(), None], 1):
            try:
                outcome = attempt(delay is None)
            except (TransportError, ApiError) as exc:
                with_cause(exc)
                if delay is None or not _retryable(exc):
                    raise _gave_up(what, attempts, exc) from exc
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            else:
                if not isinstance(outcome, Again):
                    return outcome
                log.warning("%s: %s; sending them again in %.1fs", what, outcome.why, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    @translated
    def read_retrying(self, what: str, call: Callable[[Any], Any]) -> Any:
        """``call(client)``, one read of another index of this cluster, retried as the store's
        own requests are (the indexer's lookups of people's decisions: without it, the first
        moment Elasticsearch is away would end a run that its writes would have ridden out)."""
        return self._retrying(what, lambda last: call(self._once))

    @translated
    def refresh(self, index: str | None = None) -> None:
        """Make every write so far visible to searches."""
        self.es.indices.refresh(index=index or self.alias)

    @translated
    def count(self, index: str | None = None) -> int:
        return int(self.es.count(index=index or self.alias).body["count"])

    # -- writes ---------------------------------------------------------------------------

    @translated
    def existing_ids(self, ids: Iterable[str], index: str | None = None, *,
                     tagged_by: str | None = None) -> set[str]:
        """Which of ``ids`` already have a document (one round trip); with ``tagged_by``,
        only those whose tags that tagger made (``model_tagger``), so that a re-run adds tags
        to documents indexed without them."""
        return set(self.indexed(ids, index, tagged_by=tagged_by))

    @translated
    def indexed(self, ids: Iterable[str], index: str | None = None, *,
                tagged_by: str | None = None) -> dict[str, dict]:
        """:meth:`existing_ids` with each document's path fields (``path``, ``rel_path``,
        ``root``, ``label``): what the indexer needs to see that a file has moved. One round
        trip, retried like the writes; the fields are a few hundred bytes a document."""
        found = self.indexed_sources(ids, PATH_FIELDS, index, what="existence check")
        return {doc_id: source for doc_id, source in found.items()
                if not tagged_by or source.get("model_tagger") == tagged_by}

    @translated
    def update_many(self, updates: dict[str, dict], index: str | None = None, *,
                    first: dict[str, dict] | None = None, what: str = "path update") -> int:
        """Set the given fields of existing documents (``{id: fields}``; one bulk request of
        partial updates, retried like the writes); how many were updated. ``first`` holds a
        partial update to make of a document before its own, in the same request (which
        Elasticsearch applies in order): ``{"extra": None}`` replaces the stored object
        instead of merging the new one into it, which would keep the keys the new one
        lacks (a search refreshed in between may see the first alone)."""
        if not updates:
            return 0
        target = index or self.alias
        operations: list[dict] = []
        for doc_id, fields in updates.items():
            for doc in ((first or {}).get(doc_id), fields):
                if doc is not None:
                    operations += [{"update": {"_index": target, "_id": doc_id}}, {"doc": doc}]
        items = self._retrying(
            what, lambda last: self._once.bulk(operations=operations)).body["items"]
        failed = {i.get("update", {}).get("_id") for i in items
                  if not 200 <= i.get("update", {}).get("status", 0) < 300}
        return sum(1 for doc_id in updates if doc_id not in failed)

    @translated
    def indexed_sources(self, ids: Iterable[str], fields: list[str],
                        index: str | None = None, *, what: str = "document read"
                        ) -> dict[str, dict]:
        """The ``fields`` of those of ``ids`` that have a document, by id: one multi-get,
        retried like the writes (the indexer's existence checks, the watcher's read of what
        it is to update)."""
        ids = list(ids)
        if not ids:
            return {}
        resp = self._retrying(what, lambda last: self._once.mget(
            index=index or self.alias, ids=ids, source=fields))
        return {d["_id"]: d.get("_source") or {} for d in resp.body["docs"] if d.get("found")}

    @translated
    def bulk_index(
        self,
        docs: Iterable[dict],
        index: str | None = None,
        *,
        max_retries: int | None = None,
        initial_backoff: float | None = None,
        max_backoff: float | None = None,
    ) -> BulkResult:
        """Write documents (each with ``content_hash``) with one bulk request, retried as the
        streaming bulk helper of elasticsearch-py retries: documents refused with 429/502/503/
        504 are sent again (only they), and a request that fails as a whole is made again,
        both after the same doubling delays (the store's :class:`RetryPolicy` unless given).
        Documents still refused at the end are in :attr:`BulkResult.failed`; a request still
        failing is a StoreError. Documents are keyed by content hash, so sending one again can
        never duplicate it."""
        target = index or self.alias
        waiting = list(docs)
        result = BulkResult()

        def send(last: bool) -> BulkResult | Again:
            nonlocal waiting
            operations: list[dict] = []
            for d in waiting:
                operations += [{"index": {"_index": target, "_id": d["content_hash"]}}, d]
            items = self._once.bulk(operations=operations).body["items"]
            refused: list[dict] = []
            statuses: set[int] = set()
            for d, item in zip(waiting, items, strict=True):
                info = item.get("index", {})
                status = info.get("status", 0)
                if 200 <= status < 300:
                    result.indexed += 1
                elif status in RETRY_STATUSES and not last:
                    refused.append(d)
                    statuses.add(status)
                else:
                    result.failed.append((info.get("_id", d["content_hash"]), _reason(info)))
            if not refused:
                return result
            why = (f"{len(refused)} of {len(waiting)} documents refused (status "
                   f"{'/'.join(map(str, sorted(statuses)))})")
            waiting = refused
            return Again(why)

        if not waiting:
            return result
        return self._retrying("bulk write", send,
                              self._policy(max_retries, initial_backoff, max_backoff))

    @translated
    def ids_under_root(self, root: str, index: str | None = None) -> Iterator[str]:
        """Ids of every document indexed from ``root`` (a scan; cheap, no sources)."""
        for hit in helpers.scan(
            self.es,
            index=index or self.alias,
            query={"query": {"term": {"root": root}}},
            _source=False,
            size=1000,
        ):
            yield hit["_id"]

    @translated
    def ids_at_paths(self, paths: Iterable[str], index: str | None = None) -> set[str]:
        """Ids of the documents whose ``path`` is one of ``paths`` (scans, no sources)."""
        paths, found = list(paths), set()
        for i in range(0, len(paths), 1000):
            for hit in helpers.scan(self.es, index=index or self.alias, _source=False,
                                    query={"query": {"terms": {"path": paths[i:i + 1000]}}},
                                    size=1000):
                found.add(hit["_id"])
        return found

    @translated
    def delete_ids(self, ids: Iterable[str], index: str | None = None) -> int:
        """Delete documents, and their near-duplicate pairs (imgsearch/pairs.py)."""
        ids = list(ids)
        actions = (
            {"_op_type": "delete", "_index": index or self.alias, "_id": i} for i in ids
        )
        deleted, _ = helpers.bulk(self.es, actions, raise_on_error=False, stats_only=True)
        concrete = index if index and index != self.alias else self.indices.current_index()
        if concrete and ids:
            forget_images(self.es, concrete, ids)
        return int(deleted)

    # -- one image at a time (the write API) --------------------------------------------------

    @translated
    def put(self, doc: dict, index: str, *, wait: bool = True) -> None:
        """Write one document (keyed by its ``content_hash``) to ``index``; with ``wait``,
        return only once searches see it (``refresh=wait_for``: the next scheduled refresh,
        at most the index's refresh interval, 1 s, and no extra refresh forced)."""
        self.es.index(index=index, id=doc["content_hash"], document=doc,
                      refresh="wait_for" if wait else None)

    @translated
    def update_fields(self, doc_id: str, fields: dict, index: str, *,
                      wait: bool = True) -> dict | None:
        """Set ``fields`` of the document ``doc_id`` in ``index``, each replaced (None: null);
        the document's source afterwards (vectors left out), or None when there is no such
        document. A partial update merges an object into the one stored, so a new ``extra``
        is written over a null one: a change of extra says what extra is now. (A script
        would do it in one request, but the local node's distribution has no Painless.)"""
        try:
            if isinstance(fields.get("extra"), dict):
                self.es.update(index=index, id=doc_id, doc={"extra": None})
            resp = self.es.update(index=index, id=doc_id, doc=fields,
                                  refresh="wait_for" if wait else None,
                                  source_excludes=NOT_RETURNED)
        except NotFoundError:
            return None
        return resp.body["get"]["_source"]

    @translated
    def delete(self, doc_id: str, index: str, *, wait: bool = True) -> bool:
        """Delete the document ``doc_id`` from ``index``, and its near-duplicate pairs
        (imgsearch/pairs.py): True if there was one; with ``wait``, searches no longer see it
        when this returns."""
        try:
            self.es.delete(index=index, id=doc_id, refresh="wait_for" if wait else None)
        except NotFoundError:
            return False
        concrete = index if index != self.alias else self.indices.current_index()
        if concrete:
            forget_images(self.es, concrete, [doc_id])
        return True

    # -- reads ----------------------------------------------------------------------------

    @translated
    def get(
        self, doc_id: str, *, with_vector: bool = False, index: str | None = None
    ) -> dict | None:
        """A document's source (``None`` if absent); the vector only when asked for."""
        try:
            resp = self.es.get(
                index=index or self.alias,
                id=doc_id,
                source_excludes=[REGIONS_FIELD] if with_vector else NOT_RETURNED,
                # ES 9 leaves dense vectors out of _source unless asked for them.
                source_exclude_vectors=False if with_vector else None,
            )
        except NotFoundError:
            return None
        return resp.body["_source"]

    @translated
    def vectors(self, ids: Iterable[str], index: str | None = None) -> dict[str, list[float]]:
        """The stored vectors of those of ``ids`` that are indexed, by id (one request)."""
        sources = self.sources_with_vectors(list(dict.fromkeys(ids)), index or self.alias,
                                            only_vector=True)
        return {doc_id: source[VECTOR_FIELD] for doc_id, source in sources.items()}

    @translated
    def knn(
        self,
        vector,
        *,
        k: int = 10,
        num_candidates: int = 100,
        filters: list[dict] | None = None,
        exclude_ids: Iterable[str] = (),
        offset: int = 0,
        index: str | None = None,
        regions: bool = False,
        with_tags: bool = False,
    ) -> list[dict]:
        """Nearest documents as ``{"id", "score", "cosine", "source"}``, best first; with
        ``regions``, by their best region, whose ``{"box"}`` is the hit's ``region``; with
        ``with_tags``, each source holds its ``model_synsets`` too (Elasticsearch 9 leaves
        sparse vectors out of sources unless asked).

        ``vector`` is a list of floats or a float32 array (sent in its shortest float32 form).

        Filters go inside ``knn.filter`` so that ES returns ``k`` filtered neighbours instead
        of filtering ``k`` neighbours afterwards.
        """
        # Left-out ids are over-fetched and dropped here: a must_not filter would make ES
        # build a bitset over every document of the index for each query.
        exclude = set(exclude_ids)
        want = k + offset + len(exclude)
        knn: dict[str, Any] = {
            "field": VECTOR_FIELD,
            "query_vector": vector,
            "k": want,
            "num_candidates": max(num_candidates, want),
        }
        if filters:
            knn["filter"] = filters
        if regions:
            # Nested kNN: each image scores its best region, and that region comes back as
            # its inner hit (only its box: the vectors stay in the index).
            knn["field"] = f"{REGIONS_FIELD}.{VECTOR_FIELD}"
            # The box from the source: the fields API would read a float array from doc
            # values, sorted, and lose which number is which corner.
            knn["inner_hits"] = {"size": 1, "_source": {"includes": [f"{REGIONS_FIELD}.box"]}}
        resp = self.es.search(
            index=index or self.alias,
            knn=knn,
            size=want,
            source_excludes=NOT_RETURNED,
            source_exclude_vectors=False if with_tags else None,
        )
        hits = [_hit(h) for h in resp.body["hits"]["hits"] if h["_id"] not in exclude]
        return hits[offset : offset + k]

    @translated
    def scored(self, query: dict, *, k: int = 10, offset: int = 0,
               filters: list[dict] | None = None, index: str | None = None) -> list[dict]:
        """Documents ranked by ``query``'s score (search by words: imgsearch/words.py), as
        ``{"id", "score", "source"}``, best first, ``filters`` applied as filters (no score)."""
        if filters:
            query = {"bool": {"must": [query], "filter": filters}}
        resp = self.es.search(index=index or self.alias, query=query, size=k, from_=offset,
                              source_excludes=NOT_RETURNED, track_total_hits=False)
        return [{"id": h["_id"], "score": float(h["_score"]), "source": h["_source"]}
                for h in resp.body["hits"]["hits"]]

    @translated
    def vector_pages(self, index: str, page_size: int = 500) -> Iterator[list[tuple[str, list]]]:
        """Every document of ``index`` as ``(id, vector)``, ``page_size`` at a time, in one
        scroll (no other field: a page of 500 is ~12 MB of float32 text already).

        ``index`` is a concrete index, not the alias: a scroll that outlived an alias swap would
        otherwise mix two models' vectors."""
        # ES 9 leaves dense vectors out of _source unless asked for them.
        for page in self._pages(index, [VECTOR_FIELD], page_size, "5m",
                                source_exclude_vectors=False):
            yield [(doc_id, source[VECTOR_FIELD]) for doc_id, source in page]

    @translated
    def source_pages(self, index: str, fields: list[str], page_size: int = 1000,
                     keep_alive: str = "30m") -> Iterator[list[tuple[str, dict]]]:
        """Every document of ``index`` as ``(id, the source's fields)``, ``page_size`` at a
        time, in one scroll that lives ``keep_alive`` between pages (the caller may work a
        while on each: carrying embeds a page's images, ~70 s for 1,000 on 2 cores)."""
        yield from self._pages(index, fields, page_size, keep_alive)

    def _pages(self, index: str, fields: list[str], page_size: int, keep_alive: str,
               **scan: Any) -> Iterator[list[tuple[str, dict]]]:
        """``(id, source)`` of every document of ``index``, ``page_size`` a list, in one scroll
        kept ``keep_alive`` between pages."""
        page: list[tuple[str, dict]] = []
        for hit in helpers.scan(self.es, index=index, query={"query": {"match_all": {}}},
                                source_includes=fields, size=page_size, scroll=keep_alive,
                                **scan):
            page.append((hit["_id"], hit.get("_source") or {}))
            if len(page) == page_size:
                yield page
                page = []
        if page:
            yield page

    @translated
    def knn_many(
        self,
        vectors: list,
        *,
        index: str,
        k: int = 10,
        num_candidates: int = 100,
        min_cosine: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Neighbours of each of ``vectors`` as ``(id, cosine)``, best first, in one
        ``_msearch`` (ES runs the queries side by side on its search threads); with
        ``min_cosine``, only those at least that similar (kNN ``similarity``, which for
        dot_product on unit vectors is the cosine itself, applied inside ES)."""
        searches: list[dict] = []
        for vector in vectors:
            knn: dict[str, Any] = {"field": VECTOR_FIELD, "query_vector": vector, "k": k,
                                   "num_candidates": max(num_candidates, k)}
            if min_cosine is not None:
                knn["similarity"] = min_cosine
            searches += [{"index": index}, {"knn": knn, "size": k, "_source": False}]
        if not searches:
            return []
        resp = self.es.msearch(searches=searches)
        out = []
        for answer in resp.body["responses"]:
            if "error" in answer:
                error = answer["error"]
                if error.get("type") == "index_not_found_exception":
                    raise IndexMissing(f"no such index: {index}")
                raise StoreRefused(f"Elasticsearch refused a kNN query (status "
                                   f"{answer.get('status')}): {error.get('reason')}",
                                   answer.get("status"))
            out.append([(h["_id"], cosine_of(h["_score"])) for h in answer["hits"]["hits"]])
        return out

    @translated
    def cosines_among(self, queries: list[tuple[Any, list[str]]], index: str) -> list[list[dict]]:
        """For each ``(vector, ids)``: those documents as ``{"id", "cosine", "source"}`` (no
        vectors), closest to ``vector`` first, in one ``_msearch`` of kNN queries filtered to
        the ids (a filter that small makes Elasticsearch compare them all: exact cosines)."""
        searches: list[dict] = []
        for vector, ids in queries:
            k = max(1, len(ids))
            searches += [{"index": index}, {
                "knn": {"field": VECTOR_FIELD, "query_vector": vector, "k": k,
                        "num_candidates": max(k, 100), "filter": [{"ids": {"values": ids}}]},
                "size": k, "_source": {"excludes": NOT_RETURNED}}]
        if not searches:
            return []
        out = []
        for answer in self.es.msearch(searches=searches).body["responses"]:
            if "error" in answer:
                raise StoreRefused(f"Elasticsearch refused a kNN query (status "
                                   f"{answer.get('status')}): {answer['error'].get('reason')}",
                                   answer.get("status"))
            out.append([{"id": h["_id"], "cosine": cosine_of(h["_score"]),
                         "source": h["_source"]} for h in answer["hits"]["hits"]])
        return out

    @translated
    def sources_with_vectors(self, ids: list[str], index: str, *,
                             only_vector: bool = False) -> dict[str, dict]:
        """The sources of ``ids`` in ``index``, vectors included (region vectors not), or
        only their vectors: one search by id (the multi-get API has no way to ask ES 9 for
        dense vectors)."""
        if not ids:
            return {}
        resp = self.es.search(
            index=index,
            query={"ids": {"values": ids}},
            size=len(ids),
            source_includes=[VECTOR_FIELD] if only_vector else None,
            source_excludes=None if only_vector else [REGIONS_FIELD],
            source_exclude_vectors=False,
        )
        return {h["_id"]: h["_source"] for h in resp.body["hits"]["hits"]}

    @translated
    def facets(self, fields: Iterable[str], size: int = 50, *,
               filters: list[dict] | None = None) -> dict:
        """Document counts per value of each keyword field over the whole index (or over the
        documents ``filters`` keep), plus the ranges of width, height and EXIF date:
        ``{"total", "fields": {...}, "ranges": {...}}``."""
        fields = list(fields)
        aggs: dict[str, Any] = {
            f: {"terms": {"field": f, "size": size, "order": {"_count": "desc"}}} for f in fields
        }
        for name in ("width", "height", "exif_datetime"):
            aggs[f"{name}_min"] = {"min": {"field": name}}
            aggs[f"{name}_max"] = {"max": {"field": name}}
        query = {"bool": {"filter": filters}} if filters else None
        resp = self.es.search(index=self.alias, size=0, aggs=aggs, query=query,
                              track_total_hits=True).body
        out = resp["aggregations"]
        ranges = {}
        for name in ("width", "height", "exif_datetime"):
            low, high = out[f"{name}_min"], out[f"{name}_max"]
            value = "value_as_string" if name == "exif_datetime" else "value"
            ranges[name] = {"min": low.get(value), "max": high.get(value)}
        return {
            "total": resp["hits"]["total"]["value"],
            "fields": {
                f: [{"value": b["key"], "count": b["doc_count"]} for b in out[f]["buckets"]]
                for f in fields
            },
            "ranges": ranges,
        }

    def health(self, timeout: float = 5.0) -> dict:
        """Whether Elasticsearch answers, and the index behind the alias; never raises (an
        ``error`` says what went wrong). Short timeout, no retries: a probe must not hang."""
        out: dict[str, Any] = {
            "reachable": False, "status": None, "index": None, "documents": None,
            "model_version": None, "error": None,
        }
        probe = ImageStore(self.es.options(request_timeout=timeout, max_retries=0), self.alias)
        try:
            # Cluster health rather than GET /, which minimal distributions do not serve.
            out["status"] = probe.es.cluster.health().body["status"]
            out["reachable"] = True
            out["index"] = index = probe.indices.current_index()
            if index is not None:
                out["documents"] = probe.count(index)
                out["model_version"] = probe.indices.index_model_version(index)
        except TransportError as exc:
            out["error"] = str(with_cause(exc))
        except (ApiError, StoreError) as exc:  # it answered, but not as hoped
            out["reachable"], out["error"] = True, str(exc)
        return out


def cosine_of(score: float) -> float:
    """The cosine behind a kNN score: dot_product scores unit vectors as (1 + cos) / 2, and
    people read cosine more easily."""
    return 2.0 * score - 1.0


def _hit(h: dict) -> dict:
    hit = {
        "id": h["_id"],
        "score": h["_score"],
        "cosine": cosine_of(h["_score"]),
        "source": h["_source"],
    }
    inner = h.get("inner_hits", {}).get(REGIONS_FIELD, {}).get("hits", {}).get("hits")
    if inner:
        # The hit's score is its best region's, rescored with float vectors where the region
        # index is quantised; the inner hit's own score is the quantised estimate, so only
        # its box is taken.
        hit["region"] = {"box": [float(v) for v in inner[0]["_source"]["box"]]}
    return hit


def _gave_up(what: str, attempts: int, exc: Exception) -> StoreError:
    return StoreError(
        f"Elasticsearch {what} failed after {attempts} attempt(s): {exc}. Check that "
        "Elasticsearch is up (`make es-status`), then run the same command again: nothing "
        "already stored is embedded twice."
    )


def _reason(info: dict) -> str:
    error = info.get("error")
    if isinstance(error, dict):
        return f"{error.get('type')}: {error.get('reason')}"
    return str(error or info.get("status"))

