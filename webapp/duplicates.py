"""Near-duplicate groups: the ``/duplicates`` page and ``GET /api/duplicates``.

Both read :class:`imgsearch.duplicates.DuplicateFinder` (``app.extensions``), which computes the
groups of the index behind the alias once per index, document count and threshold, and keeps
them: the first request after indexing waits for one kNN query a document, the rest are
served from memory.
"""

from __future__ import annotations

import math

from flask import Blueprint, current_app, jsonify, render_template, request, url_for

from imgsearch.duplicates import DuplicateFinder, DuplicateReport, check_threshold

from .common import check_params, doc_json, whole_number
from .errors import Problem, index_missing

bp = Blueprint("duplicates", __name__)

PARAMS = ("threshold", "limit", "offset")
DEFAULT_LIMIT = 20  # groups a page or response
MAX_LIMIT = 100
MAX_OFFSET = 100_000


def finder() -> DuplicateFinder:
    return current_app.extensions["imgsearch.duplicates"]


def _options(params) -> dict:
    """``threshold`` (None: the setting's), ``limit`` and ``offset``, each checked (400
    ``unknown_parameter`` / ``invalid_parameter`` with what is allowed)."""
    check_params(params, only=PARAMS)
    threshold = params.get("threshold", "")
    if threshold != "":
        try:
            value = float(threshold)
        except ValueError:
            raise Problem(400, "invalid_parameter",
                          f"threshold must be a number, not {threshold[:40]!r}") from None
        threshold = check_threshold(value)  # a cosine in range, else QueryError (400)
    out = {"threshold": threshold if threshold != "" else None,
           "limit": whole_number(params, "limit", DEFAULT_LIMIT),
           "offset": whole_number(params, "offset", 0)}
    if not 1 <= out["limit"] <= MAX_LIMIT:
        raise Problem(400, "invalid_parameter", f"limit must be between 1 and {MAX_LIMIT}")
    if not 0 <= out["offset"] <= MAX_OFFSET:
        raise Problem(400, "invalid_parameter", f"offset must be between 0 and {MAX_OFFSET}")
    return out


def _report(threshold: float | None) -> tuple[DuplicateReport, bool]:
    report, cached = finder().report(threshold)
    if report.documents == 0:
        raise index_missing(finder().store.alias)
    return report, cached


def report_json(report: DuplicateReport, cached: bool, limit: int, offset: int) -> dict:
    return {
        "model_version": report.model_version,  # of the vectors compared
        "index": report.index,
        "threshold": report.threshold,
        "documents": report.documents,
        "total_groups": len(report.groups),
        "images_in_groups": report.images,
        "computed_at": report.computed_at,
        "seconds": round(report.seconds, 3),
        "cached": cached,
        "limit": limit,
        "offset": offset,
        "groups": [
            {"size": g.size, "min_cosine": g.min_cosine,
             "members": [doc_json(m.id, m.source, cosine=m.cosine) for m in g.members]}
            for g in report.groups[offset : offset + limit]
        ],
    }


@bp.get("/api/duplicates")
def api():
    """Groups of near-duplicate images, largest first, each member with its cosine to the
    group's first (the member most like the others)."""
    options = _options(request.args)
    report, cached = _report(options["threshold"])
    return jsonify(report_json(report, cached, options["limit"], options["offset"]))


@bp.get("/duplicates")
def page():
    options = _options(request.args)
    report, cached = _report(options["threshold"])
    body = report_json(report, cached, options["limit"], options["offset"])
    limit, offset = options["limit"], options["offset"]

    def link(to: int) -> str:
        args = {"offset": to} if to else {}
        if options["threshold"] is not None:
            args["threshold"] = options["threshold"]
        return url_for("duplicates.page", limit=limit if limit != DEFAULT_LIMIT else None,
                       **args)

    pages = max(1, math.ceil(body["total_groups"] / limit))
    return render_template(
        "duplicates.html", report=body, default_threshold=finder().default_threshold,
        page_number=offset // limit + 1, pages=pages,
        previous_url=link(max(0, offset - limit)) if offset > 0 else None,
        next_url=link(offset + limit) if offset + limit < body["total_groups"] else None,
    )
