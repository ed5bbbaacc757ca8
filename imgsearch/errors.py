"""The product's errors, by consequence: what the person who met one has to do.

Every specific error derives from one of three bases, and the two front ends map the bases,
not each error: the web app (webapp/errors.py) answers 400, 503 or 409 with the error's
``code``; the command line (indexer/cli.py) exits 2 or 1.

- :class:`BadInput` (HTTP 400, exit 2): something the caller gave is wrong (a file, a
  parameter, a setting, training data); the message says what, and the caller can fix it.
- :class:`Unavailable` (HTTP 503, exit 1): a part the request needs cannot serve now
  (Elasticsearch, an index, the weights, a runtime); the same request may work later.
- :class:`Conflict` (HTTP 409, exit 1): the request is sound but what it asks about is in a
  state that refuses it (an int8 model has no feature maps, a file changed since indexing).
"""

from __future__ import annotations


class BadInput(ValueError):
    """Input the caller can fix. ``code`` is a short stable name a client can branch on."""

    code = "invalid_parameter"


class Unavailable(RuntimeError):
    """A part the request needs cannot serve now."""

    code = "unavailable"


class Conflict(RuntimeError):
    """The request meets a state that refuses it; ``code`` says which."""

    code = "conflict"

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ReasonedError(BadInput):
    """Bad input with ``reason``, a short stable code a client can branch on, and
    ``message``, a sentence for people that says what was wrong."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message
