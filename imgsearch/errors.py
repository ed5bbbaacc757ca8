"""The base of the errors that name what was wrong with an input, for machines and people."""

from __future__ import annotations


class ReasonedError(ValueError):
    """Bad input with ``reason``, a short stable code a client can branch on, and
    ``message``, a sentence for people that says what was wrong."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message
