"""People's decisions about images: removed ones, duplicates hidden, pairs that are not twins.

Where they live: an Elasticsearch index of their own (``<ES_INDEX>-decisions`` unless
``IMGSEARCH_DECISIONS_INDEX`` names another), beside the keys and apart from the image
indices, because a decision is about *content*, not about one index's vectors: each is keyed
by content hashes (the image documents' ids), so it holds for every index built from those
bytes (a ``--new-index`` rebuild with another model, a restore) and for every writer (the
indexer, the watcher, the write API). A changed file has another hash, so a decision about its
old bytes no longer applies to it: "excluded until it changes" needs nothing more.

Three kinds, one document each (its id says kind and images, so deciding twice is one
document, and a retry is safe):

- ``excluded:<id>``: the image was deleted through the API while its file stays in a watched
  or indexed folder (files there are never touched); indexing and the watcher skip those bytes.
- ``hidden:<id>``: kept out of searches and duplicate groups as a copy of ``kept``.
- ``distinct:<a>:<b>`` (``a < b``): a person said these two are not duplicates; groupings
  never join them by that pair.

Lookups are by document id (``mget``): real-time in Elasticsearch (read from the translog, no
refresh), so a decision made by one worker holds for the next request of any other, and a batch
of the indexer costs one ``mget`` whatever the size of the collection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from elasticsearch import BadRequestError, Elasticsearch, NotFoundError

from .errors import BadInput
from .esclient import translated

KINDS = ("excluded", "hidden", "distinct")

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

    def to_json(self) -> dict:
        out = {"kind": self.kind, "images": list(self.images), "decided_at": self.decided_at,
               "decided_by": self.decided_by}
        if self.kept:
            out["kept"] = self.kept
        if self.path:
            out["path"] = self.path
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
                    source.get("kept"), source.get("path"), source.get("decided_by"))


class Decisions:
    """The decisions of one index; thread-safe (the client is), one per process is enough."""

    def __init__(self, es: Elasticsearch, index: str,
                 read: Callable[[str, Callable], Any] | None = None):
        self.es = es
        self.index = index
        # How lookups are sent: ``read(what, call)`` runs ``call(client)``; the indexer passes
        # ImageStore.read_retrying so that they are retried like its writes.
        self._read = read or (lambda what, call: call(self.es))

    @translated
    def ensure_index(self) -> None:
        if not self.es.indices.exists(index=self.index):
            try:
                self.es.indices.create(index=self.index, body=MAPPING)
            except BadRequestError as exc:  # another process made it first
                if exc.error != "resource_already_exists_exception":
                    raise

    # -- deciding ---------------------------------------------------------------------------

    @translated
    def decide(self, kind: str, *images: str, kept: str | None = None, path: str | None = None,
               by: str | None = None) -> Decision:
        """Record a decision (again: the same document, its time updated)."""
        doc_id = decision_id(kind, *images)
        if kind == "hidden" and (not kept or kept == images[0]):
            raise DecisionError("a hidden image names another image kept in its place")
        decision = Decision(kind, tuple(sorted(images)), _now(), kept, path, by)
        self.ensure_index()
        body = {k: v for k, v in decision.to_json().items() if v is not None}
        self.es.index(index=self.index, id=doc_id, document=body, refresh="wait_for")
        return decision

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

    def distinct(self, pairs: Iterable[tuple[str, str]]) -> set[frozenset[str]]:
        """Those of ``pairs`` that a person said are not duplicates."""
        found = self.find(decision_id("distinct", a, b) for a, b in pairs if a != b)
        return {frozenset(d.images) for d in found.values()}

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
