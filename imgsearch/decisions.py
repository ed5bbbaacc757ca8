"""People's decisions about images: removed ones, duplicates hidden, pairs that are not twins.

Where they live: an Elasticsearch index of their own (``<ES_INDEX>-decisions`` unless
``IMGSEARCH_DECISIONS_INDEX`` names another), beside the keys and apart from the image
indices, because a decision is about *content*, not about one index's vectors: each is keyed
by content hashes (the image documents' ids), so it holds for every index built from those
bytes (a ``--new-index`` rebuild with another model, a restore) and for every writer (the
indexer, the watcher, the write API). A changed file has another hash, so a decision about its
old bytes no longer applies to it: "excluded until it changes" needs nothing more.

Four kinds, one document each (its id says kind and images, so deciding twice is one
document, and a retry is safe):

- ``excluded:<id>``: the image was deleted through the API while its file stays in a watched
  or indexed folder (files there are never touched); indexing and the watcher skip those bytes.
- ``hidden:<id>``: kept out of searches and duplicate groups as a copy of ``kept``.
- ``distinct:<a>:<b>`` (``a < b``): a person said these two are not duplicates; groupings
  never join them by that pair.
- ``metadata:<id>``: the metadata fields (label, tags, extra) a person set through the API
  (``PATCH``, or ``POST``'s fields), each with the value it replaced: every indexing run
  writes them over the sidecar's, so a ``--new-index`` rebuild, a re-embedding and the
  watcher keep them (the rule against a later sidecar edit: imgsearch/metadata.py
  ``with_decision``).

Lookups are by document id (``mget``): real-time in Elasticsearch (read from the translog, no
refresh), so a decision made by one worker holds for the next request of any other, and a batch
of the indexer costs one ``mget`` whatever the size of the collection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from elasticsearch import BadRequestError, ConflictError, Elasticsearch, NotFoundError, helpers

from .errors import BadInput
from .esclient import translated

KINDS = ("excluded", "hidden", "distinct", "metadata")
# A metadata decision changed by two writers at once: each reads, merges and writes back only
# if nobody wrote in between (seq_no), trying this many times.
METADATA_ATTEMPTS = 5

MAPPING = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0},
    "mappings": {
        "dynamic": "strict",
        "properties": {
            "kind": {"type": "keyword"},
            "images": {"type": "keyword"},  # the one image, or the pair (sorted)
            "kept": {"type": "keyword"},  # hidden: the image kept in its place
            "path": {"type": "keyword", "index": False},  # excluded: where the file was
            "decided_at": {"type": "date"},
            "decided_by": {"type": "keyword"},  # the key's name; None from the CLI
            **{name: {"type": "object", "enabled": False} for name in ("fields", "replaced")},
        },
    },
}


class DecisionError(BadInput):
    """A decision that cannot be made as asked (an image paired with itself, say)."""

    code = "invalid_decision"


@dataclass(frozen=True)
class Decision:
    kind: str
    images: tuple[str, ...]
    decided_at: str
    kept: str | None = None
    path: str | None = None
    decided_by: str | None = None
    # metadata: the fields set (None: cleared) and the value each replaced (what the document
    # held before the person's first change of it).
    fields: dict | None = None
    replaced: dict | None = None

    def to_json(self) -> dict:
        out = {"kind": self.kind, "images": list(self.images), "decided_at": self.decided_at,
               "decided_by": self.decided_by}
        for name in ("kept", "path", "fields", "replaced"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def decision_id(kind: str, *images: str) -> str:
    if kind not in KINDS:
        raise DecisionError(f"kind must be one of {', '.join(KINDS)}, not {kind[:40]!r}")
    if kind == "distinct":
        if len(images) != 2 or images[0] == images[1]:
            raise DecisionError("'not duplicates' is said of two different images")
        return "distinct:" + ":".join(sorted(images))
    if len(images) != 1:
        raise DecisionError(f"a decision of kind {kind} is about one image")
    return f"{kind}:{images[0]}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _from_source(source: dict) -> Decision:
    return Decision(source["kind"], tuple(source["images"]), source["decided_at"],
                    source.get("kept"), source.get("path"), source.get("decided_by"),
                    source.get("fields"), source.get("replaced"))


class Decisions:
    """The decisions of one index; thread-safe (the client is), one per process is enough."""

    def __init__(self, es: Elasticsearch, index: str,
                 read: Callable[[str, Callable], Any] | None = None):
        self.es = es
        self.index = index
        # How lookups are sent: ``read(what, call)`` runs ``call(client)``; the indexer passes
        # ImageStore.read_retrying so that they are retried like its writes.
        self._read = read or (lambda what, call: call(self.es))
        self._metadata_mapped = False

    @translated
    def ensure_index(self) -> None:
        if not self.es.indices.exists(index=self.index):
            try:
                self.es.indices.create(index=self.index, body=MAPPING)
            except BadRequestError as exc:  # another process made it first
                if exc.error != "resource_already_exists_exception":
                    raise

    @translated
    def _ensure_metadata_fields(self) -> None:
        """A decisions index made before metadata decisions: its strict mapping would refuse
        their fields (adding fields to a mapping is allowed; once per process)."""
        if self._metadata_mapped:
            return
        self.ensure_index()
        props = MAPPING["mappings"]["properties"]
        self.es.indices.put_mapping(index=self.index, properties={
            name: props[name] for name in ("fields", "replaced")})
        self._metadata_mapped = True

    # -- deciding ---------------------------------------------------------------------------

    @translated
    def decide(self, kind: str, *images: str, kept: str | None = None, path: str | None = None,
               by: str | None = None) -> Decision:
        """Record a decision (again: the same document, its time updated)."""
        doc_id = decision_id(kind, *images)
        if kind == "metadata":
            raise DecisionError("metadata decisions are made by set_metadata")
        if kind == "hidden" and (not kept or kept == images[0]):
            raise DecisionError("a hidden image names another image kept in its place")
        decision = Decision(kind, tuple(sorted(images)), _now(), kept, path, by)
        self.ensure_index()
        body = {k: v for k, v in decision.to_json().items() if v is not None}
        self.es.index(index=self.index, id=doc_id, document=body, refresh="wait_for")
        return decision

    @translated
    def set_metadata(self, image: str, fields: dict, replaced: dict, *,
                     by: str | None = None) -> tuple[Decision, Decision | None]:
        """Record that a person set ``fields`` (label, tags, extra; None clears one) of
        ``image``, which held ``replaced`` (those fields' values before this change), merged
        into what they set earlier: a field set again takes the new value and keeps the value
        it replaced the first time (what the sidecar or the folder had said, not the person's
        own earlier value). ``(the decision now, the one before or None)``: a caller whose
        write then fails puts the earlier one back (:meth:`restore`)."""
        doc_id = decision_id("metadata", image)
        self._ensure_metadata_fields()
        for attempt in range(METADATA_ATTEMPTS):
            try:
                current = self.es.get(index=self.index, id=doc_id)
            except NotFoundError:
                current = None
            before = _from_source(current.body["_source"]) if current is not None else None
            earlier_fields = (before.fields or {}) if before else {}
            earlier_replaced = (before.replaced or {}) if before else {}
            merged = Decision(
                "metadata", (image,), _now(), decided_by=by,
                fields={**earlier_fields, **fields},
                replaced={**{f: replaced.get(f) for f in fields}, **earlier_replaced},
            )
            body = {k: v for k, v in merged.to_json().items() if v is not None}
            # Only over the version read: a change by another worker meanwhile is merged, not
            # lost (Elasticsearch refuses the write with 409, and this reads again).
            guard = ({"if_seq_no": current.body["_seq_no"],
                      "if_primary_term": current.body["_primary_term"]}
                     if current is not None else {"op_type": "create"})
            try:
                # No refresh wait: every reader looks decisions up by id, which is real-time
                # (a wait would add up to the refresh interval, 1 s, to an add's 0.25 s).
                self.es.index(index=self.index, id=doc_id, document=body, **guard)
            except ConflictError:
                if attempt == METADATA_ATTEMPTS - 1:
                    raise
                continue
            return merged, before
        raise AssertionError("unreachable")

    @translated
    def restore(self, kind: str, image: str, previous: Decision | None) -> None:
        """Put back ``previous`` as the decision of its kind about ``image`` (None: there was
        none), undoing a decision whose write then failed."""
        if previous is None:
            self.undo(kind, image)
            return
        body = {k: v for k, v in previous.to_json().items() if v is not None}
        self.es.index(index=self.index, id=decision_id(kind, image), document=body,
                      refresh="wait_for")

    @translated
    def undo(self, kind: str, *images: str) -> bool:
        """Forget a decision; False when there was none."""
        try:
            self.es.delete(index=self.index, id=decision_id(kind, *images), refresh="wait_for")
        except NotFoundError:
            return False
        return True

    # -- asking (by id: real-time, one request whatever the collection's size) ----------------

    @translated
    def find(self, ids: Iterable[str]) -> dict[str, Decision]:
        """The decisions among the document ids ``ids`` (``excluded:<hash>`` and so on)."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        try:
            docs = self._read("decisions lookup",
                              lambda es: es.mget(index=self.index, ids=ids)).body["docs"]
        except NotFoundError:  # no decisions index yet: no decisions
            return {}
        return {d["_id"]: _from_source(d["_source"]) for d in docs if d.get("found")}

    def excluded(self, images: Iterable[str]) -> set[str]:
        """Those of ``images`` (content hashes) deleted through the API: not to be indexed."""
        found = self.find(decision_id("excluded", i) for i in images)
        return {d.images[0] for d in found.values()}

    def hidden(self, images: Iterable[str]) -> dict[str, str]:
        """Those of ``images`` hidden as duplicates: ``{hidden: kept}``."""
        found = self.find(decision_id("hidden", i) for i in images)
        return {d.images[0]: d.kept for d in found.values()}

    def metadata(self, images: Iterable[str]) -> dict[str, Decision]:
        """Those of ``images`` whose metadata a person set: ``{image: decision}``."""
        found = self.find(decision_id("metadata", i) for i in images)
        return {d.images[0]: d for d in found.values()}

    def for_documents(self, images: Iterable[str]) -> tuple[dict[str, str], dict[str, Decision]]:
        """What a batch of documents about to be written needs, in one lookup: ``(hidden,
        metadata)`` as :meth:`hidden` and :meth:`metadata` answer."""
        images = list(images)
        found = self.find([decision_id("hidden", i) for i in images]
                          + [decision_id("metadata", i) for i in images])
        hidden = {d.images[0]: d.kept for d in found.values() if d.kind == "hidden"}
        metadata = {d.images[0]: d for d in found.values() if d.kind == "metadata"}
        return hidden, metadata

    def distinct(self, pairs: Iterable[tuple[str, str]]) -> set[frozenset[str]]:
        """Those of ``pairs`` that a person said are not duplicates."""
        found = self.find(decision_id("distinct", a, b) for a, b in pairs if a != b)
        return {frozenset(d.images) for d in found.values()}

    @translated
    def count(self, *kinds: str) -> int:
        """How many decisions of ``kinds`` there are (after a refresh: one made a moment ago
        is counted)."""
        if not self.es.indices.exists(index=self.index):
            return 0
        self.es.indices.refresh(index=self.index)
        return int(self.es.count(index=self.index,
                                 query={"terms": {"kind": list(kinds)}}).body["count"])

    @translated
    def every(self, kind: str) -> Iterator[Decision]:
        """Every decision of ``kind``, in no order: one scroll, whatever their number (call
        :meth:`count` first for what the last refresh made visible)."""
        if not self.es.indices.exists(index=self.index):
            return
        for hit in helpers.scan(self.es, index=self.index, size=1000,
                                query={"query": {"term": {"kind": kind}}}):
            yield _from_source(hit["_source"])

    @translated
    def all(self, kind: str | None = None, size: int = 10_000) -> list[Decision]:
        """Every decision (of ``kind``), newest first: for listing and for backups' checks."""
        if not self.es.indices.exists(index=self.index):
            return []
        self.es.indices.refresh(index=self.index)
        query = {"term": {"kind": kind}} if kind else {"match_all": {}}
        hits = self.es.search(index=self.index, query=query, size=size,
                              sort=[{"decided_at": "desc"}]).body["hits"]["hits"]
        return [_from_source(h["_source"]) for h in hits]
