"""Who may do what: API keys (imgsearch/keys.py) by ``Authorization: Bearer <key>``, or the
page's session cookie, checked before every view.

Every endpoint needs the scope ``read`` unless it declares another with :func:`requires`
(``write`` for the endpoints that change the collection, ``admin`` for key management and
metrics) or is :func:`public` (``/healthz``, the OpenAPI document, sign-in, static files): an
endpoint added later is closed by default. With ``IMGSEARCH_PUBLIC_READ=1`` anonymous clients
have ``read``. Refusals: 401 with ``WWW-Authenticate`` (no key, a malformed header, a key
unknown or revoked, a session cookie not signed by this deployment or expired), 403 (a key
whose scope is too low), 400 (a key in the query string: URLs end up in access logs, browser
history and ``Referer`` headers), 429 (an address that sent too many wrong keys: no lookup is
made for it for a while, webapp/limits.py ``refuse_key_guessing``).

The session cookie holds the key's hash (its id, not a credential: presenting a hash as a key
fails), signed with the deployment's secret (itsdangerous, HMAC-SHA1 over the value and its
time): HttpOnly, SameSite=Strict, Secure when the request came over TLS. Every request with it
looks the key up again (cached for at most half a second), so revoking a key ends its sessions
too. Keys and cookies are never logged: only a key's name is ever said.
"""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, redirect, request, url_for
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from imgsearch.keys import ApiKey, KeyStore

from .accesslog import QUERY_KEY_PARAMS
from .errors import Problem, respond
from .limits import note_bad_key, refuse_key_guessing

bp = Blueprint("auth", __name__)

SESSION_COOKIE = "imgsearch_session"
REALM = 'Bearer realm="imgsearch"'
# Parameter names a client might put a key in; each is refused, and says why.
READ, WRITE, ADMIN = "read", "write", "admin"


class AuthProblem(Problem):
    """A refusal of who is asking: 401s carry ``WWW-Authenticate`` (RFC 6750), and a bad
    session cookie is cleared by the same answer."""

    def __init__(self, status: int, code: str, message: str, *, challenge: str = REALM,
                 clear_session: bool = False, **details):
        super().__init__(status, code, message, **details)
        self.challenge = challenge
        self.clear_session = clear_session


def requires(scope: str):
    """Declare the scope a view needs (``read``, ``write`` or ``admin``)."""
    def mark(view):
        view.required_scope = scope
        return view
    return mark


def public(view):
    """A view anyone may call, signed in or not (what it shows may still depend on who)."""
    view.required_scope = None
    return view


def keys() -> KeyStore:
    return current_app.extensions["imgsearch.keys"]


def principal() -> ApiKey | None:
    """The key of this request (header or session), None for an anonymous one."""
    return g.get("principal")


def is_admin() -> bool:
    p = principal()
    return p is not None and p.allows(ADMIN)


def _settings():
    return current_app.extensions["imgsearch"].settings


def _unauthorized(code: str, message: str, **kw) -> AuthProblem:
    return AuthProblem(401, code, message, **kw)


def _identify() -> ApiKey | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise _unauthorized(
                "malformed_authorization",
                "The Authorization header must be 'Bearer <key>', with the key that "
                "`python -m indexer keys create` printed.",
                challenge=f'{REALM}, error="invalid_request"')
        refuse_key_guessing()  # 429 for an address that sent too many wrong keys
        key = keys().authenticate(token)
        if key is None:
            note_bad_key()
            raise _unauthorized("invalid_key", "That API key is unknown or has been revoked.",
                                challenge=f'{REALM}, error="invalid_token"')
        return key
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:
        return None
    try:
        key_id = _serializer().loads(cookie, max_age=_session_seconds())["k"]
    except SignatureExpired:
        raise _unauthorized("session_expired", "Your sign-in has expired; sign in again.",
                            clear_session=True) from None
    except (BadSignature, KeyError, TypeError):
        raise _unauthorized(
            "invalid_session",
            "Your session cookie was not issued by this server (or was changed); it has been "
            "cleared: sign in again.", clear_session=True) from None
    key = keys().by_id(key_id) if isinstance(key_id, str) else None
    if key is None:
        raise _unauthorized("invalid_session", "The key you signed in with has been revoked; "
                            "sign in with another.", clear_session=True)
    return key


def authorize():
    """``before_request``: refuse what the request's credentials do not allow."""
    g.principal = None
    for name in QUERY_KEY_PARAMS:
        if name in request.args:
            raise Problem(
                400, "key_in_query",
                f"API keys are not accepted in the query string ({name!r}): addresses end up "
                "in access logs, browser history and Referer headers. Send the key in the "
                "header 'Authorization: Bearer <key>' instead.")
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    # No view (404, 405) or a static file: nothing to protect, so only the answer's shape
    # depends on credentials.
    needed = getattr(view, "required_scope", READ) if view and request.endpoint != "static" \
        else None
    g.principal = _identify()
    if needed is None:
        return None
    p = g.principal
    if p is None:
        if needed == READ and _settings().public_read:
            return None
        how = "sign in with a key on the page, or send" if not _is_api() else "send"
        raise _unauthorized("key_required",
                            f"This needs an API key of scope {needed}: {how} "
                            "'Authorization: Bearer <key>'.")
    if not p.allows(needed):
        raise AuthProblem(
            403, "insufficient_scope",
            f"This needs a key of scope {needed}; the key {p.name!r} has scope {p.scope}.",
            challenge=f'{REALM}, error="insufficient_scope", scope="{needed}"')
    return None


def _is_api() -> bool:
    return request.path.startswith("/api/") or request.path == "/metrics"


def _on_auth_problem(exc: AuthProblem):
    response = respond(exc)
    response.headers["WWW-Authenticate"] = exc.challenge
    if exc.clear_session:
        _clear_session(response)
    return response


# -- the page's session ----------------------------------------------------------------------


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(keys().session_secret(), salt="imgsearch-session")


def _session_seconds() -> int:
    return int(_settings().session_hours * 3600)


def _clear_session(response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict",
                           secure=request.is_secure)


@bp.post("/signin")
@public
def signin():
    """A key in (form field ``key``), a session cookie out, back to the search page."""
    key = keys().authenticate(request.form.get("key", "").strip())
    if key is None:
        raise _unauthorized("invalid_key", "That API key is unknown or has been revoked.",
                            challenge=f'{REALM}, error="invalid_token"')
    response = redirect(url_for("pages.index"), code=303)
    response.set_cookie(
        SESSION_COOKIE, _serializer().dumps({"k": key.id}), max_age=_session_seconds(),
        path="/", httponly=True, samesite="Strict", secure=request.is_secure)
    current_app.logger.info("signed in with the key %r", key.name)
    return response


@bp.post("/signout")
@public
def signout():
    response = redirect(url_for("pages.index"), code=303)
    _clear_session(response)
    return response


# -- key management (admin) ------------------------------------------------------------------


@bp.get("/api/keys")
@requires(ADMIN)
def list_keys():
    return jsonify({"keys": [k.to_json() for k in keys().list_keys()]})


@bp.post("/api/keys")
@requires(ADMIN)
def create_key():
    """A new key (JSON or form ``name`` and ``scope``), shown in this answer only."""
    body = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(body, dict):
        raise Problem(400, "invalid_parameter", "Send a JSON object with name and scope.")
    name, scope = body.get("name", ""), body.get("scope", "")
    if not isinstance(name, str) or not isinstance(scope, str):
        raise Problem(400, "invalid_parameter", "name and scope must be strings.")
    key, record = keys().create(name, scope)
    current_app.logger.info("key %r (scope %s) created by %r", record.name, record.scope,
                            principal().name)
    response = jsonify({"key": key, **record.to_json()})
    response.headers["Cache-Control"] = "no-store"
    return response, 201


@bp.delete("/api/keys/<name>")
@requires(ADMIN)
def revoke_key(name: str):
    record = keys().revoke(name)
    current_app.logger.info("key %r revoked by %r", record.name, principal().name)
    return jsonify(record.to_json())


def register(app, key_store: KeyStore) -> None:
    app.extensions["imgsearch.keys"] = key_store
    app.register_blueprint(bp)
    app.register_error_handler(AuthProblem, _on_auth_problem)
    app.before_request(authorize)

    @app.context_processor
    def _signed_in():
        return {"signed_in": principal(), "public_read": _settings().public_read}
