"""Schemathesis hooks for tests/webapp/test_schemathesis.py (SCHEMATHESIS_HOOKS names this
module): nothing it sends may leave the machine.

Every ``url`` value, in a query string or a form body, is rewritten just before the request is
sent to a loopback address, which the server refuses without connecting (no host is in
IMGSEARCH_URL_ALLOW_HOSTS there), or to a value that is not an http(s) URL at all: chosen by
the generated value's digest, so that a run is repeatable. Every request is to the server's
own loopback address (the test's ``--url``); ``after_call`` checks that too.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import schemathesis

NOWHERE = ("http://127.0.0.1:9/photo.jpg", "https://[::1]:9/photo.jpg", "http://localhost:9/",
           "ftp://127.0.0.1/photo.jpg", "not a url")


def nowhere(value) -> str:
    digest = hashlib.sha256(repr(value).encode()).digest()
    return NOWHERE[digest[0] % len(NOWHERE)]


def rewrite(container) -> None:
    if isinstance(container, dict) and "url" in container:
        value = container["url"]
        container["url"] = ([nowhere(v) for v in value] if isinstance(value, list)
                            else nowhere(value))


@schemathesis.hook
def before_call(context, case, kwargs):
    rewrite(case.query)
    rewrite(case.body)


@schemathesis.hook
def after_call(context, case, response):
    host = urlsplit(response.request.url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise AssertionError(f"a request left loopback: {response.request.url}")
