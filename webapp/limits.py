"""What one request may ask of the app: the size and shape of its form.

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

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

from .errors import Problem

FORM_MEMORY_BYTES = 2 * 1024 * 1024
FORM_PARTS = 1000


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


def register(app: Flask) -> None:
    app.config["MAX_FORM_MEMORY_SIZE"] = FORM_MEMORY_BYTES
    app.config["MAX_FORM_PARTS"] = FORM_PARTS
    app.before_request(_bound_urlencoded_form)
    app.before_request(_refuse_nameless_parts)
