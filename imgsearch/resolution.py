"""Resolving near-duplicates: keep one image of a group and hide or delete the others, say
that two images are not duplicates, and undo each.

What is decided is stored as people's decisions (imgsearch/decisions.py, keyed by content
hash, so they hold for every index built from those bytes); what the index of the alias
shows follows at once: a hidden image's document gets ``hidden: true`` (searches leave it
out, imgsearch/search.py), a deleted one goes (imgsearch/removal.py), and the pairs state is
marked changed (imgsearch/pairs.py) so that every worker groups again. Later indexing keeps
them: documents of hidden images are written with ``hidden`` (imgsearch/indexing.py),
excluded bytes are not indexed, and grouping leaves out hidden images and distinct pairs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from elasticsearch import NotFoundError

from .decisions import Decision, DecisionError, Decisions, decision_id
from .esclient import IndexMissing, translated
from .indices import HIDDEN_FIELD
from .pairs import PairState
from .removal import delete_image
from .search import UnknownId
from .store import ImageStore
from .thumbnails import ThumbnailStore
from .uploads import UploadStore

# Images one resolution may hide or delete: a page shows groups of up to a few dozen.
MAX_IMAGES = 100
UNDOABLE = ("hidden", "distinct", "excluded")


@dataclass
class Resolved:
    kept: str
    hidden: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"kept": self.kept, "hidden": self.hidden, "deleted": self.deleted}


class Resolver:
    """Decisions about the duplicates of the index behind the alias."""

    def __init__(self, store: ImageStore, decisions: Decisions, *,
                 uploads: UploadStore | None = None, thumbnails: ThumbnailStore | None = None):
        self.store = store
        self.decisions = decisions
        # Where deleted images' uploaded files and thumbnails go from (imgsearch/removal.py).
        self.uploads = uploads
        self.thumbnails = thumbnails

    def _index(self) -> str:
        index = self.store.indices.current_index()
        if index is None:
            raise IndexMissing(f"no index behind the alias {self.store.alias!r}")
        return index

    def _indexed(self, index: str, ids: list[str]) -> None:
        missing = [i for i in ids if i not in self.store.existing_ids(ids, index)]
        if missing:
            raise UnknownId(f"not indexed: {', '.join(missing[:3])}"
                            + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))

    def keep_one(self, keep: str, *, hide: list[str] = (), delete: list[str] = (),
                 by: str | None = None) -> Resolved:
        """Keep ``keep``; hide the images of ``hide`` (as copies of it) and delete those of
        ``delete`` (their files stay, their bytes are excluded from later indexing)."""
        hide, delete = list(dict.fromkeys(hide)), list(dict.fromkeys(delete))
        if not hide and not delete:
            raise DecisionError("name the images to hide or to delete besides the one kept")
        if len(hide) + len(delete) > MAX_IMAGES:
            raise DecisionError(f"at most {MAX_IMAGES} images a resolution")
        if keep in hide or keep in delete:
            raise DecisionError("the image kept cannot also be hidden or deleted")
        both = set(hide) & set(delete)
        if both:
            raise DecisionError(f"{sorted(both)[0]} is both hidden and deleted; choose one")
        index = self._index()
        self._indexed(index, [keep, *hide, *delete])
        out = Resolved(keep)
        for doc_id in hide:
            self.decisions.decide("hidden", doc_id, kept=keep, by=by)
            self._mark_hidden(index, doc_id, True)
            out.hidden.append(doc_id)
        for doc_id in delete:
            if delete_image(self.store, self.decisions, doc_id, index=index, by=by,
                            uploads=self.uploads, thumbnails=self.thumbnails):
                out.deleted.append(doc_id)
        PairState(self.store.es, index).touch()
        return out

    def distinct(self, a: str, b: str, *, by: str | None = None) -> Decision:
        """``a`` and ``b`` are not duplicates: no group joins them by their pair."""
        decision_id("distinct", a, b)  # two different images, before asking the index
        index = self._index()
        self._indexed(index, [a, b])
        decision = self.decisions.decide("distinct", a, b, by=by)
        PairState(self.store.es, index).touch()
        return decision

    def undo(self, kind: str, images: list[str]) -> bool:
        """Forget a decision: a hidden image is shown again, a distinct pair may group again,
        an excluded image's file is indexed again by the next run (or the watcher). False
        when there was no such decision."""
        if kind not in UNDOABLE:
            raise DecisionError(f"kind must be one of {', '.join(UNDOABLE)}, not {kind[:40]!r}")
        undone = self.decisions.undo(kind, *images)
        index = self.store.indices.current_index()
        if undone and index is not None:
            if kind == "hidden":
                self._mark_hidden(index, images[0], False)
            PairState(self.store.es, index).touch()
        return undone

    @translated
    def _mark_hidden(self, index: str, doc_id: str, hidden: bool) -> None:
        self.store.indices.ensure_hidden_field(index)
        with contextlib.suppress(NotFoundError):  # deleted meanwhile: nothing to mark
            self.store.es.update(index=index, id=doc_id, doc={HIDDEN_FIELD: hidden},
                                 refresh="wait_for")
