"""Every failure becomes a clear answer: JSON ``{"error": {"code", "message"}}`` for the API,
an HTML page for people, and never a stack trace (exceptions go to the server log).

The product's errors are mapped by their base (imgsearch/errors.py): bad input 400, conflict
409, unavailable 503, each with the error's own ``code``; the store's kinds get messages that
name the fix."""

from __future__ import annotations

from flask import current_app, g, has_request_context, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from imgsearch import telemetry
from imgsearch.errors import BadInput, Conflict, ReasonedError, Unavailable
from imgsearch.images import ImageError
from imgsearch.limits import Busy
from imgsearch.store import IndexMissing, StoreRefused, StoreUnavailable

HOW_TO_INDEX = "make index IMAGES=<dir>"


class Problem(Exception):
    """An answer other than success, with a stable machine-readable ``code``."""

    def __init__(self, status: int, code: str, message: str, **details):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def index_missing(alias: str) -> Problem:
    """Nothing indexed yet; the alias is named to ``admin`` keys only (the deployment's
    details are theirs, as on /healthz)."""
    under = f" under {alias!r}" if is_admin() else ""
    return Problem(
        503,
        "index_empty",
        f"No images are indexed{under} yet. Index a folder with "
        f"`{HOW_TO_INDEX}` (or `python -m indexer <dir>`), then try again.",
    )


def es_unavailable(url: str) -> Problem:
    """Elasticsearch unreachable; its address is said to ``admin`` keys only."""
    at = f" at {url}" if is_admin() else ""
    return Problem(
        503,
        "elasticsearch_unavailable",
        f"The search engine (Elasticsearch{at}) is not reachable right now. "
        "Start it with `make es-up`, then try again; /healthz says what is wrong.",
    )


def is_admin() -> bool:
    """Whether this request's verified key (webapp/auth.py) has the ``admin`` scope."""
    principal = g.get("principal") if has_request_context() else None
    return principal is not None and principal.allows("admin")


def wants_json() -> bool:
    return (request.blueprint == "api" or request.path.startswith("/api/")
            or request.path == "/metrics")  # a machine's endpoint too (Prometheus)


def respond(problem: Problem):
    """The answer to ``problem``: JSON for the API, a page otherwise. A problem that says when
    to come back (``retry_after`` among its details: rate limits, admission, busy slots) says
    it in ``Retry-After`` too, whoever raised it."""
    if wants_json():
        body = {"error": {"code": problem.code, "message": problem.message, **problem.details}}
        response = current_app.make_response((jsonify(body), problem.status))
    else:
        response = current_app.make_response(
            (render_template("error.html", problem=problem), problem.status))
    if "retry_after" in problem.details:
        response.headers["Retry-After"] = str(problem.details["retry_after"])
    return response


def _settings():
    return current_app.extensions["imgsearch"].settings


def _on_problem(exc: Problem):
    return respond(exc)


def _on_bad_input(exc: BadInput):
    # ``reason`` (e.g. "corrupt", "too_many_pixels") lets a client tell the cases apart.
    details = {"reason": exc.reason} if isinstance(exc, ReasonedError) else {}
    message = f"The upload is not an image we can use: {exc}." if isinstance(exc, ImageError) \
        else str(exc)
    return respond(Problem(400, exc.code, message, **details))


def _on_http(exc: HTTPException):
    status = exc.code or 500
    if status == 404:
        message = "There is nothing at this address."
    elif status == 405:
        message = f"{request.method} is not allowed here."
    elif status == 413 and _form_limit_hit():
        parts, size = (current_app.config[n] for n in ("MAX_FORM_PARTS", "MAX_FORM_MEMORY_SIZE"))
        message = (
            f"The form is too large: at most {parts} fields and files, and "
            f"{human_size(size)} of fields other than the file (a multipart field, or an "
            "urlencoded body in all). The documented limits of every list fit in that."
        )
        return respond(Problem(413, "form_too_large", message, max_form_parts=parts,
                               max_form_memory_bytes=size))
    elif status == 413:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        message = (
            f"The upload is too large: the limit is {human_size(limit)} ({limit} bytes). "
            "Choose a smaller image."
        )
    else:
        message = exc.description or exc.name
    code = {404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}.get(
        status, exc.name.lower().replace(" ", "_")
    )
    response = respond(Problem(status, code, message))
    if status == 405 and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _form_limit_hit() -> bool:
    """Werkzeug's 413 comes from the body's size (MAX_CONTENT_LENGTH), or, for a body within
    it, from the form's part count or field memory (MAX_FORM_PARTS, MAX_FORM_MEMORY_SIZE):
    only the first is an image too large."""
    length = request.content_length
    return length is not None and length <= current_app.config["MAX_CONTENT_LENGTH"]


def _on_conflict(exc: Conflict):
    return respond(Problem(409, exc.code, exc.message))


def _on_index_missing(exc: IndexMissing):
    return respond(index_missing(_settings().es_index))


def _on_store_refused(exc: StoreRefused):
    telemetry.ES_ERRORS.labels("refused").inc()
    current_app.logger.error("Elasticsearch refused a request: %s", exc)
    return respond(
        Problem(
            503,
            "elasticsearch_error",
            f"The search engine answered with an error (status {exc.status}). "
            "Please try again; the server log has the details.",
        )
    )


def _on_store_unavailable(exc: StoreUnavailable):
    telemetry.ES_ERRORS.labels("unavailable").inc()
    current_app.logger.warning("Elasticsearch unreachable: %s", exc)
    return respond(es_unavailable(_settings().es_url))


def _on_unavailable(exc: Unavailable):
    current_app.logger.error("unavailable (%s): %s", exc.code, exc)
    return respond(Problem(503, exc.code, str(exc)))


def _on_busy(exc: Busy):
    # Not an error of the server: a bound on its work (imgsearch/limits.py) that says when to
    # come back, so clients and proxies retry instead of queueing.
    current_app.logger.info("refused (%s): %s", exc.code, exc)
    from imgsearch.telemetry import ADMISSION_REFUSALS

    ADMISSION_REFUSALS.inc()  # a decode or fetch slot not free in time: work refused at once
    return respond(Problem(503, exc.code, str(exc), retry_after=exc.retry_after))


def _on_unexpected(exc: Exception):
    if isinstance(exc, HTTPException):
        return _on_http(exc)
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return respond(
        Problem(500, "internal_error", "Something went wrong on our side; it has been logged.")
    )


def register(app) -> None:
    # Flask picks the handler of the nearest class in an exception's MRO: the store's kinds
    # before Unavailable, every other error of the product by its base.
    app.register_error_handler(Problem, _on_problem)
    app.register_error_handler(BadInput, _on_bad_input)
    app.register_error_handler(Conflict, _on_conflict)
    app.register_error_handler(IndexMissing, _on_index_missing)
    app.register_error_handler(StoreRefused, _on_store_refused)
    app.register_error_handler(StoreUnavailable, _on_store_unavailable)
    app.register_error_handler(Unavailable, _on_unavailable)
    app.register_error_handler(Busy, _on_busy)
    app.register_error_handler(HTTPException, _on_http)
    app.register_error_handler(Exception, _on_unexpected)


def human_size(n: int) -> str:
    for unit, size in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"
