"""``python -m indexer watch <dir>``: keep the index in step with a folder as it changes.

First it catches up with what changed while it was not running (files added, changed, moved,
deleted: against its state, imgsearch/watchstate.py), then it follows file-system events
(watchdog; inotify on Linux) until stopped:

- every event only marks a path dirty; a dirty path is taken once what is there (a file's size
  and mtime, or nothing) has not changed for the quiet period (``IMGSEARCH_WATCH_QUIET``), so
  a file still being written waits, and a folder moved or deleted as a whole is expanded into
  its files (on disk, and in the state);
- the paths taken together are one batch: one ``run_partition`` over its new and changed files
  (a burst of thousands is embedded at the pipeline's full rate), then the state's rows, and
  the documents of bytes no file holds any more deleted. A moved file keeps its document (same
  content hash), which gets the new path without being embedded again;
- Elasticsearch unreachable: the batch stays queued, with every event that comes meanwhile,
  and is tried again after a wait (logged with what it waits for) until it is written;
- the state is written only after the documents, so a ``kill -9`` loses nothing: the next
  start's catch-up sees what its rows lack; a batch's paths are recorded (committed) before
  its documents, so that a document it stored for a file deleted or changed again before the
  next try is found by its path and deleted (imgsearch/watchstate.py, intents);
- with ``--metadata``, the sidecar is followed too: when it is edited, replaced (a rename
  over it) or deleted, it is read again once quiet (the same quiet period), and the
  documents whose rows changed get their ``label``, ``tags`` and ``extra`` as indexing them
  afresh would write them (partial updates, no embedding; a removed row clears them), each
  change logged. A sidecar that cannot be parsed is logged and the one before it kept. The
  rows applied are kept in the state with the file's digest, so a start applies the rows
  changed while the watcher was not running (:meth:`Watcher.sync_sidecar`);
- SIGTERM or Ctrl-C: exit 0 at once, *abandoning* the batch in flight (its writes already made
  stay; its rows are not written, so the next start takes it again, and what was stored is not
  embedded twice). Finishing it instead could take minutes of embedding, past the 10 s a
  container is given to stop.

Exit status: 0 stopped by a signal; 1 aborted (another model's index, regions that do not
match); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path

from elasticsearch import ApiError, TransportError
from tqdm import tqdm
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from imgsearch.decisions import Decisions
from imgsearch.errors import Unavailable
from imgsearch.esclient import RETRY_STATUSES
from imgsearch.indexing import INTERRUPTED, Target, prepare, run_partition
from imgsearch.metadata import with_decision
from imgsearch.model import ImageModel
from imgsearch.pipeline import metadata_fields, moved_from, now_iso, relocated_fields
from imgsearch.settings import Settings, retry_delays
from imgsearch.store import ImageStore, StoreError, StoreUnavailable
from imgsearch.walk import walk_files
from imgsearch.watchstate import NO_IMAGE, FileRow, WatchState

from . import cli
from .sidecar import (
    SidecarError,
    changed_rows,
    describe_change,
    parse_sidecar,
    read_sidecar,
)

log = logging.getLogger("indexer.watch")

# How often the loop looks at its dirty paths: a fifth of the default quiet period, so that a
# file is taken at most 0.2 s after it became quiet.
TICK = 0.2
# Files a catch-up gives the pipeline at once: its rows are written after each such part, so
# a long first catch-up killed half-way keeps what it did, and the hashes of a part (~150 B a
# file) are all it holds in memory.
CATCH_UP_PART = 5000
# Event types that say something changed; "opened" and "closed_no_write" come from every
# read (the watcher's own too) and say nothing.
CHANGES = {"created", "modified", "moved", "deleted", "closed"}
# Where watchdog says that the kernel dropped events (it tells no handler).
INOTIFY_LOGGER = "watchdog.observers.inotify_c"
# Sidecar rows a change logs one by one; beyond, a count (an edit of a whole column would
# otherwise log every row of the file).
ROWS_LOGGED = 20
# Documents of one request of metadata updates (a mget, then a bulk of partial updates of
# ~200 B each): the pipeline's bulk requests carry about as many bytes.
METADATA_CHUNK = 1000


@dataclass
class Pending:
    """A dirty path: what was last seen there (``(size, mtime_ns)``, or None: nothing) and
    since when."""

    stamp: tuple[int, int] | None | bool = False  # False: not looked at yet
    since: float = 0.0
    ready_since: float | None = None


@dataclass
class BatchReport:
    files: int  # paths of the batch (files to read, and files gone)
    read: int = 0
    indexed: int = 0
    moved: int = 0
    deleted: int = 0
    excluded: int = 0
    failed: list = field(default_factory=list)
    seconds: float = 0.0


def stamp_of(path: Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of a regular file (links followed), None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return st.st_size, st.st_mtime_ns


class FolderGone(Unavailable):
    """The watched folder itself is gone (deleted, or its disk unmounted): nothing is
    deleted from the index for it; the watcher stops and says so."""

    code = "folder_gone"


class BatchNotWritten(StoreUnavailable):
    """A batch whose run stopped early (Elasticsearch unreachable after the writes' retries):
    it stays queued and is tried again."""


def transient(exc: StoreError) -> bool:
    """Whether waiting can cure ``exc``: Elasticsearch unreachable, timing out or saying
    "later" (429/502/503/504), not an index of another model or a refused setting."""
    if isinstance(exc, StoreUnavailable):
        return True
    cause = exc.__cause__
    if isinstance(cause, ApiError):
        return cause.status_code in RETRY_STATUSES
    return isinstance(cause, TransportError)


def why(exc: Exception) -> str:
    """What went wrong, in one short line: the transport's own error when there is one (the
    store's message goes on to tell a one-shot command to run again, which the watcher does
    by itself)."""
    text = (str(exc.__cause__ or exc) or repr(exc)).splitlines()[0]
    return text if len(text) <= 240 else text[:237] + "..."


class _Marker(FileSystemEventHandler):
    """The observer thread's side: each event marks its paths dirty, nothing more."""

    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in CHANGES:
            return
        if event.is_directory and event.event_type in ("modified", "closed"):
            return  # a folder's own mtime: its files' events say what changed
        self.watcher.mark(Path(os.fsdecode(event.src_path)))
        if event.event_type == "moved":
            self.watcher.mark(Path(os.fsdecode(event.dest_path)))


class _SidecarMarker(FileSystemEventHandler):
    """Events of the sidecar's folder that touch the sidecar itself (written, replaced by a
    rename over it, deleted): it is marked to be read again."""

    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in CHANGES or event.is_directory:
            return
        paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "")
                                                           or "")}
        if str(self.watcher.metadata) in paths:
            self.watcher.mark_sidecar()


class _Overflow(logging.Handler):
    """The kernel's event queue overflowed (a burst beyond fs.inotify.max_queued_events,
    16,384 by default): events were lost, and watchdog only logs it. Heard here, it marks the
    whole folder dirty, which costs one ``stat`` per file (its rows say what changed), as at
    a start."""

    def __init__(self, watcher: Watcher):
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            log.warning("inotify lost events (queue overflow): looking at every file of %s",
                        self.watcher.root)
            self.watcher.mark(self.watcher.root)


class Watcher:
    """Keeps ``root`` indexed: :meth:`catch_up`, then :meth:`follow` events until
    :meth:`stop` (or an interrupt). ``batches`` lists the files of each batch written."""

    def __init__(self, root: Path, *, settings: Settings, embedder: ImageModel,
                 store: ImageStore, sidecar: dict[str, dict] | None = None,
                 metadata: Path | None = None, metadata_digest: str | None = None,
                 workers: int | None = None, progress: bool = False,
                 skip_near_duplicates: bool = False):
        # Normalised but not resolved, like the indexer's: documents keep the user's path.
        self.root = Path(os.path.abspath(root))
        self.settings, self.embedder, self.store = settings, embedder, store
        self.sidecar = sidecar or {}
        # The sidecar file followed (``--metadata``), and the sha256 of the bytes ``sidecar``
        # was parsed from; without it, ``sidecar`` is what new documents get, never re-read.
        self.metadata = Path(os.path.abspath(metadata)) if metadata else None
        if self.metadata is not None and metadata_digest is None:  # not read by the caller
            self.sidecar, metadata_digest = read_sidecar(self.metadata)
        self._metadata_digest = metadata_digest
        self._sidecar_marked = False
        self._sidecar_pending: Pending | None = None
        self.workers, self.progress = workers, progress
        self.skip_near = settings.duplicate_threshold if skip_near_duplicates else None
        self.quiet = settings.watch_quiet
        self.batches: list[BatchReport] = []
        self.target: Target | None = None
        self.state: WatchState | None = None
        self.caught_up = threading.Event()
        self.waits = 0  # times it waited for Elasticsearch
        self.metadata_updated = 0  # documents given the metadata of a changed sidecar row
        # People's metadata changes through the API, which a sidecar's rows do not undo.
        self.decisions = Decisions(store.es, settings.image_decisions_index,
                                   read=store.read_retrying)
        self._marked: set[Path] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: dict[Path, Pending] = {}
        self._state_dir = Path(os.path.abspath(settings.watch_state_dir))
        self._device: int | None = None

    # -- the observer's side ------------------------------------------------------------------

    def mark(self, path: Path) -> None:
        """A path something happened to (any thread)."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return  # a move out of the folder names its destination outside it
        if any(part.startswith(".") for part in rel.parts):
            return  # hidden entries are not indexed (imgsearch/walk.py)
        if path.is_relative_to(self._state_dir):
            return  # the state's own writes, when it lies inside the folder
        with self._lock:
            self._marked.add(path)
        # No wake-up: the loop looks every TICK. Waking it on each event would stat every
        # pending path once per event, quadratic in a burst of thousands.

    def mark_sidecar(self) -> None:
        """The sidecar file was written, replaced or deleted (any thread)."""
        with self._lock:
            self._sidecar_marked = True

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    @property
    def waiting(self) -> int:
        """Dirty paths not yet written (queued, quieting, or waiting for Elasticsearch)."""
        with self._lock:
            return len(self._pending) + len(self._marked)

    # -- running ------------------------------------------------------------------------------

    def run(self) -> None:
        """Catch up, then follow events until stopped. The observer starts first, so nothing
        that happens during the catch-up is missed."""
        observer = Observer()
        observer.schedule(_Marker(self), str(self.root), recursive=True)
        if self.metadata is not None:  # its folder, not the file: a rename over it is seen
            observer.schedule(_SidecarMarker(self), str(self.metadata.parent), recursive=False)
        overflow = _Overflow(self)
        logging.getLogger(INOTIFY_LOGGER).addHandler(overflow)
        try:
            observer.start()
        except OSError as exc:  # inotify: one watch per folder, limited per user
            raise Unavailable(
                f"cannot watch {self.root} ({exc}); on Linux each folder takes an inotify "
                "watch: raise fs.inotify.max_user_watches (sysctl) for a tree this large"
            ) from exc
        try:
            self.open()
            self.catch_up()
            self.follow()
        finally:
            logging.getLogger(INOTIFY_LOGGER).removeHandler(overflow)
            observer.stop()
            observer.join(timeout=5)
            if self.state:
                self.state.close()

    def open(self) -> None:
        """The target index (waiting for Elasticsearch as long as it takes) and its state."""
        self.target = self._until_written(
            "the index to write to",
            lambda: prepare(self.store, self.settings, self.embedder, new_index=False))
        self.state = WatchState(self.settings.watch_state_dir, self.root, self.target.index)
        self._device = os.stat(self.root).st_dev
        log.info("watching %s into index %s (state %s, %d files known; quiet period %.1fs)",
                 self.root, self.target.index, self.state.path, len(self.state), self.quiet)

    def catch_up(self) -> None:
        """Apply what changed while not running: every file whose size or mtime differs from
        its row (or has none) is read, the rows of files gone are dropped, their documents
        deleted when no file holds their bytes any more."""
        started = time.perf_counter()
        on_disk = {p.relative_to(self.root).as_posix(): p for p in walk_files(self.root)}
        known = self.state.under("")
        stamps = {rel: stamp_of(p) for rel, p in on_disk.items()}
        changed = [rel for rel, st in stamps.items()
                   if st is not None and (rel not in known or known[rel].stamp != st)]
        # Paths of a batch cut short (kill -9) whose files are gone: no row may name them,
        # but a document of theirs may have been stored.
        intents = self.state.intents()
        cut_short = [r for r in intents if r not in known and stamps.get(r) is None]
        gone = [rel for rel in known if stamps.get(rel) is None] + cut_short
        changed += sorted(r for r in intents - set(changed) if stamps.get(r) is not None)
        log.info("catching up: %d files, %d new or changed, %d gone", len(on_disk),
                 len(changed), len(gone))
        bar = tqdm(total=len(changed), unit="img", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            for i in range(0, len(changed), CATCH_UP_PART):
                part = {on_disk[rel]: stamps[rel] for rel in changed[i:i + CATCH_UP_PART]}
                self._until_written(f"{len(part)} new or changed files",
                                    lambda part=part: self.apply(part, []))
                bar.update(len(part))
        finally:
            bar.close()
        if gone:  # last: a file moved while stopped is found at its new path first
            self._until_written(f"{len(gone)} files gone",
                                lambda: self.apply({}, [self.root / r for r in gone]))
        if self.metadata is not None:  # after the files: every row's file has its row now
            self._until_written("the metadata file's rows",
                                lambda: self.sync_sidecar(self.sidecar, self._metadata_digest))
        log.info("caught up in %.1fs", time.perf_counter() - started)
        self.caught_up.set()

    def follow(self) -> None:
        """Take dirty paths once quiet, in batches, until stopped."""
        delays = iter(())
        while not self._stop.is_set():
            self._wake.wait(TICK)
            self._wake.clear()
            now = time.monotonic()
            ready = self._ready(now)
            sidecar_due = self._sidecar_ready(now)
            if not ready and not sidecar_due:
                continue
            if ready and not self._root_here():
                # Unmounted looks like deleted: never take that as every file deleted.
                raise FolderGone(
                    f"the watched folder {self.root} is gone (deleted, or its disk unmounted); "
                    "nothing was deleted from the index for it. Start the watcher again when "
                    "the folder is back: it catches up from there.")
            files = {p: st for p, st in ready.items() if st is not None}
            gone = [p for p, st in ready.items() if st is None]
            try:
                self._follow_alias()
                if ready:
                    self.apply(files, gone)
                if sidecar_due:
                    self.reload_sidecar()
            except StoreError as exc:
                if not transient(exc):
                    raise
                delay = next(delays, None)
                if delay is None:
                    delays = self._delays()
                    delay = next(delays)
                self.waits += 1
                log.warning("waiting for Elasticsearch at %s (%s): %d changed paths stay "
                            "queued (nothing is lost); trying again in %.1fs",
                            self.settings.es_url, why(exc), self.waiting, delay)
                self._stop.wait(delay)
                continue
            delays = iter(())
            for p in ready:
                self._pending.pop(p, None)
            if sidecar_due:
                self._sidecar_pending = None

    def _delays(self) -> Iterator[float]:
        """The waits between tries while Elasticsearch is away: the writes' doubling delays
        (IMGSEARCH_BULK_*), then their cap for as long as it takes."""
        s = self.settings
        cap = s.bulk_max_backoff or 30.0
        return chain(retry_delays(max(s.bulk_retries, 1), s.bulk_backoff or 1.0, cap),
                     repeat(cap))

    def _until_written(self, what: str, attempt):
        """``attempt()``, tried again while Elasticsearch is away (logged), until it is done."""
        delays = self._delays()
        while True:
            try:
                return attempt()
            except StoreError as exc:
                if self._stop.is_set() or not transient(exc):
                    raise
                delay = next(delays)
                self.waits += 1
                log.warning("waiting for Elasticsearch at %s (%s) for %s; trying again in "
                            "%.1fs", self.settings.es_url, why(exc), what, delay)
                if self._stop.wait(delay):
                    raise

    def _root_here(self) -> bool:
        """The watched folder is still there, on the device it was on when the watcher
        started: an unmounted disk leaves an empty mount point on another device."""
        try:
            return self.root.is_dir() and os.stat(self.root).st_dev == self._device
        except OSError:
            return False

    def _follow_alias(self) -> None:
        """A ``--new-index`` run that moved the alias meanwhile: write into the new index
        from now on, from a state of its own (a catch-up first: the new index may lack what
        arrived during its build). Another model's index stops the watcher
        (ModelVersionMismatch), as it stops the indexer."""
        current = self.store.indices.current_index()
        if current is None or current == self.target.index:
            return
        log.warning("the alias %s moved from %s to %s: following it", self.store.alias,
                    self.target.index, current)
        self.state.close()
        self.open()
        self.catch_up()

    # -- the debounce -------------------------------------------------------------------------

    def _ready(self, now: float) -> dict[Path, tuple[int, int] | None]:
        """The dirty paths to take now, with what is there. A folder is expanded into its
        files (those on disk, and those its rows name); a path is ready once what is there
        has not changed for the quiet period; ready paths are held while others are still
        quieting, for up to one more quiet period, so that a burst goes as one batch."""
        with self._lock:
            marked, self._marked = self._marked, set()
        for path in marked:
            for p in self._expand(path):
                self._pending[p] = Pending()
        ready: dict[Path, tuple[int, int] | None] = {}
        unsettled = False
        oldest_ready = now
        for path, entry in self._pending.items():
            seen = stamp_of(path)
            if seen != entry.stamp:
                entry.stamp, entry.since, entry.ready_since = seen, now, None
            if now - entry.since < self.quiet:
                unsettled = True
                continue
            if entry.ready_since is None:
                entry.ready_since = now
            oldest_ready = min(oldest_ready, entry.ready_since)
            ready[path] = seen
        if ready and unsettled and now - oldest_ready < self.quiet:
            return {}
        return ready

    def _sidecar_ready(self, now: float) -> bool:
        """Whether the sidecar, marked by an event, has been quiet for the quiet period (what
        is there, or nothing, unchanged): the debounce of the files, for one path."""
        with self._lock:
            marked, self._sidecar_marked = self._sidecar_marked, False
        if marked and self._sidecar_pending is None:
            self._sidecar_pending = Pending()
        entry = self._sidecar_pending
        if entry is None:
            return False
        seen = stamp_of(self.metadata)
        if seen != entry.stamp:
            entry.stamp, entry.since = seen, now
        return now - entry.since >= self.quiet

    def _expand(self, path: Path) -> list[Path]:
        """A dirty path as the files it stands for: a folder's files on disk and the rows
        below it (a folder moved away or deleted leaves only rows), or the path itself."""
        rel = path.relative_to(self.root).as_posix()
        out = [path] if not path.is_dir() or path.is_symlink() else []
        if path.is_dir() and not path.is_symlink():
            out += list(walk_files(path))
        if self.state is not None:
            out += [self.root / r for r in self.state.under(rel)]
        return list(dict.fromkeys(out))

    # -- a batch ------------------------------------------------------------------------------

    def apply(self, files: dict[Path, tuple[int, int]], gone: list[Path]) -> BatchReport | None:
        """Write one batch: ``files`` (path -> the size and mtime seen before reading) read,
        embedded when new, their rows put; the rows of ``gone`` dropped; then the documents of
        bytes that no file under the root holds any more deleted, and those whose file is
        gone but whose bytes another file holds given that file's path. Raises StoreError
        (nothing of the state written) when Elasticsearch fails."""
        started = time.perf_counter()
        rel = {p: p.relative_to(self.root).as_posix() for p in [*files, *gone]}
        known = self.state.rows(list(rel.values()))
        # Paths of an earlier try of theirs that did not finish (Elasticsearch away, kill -9):
        # documents of bytes that no row names may be stored at them.
        leftover = self.state.intents(list(rel.values()))
        to_read = [p for p, st in files.items()
                   if rel[p] not in known or known[rel[p]].stamp != st or rel[p] in leftover]
        gone = [p for p in gone if rel[p] in known or rel[p] in leftover]
        if not to_read and not gone:
            return None
        report = BatchReport(len(to_read) + len(gone), read=len(to_read))
        new_rows: dict[str, FileRow] = {}
        if to_read:
            self.state.intend([rel[p] for p in to_read])  # committed before any document
            part = run_partition(
                to_read, self.root, self.target, settings=self.settings,
                embedder=self.embedder, store=self.store, indexed_at=now_iso(),
                sidecar=self.sidecar, workers=self.workers, skip_near=self.skip_near,
                record_paths=True,
            )
            if part.aborted == INTERRUPTED:
                raise KeyboardInterrupt
            if part.aborted:  # Elasticsearch away: the batch stays queued
                raise BatchNotWritten(part.aborted)
            s = part.stats
            # Vanished between the event and the read: a file gone, no failure.
            vanished = {rel[p] for p in to_read if rel[p] not in s.by_path
                        and stamp_of(p) is None}
            gone += [p for p in to_read if rel[p] in vanished]
            report.failed = [f for f in s.failed if f.rel_path not in vanished]
            failed = {f.rel_path for f in report.failed}
            report.indexed, report.moved, report.excluded = s.indexed, s.moved, s.excluded
            for p in to_read:
                r = rel[p]
                if r not in vanished:
                    digest = NO_IMAGE if r in failed else s.by_path.get(r, NO_IMAGE)
                    new_rows[r] = FileRow(*files[p], digest)
            for f in report.failed:
                log.warning("%s: [%s] %s (taken again when it changes)", f.rel_path, f.reason,
                            f.message)
        affected = {known[rel[p]].content_hash for p in [*to_read, *gone]
                    if rel[p] in known} - {NO_IMAGE}
        if leftover:  # rare: only after a batch was cut short
            self.store.refresh(self.target.index)
            affected |= self.store.ids_at_paths([str(self.root / r) for r in leftover],
                                                self.target.index)
        with self.state.change():
            for r, row in new_rows.items():
                self.state.put(r, row)
            for p in gone:
                if rel[p] not in new_rows:
                    self.state.remove(rel[p])
            report.deleted, moved = self._settle(affected)
            report.moved += moved
            self.state.clear_intents([rel[p] for p in [*to_read, *gone]])
        report.seconds = time.perf_counter() - started
        self.batches.append(report)
        log.info("batch of %d paths: %d read, %d indexed, %d moved, %d deleted, %d excluded, "
                 "%d failed (%.1fs)", report.files, report.read, report.indexed, report.moved,
                 report.deleted, report.excluded, len(report.failed), report.seconds)
        return report

    def _settle(self, affected: set[str]) -> tuple[int, int]:
        """For the bytes some file of the batch held before (``affected``): delete the
        document when no file under the root holds them now, or give it the path of one that
        does when its own file is gone. Only documents of this root: the same bytes indexed
        from another folder are that folder's. (deleted, moved)"""
        if not affected:
            return 0, 0
        stored = self.store.indexed(sorted(affected), self.target.index)
        delete, moves = [], {}
        for digest, source in stored.items():
            if source.get("root") != str(self.root):
                continue
            holders = self.state.paths_with(digest)
            if not holders:
                delete.append(digest)
            elif moved_from(source, self.root / holders[0]):
                moves[digest] = relocated_fields(self.root / holders[0], holders[0],
                                                 root=self.root, sidecar=self.sidecar,
                                                 stored=source)
        deleted = self.store.delete_ids(delete, self.target.index) if delete else 0
        moved = self.store.update_many(moves, self.target.index) if moves else 0
        return deleted, moved

    # -- the metadata sidecar -----------------------------------------------------------------

    def reload_sidecar(self) -> None:
        """Read the sidecar again (it changed) and apply the rows that differ from those in
        force: a file that cannot be parsed is logged and the rows in force kept (read again
        at its next change); a file gone is a sidecar without rows. Raises StoreError (the
        rows in force unchanged) when Elasticsearch fails, to be tried again."""
        try:
            data = self.metadata.read_bytes()
        except FileNotFoundError:
            log.warning("metadata file %s deleted: the documents of its %d rows get the "
                        "metadata of a file without one", self.metadata, len(self.sidecar))
            table, digest = {}, ""
        except OSError as exc:
            log.error("metadata file %s cannot be read (%s): keeping the %d rows read before",
                      self.metadata, exc.strerror, len(self.sidecar))
            return
        else:
            try:
                table = parse_sidecar(self.metadata, data)
            except SidecarError as exc:
                log.error("metadata file %s not applied: %s; keeping the %d rows read before "
                          "(fix it and save it again)", self.metadata, exc, len(self.sidecar))
                return
            digest = hashlib.sha256(data).hexdigest()
        self.sync_sidecar(table, digest)

    def sync_sidecar(self, table: dict[str, dict], digest: str) -> int:
        """Make ``table`` (parsed from bytes of sha256 ``digest``) the rows in force: the
        documents of the rows that differ from those last applied (the state's; all of them
        when the state has none) are updated, then the state remembers ``table``. How many
        documents were updated."""
        # The rows applied last (a start after no change, a file saved again unchanged).
        if self.state.sidecar_digest() == digest:
            self.sidecar, self._metadata_digest = table, digest
            return 0
        recorded = self.state.sidecar()
        changed = changed_rows(recorded or {}, table)
        updated = self.apply_metadata(changed) if changed else 0
        self.metadata_updated += updated
        if changed:
            shown = list(changed.items())[:ROWS_LOGGED]
            for rel, row in shown:
                before = (recorded or {}).get(rel)
                what = ("row removed: " if row is None else "row added: " if before is None
                        else "") + describe_change(before, row)
                log.info("metadata %s: %s", rel, what)
            if len(changed) > len(shown):
                log.info("metadata: %d more rows changed", len(changed) - len(shown))
            log.info("metadata file %s: %d rows changed%s, %d documents updated",
                     self.metadata, len(changed),
                     " (no rows applied before: every row)" if recorded is None else "",
                     updated)
        self.state.record_sidecar(digest, table)  # after the documents: a kill redoes it
        self.sidecar, self._metadata_digest = table, digest
        return updated

    def apply_metadata(self, rows: dict[str, dict | None]) -> int:
        """Give the documents of the files at ``rows``' paths (relative to the root; None: no
        row any more) the metadata fields their row says (imgsearch/pipeline.py
        ``metadata_fields``), in partial updates: no embedding. A document takes the row of
        its own ``rel_path`` (the same bytes at two paths are one document, of the path it was
        indexed from); documents of another root are that root's. The one place where the
        sidecar is written over documents already indexed. How many documents were updated;
        StoreError when Elasticsearch fails."""
        known = self.state.rows(list(rows))
        wanted = sorted({row.content_hash for row in known.values()} - {NO_IMAGE})
        updated = 0
        for i in range(0, len(wanted), METADATA_CHUNK):
            stored = self.store.indexed_sources(wanted[i:i + METADATA_CHUNK],
                                                ["root", "rel_path", "extra"],
                                                self.target.index)
            updates, first = {}, {}
            decided = self.decisions.metadata(stored)
            for doc_id, source in stored.items():
                rel = source.get("rel_path")
                if source.get("root") != str(self.root) or rel not in rows:
                    continue
                fields = metadata_fields(rel, rows[rel])
                decision = decided.get(doc_id)
                if decision is not None:  # a person's change through the API holds, unless
                    # the sidecar now says something else than what it replaced
                    # (imgsearch/metadata.py with_decision)
                    doc = with_decision(dict(fields), rows[rel] or {}, decision.fields or {},
                                        decision.replaced or {})
                    fields = {name: doc.get(name) for name in fields}
                updates[doc_id] = fields
                # A partial update merges objects: columns gone from the row would stay.
                if isinstance(fields["extra"], dict) and set(source.get("extra") or ()) - set(
                        fields["extra"]):
                    first[doc_id] = {"extra": None}
            updated += self.store.update_many(updates, self.target.index, first=first,
                                              what="metadata update")
        return updated


# -- the command ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m indexer watch",
        description="Index a folder, then keep the index in step with it as files are added, "
        "changed, moved and deleted (until SIGTERM or Ctrl-C).",
        epilog="Exit status: 0 stopped, 1 aborted, 2 bad arguments. State: "
        "IMGSEARCH_WATCH_STATE_DIR; quiet period: IMGSEARCH_WATCH_QUIET (see README).",
    )
    p.add_argument("folder", type=Path, help="folder of images, watched recursively")
    p.add_argument("--metadata", type=Path, help="CSV or JSONL sidecar keyed by relative path")
    p.add_argument("--skip-near-duplicates", action="store_true",
                   help="leave out each image as close as IMGSEARCH_DUPLICATE_THRESHOLD to one "
                   "already indexed")
    cli.add_model_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar while catching up")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.stop_on_sigterm()
    cli.set_up_logging()
    overrides = cli.model_overrides(args)
    return cli.run(lambda settings: watch_command(args, settings),
                   settings=lambda: Settings.from_env(**overrides),
                   interrupted="stopped before watching began")


def watch_command(args: argparse.Namespace, settings: Settings) -> int:
    if not args.folder.is_dir():
        raise cli.UsageError(f"{args.folder} is not a folder")
    sidecar, digest = read_sidecar(args.metadata) if args.metadata else (None, None)

    from imgsearch.embedder import Embedder

    watcher = None
    try:  # a stop while the model loads is a stop too: exit 0
        embedder = Embedder(settings)
        log.info("model %s, computing in %s on %s", embedder.version, embedder.precision,
                 embedder.runtime)
        watcher = Watcher(args.folder, settings=settings, embedder=embedder,
                          store=ImageStore.from_settings(settings), sidecar=sidecar,
                          metadata=args.metadata, metadata_digest=digest,
                          workers=args.workers, progress=not args.no_progress,
                          skip_near_duplicates=args.skip_near_duplicates)
        watcher.run()
    except KeyboardInterrupt:
        waiting = watcher.waiting if watcher else 0
        log.info("stopped; %d changed paths not yet written are taken again at the next "
                 "start (the batch in flight, if any, was abandoned)", waiting)
    return cli.EXIT_OK
