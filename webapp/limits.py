"""What one request may ask of the app: the size of its form.

The form limits: fields (not files) in memory and parts. The documented lists at their longest
(4 filter fields x 100 values x 512 characters, percent-encoded up to 3 bytes a character:
600 KB; 200 like/unlike ids: 13 KB) fit; Werkzeug's 500 KB default did not. Werkzeug applies
neither limit to an urlencoded body (it parses the whole body at once, up to the 20 MB upload
limit: 20 MB of ``a&`` is 10 million fields), so the app checks such a body's length and field
count itself before anything parses it. Beyond either limit: 413 ``form_too_large``
(webapp/errors.py).
"""

from __future__ import annotations

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

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


def register(app: Flask) -> None:
    app.config["MAX_FORM_MEMORY_SIZE"] = FORM_MEMORY_BYTES
    app.config["MAX_FORM_PARTS"] = FORM_PARTS
    app.before_request(_bound_urlencoded_form)
