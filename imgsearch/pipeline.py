"""The indexing pipeline as small generator stages.

    walk -> read (hash, sniff) -> skip known -> decode (+thumbnail) -> embed (batched) -> bulk

(with region vectors, decode also makes the region pass's input, and embed its regions).

Reading and decoding run in a thread pool (Pillow releases the GIL) while the main thread runs
inference, and bulk writes go to a writer thread, so the model is never kept waiting on disk
or on Elasticsearch. Every file ends in exactly one outcome, counted in :class:`RunStats`.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .images import (
    DecodedImage,
    ImageError,
    content_hash,
    read_bytes,
    sniff_format,
)
from .model import ImageModel
from .regions import RegionMode, Regions
from .thumbnails import ThumbnailStore
from .walk import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


@dataclass
class Failure:
    rel_path: str
    reason: str
    message: str


@dataclass
class Ignored:
    rel_path: str


@dataclass
class Candidate:
    path: Path
    rel_path: str
    data: bytes
    content_hash: str


@dataclass
class Decoded:
    candidate: Candidate
    image: DecodedImage
    thumbnail_ref: str
    region_input: np.ndarray | None = None  # the region pass's input, when indexing regions
    tags: dict | None = None  # the model's tag fields (imgsearch/tags.py), when it tags


@dataclass
class RunStats:
    seen: int = 0
    indexed: int = 0
    already_present: int = 0
    duplicates: int = 0  # same content as another file of this run
    # Skipped with --skip-near-duplicates: an indexed image, or one of this run, is that close.
    near_duplicates: int = 0
    ignored: int = 0
    # Bytes a person deleted through the API while their file stayed (imgsearch/decisions.py,
    # "excluded"): never indexed again until the file changes.
    excluded: int = 0
    deleted: int = 0
    # Of the already present: found at another path than their document's, whose file is
    # gone (a moved file), and given the new path without being embedded again.
    moved: int = 0
    failed: list[Failure] = field(default_factory=list)
    hashes: set[str] = field(default_factory=set)  # every image content met, for --sync
    # rel_path -> content hash of every file read, when the caller asks (the watcher keeps
    # them in its state); None otherwise: a million paths would cost ~250 MB for nothing.
    by_path: dict[str, str] | None = None

    def merge(self, other: RunStats) -> None:
        """Add another partition's outcomes to these (its content hashes too, for --sync)."""
        for name in ("seen", "indexed", "already_present", "duplicates", "near_duplicates",
                     "ignored", "excluded", "deleted", "moved"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed.extend(other.failed)
        self.hashes |= other.hashes
        if other.by_path is not None:
            self.by_path = {**(self.by_path or {}), **other.by_path}

    @property
    def done(self) -> int:
        return (
            self.indexed + self.already_present + self.duplicates + self.near_duplicates
            + self.ignored + self.excluded + len(self.failed)
        )


def ordered_map(fn: Callable, items: Iterable, pool: Executor, window: int) -> Iterator:
    """``map(fn, items)`` on ``pool``, in order, with at most ``window`` items in flight."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def read_file(path: Path, root: Path) -> Candidate | Failure | Ignored:
    """Read one file, hash it, and decide from its bytes whether it is an image."""
    rel = path.relative_to(root).as_posix()
    try:
        data = read_bytes(path)
    except ImageError as exc:
        return Failure(rel, exc.reason, str(exc))
    if sniff_format(data) is None:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return Failure(
                rel, "not_an_image", "content is not a supported image (JPEG, PNG, GIF, WebP, "
                "BMP or TIFF) whatever its name says"
            )
        return Ignored(rel)
    return Candidate(path, rel, data, content_hash(data))


def skip_known(
    items: Iterable[Candidate | Failure | Ignored],
    exists: Callable[[list[str]], set[str] | Mapping[str, dict]],
    stats: RunStats,
    group: int = 256,
    *,
    excluded: Callable[[list[str]], set[str]] | None = None,
    relocate: Callable[[Candidate, dict], None] | None = None,
) -> Iterator[Candidate | Failure]:
    """Drop candidates whose content is already indexed (or met earlier in this run), and
    those whose bytes are ``excluded`` (deleted by a person: imgsearch/decisions.py).

    ``exists`` answers for a whole group at once, so a re-run costs one round trip per
    ``group`` files and embeds nothing; ``excluded`` one more, for the group's new contents
    only. When ``exists`` answers with each document's stored path fields (a mapping),
    ``relocate`` hears of each indexed image met at another path than its document's whose
    file is gone: a moved file, whose document keeps its vector and takes the new path.
    """

    def flush(buffer: list[Candidate]) -> Iterator[Candidate]:
        present = exists([c.content_hash for c in buffer])
        fresh = []
        for c in buffer:
            if c.content_hash not in present:
                fresh.append(c)
                continue
            stats.already_present += 1
            if relocate is not None and isinstance(present, Mapping):
                stored = present[c.content_hash]
                if moved_from(stored, c.path):
                    relocate(c, stored)
        refused = excluded([c.content_hash for c in fresh]) if excluded and fresh else set()
        for c in fresh:
            if c.content_hash in refused:
                stats.excluded += 1
                log.info("skipped %s: its image was deleted by a person (excluded until the "
                         "file changes)", c.rel_path)
            else:
                yield c

    buffer: list[Candidate] = []
    for item in items:
        if isinstance(item, Ignored):
            stats.ignored += 1
            continue
        if isinstance(item, Failure):
            yield item
            continue
        if stats.by_path is not None:
            stats.by_path[item.rel_path] = item.content_hash
        if item.content_hash in stats.hashes:
            stats.duplicates += 1
            continue
        stats.hashes.add(item.content_hash)
        buffer.append(item)
        if len(buffer) >= group:
            yield from flush(buffer)
            buffer = []
    if buffer:
        yield from flush(buffer)


def moved_from(stored: dict, path: Path) -> bool:
    """Whether a document (its stored fields) met again at ``path`` is a moved file's: its own
    path is another one, where no file is any more. A copy at a second path while the first
    still exists is not a move: the document keeps the path it has."""
    old = stored.get("path")
    return old != str(path) and not (old and os.path.isfile(old))


def make_decoder(
    model: ImageModel, thumbnails: ThumbnailStore, thumbnail_size: int, max_pixels: int,
    regions: RegionMode | None = None,
) -> Callable:
    """The per-file decode step: ``model``'s input, metadata, and the thumbnail written to the
    store, plus the region pass's input in ``regions`` mode; images over ``max_pixels`` are
    refused from their header."""

    def decode(item: Candidate | Failure) -> Decoded | Failure:
        if isinstance(item, Failure):
            return item
        try:
            image = model.decode(item.data, thumbnail_size=thumbnail_size, max_pixels=max_pixels)
            # A second decode, of the whole frame at the region pass's size: 5-10 ms of a
            # core against ~100 ms of region inference a photo, and in a decode thread.
            region_input = model.region_input(item.data, regions) if regions else None
        except ImageError as exc:
            return Failure(item.rel_path, exc.reason, str(exc))
        ref = thumbnails.put(item.content_hash, image.thumbnail)
        return Decoded(item, image, ref, region_input)

    return decode


def batches(
    items: Iterable[Decoded | Failure], size: int, stats: RunStats
) -> Iterator[list[Decoded]]:
    """Group decoded images into batches for the model; failures are recorded on the way."""
    batch: list[Decoded] = []
    for item in items:
        if isinstance(item, Failure):
            stats.failed.append(item)
            continue
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_batches(
    groups: Iterable[list[Decoded]],
    embed: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, list[dict] | None]],
    embed_regions: Callable[[list[np.ndarray]], list[Regions]] | None = None,
) -> Iterator[tuple[list[Decoded], np.ndarray, list[Regions] | None]]:
    """Each batch with its global vectors, and its region vectors when ``embed_regions`` is
    given (the model's ``region_vectors`` in the index's mode). ``embed`` may be the model's
    ``embed_and_tag``: each image's tag fields then ride on its :class:`Decoded`."""
    for group in groups:
        pixels = np.stack([d.image.pixels for d in group])
        vectors = embed(pixels)
        if isinstance(vectors, tuple):
            vectors, tags = vectors
            for d, fields in zip(group, tags or (), strict=False):
                d.tags = fields
        regions = embed_regions([d.region_input for d in group]) if embed_regions else None
        yield group, vectors, regions


def to_document(
    item: Decoded,
    vector: np.ndarray,
    *,
    root: Path,
    sidecar: dict[str, dict],
    model_version: str,
    indexed_at: str,
    regions: Regions | None = None,
    hidden: bool = False,
) -> dict:
    c, img = item.candidate, item.image
    doc = {
        "content_hash": c.content_hash,
        **path_fields(c.path, c.rel_path, root=root, sidecar=sidecar),
        **metadata_fields(c.rel_path, sidecar.get(c.rel_path)),
        "width": img.width,
        "height": img.height,
        "format": img.format,
        "mode": img.mode,
        "byte_size": len(c.data),
        "frames": img.frames,
        "exif_datetime": img.exif_datetime,
        "camera": img.camera,
        "thumbnail": item.thumbnail_ref,
        "model_version": model_version,
        "indexed_at": indexed_at,
        # Hidden as a copy of another image (imgsearch/decisions.py): kept out of searches.
        "hidden": True if hidden else None,
        "vector": vector.astype(np.float32, copy=False),  # serialised as float32 (store.py)
        "regions": [
            {"vector": v, "box": [round(b, 6) for b in box]}
            for v, box in zip(regions.vectors, regions.boxes, strict=True)
        ] if regions is not None else None,
    }
    doc.update(item.tags or {})
    return {k: v for k, v in doc.items() if v is not None}


def folder_label(rel_path: str) -> str | None:
    """The label a file gets from where it lies: its parent folder's name (none at the top)."""
    rel = Path(rel_path)
    return rel.parent.name if rel.parent.as_posix() != "." else None


def path_fields(path: Path, rel_path: str, *, root: Path, sidecar: dict[str, dict]) -> dict:
    """The fields of a document that come from where its file lies (and its label: the
    parent folder unless the sidecar says otherwise)."""
    rel = Path(rel_path)
    return {
        "path": str(path),
        "root": str(root),
        "rel_path": rel_path,
        "file_name": rel.name,
        "folder": rel.parent.as_posix(),
        "label": metadata_fields(rel_path, sidecar.get(rel_path))["label"],
    }


def metadata_fields(rel_path: str, row: dict | None) -> dict:
    """The metadata fields a document of the file at ``rel_path`` gets from its sidecar row
    (None: it has none), each given, so that a partial update replaces all three (the
    watcher's, of an edited sidecar): the label falls back to the parent folder's name, no
    tags, no extra."""
    row = row or {}
    return {"label": row.get("label") or folder_label(rel_path), "tags": row.get("tags", []),
            "extra": row.get("extra")}


def relocated_fields(path: Path, rel_path: str, *, root: Path, sidecar: dict[str, dict],
                     stored: dict) -> dict:
    """The partial update of a document whose file now lies at ``path``: its path fields, and
    its label if the label came from the old folder's name; a label given otherwise (the
    sidecar, a person through the API) stays."""
    fields = path_fields(path, rel_path, root=root, sidecar=sidecar)
    given = stored.get("label") != folder_label(stored.get("rel_path") or "")
    if given and not sidecar.get(rel_path, {}).get("label"):
        fields["label"] = stored.get("label")
    return fields


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
