"""Deleting an indexed image, as the write API's ``DELETE /api/images/<id>`` does
(webapp/images.py), for the duplicates' "delete the others".

A photo added through the API (its file in the upload folder) goes with its file. Any other
file stays where it is (a folder indexed or watched is never touched): the ``excluded``
decision first (imgsearch/decisions.py: indexing and the watcher then leave those bytes out
until the file changes, so a run racing the delete cannot bring it back), then the document.
Either way the document's deletion removes its near-duplicate pairs too
(:meth:`imgsearch.store.ImageStore.delete_ids`), and its thumbnail goes.
"""

from __future__ import annotations

from .decisions import Decisions
from .store import ImageStore
from .thumbnails import ThumbnailStore
from .uploads import UploadStore


def delete_image(store: ImageStore, decisions: Decisions, doc_id: str, *,
                 index: str | None = None, by: str | None = None,
                 uploads: UploadStore | None = None,
                 thumbnails: ThumbnailStore | None = None) -> dict | None:
    """Delete ``doc_id`` from ``index`` (default: the alias's): an upload with its file,
    anything else with its bytes kept out of later indexing. The deleted document's source,
    or None when it was not indexed."""
    source = store.get(doc_id, index=index)
    if source is None:
        return None
    path = source.get("path")
    uploaded = uploads is not None and uploads.holds(path)
    if not uploaded:
        decisions.decide("excluded", doc_id, path=path, by=by)
    store.delete_ids([doc_id], index)
    if uploaded:
        uploads.remove(path)
    if thumbnails is not None:
        thumbnails.remove(doc_id)
    return source
