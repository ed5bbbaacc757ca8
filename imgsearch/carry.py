"""Carrying a replaced index's images into the new one, before the alias moves to it.

A ``--new-index`` run (a model switch, a rebuild with regions) builds its index from one
folder; the index it replaces also holds photos added through the API (the upload folder),
photos of other folders indexed earlier into the same alias, and metadata set by people.
After that folder's partitions, :func:`carry_over` pages through the replaced index (one
scroll, :data:`PAGE` documents a page), asks the new index which of each page's ids it lacks
(one ``mget``), and re-embeds those images with the new model from their files on disk,
through the indexer's own stages (:func:`imgsearch.indexing.run_partition`, one partition
per root of a page: read, hash, decode, embed, bulk, pairs), each document keeping the
replaced one's label, tags, extra and folder (what a sidecar or a person gave it, which this
run's sidecar knows nothing of). What cannot be carried is named with its reason, never
dropped silently:

- ``gone``: no file at the document's path any more;
- ``changed``: the file now holds other bytes (those are indexed in their place);
- ``excluded``: a person deleted the image through the API (it stays excluded);
- a failure's own reason (``decode_error``, ...): the file is there and cannot be indexed.

The Ray engine's runs carry too, on the driver, after the engine's partitions: carrying is
about the images a folder run did not see, a small share of a rebuild in the usual case.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .decisions import Decisions
from .indexing import Target, run_partition
from .model import ImageModel
from .pipeline import RunStats
from .settings import Settings
from .store import ImageStore

log = logging.getLogger(__name__)

# Documents of the replaced index a page: one mget of the new index for their ids, then their
# images embedded (~70 s for 1,000 on 2 cores, inside the scroll's 30 min keep-alive); the
# page's sources are a few hundred bytes each, so memory stays flat at any index size.
PAGE = 1000
# Kept from each replaced document: what a sidecar or a person gave it (``folder`` too: the
# upload folder's documents say ".", not their hash-prefix folder).
KEPT_FIELDS = ("label", "tags", "extra", "folder")
READ_FIELDS = ["path", "root", "rel_path", *KEPT_FIELDS]


@dataclass
class NotCarried:
    id: str
    path: str | None
    reason: str
    message: str


@dataclass
class CarryResult:
    """What carrying did: the index it read, how many of its documents it looked at, how many
    the new index lacked, how many of those it carried, and why each other one was not."""

    replaced: str | None = None
    looked_at: int = 0
    missing: int = 0
    carried: int = 0
    not_carried: list[NotCarried] = field(default_factory=list)
    stats: RunStats = field(default_factory=RunStats)  # the carrying partitions', merged
    embedded: int = 0
    aborted: str | None = None

    @property
    def failed(self) -> list[NotCarried]:
        """The images not carried because indexing their file failed (not gone, changed or
        excluded): failures of this run."""
        return [n for n in self.not_carried if n.reason not in ("gone", "changed", "excluded")]

    def to_json(self) -> dict:
        return {"replaced": self.replaced, "looked_at": self.looked_at,
                "missing": self.missing, "carried": self.carried,
                "not_carried": [vars(n) for n in self.not_carried]}


def carry_over(store: ImageStore, target: Target, *, settings: Settings,
               embedder: ImageModel, indexed_at: str) -> CarryResult:
    """Carry into ``target.index`` the images of the index it replaces that it lacks (see the
    module's text); nothing to do for a run that replaces no index. A partition that stops
    (Elasticsearch away, an interrupt) stops carrying: ``aborted`` says why, and the alias
    must not move (a re-run of the same command carries everything again)."""
    result = CarryResult(target.replaces)
    if not target.new_index or not target.replaces or target.replaces == target.index:
        return result
    decisions = Decisions(store.es, settings.image_decisions_index, read=store.read_retrying)
    for page in store.source_pages(target.replaces, READ_FIELDS, PAGE):
        result.looked_at += len(page)
        present = store.existing_ids([doc_id for doc_id, _ in page], index=target.index)
        missing = [(doc_id, source) for doc_id, source in page if doc_id not in present]
        result.missing += len(missing)
        if not missing:
            continue
        excluded = decisions.excluded(doc_id for doc_id, _ in missing)
        by_root: dict[str, list[tuple[str, dict]]] = defaultdict(list)
        for doc_id, source in missing:
            path = source.get("path")
            if doc_id in excluded:
                result.not_carried.append(NotCarried(
                    doc_id, path, "excluded", "deleted by a person through the API: it stays "
                    "excluded"))
            elif not path or not source.get("root") or not os.path.isfile(path):
                result.not_carried.append(NotCarried(
                    doc_id, path, "gone", "no file at its path any more: its image cannot be "
                    "embedded by the new model"))
            else:
                by_root[source["root"]].append((doc_id, source))
        for root, items in by_root.items():
            if not _carry_root(store, target, Path(root), items, result, settings=settings,
                               embedder=embedder, indexed_at=indexed_at):
                return result
        log.info("carrying from %s: %d looked at, %d carried, %d not", target.replaces,
                 result.looked_at, result.carried, len(result.not_carried))
    return result


def _carry_root(store: ImageStore, target: Target, root: Path, items: list[tuple[str, dict]],
                result: CarryResult, *, settings: Settings, embedder: ImageModel,
                indexed_at: str) -> bool:
    """One partition of ``items`` (documents below ``root`` whose files exist); False when it
    stopped early (``result.aborted`` says why)."""
    kept = {source["rel_path"]: {f: source.get(f) for f in KEPT_FIELDS} for _, source in items}
    part = run_partition([Path(source["path"]) for _, source in items], root, target,
                         settings=settings, embedder=embedder, store=store,
                         indexed_at=indexed_at, record_paths=True, kept=kept)
    result.stats.merge(part.stats)
    result.embedded += part.embedded
    if part.aborted:
        result.aborted = part.aborted
        return False
    failed = {f.rel_path: f for f in part.stats.failed}
    read = part.stats.by_path or {}
    for doc_id, source in items:
        rel, path = source["rel_path"], source["path"]
        now = read.get(rel)
        if rel in failed:
            result.not_carried.append(NotCarried(doc_id, path, failed[rel].reason,
                                                 failed[rel].message))
        elif now == doc_id:
            result.carried += 1
        elif now is None:  # not read as an image: a file that is no image any more
            result.not_carried.append(NotCarried(
                doc_id, path, "changed", "the file is no longer an image"))
        else:
            result.not_carried.append(NotCarried(
                doc_id, path, "changed", f"the file now holds other bytes ({now[:12]}...), "
                "indexed in their place"))
    return True
