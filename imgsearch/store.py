"""The Elasticsearch side of the product: mapping, versioned index behind an alias, bulk, kNN.

Readers and writers only ever name the alias (``images``). Each concrete index is
``<alias>-<UTC timestamp>`` and records in its ``_meta`` the model version that produced its
vectors, so a vector from another model can never be mixed in by accident.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from elasticsearch import ApiError, Elasticsearch, NotFoundError, TransportError, helpers
from elasticsearch.serializer import (
    CompatibilityModeJsonSerializer,
    CompatibilityModeNdjsonSerializer,
    JsonSerializer,
    NdjsonSerializer,
)

from .regions import REGION_MODES, RegionMode, mode_from_meta
from .settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

MAPPING_FILE = PROJECT_ROOT / "es_mappings" / "images.json"
VECTOR_FIELD = "vector"
REGIONS_FIELD = "regions"  # nested: {"vector", "box"} per region (imgsearch/regions.py)
# Neither kind of vector is metadata: searches and reads leave them out unless asked.
NOT_RETURNED = [VECTOR_FIELD, REGIONS_FIELD]
# Statuses worth retrying: overload and the gateway/availability family.
RETRY_STATUSES = (429, 502, 503, 504)


class StoreError(RuntimeError):
    """A problem with the index that a person has to act on; the message says what to do."""


class StoreUnavailable(StoreError):
    """Elasticsearch could not be reached, or did not answer in time."""


class IndexMissing(StoreError):
    """The alias or index named does not exist (nothing is indexed yet)."""


class StoreRefused(StoreError):
    """Elasticsearch answered a request with an error."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ModelVersionMismatch(StoreError):
    pass


class AliasMoved(StoreError):
    """The alias no longer pointed where a swap expected it to: another run moved it."""


class _Orjson:
    """JSON through orjson: vectors are most of every request, and orjson writes a float32
    array 16x faster than the json module, in its shortest float32 form (24 KiB a vector rather
    than 44 KiB of float64 digits; docs/BENCHMARKS.md), which Elasticsearch then parses in
    less time too."""

    def json_dumps(self, data: Any) -> bytes:
        return orjson.dumps(data, default=self.default, option=orjson.OPT_SERIALIZE_NUMPY)

    def json_loads(self, data: bytes) -> Any:
        return orjson.loads(data)


class _JsonSerializer(_Orjson, JsonSerializer):
    pass


class _NdjsonSerializer(_Orjson, NdjsonSerializer):
    pass


class _CompatibilityModeJsonSerializer(_Orjson, CompatibilityModeJsonSerializer):
    pass


class _CompatibilityModeNdjsonSerializer(_Orjson, CompatibilityModeNdjsonSerializer):
    pass


SERIALIZERS = {
    s.mimetype: s()
    for s in (_JsonSerializer, _NdjsonSerializer, _CompatibilityModeJsonSerializer,
              _CompatibilityModeNdjsonSerializer)
}


def connect(settings: Settings) -> Elasticsearch:
    """An Elasticsearch client for the settings (credentials and CA only when given)."""
    kwargs: dict[str, Any] = {
        "request_timeout": settings.es_request_timeout,
        "retry_on_status": RETRY_STATUSES,
        "retry_on_timeout": True,
        "max_retries": 3,
        "serializers": SERIALIZERS,
    }
    if settings.es_username:
        kwargs["basic_auth"] = (settings.es_username, settings.es_password or "")
    if settings.es_ca_certs:
        kwargs["ca_certs"] = settings.es_ca_certs
    hosts = [url.strip() for url in settings.es_url.split(",") if url.strip()]
    return Elasticsearch(hosts, **kwargs)


def index_body(
    model_version: str,
    vector_index_type: str = "hnsw",
    m: int = 16,
    ef_construction: int = 100,
    rescore_oversample: float = 3.0,
    *,
    regions: RegionMode | None = None,
    region_index_type: str = "bbq_hnsw",
    shards: int = 1,
    replicas: int = 0,
) -> dict:
    """The create-index body: ``es_mappings/images.json`` with the vector options filled in,
    and the nested region field only when the index holds ``regions`` (its mode in ``_meta``).

    Quantised types get ``rescore_vector``: every kNN query then re-ranks ``oversample * k``
    candidates by their float vectors, which is what brings their recall back to float HNSW's.
    """
    raw = json.loads(MAPPING_FILE.read_text())
    body = {k: v for k, v in raw.items() if not k.startswith("_")}
    mappings = body["mappings"]
    mappings["_meta"] = {"model_version": model_version, "created_by": "imgsearch"}
    body["settings"].update(number_of_shards=shards, number_of_replicas=replicas)
    properties = mappings["properties"]
    properties[VECTOR_FIELD]["index_options"] = _vector_options(
        vector_index_type, m, ef_construction, rescore_oversample)
    if regions is None:
        del properties[REGIONS_FIELD]
    else:
        mappings["_meta"]["regions"] = {**regions.to_meta(), "index_type": region_index_type}
        properties[REGIONS_FIELD]["properties"]["vector"]["index_options"] = _vector_options(
            region_index_type, m, ef_construction, rescore_oversample)
    return body


def _vector_options(index_type: str, m: int, ef_construction: int,
                    rescore_oversample: float) -> dict[str, Any]:
    options: dict[str, Any] = {"type": index_type, "m": m, "ef_construction": ef_construction}
    if index_type != "hnsw":
        options["rescore_vector"] = {"oversample": rescore_oversample}
    return options


@dataclass
class BulkResult:
    indexed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)


def _translated(method):
    """Let no client exception out of ``method``: callers (the web app, the indexer) handle the
    store's own errors, and never import the client's."""

    def translate(exc: Exception) -> StoreError:
        if isinstance(exc, ApiError):
            if exc.error == "index_not_found_exception":
                return IndexMissing(f"no such index: {exc}")
            return StoreRefused(f"Elasticsearch refused the request (status {exc.status_code}): "
                                f"{exc}", exc.status_code)
        return StoreUnavailable(f"Elasticsearch is not reachable: {exc}")

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(*args, **kwargs):
            try:
                yield from method(*args, **kwargs)
            except (ApiError, TransportError) as exc:
                raise translate(exc) from exc

        return generator

    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (ApiError, TransportError) as exc:
            raise translate(exc) from exc

    return call


class ImageStore:
    """All reads and writes of the image index go through here. Its public methods raise
    :class:`StoreError` and its subclasses, never the client's exceptions."""

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
        # Retry policy of the indexer's writes and existence checks (settings.bulk_*).
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageStore:
        return cls(
            connect(settings),
            settings.es_index,
            retries=settings.bulk_retries,
            backoff=settings.bulk_backoff,
            max_backoff=settings.bulk_max_backoff,
        )

    def _retrying(
        self,
        what: str,
        call,
        *,
        max_retries: int | None = None,
        initial_backoff: float | None = None,
        max_backoff: float | None = None,
    ):
        """``call()``, retried with exponential backoff when the request as a whole fails
        (node unreachable, timeout, 429/5xx); finally a StoreError that says what to do."""
        retries = self.retries if max_retries is None else max_retries
        delay = self.backoff if initial_backoff is None else initial_backoff
        cap = self.max_backoff if max_backoff is None else max_backoff
        for attempt in range(retries + 1):
            try:
                return call()
            except (TransportError, ApiError) as exc:
                status = getattr(exc, "status_code", None) or getattr(
                    getattr(exc, "meta", None), "status", None
                )
                retryable = not isinstance(exc, ApiError) or status in RETRY_STATUSES
                if not retryable or attempt == retries:
                    raise StoreError(
                        f"Elasticsearch {what} failed after {attempt + 1} attempt(s): {exc}. "
                        "Check that Elasticsearch is up (`make es-status`), then run the same "
                        "command again: nothing already stored is embedded twice."
                    ) from exc
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, cap)
        raise AssertionError("unreachable")

    # -- index lifecycle ------------------------------------------------------------------

    @_translated
    def current_index(self) -> str | None:
        """The concrete index the alias points at, or None when there is none yet."""
        try:
            found = self.es.indices.get_alias(name=self.alias)
        except NotFoundError:
            return None
        names = sorted(found.body)
        if len(names) != 1:
            raise StoreError(f"alias {self.alias!r} points at {len(names)} indices: {names}")
        return names[0]

    @_translated
    def alias_target(self) -> tuple[str | None, str | None]:
        """``(concrete index, its model version)`` behind the alias; ``(None, None)`` when
        there is no index yet."""
        index = self.current_index()
        return index, (self.index_model_version(index) if index else None)

    @_translated
    def index_model_version(self, index: str | None = None) -> str | None:
        return self.index_meta(index).get("model_version")

    @_translated
    def index_regions(self, index: str | None = None) -> RegionMode | None:
        """The region mode ``index`` was built with; None when it holds no region vectors."""
        return mode_from_meta(self.index_meta(index).get("regions"))

    @_translated
    def index_meta(self, index: str | None = None) -> dict:
        """The ``_meta`` of ``index`` (default: the alias's); empty when there is no index."""
        index = index or self.current_index()
        if index is None:
            return {}
        mapping = self.es.indices.get_mapping(index=index).body[index]["mappings"]
        return mapping.get("_meta", {})

    @_translated
    def create_index(self, model_version: str, settings: Settings) -> str:
        """Create a new timestamped concrete index (the alias is not touched), with region
        vectors when ``settings.regions`` asks for them."""
        name = f"{self.alias}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
        body = index_body(
            model_version,
            settings.vector_index_type,
            settings.hnsw_m,
            settings.hnsw_ef_construction,
            settings.rescore_oversample,
            regions=REGION_MODES.get(settings.regions),
            region_index_type=settings.region_index_type,
            shards=settings.es_shards,
            replicas=settings.es_replicas,
        )
        self.es.indices.create(index=name, **body)
        log.info("created index %s (%s%s)", name, settings.vector_index_type,
                 f", regions {settings.regions} as {settings.region_index_type}"
                 if settings.regions != "off" else "")
        return name

    @_translated
    def point_alias(self, index: str, previous: str | None | object = ...) -> str | None:
        """Move the alias to ``index`` from ``previous`` (default: wherever it points now), in
        one ``_aliases`` call; returns the index it left, if any.

        The call removes the alias from ``previous`` only if it is still there (``must_exist``)
        and makes ``index`` its one write index: if another run moved the alias meanwhile
        (or is giving a new alias its first index), Elasticsearch refuses the whole call,
        nothing changes, and this raises :class:`AliasMoved`. Of two runs racing to swap the
        same alias, exactly one wins.
        """
        if previous is ...:
            previous = self.current_index()
        if previous == index:
            return None
        actions: list[dict] = [
            {"add": {"index": index, "alias": self.alias, "is_write_index": True}}]
        if previous:
            actions.insert(0, {"remove": {"index": previous, "alias": self.alias,
                                          "must_exist": True}})
        try:
            self.es.indices.update_aliases(actions=actions)
        except ApiError as exc:
            if exc.status_code in (404, 500) or "write index" in str(exc):
                now = self._alias_indices()
                raise AliasMoved(
                    f"alias {self.alias!r} moved while this run built {index}: it points at "
                    f"{', '.join(now) or 'nothing'} now, not {previous or 'nothing'} (another "
                    f"run switched it first). {index} is complete but not searched; delete it, "
                    "or run again with --new-index to build on the current state."
                ) from exc
            raise
        return previous  # type: ignore[return-value]

    def _alias_indices(self) -> list[str]:
        try:
            return sorted(self.es.indices.get_alias(name=self.alias).body)
        except NotFoundError:
            return []

    @_translated
    def ensure_index(self, model_version: str, settings: Settings) -> str:
        """The index behind the alias, created on first use; refuses another model's index."""
        if self.es.indices.exists(index=self.alias) and self.current_index() is None:
            raise StoreError(
                f"{self.alias!r} is a concrete index, not an alias; delete it or set ES_INDEX "
                "to another name"
            )
        index = self.current_index()
        if index is None:
            index = self.create_index(model_version, settings)
            self.point_alias(index)
            return index
        self.check_model_version(model_version, index)
        return index

    @_translated
    def check_model_version(self, model_version: str, index: str | None = None) -> None:
        stored = self.index_model_version(index)
        if stored != model_version:
            raise ModelVersionMismatch(
                f"index {index or self.alias!r} holds vectors of model version {stored!r}, but "
                f"this run embeds with {model_version!r}. Mixing them would make scores "
                "meaningless. Rebuild behind the alias with `python -m indexer <dir> "
                "--new-index` (the old index stays searchable until the new one is complete)."
            )

    @_translated
    def refresh(self, index: str | None = None) -> None:
        """Make every write so far visible to searches."""
        self.es.indices.refresh(index=index or self.alias)

    @_translated
    def count(self, index: str | None = None) -> int:
        return int(self.es.count(index=index or self.alias).body["count"])

    # -- writes ---------------------------------------------------------------------------

    @_translated
    def existing_ids(self, ids: Iterable[str], index: str | None = None) -> set[str]:
        """Which of ``ids`` already have a document (one round trip, no sources)."""
        ids = list(ids)
        if not ids:
            return set()
        resp = self._retrying(
            "existence check",
            lambda: self.es.mget(index=index or self.alias, ids=ids, source=False),
        )
        return {d["_id"] for d in resp.body["docs"] if d.get("found")}

    @_translated
    def bulk_index(
        self,
        docs: Iterable[dict],
        index: str | None = None,
        *,
        max_retries: int | None = None,
        initial_backoff: float | None = None,
        max_backoff: float | None = None,
    ) -> BulkResult:
        """Write documents (each with ``content_hash``) with one bulk request.

        Item-level 429s are retried by the helper; whole-request failures (node down, 5xx)
        are retried here with exponential backoff (the store's policy unless given) and
        finally re-raised as StoreError. Documents are keyed by content hash, so a retried
        request can never duplicate a document.
        """
        target = index or self.alias
        actions = [
            {"_op_type": "index", "_index": target, "_id": d["content_hash"], "_source": d}
            for d in docs
        ]
        if not actions:
            return BulkResult()
        item_retries = self.retries if max_retries is None else max_retries
        item_backoff = self.backoff if initial_backoff is None else initial_backoff
        item_cap = self.max_backoff if max_backoff is None else max_backoff

        def attempt() -> BulkResult:
            result = BulkResult()
            for ok, item in helpers.streaming_bulk(
                self.es,
                actions,
                chunk_size=len(actions),
                max_retries=item_retries,
                initial_backoff=max(item_backoff, 0.1),
                max_backoff=max(item_cap, 0.1),
                raise_on_error=False,
            ):
                info = item.get("index", {})
                if ok:
                    result.indexed += 1
                else:
                    result.failed.append((info.get("_id", "?"), _reason(info)))
            return result

        return self._retrying(
            "bulk write", attempt, max_retries=max_retries, initial_backoff=initial_backoff,
            max_backoff=max_backoff,
        )

    @_translated
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

    @_translated
    def delete_ids(self, ids: Iterable[str], index: str | None = None) -> int:
        actions = (
            {"_op_type": "delete", "_index": index or self.alias, "_id": i} for i in ids
        )
        deleted, _ = helpers.bulk(self.es, actions, raise_on_error=False, stats_only=True)
        return int(deleted)

    # -- reads ----------------------------------------------------------------------------

    @_translated
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

    @_translated
    def knn(
        self,
        vector,
        *,
        k: int = 10,
        num_candidates: int = 100,
        filters: list[dict] | None = None,
        exclude_id: str | None = None,
        offset: int = 0,
        index: str | None = None,
        regions: bool = False,
    ) -> list[dict]:
        """Nearest documents as ``{"id", "score", "cosine", "source"}``, best first; with
        ``regions``, by their best region, whose ``{"box"}`` is the hit's ``region``.

        ``vector`` is a list of floats or a float32 array (sent in its shortest float32 form).

        Filters go inside ``knn.filter`` so that ES returns ``k`` filtered neighbours instead
        of filtering ``k`` neighbours afterwards.
        """
        want = k + offset + (1 if exclude_id else 0)
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
        )
        hits = [_hit(h) for h in resp.body["hits"]["hits"] if h["_id"] != exclude_id]
        return hits[offset : offset + k]


    @_translated
    def facets(self, fields: Iterable[str], size: int = 50) -> dict:
        """Document counts per value of each keyword field over the whole index, plus the
        ranges of width, height and EXIF date: ``{"total", "fields": {...}, "ranges": {...}}``."""
        fields = list(fields)
        aggs: dict[str, Any] = {
            f: {"terms": {"field": f, "size": size, "order": {"_count": "desc"}}} for f in fields
        }
        for name in ("width", "height", "exif_datetime"):
            aggs[f"{name}_min"] = {"min": {"field": name}}
            aggs[f"{name}_max"] = {"max": {"field": name}}
        resp = self.es.search(index=self.alias, size=0, aggs=aggs, track_total_hits=True).body
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
            out["index"] = index = probe.current_index()
            if index is not None:
                out["documents"] = probe.count(index)
                out["model_version"] = probe.index_model_version(index)
        except TransportError as exc:
            out["error"] = str(exc)
        except (ApiError, StoreError) as exc:  # it answered, but not as hoped
            out["reachable"], out["error"] = True, str(exc)
        return out


def _hit(h: dict) -> dict:
    hit = {
        "id": h["_id"],
        "score": h["_score"],
        # dot_product scores are (1 + cos) / 2; people read cosine more easily.
        "cosine": 2.0 * h["_score"] - 1.0,
        "source": h["_source"],
    }
    inner = h.get("inner_hits", {}).get(REGIONS_FIELD, {}).get("hits", {}).get("hits")
    if inner:
        # The hit's score is its best region's, rescored with float vectors where the region
        # index is quantised; the inner hit's own score is the quantised estimate, so only
        # its box is taken.
        hit["region"] = {"box": [float(v) for v in inner[0]["_source"]["box"]]}
    return hit


def _reason(info: dict) -> str:
    error = info.get("error")
    if isinstance(error, dict):
        return f"{error.get('type')}: {error.get('reason')}"
    return str(error or info.get("status"))

