"""A folder indexed by the product's indexer into a throwaway alias, for benchmarks."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgsearch.settings import Settings
from imgsearch.store import ImageStore
from indexer.index import IndexReport, index_folder


@contextmanager
def indexed_folder(root: Path, settings: Settings, embedder,
                   name: str) -> Iterator[tuple[Settings, ImageStore, IndexReport]]:
    """``(settings, store, report)`` for ``root`` indexed into the alias
    ``bench-<name>-<random>`` (Elasticsearch at ES_URL) with thumbnails in a temporary folder;
    its indices and thumbnails are removed afterwards."""
    with tempfile.TemporaryDirectory() as thumbs:
        local = settings.with_(es_index=f"bench-{name}-{uuid.uuid4().hex[:8]}",
                               thumbnail_dir=Path(thumbs))
        store = ImageStore.from_settings(local)
        try:
            report = index_folder(root, settings=local, embedder=embedder, store=store,
                                  progress=False)
            yield local, store, report
        finally:
            store.es.indices.delete(index=f"{local.es_index}-*", ignore_unavailable=True)
