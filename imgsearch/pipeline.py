"""The indexing pipeline as small generator stages.

    walk -> read (hash, sniff) -> skip known -> decode (+thumbnail) -> embed (batched) -> bulk

(with region vectors, decode also makes the region pass's input, and embed its regions).

Reading and decoding run in a thread pool (Pillow releases the GIL) while the main thread runs
inference, and bulk writes go to a writer thread, so the model is never kept waiting on disk
or on Elasticsearch. Every file ends in exactly one outcome, counted in :class:`RunStats`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
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
    deleted: int = 0
    failed: list[Failure] = field(default_factory=list)
    hashes: set[str] = field(default_factory=set)  # every image content met, for --sync

    def merge(self, other: RunStats) -> None:
        """Add another partition's outcomes to these (its content hashes too, for --sync)."""
        for name in ("seen", "indexed", "already_present", "duplicates", "near_duplicates",
                     "ignored", "deleted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed.extend(other.failed)
        self.hashes |= other.hashes

    @property
    def done(self) -> int:
        return (
            self.indexed + self.already_present + self.duplicates + self.near_duplicates
            + self.ignored + len(self.failed)
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
    exists: Callable[[list[str]], set[str]],
    stats: RunStats,
    group: int = 256,
) -> Iterator[Candidate | Failure]:
    """Drop candidates whose content is already indexed (or met earlier in this run).

    ``exists`` answers for a whole group at once, so a re-run costs one round trip per
    ``group`` files and embeds nothing.
    """

    def flush(buffer: list[Candidate]) -> Iterator[Candidate]:
        present = exists([c.content_hash for c in buffer])
        for c in buffer:
            if c.content_hash in present:
                stats.already_present += 1
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
    rel = Path(c.rel_path)
    folder = rel.parent.as_posix()
    meta = sidecar.get(c.rel_path, {})
    doc = {
        "content_hash": c.content_hash,
        "path": str(c.path),
        "root": str(root),
        "rel_path": c.rel_path,
        "file_name": rel.name,
        "folder": folder,
        # The parent folder is the label unless the sidecar says otherwise.
        "label": meta.get("label") or (rel.parent.name if folder != "." else None),
        "tags": meta.get("tags", []),
        "extra": meta.get("extra"),
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


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
