"""The JSON API (documented in ``webapp/openapi.yaml``); the search page uses it too."""

from __future__ import annotations

from contextlib import contextmanager

from flask import Blueprint, Response, current_app, jsonify, request

from imgsearch.explain import SIDES, heatmap_png
from imgsearch.fetch import REFUSALS, FetchedImage, FetchError, UrlFetcher
from imgsearch.images import ImageError
from imgsearch.regions import parse_box
from imgsearch.search import check_limits

from .auth import is_admin, public
from .common import (
    DOC_ID,
    check_id,
    check_params,
    doc_json,
    explainer,
    query_options,
    result_json,
    service,
    uploaded_image,
)
from .errors import Problem

bp = Blueprint("api", __name__)


@bp.post("/api/search")
def search():
    """Nearest indexed images to an uploaded photo (multipart field ``image``) or to the image
    at ``url``, or to the part of it that ``box=x0,y0,x1,y1`` (fractions of the photo) marks,
    by region vectors."""
    if "url" in request.values:
        return _search_url()
    if "q" in request.values and not request.files:
        return _search_words()
    data = uploaded_image(or_else=", or its address as 'url', or words as 'q'")
    options = query_options(request.values, also=("box", "q"))
    box = request.values.get("box", "")
    result = service().search_image(data, box=parse_box(box) if box else None,
                                    words=_words(), **options)
    return jsonify(result_json(result, options["filters"]))


def _words() -> str | None:
    """The words of ``q`` (one field; empty is none)."""
    values = request.values.getlist("q")
    if len(values) > 1:
        raise Problem(400, "invalid_parameter", "Send the words as one field 'q'.")
    return values[0].strip() or None if values else None


def _search_words():
    """Images ranked by their tags' match with the words of ``q`` alone."""
    options = query_options(request.values, also=("q",))
    words = _words()
    if words is None:
        raise Problem(400, "missing_query",
                      "Say what to search for: words in 'q', a photo in the field 'image', "
                      "or its address as 'url'.")
    if options.pop("num_candidates") is not None or options.pop("feedback"):
        raise Problem(400, "invalid_parameter",
                      "num_candidates, like and unlike refine searches with a photo; a search "
                      "by words alone takes k, offset and the filters.")
    result = service().search_words(words, **options)
    return jsonify(result_json(result, options["filters"]))


def _search_url():
    """Search with the image at ``url``, fetched by the server with the guards of
    ``imgsearch/fetch.py``. Every other parameter is checked before anything is fetched, and
    what is fetched is only searched with, never stored."""
    urls = request.values.getlist("url")
    if request.files:
        raise Problem(
            400, "image_and_url", "Send either a file in the field 'image' or a 'url', not both."
        )
    if len(urls) > 1:
        raise Problem(400, "too_many_urls", "Send one 'url'.")
    options = query_options(request.values, also=("box", "url", "q"))
    check_limits(options["k"], options["num_candidates"], options["offset"])
    box = request.values.get("box", "")
    box = parse_box(box) if box else None
    fetched = _fetched(urls[0])
    with _image_at_url():
        result = service().search_image(fetched.data, box=box, words=_words(), **options)
    result.query["url"] = fetched.url
    return jsonify(result_json(result, options["filters"]))


def _fetched(url: str) -> FetchedImage:
    """The image at ``url`` (imgsearch/fetch.py's guards), or the Problem that says why not."""
    try:
        return _url_fetcher().fetch(url)
    except FetchError as exc:
        raise _url_problem(exc) from None


@contextmanager
def _image_at_url():
    """An image fetched from a URL that does not decode is the URL's fault, not an upload's."""
    try:
        yield
    except ImageError as exc:
        raise Problem(
            400, "invalid_image", f"The image at that URL is not one we can use: {exc}.",
            reason=exc.reason,
        ) from None


def _url_fetcher() -> UrlFetcher:
    return current_app.extensions["imgsearch.url_fetcher"]


def _url_problem(exc: FetchError) -> Problem:
    """``url_refused``: the server will not fetch that URL; ``url_fetch_failed``: it tried and
    got no usable image. ``reason`` tells the cases apart (FetchError lists them)."""
    if exc.reason == "forbidden_address":
        # Someone may be probing what the server can reach; the operators should know.
        current_app.logger.warning("search by URL refused: %s", exc.message)
    if exc.withheld is not None:  # what the client is not told (imgsearch/fetch.py)
        current_app.logger.info("search by URL failed on a private address: %s (%s)",
                                exc.withheld[1], exc.withheld[0])
    if exc.reason in REFUSALS:
        return Problem(400, "url_refused", f"That URL is refused: {exc.message}.",
                       reason=exc.reason)
    return Problem(400, "url_fetch_failed",
                   f"No image could be fetched from that URL: {exc.message}.", reason=exc.reason)


@bp.get("/api/images/<doc_id>")
def image(doc_id: str):
    source = service().get(check_id(doc_id))
    if source is None:
        raise _unknown(doc_id)
    return jsonify({"model_version": service().model.version, **doc_json(doc_id, source)})


@bp.route("/api/images/<doc_id>/similar", methods=["GET", "POST"])
def similar(doc_id: str):
    """"More like this": neighbours by the stored vector, the image itself left out. ``POST``
    takes the same parameters as form fields: the documented lists at their longest (100
    filter values of 512 characters, 100 ``like`` ids) do not fit an 8 KB request line."""
    options = query_options(request.values if request.method == "POST" else request.args)
    result = service().similar(check_id(doc_id), **options)
    if result is None:
        raise _unknown(doc_id)
    return jsonify(result_json(result, options["filters"]))


@bp.route("/api/images/<doc_id>/explain", methods=["GET", "POST"])
def explain(doc_id: str):
    """Why ``doc_id`` matched a query: its cosine split over both images' 7 x 7 feature-map
    cells. The query is an indexed image (``GET ?query=<id>``) or a photo (``POST``, multipart
    ``image``); ``format=png`` draws one ``side`` (result or query) as a heat map instead."""
    check_id(doc_id)
    params = request.values
    check_params(params, only=("format", "query", "side", "url"))
    fmt, side = params.get("format", "json"), params.get("side", "result")
    if fmt not in ("json", "png"):
        raise Problem(400, "invalid_parameter", f"format must be json or png, not {fmt[:40]!r}")
    if side not in SIDES:
        raise Problem(400, "invalid_parameter", f"side must be query or result, not {side[:40]!r}")
    fetched = None
    if request.method == "POST":
        if "query" in params or ("url" in params and request.files):
            raise Problem(400, "invalid_parameter",
                          "Give the query one way: an uploaded image, a url or query=<id>.")
        if "url" in params:
            fetched = _fetched(params.get("url", ""))
            with _image_at_url():
                explanation = explainer().explain(doc_id, query_data=fetched.data)
        else:
            explanation = explainer().explain(doc_id, query_data=uploaded_image())
    elif "url" in params:
        raise Problem(400, "invalid_parameter", "POST a url to explain a match against it.")
    else:
        query = params.get("query", "")
        if not query:
            raise Problem(400, "missing_query",
                          "Say what to explain the match with: query=<id of an indexed image>, "
                          "or POST the query photo as the multipart field 'image'.")
        if not DOC_ID.match(query):
            raise Problem(400, "invalid_parameter",
                          f"query must be an image id (64 hex digits), not {query[:70]!r}")
        explanation = explainer().explain(doc_id, query_id=query)
    if explanation is None:
        raise _unknown(doc_id)
    if fmt == "png":
        with service().decodes.hold():
            png = heatmap_png(explanation.side(side), *explanation.share_range())
        return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})
    body = explanation.to_json()
    if fetched is not None:
        # The page may not show another site's image (its CSP), so the query comes back as a
        # small picture of itself, with the address it came from.
        with service().decodes.hold():
            thumbnail = explanation.query.thumbnail_data_url()
        body["query"].update(url=fetched.url, thumbnail=thumbnail)
    return jsonify(body)


@bp.get("/api/facets")
def facets():
    return jsonify({"model_version": service().model.version, **service().facets()})


@bp.get("/healthz")
@public
def healthz():
    """Anyone learns whether the service is fine and, if not, why in words; the details
    (Elasticsearch's address, index names, the model's runtime) are for ``admin`` keys."""
    report = service().health()
    status = 200 if report["ok"] else 503
    if is_admin():
        return jsonify({"model_version": report["serving"]["model_version"], **report}), status
    return jsonify(public_health(report)), status


def public_health(report: dict) -> dict:
    """What /healthz tells anonymous and read clients: ok, the reason without addresses or
    names, and the three facts a container's health check needs."""
    es, index, model = report["elasticsearch"], report["index"], report["model"]
    problems = []
    if not model["loaded"]:
        problems.append("the model is not loaded")
    if not es["reachable"]:
        problems.append("the search engine is not reachable")
    elif es["status"] == "red":
        problems.append("the search engine is missing some data")
    elif not index["present"]:
        problems.append("nothing is indexed yet")
    elif not report["ok"]:
        problems.append("the index's model is not ready")
    if not report["ok"] and not problems:
        problems.append("the search engine reported an error")
    return {
        "ok": report["ok"],
        "reason": "; ".join(problems) or None,
        "model_version": report["serving"]["model_version"],
        "model": {"loaded": model["loaded"]},
        "elasticsearch": {"reachable": es["reachable"]},
        "index": {"present": index["present"]},
    }


def _unknown(doc_id: str) -> Problem:
    return Problem(404, "not_found", f"No indexed image has the id {doc_id}.")
