"""Near-duplicate groups and their resolution: the ``/duplicates`` page and ``/api/duplicates``.

Groups are read from the pairs kept as images are indexed (:class:`imgsearch.duplicates.
DuplicateGroups`, ``app.extensions``): no request groups the whole collection. Resolving
(``write`` key, webapp/auth.py) goes through :class:`imgsearch.resolution.Resolver`: keep one
image of a group and hide or delete the others, say that two images are not duplicates, undo.
The API takes JSON or form fields and answers JSON; the page's forms post to the ``/duplicates/
...`` twins, which answer with a redirect back to the page (the app's cross-site checks apply
to every POST, webapp/__init__.py).
"""

from __future__ import annotations

import math

from flask import (
    Blueprint,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from imgsearch.decisions import Decisions
from imgsearch.duplicates import DuplicateGroups, GroupsPage, check_threshold
from imgsearch.resolution import Resolver

from .auth import WRITE, principal, requires
from .common import DOC_ID, check_params, doc_json, whole_number
from .errors import Problem, index_missing

bp = Blueprint("duplicates", __name__)

PARAMS = ("threshold", "limit", "offset")
DEFAULT_LIMIT = 20  # groups a page or response
MAX_LIMIT = 100
MAX_OFFSET = 100_000
# Decisions listed on the page and by GET /api/duplicates/decisions, newest first.
DECISIONS_LISTED = 100


def groups() -> DuplicateGroups:
    return current_app.extensions["imgsearch.duplicates"]


def resolver() -> Resolver:
    return current_app.extensions["imgsearch.resolver"]


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


def _page(options: dict) -> GroupsPage:
    page = groups().page(options["threshold"], limit=options["limit"],
                         offset=options["offset"])
    if page.documents == 0:
        raise index_missing(groups().store.alias)
    return page


def page_json(page: GroupsPage, limit: int, offset: int) -> dict:
    kept = page.kept
    return {
        "model_version": page.model_version,  # of the vectors compared
        "index": kept.index,
        "threshold": kept.threshold,
        "floor": kept.floor,
        "documents": page.documents,
        "unvisited": page.unvisited,
        "total_groups": len(kept.components),
        "images_in_groups": kept.images,
        "pairs": kept.pairs,
        "computed_at": kept.computed_at,  # when the pairs state last changed
        "seconds": round(kept.seconds, 3),
        "cached": page.cached,
        "limit": limit,
        "offset": offset,
        "groups": [
            {"size": g.size, "min_cosine": g.min_cosine,
             "members": [doc_json(m.id, m.source, cosine=m.cosine) for m in g.members]}
            for g in page.groups
        ],
    }


@bp.get("/api/duplicates")
def api():
    """Groups of near-duplicate images, largest first, each member with its cosine to the
    group's first (the member most like the others)."""
    options = _options(request.args)
    return jsonify(page_json(_page(options), options["limit"], options["offset"]))


# -- resolving ---------------------------------------------------------------------------------


def _body() -> dict[str, list[str]]:
    """The request's fields as lists of strings: a JSON object (a string or a list of strings
    a field) or form fields (repeated, or comma-separated)."""
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise Problem(400, "invalid_parameter", "Send a JSON object.")
        out: dict[str, list[str]] = {}
        for name, value in body.items():
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) for v in values):
                raise Problem(400, "invalid_parameter",
                              f"{name[:40]!r} must be a string or a list of strings")
            out[name] = values
        return out
    page_form = request.endpoint.startswith("duplicates.page_")  # its forms say ``back`` too
    return {name: [part.strip() for v in request.form.getlist(name) for part in v.split(",")
                   if part.strip()]
            for name in request.form if not (page_form and name == "back")}


def _ids(body: dict, name: str, *, required: bool = False) -> list[str]:
    values = body.get(name, [])
    if required and not values:
        raise Problem(400, "invalid_parameter", f"{name} is required")
    for v in values:
        if not DOC_ID.match(v):
            raise Problem(400, "invalid_parameter",
                          f"{name} must name images by id (64 hex digits), not {v[:70]!r}")
    return values


def _only(body: dict, names: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise Problem(400, "unknown_parameter",
                      f"Unknown field(s): {', '.join(repr(n[:40]) for n in unknown[:5])}. "
                      f"Known: {', '.join(names)}.")


def _by() -> str | None:
    p = principal()
    return p.name if p else None


def _resolve() -> dict:
    body = _body()
    _only(body, ("keep", "hide", "delete"))
    keep = _ids(body, "keep", required=True)
    if len(keep) != 1:
        raise Problem(400, "invalid_parameter", "keep names one image")
    done = resolver().keep_one(keep[0], hide=_ids(body, "hide"), delete=_ids(body, "delete"),
                               by=_by())
    current_app.logger.info("duplicates resolved by %r: kept %s, hid %d, deleted %d", _by(),
                            done.kept, len(done.hidden), len(done.deleted))
    return done.to_json()


def _distinct() -> dict:
    body = _body()
    _only(body, ("images",))
    images = _ids(body, "images", required=True)
    if len(images) != 2:
        raise Problem(400, "invalid_parameter", "images names the two images of the pair")
    return resolver().distinct(*images, by=_by()).to_json()


def _undo() -> dict:
    body = _body()
    _only(body, ("kind", "images"))
    kind = body.get("kind", [""])
    if len(kind) != 1:
        raise Problem(400, "invalid_parameter", "kind is one of hidden, distinct, excluded")
    images = _ids(body, "images", required=True)
    return {"kind": kind[0], "images": sorted(images),
            "undone": resolver().undo(kind[0], images)}


@bp.post("/api/duplicates/resolve")
@requires(WRITE)
def api_resolve():
    """Keep one image; hide (``hide``) or delete (``delete``) the others."""
    return jsonify(_resolve())


@bp.post("/api/duplicates/distinct")
@requires(WRITE)
def api_distinct():
    """Two images (``images``) are not duplicates."""
    return jsonify(_distinct())


@bp.post("/api/duplicates/undo")
@requires(WRITE)
def api_undo():
    """Forget a decision (``kind`` and its ``images``)."""
    return jsonify(_undo())


@bp.get("/api/duplicates/decisions")
@requires(WRITE)
def api_decisions():
    """The hidden images and the distinct pairs, newest first."""
    return jsonify({"decisions": [d.to_json() for d in _decisions()]})


def _decisions():
    store: Decisions = resolver().decisions
    found = store.all("hidden", size=DECISIONS_LISTED) + store.all("distinct",
                                                                     size=DECISIONS_LISTED)
    found.sort(key=lambda d: d.decided_at, reverse=True)
    return found[:DECISIONS_LISTED]


# -- the page ----------------------------------------------------------------------------------


def _back() -> str:
    """Where a form returns to: the duplicates page it was posted from."""
    back = request.form.get("back", "")
    return back if back.startswith("/duplicates") and "//" not in back else url_for(
        "duplicates.page")


@bp.post("/duplicates/resolve")
@requires(WRITE)
def page_resolve():
    """A group's form: the image to ``keep`` of its ``members``, and ``action`` (hide or
    delete) for the others."""
    back = _back()
    body = _body()
    _only(body, ("keep", "members", "action"))
    keep, members = _ids(body, "keep", required=True), _ids(body, "members", required=True)
    action = body.get("action", [""])
    if len(keep) != 1 or action not in (["hide"], ["delete"]):
        raise Problem(400, "invalid_parameter",
                      "choose one image to keep, and hide or delete the others")
    others = [m for m in members if m != keep[0]]
    resolver().keep_one(keep[0], by=_by(), **{action[0]: others})
    return redirect(back, code=303)


@bp.post("/duplicates/distinct")
@requires(WRITE)
def page_distinct():
    back = _back()
    _distinct()
    return redirect(back, code=303)


@bp.post("/duplicates/undo")
@requires(WRITE)
def page_undo():
    back = _back()
    _undo()
    return redirect(back, code=303)


@bp.get("/duplicates")
def page():
    options = _options(request.args)
    body = page_json(_page(options), options["limit"], options["offset"])
    limit, offset = options["limit"], options["offset"]

    def link(to: int) -> str:
        args = {"offset": to} if to else {}
        if options["threshold"] is not None:
            args["threshold"] = options["threshold"]
        return url_for("duplicates.page", limit=limit if limit != DEFAULT_LIMIT else None,
                       **args)

    p = principal()
    can_resolve = p is not None and p.allows(WRITE)
    pages = max(1, math.ceil(body["total_groups"] / limit))
    return render_template(
        "duplicates.html", report=body, default_threshold=groups().default_threshold,
        page_number=offset // limit + 1, pages=pages,
        previous_url=link(max(0, offset - limit)) if offset > 0 else None,
        next_url=link(offset + limit) if offset + limit < body["total_groups"] else None,
        can_resolve=can_resolve, back=request.full_path.rstrip("?"),
        decisions=_decisions() if can_resolve else [],
    )
