"""gunicorn's access log without API keys: a key sent in the query string is refused
(webapp/auth.py, ``key_in_query``), but its request line would still be logged as it came, so
the values of the parameters a key might be put in are replaced before the line is written.
Loaded by gunicorn's master (``logger_class`` in webapp/gunicorn.conf.py): nothing heavy here.
"""

from __future__ import annotations

import re

from gunicorn.glogging import Logger

# Parameter names a client might put a key in (webapp/auth.py refuses each, and says why).
QUERY_KEY_PARAMS = ("key", "api_key", "apikey", "access_token", "token", "bearer")
_KEY_VALUE = re.compile(r"(?i)([?&;](?:" + "|".join(QUERY_KEY_PARAMS) + r")=)[^&;\s]*")


def redact(line: str) -> str:
    """``line`` with the value of every key-like query parameter replaced."""
    return _KEY_VALUE.sub(r"\1[redacted]", line)


class RedactingLogger(Logger):
    """gunicorn's logger, its request line (``%(r)s``) and query (``%(q)s``) redacted."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for name in ("r", "q", "U"):
            if isinstance(atoms.get(name), str):
                atoms[name] = redact(atoms[name])
        return atoms
