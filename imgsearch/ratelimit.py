"""Per-client token buckets that every process of one server shares: a small SQLite file.

A client (a key's digest, or an address) may make ``rate`` requests a second on average and
``burst`` at once; a request that finds the bucket empty is refused with the seconds until a
token is back. SQLite because the gunicorn workers are separate processes (the limit must
hold across them, whichever worker a request reaches) and a file is all they share; one check
is one short write transaction (~0.1-0.3 ms on this machine), far below a search's ~60 ms.
Rows of clients idle for an hour are dropped now and then, so the file stays small.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

IDLE_S = 3600
# Every this many checks, rows of clients idle for IDLE_S are deleted.
SWEEP_EVERY = 1000


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float  # seconds until the next token, when refused


class RateLimiter:
    """``check(client)`` takes a token from ``client``'s bucket, or says how long to wait."""

    def __init__(self, path: Path, rate: float, burst: int):
        self.path, self.rate, self.burst = Path(path), rate, burst
        self._local = threading.local()
        self._checks = 0
        with self._connection() as db:
            db.execute("CREATE TABLE IF NOT EXISTS buckets (client TEXT PRIMARY KEY, "
                       "tokens REAL NOT NULL, at REAL NOT NULL)")

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # One connection per thread (sqlite3's rule); WAL lets readers and the writer
            # overlap, and a worker waits up to 5 s for another's transaction to end.
            db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # losing buckets in a crash loses nothing
            self._local.db = db
        return db

    def peek(self, client: str, now: float | None = None) -> Verdict:
        """Whether ``client`` has a token now, without taking it (a read, no transaction)."""
        now = time.time() if now is None else now
        row = self._connection().execute("SELECT tokens, at FROM buckets WHERE client = ?",
                                          (client,)).fetchone()
        tokens = self._tokens(row, now)
        return Verdict(tokens >= 1.0, 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate)

    def _tokens(self, row, now: float) -> float:
        """The tokens a bucket row ``(tokens, at)`` holds at ``now`` (full when there is none)."""
        if row is None:
            return float(self.burst)
        return min(float(self.burst), row[0] + max(0.0, now - row[1]) * self.rate)

    def check(self, client: str, now: float | None = None) -> Verdict:
        now = time.time() if now is None else now
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT tokens, at FROM buckets WHERE client = ?",
                             (client,)).fetchone()
            tokens = self._tokens(row, now)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            db.execute("INSERT INTO buckets (client, tokens, at) VALUES (?, ?, ?) "
                       "ON CONFLICT(client) DO UPDATE SET tokens = excluded.tokens, "
                       "at = excluded.at", (client, tokens, now))
            self._checks += 1
            if self._checks % SWEEP_EVERY == 0:
                db.execute("DELETE FROM buckets WHERE at < ?", (now - IDLE_S,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Verdict(allowed, 0.0 if allowed else (1.0 - tokens) / self.rate)
