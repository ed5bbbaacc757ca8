"""Deleting an indexed image whose file stays where it is (a folder indexed or watched).

One function the duplicates' "delete the others" and the write API's ``DELETE
/api/images/<id>`` share: the ``excluded`` decision first (imgsearch/decisions.py: indexing
and the watcher then leave those bytes out until the file changes, so a run racing the
delete cannot bring it back), then the document, whose deletion removes its near-duplicate
pairs too (:meth:`imgsearch.store.ImageStore.delete_ids`). Files are never touched.
"""

from __future__ import annotations

from .decisions import Decisions
from .store import ImageStore


def delete_image(store: ImageStore, decisions: Decisions, doc_id: str, *,
                 index: str | None = None, by: str | None = None) -> dict | None:
    """Delete ``doc_id`` from ``index`` (default: the alias's) and keep its bytes out of later
    indexing; the deleted document's source, or None when it was not indexed."""
    source = store.get(doc_id, index=index)
    if source is None:
        return None
    decisions.decide("excluded", doc_id, path=source.get("path"), by=by)
    store.delete_ids([doc_id], index)
    return source
