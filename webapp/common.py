"""What the page and API views share: the service, parameter parsing, the hit JSON shape."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import PurePath

from flask import abort, current_app, request, url_for

from imgsearch import telemetry
from imgsearch.explain import Explainer
from imgsearch.filters import Filters
from imgsearch.search import Feedback, SearchResult, SearchService
from imgsearch.tags import classes_among
from imgsearch.thumbnails import ThumbnailStore

from .auth import is_admin
from .errors import Problem, index_missing

DOC_ID = re.compile(r"^[0-9a-f]{64}$")
# Source fields that are not metadata: they are the hit's own top-level keys, or internal.
NOT_METADATA = {"path", "file_name", "thumbnail", "content_hash", "vector"}
# Where a file is on the server: only ``admin`` keys see these (webapp/auth.py).
SERVER_PATHS = {"root"}
KEY_METADATA = (
    "label", "folder", "width", "height", "format", "byte_size", "exif_datetime", "camera",
    "tags", "extra",
)


def service() -> SearchService:
    return current_app.extensions["imgsearch"]


def explainer() -> Explainer:
    return current_app.extensions["imgsearch.explainer"]


def thumbnails() -> ThumbnailStore:
    return current_app.extensions["imgsearch.thumbnails"]


def check_id(doc_id: str) -> str:
    """Ids are content hashes; anything else cannot name an image (so it is a plain 404)."""
    if not DOC_ID.match(doc_id):
        abort(404)
    return doc_id


# Every parameter the search endpoints understand; anything else is a typo or a client
# guessing at features, and is refused (400) rather than silently ignored.
QUERY_PARAMS = frozenset({
    "k", "num_candidates", "offset", "label", "folder", "format", "tag", "model_tag",
    "predicted_label", "min_width",
    "max_width", "min_height", "max_height", "date_from", "date_to", "like", "unlike",
})


def check_params(params, also: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> None:
    """Refuse any parameter outside QUERY_PARAMS, ``also`` (an endpoint's own) and extra.*;
    or, for an endpoint without search options, outside ``only`` (listed in its order)."""
    known = only if only is not None else sorted(QUERY_PARAMS | set(also))
    unknown = sorted(
        name for name in params
        if name not in known
        and (only is not None or not (name.startswith("extra.") and len(name) > 6))
    )
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:5])
        extra = "" if only is not None else " and extra.<column>"
        raise Problem(
            400, "unknown_parameter",
            f"Unknown parameter(s): {shown}. Known: {', '.join(known)}{extra}.",
        )


def query_options(params, default_k: int = 10, also: tuple[str, ...] = ()) -> dict:
    """``k``, ``num_candidates``, ``offset`` and filters from form fields or query args;
    ``also`` names the endpoint's own parameters, which it reads itself."""
    check_params(params, also)
    return {
        "k": whole_number(params, "k", default_k),
        "num_candidates": whole_number(params, "num_candidates", None),
        "offset": whole_number(params, "offset", 0),
        "filters": Filters.from_params(params),
        "feedback": feedback_of(params),
    }


def feedback_of(params) -> Feedback:
    """``like`` / ``unlike``: image ids, repeated or comma-separated, duplicates dropped."""
    marks = {}
    for name in ("like", "unlike"):
        ids = [i.strip() for value in params.getlist(name) for i in value.split(",") if i.strip()]
        bad = next((i for i in ids if not DOC_ID.match(i)), None)
        if bad is not None:
            raise Problem(400, "invalid_parameter",
                          f"{name} must be image ids (64 hex digits), not {bad[:70]!r}")
        marks[name] = tuple(dict.fromkeys(ids))
    return Feedback(**marks)


def whole_number(params, name: str, default):
    """The parameter ``name`` as an int (``default`` when absent or empty); a 400 otherwise."""
    value = params.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise Problem(
            400, "invalid_parameter", f"{name} must be a whole number, not {value[:40]!r}"
        ) from None


def doc_json(doc_id: str, source: dict, **scores) -> dict:
    """One image as the API shows it: scores first, links, then every metadata field. Only
    ``admin`` keys see where the file is on the server; everyone else gets its path below
    the indexed folder, that folder's own name first (:func:`reader_path`)."""
    admin = is_admin()
    metadata = {name: source.get(name) for name in KEY_METADATA}
    metadata.update((k, v) for k, v in source.items()
                    if k not in NOT_METADATA and (admin or k not in SERVER_PATHS))
    return {
        "id": doc_id,
        **scores,
        "path": source.get("path") if admin else reader_path(source),
        "file_name": source.get("file_name"),
        "thumbnail_url": url_for("pages.thumbnail", name=f"{doc_id}.webp"),
        "detail_url": url_for("pages.detail", doc_id=doc_id),
        "similar_url": url_for("api.similar", doc_id=doc_id),
        # What the model saw in it (its ImageNet classes among model_tags), for cards.
        **({"model_classes": classes_among(source["model_tags"])}
           if source.get("model_tags") else {}),
        "metadata": metadata,
    }


def reader_path(source: dict) -> str | None:
    """``<indexed folder's name>/<path below it>``: what a reader may know of where a photo
    is (``clothing/test/shoes/1.jpg``), never the server's directories above it."""
    root, rel = source.get("root"), source.get("rel_path")
    if root and rel:
        return f"{PurePath(root).name}/{rel}"
    return source.get("file_name")


def result_json(result: SearchResult, filters: Filters) -> dict:
    telemetry.observe_stages(result.timings_ms)
    if not result.hits and result.query.get("offset", 0) == 0:
        _check_not_empty()
    return {
        # The model that embedded the query and built the index searched: always one version.
        "model_version": result.model_version,
        "index": result.index,
        "hits": [doc_json(h.id, h.source, score=h.score, cosine=h.cosine,
                          **({"region": h.region} if h.region else {}))
                 for h in result.hits],
        # The same keys for every kind of search; a similar-search neither decodes nor embeds.
        "timings_ms": {"decode": 0.0, "embed": 0.0, **result.timings_ms},
        "query": {**result.query, "filters": filters_json(filters)},
    }


def filters_json(filters: Filters) -> dict:
    """The filters in effect, as their parameter names (only those that are set)."""
    names = {"labels": "label", "folders": "folder", "formats": "format", "tags": "tag",
             "model_tags": "model_tag", "predicted_labels": "predicted_label"}
    out = {}
    for f in fields(filters):
        value = getattr(filters, f.name)
        if f.name == "extra":
            out.update((f"extra.{k}", list(v)) for k, v in value.items())
        elif value not in (None, ()):
            out[names.get(f.name, f.name)] = list(value) if isinstance(value, tuple) else value
    return out


def _check_not_empty() -> None:
    # No hits at all usually means nothing is indexed yet: say how to fix that.
    store = service().store
    if store.count() == 0:
        raise index_missing(store.alias)


def uploaded_image(or_else: str = "") -> bytes:
    """The one file of a multipart request, in the field ``image``; a Problem otherwise
    (``or_else`` names the other way to give the query, if the endpoint has one)."""
    uploads = request.files.getlist("image")
    if not uploads:
        raise Problem(
            400, "missing_image",
            f"Send the photo as a multipart/form-data field named 'image'{or_else}.",
        )
    if len(uploads) > 1 or len(request.files) > 1:
        raise Problem(
            400, "too_many_files", "Send exactly one file, in the field named 'image'."
        )
    data = uploads[0].read()
    if not data:
        raise Problem(400, "empty_upload", "The uploaded file is empty.")
    return data
