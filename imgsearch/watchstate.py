"""What the watcher knows of a watched folder: each file's size, mtime and content hash.

One SQLite file per folder and concrete index (``IMGSEARCH_WATCH_STATE_DIR``, default
``var/watch``), so that a start does not read and hash every file again: a file whose size and
mtime (nanoseconds) are those recorded is trusted to hold the recorded bytes. What that costs:
one ``stat`` per file at start, 1.7-2.5 s per 100,000 files (measured: the clothing set's
3,781 walked and stat'ed in 0.07-0.10 s), against reading and hashing them all, ~9 s per
100,000 from the page cache and far more from a cold disk (5 GB at ~50 KB a photo), plus one
existence check per 256. What it risks: a file rewritten with the same size and
the same mtime (a tool that restores mtime, ``touch -r``, a clock set back) is not seen as
changed; ``rm`` of the state file makes the next start hash everything again (and embed only
what the index lacks). Keyed by the concrete index, not the alias: after a ``--new-index``
rebuild the watcher starts from an empty state, since the new index holds other documents.

Rows are written only after the documents they describe are (indexing.run_partition returned,
deletions made): a watcher killed in between finds the old rows at its next start, sees the
difference again and redoes the work, which the index makes idempotent (content-hash ids).
Before a batch's documents are written, its paths are recorded as *intents* (committed
first): a batch cut short may have stored documents of files that are then deleted or changed
before it is tried again, bytes no row names; the intents say at which paths to look for such
documents (by their ``path`` field) once the batch is done.

With a metadata sidecar (``watch --metadata``), the rows last applied to the documents and
the sha256 of the file they came from are kept too (:meth:`WatchState.sidecar`), written
after the documents were updated, like the files' rows: a start that finds another digest
compares the file's rows with these and updates the documents of the rows that changed while
the watcher was not running.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The hash of a file that is no image, or failed: known (not read again until it changes), but
# it holds no document.
NO_IMAGE = ""

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    rel_path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_hash ON files (content_hash);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS intents (rel_path TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS sidecar (rel_path TEXT PRIMARY KEY, fields TEXT NOT NULL);
"""
# The meta key of the digest of the sidecar whose rows the table ``sidecar`` holds.
SIDECAR_DIGEST = "sidecar_sha256"


@dataclass(frozen=True)
class FileRow:
    size: int
    mtime_ns: int
    content_hash: str  # NO_IMAGE for a file that holds no document

    @property
    def stamp(self) -> tuple[int, int]:
        return self.size, self.mtime_ns


def state_file(directory: Path, root: Path, index: str) -> Path:
    """The state of ``root`` watched into ``index``: named by a digest of both (any path)."""
    digest = hashlib.sha256(f"{index}\n{root}".encode()).hexdigest()[:16]
    return Path(directory) / f"{digest}.sqlite"


def _under(prefix: str) -> tuple[str, str, str]:
    """``rel_path = ?`` or below ``prefix/``: a range on the primary key ('/' + 1 is '0')."""
    return prefix, prefix + "/", prefix + "0"


class WatchState:
    """The rows of one watched folder (paths relative to it, as documents' ``rel_path``)."""

    def __init__(self, directory: Path, root: Path, index: str):
        self.path = state_file(directory, root, index)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # WAL: a commit is one sequential append, and a kill -9 mid-write leaves the last
        # committed state.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('root', ?), ('index', ?)",
                         (str(root), index))

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM files").fetchone()[0]

    def rows(self, rel_paths: list[str]) -> dict[str, FileRow]:
        """The rows of those of ``rel_paths`` that are known."""
        out: dict[str, FileRow] = {}
        for i in range(0, len(rel_paths), 500):  # SQLite's bound-parameter limit
            chunk = rel_paths[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for rel, size, mtime, digest in self._db.execute(
                    f"SELECT * FROM files WHERE rel_path IN ({marks})", chunk):
                out[rel] = FileRow(size, mtime, digest)
        return out

    def under(self, prefix: str) -> dict[str, FileRow]:
        """Every row at ``prefix`` or below it (``""``: every row)."""
        if not prefix or prefix == ".":
            query, args = "SELECT * FROM files", ()
        else:
            exact, low, high = _under(prefix)
            query = "SELECT * FROM files WHERE rel_path = ? OR (rel_path >= ? AND rel_path < ?)"
            args = (exact, low, high)
        return {rel: FileRow(size, mtime, digest)
                for rel, size, mtime, digest in self._db.execute(query, args)}

    def paths_with(self, content_hash: str) -> list[str]:
        """The known files holding these bytes (uncommitted changes of :meth:`change` seen)."""
        return [r for (r,) in self._db.execute(
            "SELECT rel_path FROM files WHERE content_hash = ? ORDER BY rel_path",
            (content_hash,))]

    @contextmanager
    def change(self) -> Iterator[WatchState]:
        """One transaction: committed when the block ends, rolled back if it raises (an
        interrupt included), so the rows never run ahead of the index."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def intend(self, rel_paths: list[str]) -> None:
        """Record, committed, that documents of these paths are about to be written."""
        with self.change():
            self._db.executemany("INSERT OR IGNORE INTO intents VALUES (?)",
                                 [(r,) for r in rel_paths])

    def intents(self, rel_paths: list[str] | None = None) -> set[str]:
        """The paths (of ``rel_paths``, or all) of batches that did not finish."""
        if rel_paths is None:
            return {r for (r,) in self._db.execute("SELECT rel_path FROM intents")}
        out: set[str] = set()
        for i in range(0, len(rel_paths), 500):
            chunk = rel_paths[i:i + 500]
            marks = ",".join("?" * len(chunk))
            out |= {r for (r,) in self._db.execute(
                f"SELECT rel_path FROM intents WHERE rel_path IN ({marks})", chunk)}
        return out

    def clear_intents(self, rel_paths: list[str]) -> None:
        self._db.executemany("DELETE FROM intents WHERE rel_path = ?", [(r,) for r in rel_paths])

    def put(self, rel_path: str, row: FileRow) -> None:
        self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                         (rel_path, row.size, row.mtime_ns, row.content_hash))

    def remove(self, rel_path: str) -> None:
        self._db.execute("DELETE FROM files WHERE rel_path = ?", (rel_path,))

    # -- the metadata sidecar's rows last applied ----------------------------------------------

    def sidecar_digest(self) -> str | None:
        """The sha256 of the sidecar whose rows were last applied; None when none was."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?",
                               (SIDECAR_DIGEST,)).fetchone()
        return row[0] if row else None

    def sidecar(self) -> dict[str, dict] | None:
        """The rows last applied (``{relative path: fields}``), None when none were."""
        if self.sidecar_digest() is None:
            return None
        return {rel: json.loads(fields)
                for rel, fields in self._db.execute("SELECT * FROM sidecar")}

    def record_sidecar(self, digest: str, table: dict[str, dict]) -> None:
        """Remember ``table`` (parsed from bytes of sha256 ``digest``) as applied, in one
        transaction."""
        with self.change():
            self._db.execute("DELETE FROM sidecar")
            self._db.executemany("INSERT INTO sidecar VALUES (?, ?)",
                                 [(rel, json.dumps(fields)) for rel, fields in table.items()])
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             (SIDECAR_DIGEST, digest))
