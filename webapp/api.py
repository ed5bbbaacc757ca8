"""The JSON API (documented in ``webapp/openapi.yaml``); the search page uses it too."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from imgsearch.regions import parse_box

from .common import check_id, doc_json, query_options, result_json, service
from .errors import Problem

bp = Blueprint("api", __name__)


@bp.post("/api/search")
def search():
    """Nearest indexed images to an uploaded photo (multipart field ``image``), or to the part
    of it that ``box=x0,y0,x1,y1`` (fractions of the photo) marks, by region vectors."""
    uploads = request.files.getlist("image")
    if not uploads:
        raise Problem(
            400, "missing_image", "Send the photo as a multipart/form-data field named 'image'."
        )
    if len(uploads) > 1 or len(request.files) > 1:
        raise Problem(
            400, "too_many_files", "Send exactly one file, in the field named 'image'."
        )
    upload = uploads[0]
    data = upload.read()
    if not data:
        raise Problem(400, "empty_upload", "The uploaded file is empty.")
    options = query_options(request.values, also=("box",))
    box = request.values.get("box", "")
    result = service().search_image(data, box=parse_box(box) if box else None, **options)
    return jsonify(result_json(result, options["filters"]))


@bp.get("/api/images/<doc_id>")
def image(doc_id: str):
    source = service().get(check_id(doc_id))
    if source is None:
        raise _unknown(doc_id)
    return jsonify({"model_version": service().model.version, **doc_json(doc_id, source)})


@bp.get("/api/images/<doc_id>/similar")
def similar(doc_id: str):
    """"More like this": neighbours by the stored vector, the image itself left out."""
    options = query_options(request.args)
    result = service().similar(check_id(doc_id), **options)
    if result is None:
        raise _unknown(doc_id)
    return jsonify(result_json(result, options["filters"]))


@bp.get("/api/facets")
def facets():
    return jsonify({"model_version": service().model.version, **service().facets()})


@bp.get("/healthz")
def healthz():
    report = service().health()
    return jsonify({"model_version": report["serving"]["model_version"], **report}), (
        200 if report["ok"] else 503
    )


def _unknown(doc_id: str) -> Problem:
    return Problem(404, "not_found", f"No indexed image has the id {doc_id}.")
