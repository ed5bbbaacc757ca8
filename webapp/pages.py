"""Pages for people (search, image detail) and the files they load (thumbnails, originals)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from flask import Blueprint, abort, current_app, render_template, request, send_file, url_for
from markupsafe import Markup, escape

from imgsearch.images import ImageError, read_indexed
from imgsearch.store import IndexMissing

from .auth import public
from .common import check_id, doc_json, service, thumbnails
from .errors import human_size, index_missing

bp = Blueprint("pages", __name__)

RESULT_COUNTS = (12, 24, 48, 96)
# Content-addressed files never change, so browsers may keep them for a year.
IMMUTABLE_MAX_AGE = 365 * 24 * 3600
# Originals the browser can show as they are; anything else is shown as its thumbnail.
BROWSER_TYPES = {
    "JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
    "BMP": "image/bmp",
}


@bp.get("/")
def index():
    """The search page; ``?like=<id>`` opens it on that image's neighbours."""
    svc = service()
    notice = None
    try:
        facets = svc.facets()
    except IndexMissing:
        facets = None
    if facets is None or facets["total"] == 0:
        notice = index_missing(svc.store.alias).message
    like = request.args.get("like", "")
    k = request.args.get("k", type=int)
    return render_template(
        "index.html",
        facets=facets,
        notice=notice,
        selected=request.args,
        like=like if thumbnails().is_key(like) else None,
        # An image's address searched with; the API checks it (it is only ever sent there).
        url=request.args.get("url", "")[:2000] if not like else "",
        # Words searched with (?q=, a tag's link): searched on load, as they cost no model.
        words=request.args.get("q", "")[:200] if not like else "",
        counts=RESULT_COUNTS,
        # Drawing a box on the query is offered only where the index has region vectors.
        regions=svc.serving_regions() if facets else None,
        k=k if k in RESULT_COUNTS else 24,
        max_upload_bytes=svc.settings.max_upload_bytes,
        max_upload=human_size(svc.settings.max_upload_bytes),
    )


@bp.get("/images/<doc_id>")
def detail(doc_id: str):
    source = service().get(check_id(doc_id))
    if source is None:
        abort(404)
    image = doc_json(doc_id, source)
    original = (
        url_for("pages.original", doc_id=doc_id) if source.get("format") in BROWSER_TYPES
        else None
    )
    return render_template("detail.html", image=image, original_url=original)


@bp.get("/images/<doc_id>/file")
def original(doc_id: str):
    """The indexed file itself, only while its bytes still hash to the id (so this can never
    serve anything but the indexed image, whatever the document's path says)."""
    source = service().get(check_id(doc_id))
    if source is None or source.get("format") not in BROWSER_TYPES:
        abort(404)
    try:
        data = read_indexed(doc_id, source.get("path"))
    except ImageError:
        abort(404)  # gone, unreadable, or changed or replaced since it was indexed
    mimetype = BROWSER_TYPES[source["format"]]
    return _immutable(send_file(io.BytesIO(data), mimetype=mimetype, etag=doc_id, conditional=True))


@bp.get("/thumbnails/<name>")
def thumbnail(name: str):
    key = name.removesuffix(".webp")
    # ThumbnailStore.path accepts only 64-hex keys, so no name can leave the store.
    path = thumbnails().path(key) if name.endswith(".webp") else None
    if path is None:
        abort(404)
    return _immutable(send_file(path, mimetype="image/webp", etag=key, conditional=True))


@bp.get("/openapi.yaml")
@public
def openapi():
    path = Path(current_app.root_path) / "openapi.yaml"
    return send_file(path, mimetype="application/yaml", max_age=300)


bp.add_app_template_filter(human_size, "filesize")


@bp.app_template_filter("code_spans")
def code_spans(text: str) -> Markup:
    """Escape ``text`` and show its `backticked` parts (commands to run) as code."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def _immutable(response):
    response.cache_control.public = True
    response.cache_control.max_age = IMMUTABLE_MAX_AGE
    response.cache_control.immutable = True
    response.cache_control.no_cache = None
    return response

