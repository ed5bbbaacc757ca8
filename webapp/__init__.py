"""The web app: a search page and the JSON API it uses.

``create_app()`` is the gunicorn entry point (``webapp:create_app()``); each worker process
calls it after fork, so each loads the model once and shares it between its threads.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask

from imgsearch.fetch import UrlFetcher
from imgsearch.model import ImageModel
from imgsearch.settings import Settings
from imgsearch.store import ImageStore
from imgsearch.thumbnails import ThumbnailStore

# Images may come from the page itself, a blob: URL (the query preview) or a data: URL.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_app(
    settings: Settings | None = None, *, embedder: ImageModel | None = None,
    store: ImageStore | None = None, url_fetcher=None,
    check_interval: float = 1.0,
) -> Flask:
    """Build the app; tests pass their own settings, model (``embedder``), store and
    ``url_fetcher`` (search by URL, with a resolver of their own).

    The app serves the model that built the index behind the alias: it starts with that model
    when the model store has it, and follows the alias to another model's index afterwards
    (``imgsearch/serving.py``), checking at most every ``check_interval`` seconds.
    """
    from imgsearch.decisions import Decisions
    from imgsearch.duplicates import DuplicateGroups
    from imgsearch.explain import Explainer
    from imgsearch.resolution import Resolver
    from imgsearch.search import SearchService
    from imgsearch.serving import initial_model
    from imgsearch.store import ImageStore
    from imgsearch.uploads import UploadStore

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    # Werkzeug answers 413 itself once a body is larger than this.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False
    _use_gunicorn_logging(app)

    store = store or ImageStore.from_settings(settings)
    if embedder is None:
        embedder = initial_model(settings, store)
        embedder.warm_up()  # trace the graph now, not on the first person's upload
        app.logger.info("model loaded: %s (%s on %s)", embedder.version, embedder.precision,
                        embedder.runtime)
    app.extensions["imgsearch"] = SearchService(
        settings, store, embedder, check_interval=check_interval
    )
    app.extensions["imgsearch.explainer"] = Explainer(app.extensions["imgsearch"])
    app.extensions["imgsearch.thumbnails"] = ThumbnailStore(settings.thumbnail_dir)
    app.extensions["imgsearch.url_fetcher"] = url_fetcher or UrlFetcher.from_settings(settings)
    # Near-duplicate groups from the kept pairs, and their resolution (people's decisions).
    decisions = Decisions(store.es, settings.image_decisions_index)
    app.extensions["imgsearch.duplicates"] = DuplicateGroups(store, decisions,
                                                             settings.duplicate_threshold)
    app.extensions["imgsearch.resolver"] = Resolver(
        store, decisions, uploads=UploadStore(Path(settings.upload_dir)),
        thumbnails=app.extensions["imgsearch.thumbnails"])

    from imgsearch.keys import KeyStore

    from . import api, auth, duplicates, errors, images, limits, metrics, pages

    # Keys (and the session secret) in the same cluster as the images: imgsearch/keys.py.
    auth.register(app, KeyStore(store.es, settings.api_keys_index))
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(duplicates.bp)
    images.register(app, settings)
    metrics.register(app)
    errors.register(app)
    limits.register(app, settings)
    app.before_request(_refuse_cross_site_posts)
    app.after_request(_security_headers)
    app.after_request(_model_version_header)
    return app


# GET endpoints that cost inference or more (feature maps and a heat map, a kNN search, the
# near-duplicate groups: a scroll over the pairs, the sources of a page of groups): another
# site's page must not make a visitor's browser spend them either, as an <img> or a fetch
# would.
COSTLY_GETS = frozenset({"api.explain", "api.similar", "duplicates.api", "duplicates.page"})


def _refuse_cross_site_posts():
    """No other site's page may make a visitor's browser post to this server, or load its
    costly GETs (COSTLY_GETS): uploads and inference would spend its CPU, and the sign-in
    cookie (SameSite=Strict, webapp/auth.py) must never carry another site's request to the
    key endpoints. Browsers say where a request comes from in ``Sec-Fetch-Site`` and
    ``Origin``; clients that send neither (curl, scripts) are served. A person who follows a
    link to a costly page (a top-level navigation the user started, ``Sec-Fetch-User: ?1``) is
    served too."""
    from flask import request

    from .errors import Problem, respond

    if request.method in ("OPTIONS",):
        return None
    if request.method in ("GET", "HEAD"):
        if request.endpoint not in COSTLY_GETS:
            return None
        if (request.headers.get("Sec-Fetch-Mode") == "navigate"
                and request.headers.get("Sec-Fetch-User") == "?1"):
            return None
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    cross = site is not None and site not in ("same-origin", "none")
    if not cross and site is None and origin is not None:
        cross = origin.rstrip("/") != request.host_url.rstrip("/")
    if cross:
        return respond(Problem(
            403, "cross_site_request",
            "This server only accepts uploads and costly requests (explanations, similar "
            "images, near-duplicates) from its own pages (or from clients that are not "
            "browsers).",
        ))
    return None


def _security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def _model_version_header(response):
    """Every response, errors and pages included, names the model serving when it was sent;
    search responses also carry, in their body, the model that answered them."""
    from flask import current_app

    response.headers["X-Model-Version"] = current_app.extensions["imgsearch"].model.version
    return response


def _use_gunicorn_logging(app: Flask) -> None:
    # Under gunicorn, send the app's log records (exceptions included) to its error log.
    gunicorn_logger = logging.getLogger("gunicorn.error")
    if gunicorn_logger.handlers:
        app.logger.handlers = gunicorn_logger.handlers
        app.logger.setLevel(gunicorn_logger.level)
