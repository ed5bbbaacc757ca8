"""What one request may ask of the app: how often (per-client rate limits), how much waiting
for the model (admission control), and the size and shape of its form.

Rate limits (imgsearch/ratelimit.py, IMGSEARCH_RATE_LIMIT / IMGSEARCH_RATE_BURST): one bucket
per client, shared by every worker of the server through a file in WEBAPP_STATE_DIR (the run
directory of ``python -m webapp.serve``, else one made per app). The client is the digest of
the request's bearer token when it has one (API keys), else its address: behind nginx (
WEBAPP_BEHIND_PROXY, set by webapp/serve.py) the X-Real-IP nginx sets, which nobody else can
since only nginx reaches gunicorn's socket. Thumbnails, static files and /healthz are not
counted: a page of results loads dozens at once, and monitoring must always get through.
Beyond the limit: 429 ``rate_limited`` with Retry-After, before anything else is done.

Admission (imgsearch/admission.py, IMGSEARCH_ADMISSION_MAX_WAIT): the endpoints that run the
model (search, explain) are refused at once, 503 ``overloaded`` with Retry-After, when this
worker's queue for the model would make them wait longer than the bound.

The form limits: fields (not files) in memory and parts. The documented lists at their longest
(4 filter fields x 100 values x 512 characters, percent-encoded up to 3 bytes a character:
600 KB; 200 like/unlike ids: 13 KB) fit; Werkzeug's 500 KB default did not. Werkzeug applies
neither limit to an urlencoded body (it parses the whole body at once, up to the 20 MB upload
limit: 20 MB of ``a&`` is 10 million fields), so the app checks such a body's length and field
count itself before anything parses it. Beyond either limit: 413 ``form_too_large``
(webapp/errors.py).

A multipart part without a name (``Content-Disposition: form-data`` and nothing more) becomes
a field or file named None, which every view's parameter check tripped over (a 500 on both
upload endpoints that Schemathesis found): 400 ``invalid_form`` instead, before any view.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from flask import Flask, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from imgsearch.admission import Admission
from imgsearch.ratelimit import RateLimiter
from imgsearch.settings import Settings

from .errors import Problem

FORM_MEMORY_BYTES = 2 * 1024 * 1024
FORM_PARTS = 1000
# Endpoints that run the model: what admission control guards.
INFERENCE_ENDPOINTS = frozenset({"api.search", "api.explain", "images.add"})
UNCOUNTED_PREFIXES = ("/static/", "/thumbnails/")
UNCOUNTED_PATHS = frozenset({"/healthz"})
# Wrong keys (or session cookies) one address may send: 10 at once, then one a second. A key
# is 256 random bits, so this is not what stops guessing (nothing could guess one); it bounds
# the lookups a stream of made-up keys costs Elasticsearch to one a second per address.
BAD_KEYS_RATE = 1.0
BAD_KEYS_BURST = 10


class RetryLater(Problem):
    """A refusal that says, in Retry-After, when to come back (webapp/errors.py respond)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float):
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(status, code, message, retry_after=self.retry_after)


def note_refusal(kind: str) -> None:
    """One refusal of ``kind`` ("rate_limit" or "admission"), counted in the metrics
    (imgsearch_rate_limit_refusals_total, imgsearch_admission_refusals_total). Refusals the
    proxy makes itself (its request cap, its connections per address) never reach the app:
    webapp/metrics.py counts them from nginx's log of them."""
    from imgsearch.telemetry import ADMISSION_REFUSALS, RATE_LIMIT_REFUSALS

    (RATE_LIMIT_REFUSALS if kind == "rate_limit" else ADMISSION_REFUSALS).inc()


def client_id() -> str:
    """Whom a request's rate limit is counted against: its API key once webapp/auth.py has
    verified it (by the key's id, its hash: never the key itself), else its address. Only a
    verified key counts as a client of its own: a client sending made-up tokens stays one
    address, however many tokens it invents."""
    principal = g.get("principal")
    if principal is not None:
        return "key:" + principal.id[:32]
    return "address:" + client_address()


def client_address() -> str:
    """The request's address: behind nginx the X-Real-IP it sets, else the peer's."""
    address = None
    if os.environ.get("WEBAPP_BEHIND_PROXY") == "1":
        address = request.headers.get("X-Real-IP")
    return address or request.remote_addr or "unknown"


def refuse_key_guessing() -> None:
    """Before a key is looked up (webapp/auth.py): an address whose recent keys were wrong
    too often gets 429 at once. A wrong key is refused before the rate limit runs (that needs
    to know whose bucket to take from), and each well-formed one costs a GET of the keys
    index, so without this an address could make Elasticsearch look up made-up keys as fast
    as it can send them, unlimited (issue 21's note). The bucket is the address's own,
    separate from its request bucket, so that clients with good keys behind the same address
    are not slowed by it; a person who mistypes a key :data:`BAD_KEYS_BURST` times in a row
    is still let through, one try every ``1 / BAD_KEYS_RATE`` s after that."""
    limiter: RateLimiter | None = current_app.extensions.get("imgsearch.bad_keys")
    if limiter is None:
        return
    verdict = limiter.peek(client_address())
    if verdict.allowed:
        return
    note_refusal("rate_limit")
    raise RetryLater(
        429, "too_many_bad_keys",
        f"Too many wrong API keys from this address (more than {limiter.burst}, then one "
        f"every {1 / limiter.rate:g} s): no key is looked up for it until the seconds in "
        "Retry-After have passed.", verdict.retry_after)


def note_bad_key() -> None:
    """A key (or session) from this request's address was refused: one token of its
    bad-keys bucket."""
    limiter: RateLimiter | None = current_app.extensions.get("imgsearch.bad_keys")
    if limiter is not None:
        limiter.check(client_address())


def _limit_rate():
    limiter: RateLimiter | None = current_app.extensions["imgsearch.rate_limiter"]
    path = request.path
    if limiter is None or path in UNCOUNTED_PATHS or path.startswith(UNCOUNTED_PREFIXES):
        return None
    verdict = limiter.check(client_id())
    if verdict.allowed:
        return None
    note_refusal("rate_limit")
    raise RetryLater(
        429, "rate_limited",
        f"Too many requests: at most {limiter.rate:g} a second on average and {limiter.burst} "
        "at once from one client (its API key, else its address). Try again after the "
        "seconds in Retry-After.", verdict.retry_after)


def _admit():
    if request.endpoint not in INFERENCE_ENDPOINTS:
        return None
    admission: Admission = current_app.extensions["imgsearch.admission"]
    ticket = admission.enter()
    if isinstance(ticket, float):
        note_refusal("admission")
        raise RetryLater(
            503, "overloaded",
            f"The server is busy: this search would wait about {ticket:.1f} s for the model, "
            f"more than the {admission.max_wait_s:g} s it allows. Try again after the "
            "seconds in Retry-After.", ticket)
    g.admission_ticket = ticket
    return None


def _release(exc=None):
    ticket = g.pop("admission_ticket", None)
    if ticket is not None:
        current_app.extensions["imgsearch.admission"].leave(ticket)


def _bound_urlencoded_form():
    if request.mimetype != "application/x-www-form-urlencoded":
        return None
    length = request.content_length
    if length is not None and length > FORM_MEMORY_BYTES:
        raise RequestEntityTooLarge()
    # Read (and kept for the form parser) only once the length is known to be bounded; a
    # body without a length (chunked, straight to gunicorn) is bounded by the upload limit.
    data = request.get_data(cache=True)
    if len(data) > FORM_MEMORY_BYTES or data.count(b"&") + data.count(b";") >= FORM_PARTS:
        raise RequestEntityTooLarge()
    return None


def _refuse_nameless_parts():
    if request.mimetype != "multipart/form-data":
        return None
    if any(not isinstance(name, str) for name in (*request.form.keys(), *request.files.keys())):
        raise Problem(400, "invalid_form",
                      "A part of the multipart body has no name: each needs "
                      "'Content-Disposition: form-data; name=\"...\"'.")
    return None


def _state_dir() -> Path:
    """Where the workers of one server share their buckets: the server's run directory, set
    by webapp/serve.py or gunicorn.conf.py before the workers fork; else one of this app's."""
    shared = os.environ.get("WEBAPP_STATE_DIR")
    return Path(shared) if shared else Path(tempfile.mkdtemp(prefix="imgsearch-limits-"))


def register(app: Flask, settings: Settings) -> None:
    app.config["MAX_FORM_MEMORY_SIZE"] = FORM_MEMORY_BYTES
    app.config["MAX_FORM_PARTS"] = FORM_PARTS
    state = _state_dir()
    app.extensions["imgsearch.rate_limiter"] = RateLimiter(
        state / "rate-limits.sqlite", settings.rate_limit, settings.rate_burst,
    ) if settings.rate_limit > 0 else None
    # Wrong keys an address may send (webapp/auth.py asks): their own bucket, in the same file.
    app.extensions["imgsearch.bad_keys"] = RateLimiter(
        state / "bad-keys.sqlite", BAD_KEYS_RATE, BAD_KEYS_BURST,
    ) if settings.rate_limit > 0 else None
    app.extensions["imgsearch.admission"] = Admission(settings.admission_max_wait)
    # In this order: the cheapest refusal first, the form's before anything parses it, and a
    # place in the model's queue last, once nothing else will refuse the request.
    app.before_request(_limit_rate)
    app.before_request(_bound_urlencoded_form)
    app.before_request(_refuse_nameless_parts)
    app.before_request(_admit)
    app.teardown_request(_release)
