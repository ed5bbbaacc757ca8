"""Backups of a collection: Elasticsearch's part as a snapshot, and the files beside it.

A backup folder holds everything needed to bring a collection back on an empty node:

- ``repository/``: an Elasticsearch filesystem (``fs``) snapshot repository. Each backup is one
  snapshot of the concrete index behind the alias (with the alias), the API keys index, the
  decisions index and the image index's duplicate-state index (``<index>-duplicates``, when it
  exists). Snapshots are incremental: a second backup stores only the segments the first lacks.
- ``files/<tree>/``: the files Elasticsearch does not hold (the thumbnails and the photos
  added through the API; see :data:`FILE_TREES`), one pool for every backup of the folder.
  Their names are content hashes, so a file copied once serves every later backup;
  ``lists/<snapshot>.<tree>.txt`` names the files of one backup, so a restore copies exactly
  those.
- ``manifest.json``: every backup of the folder, oldest first: its snapshot, when, the alias
  and concrete index, the model version, each index's document count and each tree's files.
  Written last, atomically: a backup that did not finish is not in it, and is never restored.

Elasticsearch writes the repository itself, so the folder must lie under one of the node's
``path.repo`` folders (the local node's is ``IMGSEARCH_BACKUP_DIR``) and be writable by the
user the node runs as; :class:`Backups` asks the node and says so before writing anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from elasticsearch import ApiError, Elasticsearch, NotFoundError

from .errors import BadInput, Conflict, Unavailable
from .esclient import IndexMissing, translated
from .indices import IndexManager
from .settings import Settings

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
REPOSITORY_DIR = "repository"
FILES_DIR = "files"
LISTS_DIR = "lists"
LOCK_FILE = ".lock"

# The folders of files a backup copies beside its snapshot: (their name in the backup, the
# Settings field that locates them). Each is content-addressed (a file is named by a hash),
# which is what lets every backup of a folder share one pool. A new such folder is one more
# line here.
FILE_TREES: tuple[tuple[str, str], ...] = (
    ("thumbnails", "thumbnail_dir"),
    ("uploads", "upload_dir"),  # photos added through the write API (imgsearch/uploads.py)
)

# What each index of a backup is to the product, and how a restore treats it.
ROLE_IMAGES, ROLE_DUPLICATES = "images", "duplicates"
ROLE_KEYS, ROLE_DECISIONS = "keys", "decisions"

# How often a running snapshot is asked about: a snapshot of a few thousand images takes
# seconds, so half a second adds little to it and costs one small request each time.
POLL_SECONDS = 0.5
# A restore waits for every shard to be recovered in one request. That copies the whole index
# from the repository: measured here, 3,781 photos (34 MB) with their thumbnails in 4.7 s; a
# million float vectors (about 9 GB) at that rate take about 20 minutes, far beyond
# ES_REQUEST_TIMEOUT.
RESTORE_TIMEOUT = 6 * 3600.0


class BackupError(BadInput):
    """A backup folder that cannot be used as asked (outside path.repo, missing, damaged, an
    unknown snapshot); the message says what to do."""

    code = "invalid_backup"


class BackupFailed(Unavailable):
    """Elasticsearch could not complete a snapshot or a restore."""

    code = "backup_failed"


def duplicates_index(index: str) -> str:
    """The duplicate-state index of a concrete image index (imgsearch/duplicates.py)."""
    return f"{index}-duplicates"


def repository_name(folder: Path) -> str:
    """The repository a folder is registered as: one per folder, the same name on every
    cluster that reads it (a digest, since repository names cannot hold a path)."""
    return "imgsearch-" + hashlib.sha256(str(folder).encode()).hexdigest()[:16]


def _now() -> datetime:
    return datetime.now(UTC)


def _new_index_name(alias: str) -> str:
    # The shape of IndexManager.create_index's names, so that a restored index is one more
    # concrete index of the alias (``<alias>-*``: the compose role and the cleanups cover it).
    return f"{alias}-{_now():%Y%m%d-%H%M%S-%f}"


# --- the folder ----------------------------------------------------------------------------


def make_dirs(path: Path) -> None:
    """mkdir -p where each new folder takes, from the folder it is made in, its owner (as
    root) and its group's write and set-group-ID bits, so that whoever may write the repository
    there may write it in the new folder too: the local node's user owns the path.repo folder
    (imgsearch/localnode) that root makes backups in; the compose stack's folder is the app
    user's, group 0 and set-group-ID, and Elasticsearch writes it as a member of group 0
    (docs/DOCKER.md, "Backups")."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
        parent = p.parent.stat()
        p.chmod(0o755 | (parent.st_mode & (stat.S_IWGRP | stat.S_ISGID)))
        if os.geteuid() == 0:
            os.chown(p, parent.st_uid, parent.st_gid)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy_file(src: Path, dst: Path) -> None:
    """Copy through a temporary name, so that an interrupted copy leaves no half file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tree_files(root: Path) -> Iterator[Path]:
    """The files below ``root`` (relative), sorted, without temporary ones of a writer."""
    if not root.is_dir():
        return
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".tmp") or name.startswith("."):
                continue
            yield Path(dirpath, name).relative_to(root)


def _same_file(a: Path, b: Path) -> bool:
    # Names are content hashes; the size catches a thumbnail rewritten at another size.
    try:
        return a.stat().st_size == b.stat().st_size
    except OSError:
        return False


def copy_tree(src: Path, dst: Path, names: list[Path]) -> tuple[int, int]:
    """Copy ``names`` (relative) from ``src`` to ``dst`` where ``dst`` lacks them:
    ``(copied, bytes copied)``."""
    copied = size = 0
    for name in names:
        target = dst / name
        if _same_file(src / name, target):
            continue
        _copy_file(src / name, target)
        copied += 1
        size += target.stat().st_size
    return copied, size


@dataclass
class Manifest:
    """``manifest.json`` of a backup folder: its backups, oldest first."""

    backups: list[dict] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The folder's manifest; None when it has none; BackupError when it is damaged."""
        path = folder / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BackupError(f"{path} is damaged ({exc}); it cannot say what the folder "
                              "holds") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(
                raw.get("backups"), list):
            raise BackupError(f"{path} is not a backup manifest of format {FORMAT} (damaged, "
                              "or written by another program)")
        for entry in raw["backups"]:
            if not isinstance(entry, dict) or not {"snapshot", "alias", "index",
                                                   "indices"} <= entry.keys():
                raise BackupError(f"{path} is damaged: a backup in it lacks its snapshot, "
                                  "alias, index or indices")
        return cls(raw["backups"])

    def write(self, folder: Path) -> None:
        _write_atomically(folder / MANIFEST, json.dumps(
            {"format": FORMAT, "product": "imgsearch", "backups": self.backups}, indent=2) + "\n")

    def find(self, snapshot: str | None) -> dict:
        """The backup named ``snapshot``, or the newest one."""
        if not self.backups:
            raise BackupError("the backup folder's manifest lists no backups")
        if snapshot is None:
            return self.backups[-1]
        for entry in self.backups:
            if entry["snapshot"] == snapshot:
                return entry
        names = ", ".join(e["snapshot"] for e in self.backups[-5:])
        raise BackupError(f"no backup named {snapshot!r} in this folder (the newest: {names})")


@dataclass
class RestoreReport:
    snapshot: str
    index: str  # the concrete image index restored (its name on this node)
    alias: str
    documents: dict[str, int]  # restored index -> documents
    expected: dict[str, int]  # the same indices -> documents the backup counted
    replaced: list[str] = field(default_factory=list)  # indices overwritten (keys, decisions)
    previous: str | None = None  # the index the alias left, kept (with --replace)
    files: dict[str, int] = field(default_factory=dict)  # tree -> files copied
    seconds: float = 0.0

    @property
    def mismatched(self) -> dict[str, tuple[int, int]]:
        return {name: (self.documents.get(name, 0), want) for name, want in
                self.expected.items() if self.documents.get(name, 0) != want}


# --- the backups of one folder -------------------------------------------------------------


class Backups:
    """Back up the collection of ``settings`` into ``folder``, list and restore what it holds."""

    def __init__(self, es: Elasticsearch, settings: Settings, folder: Path):
        self.es = es
        self.settings = settings
        self.folder = Path(os.path.normpath(os.path.abspath(folder)))
        self.repository = repository_name(self.folder)
        self.location = self.folder / REPOSITORY_DIR

    # -- where Elasticsearch may write ------------------------------------------------------

    @translated
    def repo_roots(self) -> list[Path]:
        """``path.repo`` of every node (the folders all of them allow); empty when a node
        has none."""
        nodes = self.es.nodes.info(metric="settings",
                                   filter_path="nodes.*.settings.path.repo").body
        per_node = []
        for info in (nodes.get("nodes") or {}).values():
            repo = info.get("settings", {}).get("path", {}).get("repo") or []
            per_node.append({Path(os.path.normpath(p)) for p in
                             ([repo] if isinstance(repo, str) else repo)})
        if not per_node:
            return []
        return sorted(set.intersection(*per_node))

    def check_location(self) -> None:
        """BackupError unless the folder lies in a folder every node lists in path.repo."""
        roots = self.repo_roots()
        if any(self.folder.is_relative_to(root) for root in roots):
            return
        if not roots:
            raise BackupError(
                f"Elasticsearch at {self.settings.es_url} has no path.repo, so it may write "
                "snapshots nowhere: restart the local node (make es-down es-up), which lists "
                "IMGSEARCH_BACKUP_DIR there, or set path.repo in its elasticsearch.yml "
                "(the compose stack sets /backups)")
        allowed = ", ".join(map(str, roots)) or "none"
        raise BackupError(
            f"{self.folder} is outside the folders Elasticsearch may write snapshots to "
            f"(path.repo: {allowed}); use a folder under {roots[0] if roots else 'one'}, or "
            f"set IMGSEARCH_BACKUP_DIR to a folder above it and restart the local node "
            f"(make es-down es-up) so that it lists it in path.repo")

    @translated
    def register(self, *, readonly: bool) -> None:
        """Register the folder's repository (again: the same settings are a no-op).
        Read-only for a restore: a repository written by one cluster may be read by others,
        and only one may write it."""
        settings = {"location": str(self.location), "readonly": readonly, "compress": True}
        if self.settings.backup_max_bytes_per_sec:
            settings["max_snapshot_bytes_per_sec"] = f"{self.settings.backup_max_bytes_per_sec}b"
        try:
            self.es.snapshot.create_repository(name=self.repository, repository={
                "type": "fs", "settings": settings})
        except ApiError as exc:
            text = str(exc)
            if "AccessDenied" in text or "not accessible" in text or "verif" in text:
                raise BackupError(
                    f"Elasticsearch cannot write {self.location} ({exc.error}): "
                    f"{self.folder} must be writable by the user the node runs as (the local "
                    "node as root: imgsearch-es, which owns IMGSEARCH_BACKUP_DIR from the "
                    "node's start; the compose stack: group 0, docs/DOCKER.md \"Backups\")"
                ) from exc
            raise

    def _ensure_folder(self) -> None:
        make_dirs(self.folder)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One backup at a time into a folder: the manifest is read, changed and written, and
        snapshots it does not list are an interrupted backup's leftovers only while no other
        backup runs."""
        with open(self.folder / LOCK_FILE, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict("backup_running", f"another backup into {self.folder} is "
                               "running; wait for it to finish") from None
            yield

    # -- what there is to back up -----------------------------------------------------------

    @translated
    def _indices(self) -> dict[str, str]:
        """The existing indices of the collection -> their role."""
        manager = IndexManager(self.es, self.settings.es_index)
        index = manager.current_index()
        if index is None:
            raise IndexMissing(f"no index behind alias {self.settings.es_index!r}")
        wanted = {index: ROLE_IMAGES, duplicates_index(index): ROLE_DUPLICATES,
                  self.settings.api_keys_index: ROLE_KEYS,
                  self.settings.image_decisions_index: ROLE_DECISIONS}
        return {name: role for name, role in wanted.items() if self.es.indices.exists(index=name)}

    @translated
    def _counts(self, names: list[str]) -> dict[str, int]:
        self.es.indices.refresh(index=names)
        return {name: self.es.count(index=name)["count"] for name in names}

    # -- backing up -------------------------------------------------------------------------

    def backup(self) -> dict:
        """Snapshot the collection into the folder and copy its files beside it; return the
        manifest's new entry. Nothing is recorded unless all of it succeeded."""
        started = time.monotonic()
        self.check_location()  # asks the node first: nothing on disk if it is down
        indices = self._indices()
        self._ensure_folder()
        with self._locked():
            manifest = Manifest.read(self.folder)
            self.register(readonly=False)
            manifest = self._delete_leftovers(manifest)
            manager = IndexManager(self.es, self.settings.es_index)
            index = next(name for name, role in indices.items() if role == ROLE_IMAGES)
            counts = self._counts(list(indices))
            name = _new_index_name(self.settings.es_index)
            self._snapshot(name, list(indices), index)
            try:
                # Files after the snapshot: every document in it had its thumbnail written
                # before it was indexed, so the copy holds all of theirs.
                files = self._copy_files_out(name)
                entry = {
                    "snapshot": name,
                    "created_at": _now().isoformat(timespec="seconds"),
                    "seconds": round(time.monotonic() - started, 3),
                    "alias": self.settings.es_index,
                    "index": index,
                    "model_version": manager.index_model_version(index),
                    "elasticsearch": self._es_version(),
                    "indices": {n: {"role": indices[n], "documents": counts[n]}
                                for n in indices},
                    "files": files,
                }
                manifest.backups.append(entry)
                manifest.write(self.folder)
            except BaseException:  # not recorded: the snapshot goes too
                self._forget(name)
                raise
        log.info("backup %s of %s in %s: %s", name, index, self.folder,
                 ", ".join(f"{n} {c}" for n, c in counts.items()))
        return entry

    @translated
    def _es_version(self) -> str | None:
        nodes = self.es.nodes.info(filter_path="nodes.*.version").body.get("nodes", {})
        return next((n.get("version") for n in nodes.values()), None)

    @translated
    def _delete_leftovers(self, manifest: Manifest | None) -> Manifest:
        """Delete the repository's snapshots that the manifest does not list: a backup
        killed after its snapshot and before its manifest entry. The folder's lock is held,
        so no other backup is between those two steps. Returns the manifest to extend."""
        found = self.es.snapshot.get(repository=self.repository, snapshot="_all").body
        if manifest is None:
            if found.get("snapshots"):
                raise BackupError(
                    f"{self.folder} holds snapshots but no {MANIFEST}: damaged, or another "
                    "program's repository; back up into another folder")
            return Manifest()
        listed = {e["snapshot"] for e in manifest.backups}
        for snap in found.get("snapshots", []):
            if snap["snapshot"] not in listed:
                log.warning("deleting snapshot %s (%s): an interrupted backup's, not in %s",
                            snap["snapshot"], snap.get("state"), MANIFEST)
                with contextlib.suppress(NotFoundError):
                    self.es.snapshot.delete(repository=self.repository,
                                            snapshot=snap["snapshot"])
        return manifest

    @translated
    def _snapshot(self, name: str, indices: list[str], index: str) -> None:
        """Take the snapshot and wait for it; deleted again if it fails or is interrupted."""
        try:
            # Polled rather than one wait_for_completion request: a first snapshot of a large
            # index copies all of it and would outlast ES_REQUEST_TIMEOUT. Inside the try: an
            # interrupt while the request is on its way may already have started it.
            self.es.snapshot.create(
                repository=self.repository, snapshot=name, indices=indices,
                ignore_unavailable=True, include_global_state=False, wait_for_completion=False,
                metadata={"alias": self.settings.es_index, "index": index, "by": "imgsearch"})
            while True:
                snap = self.es.snapshot.get(repository=self.repository,
                                            snapshot=name).body["snapshots"][0]
                if snap["state"] not in ("IN_PROGRESS", "STARTED"):
                    break
                time.sleep(POLL_SECONDS)
            if snap["state"] != "SUCCESS" or snap.get("shards", {}).get("failed"):
                reasons = "; ".join(f.get("reason", "?") for f in snap.get("failures", [])[:3])
                raise BackupFailed(f"Elasticsearch could not complete snapshot {name} (state "
                                   f"{snap['state']}{': ' + reasons if reasons else ''}); "
                                   "nothing was recorded")
        except BaseException:  # a failed or interrupted one: do not keep it
            self._forget(name)
            raise

    def _forget(self, name: str) -> None:
        """Delete (or abort) snapshot ``name``, as far as Elasticsearch lets us now; what is
        left is a leftover that the next backup deletes."""
        with contextlib.suppress(Exception):
            self.es.snapshot.delete(repository=self.repository, snapshot=name)

    def _copy_files_out(self, name: str) -> dict:
        out = {}
        make_dirs(self.folder / LISTS_DIR)
        for tree, attribute in FILE_TREES:
            folder = getattr(self.settings, attribute)
            if not folder:  # a folder the settings leave unset: nothing of it to copy
                continue
            source = Path(folder)
            names = list(_tree_files(source))
            copied, size = copy_tree(source, self.folder / FILES_DIR / tree, names)
            listing = self.folder / LISTS_DIR / f"{name}.{tree}.txt"
            _write_atomically(listing, "".join(f"{n}\n" for n in names))
            out[tree] = {"list": str(listing.relative_to(self.folder)), "files": len(names),
                         "copied": copied, "bytes_copied": size}
        return out

    # -- listing ----------------------------------------------------------------------------

    def manifest(self) -> Manifest:
        """The folder's manifest; BackupError when the folder holds no backup."""
        if not self.folder.is_dir():
            raise BackupError(f"{self.folder} does not exist: no backup to read there")
        manifest = Manifest.read(self.folder)
        if manifest is None:
            raise BackupError(f"{self.folder} holds no backup: it has no {MANIFEST} (a folder "
                              "that `python -m indexer backup` wrote has one)")
        return manifest

    def list(self) -> list[dict]:
        return self.manifest().backups

    # -- restoring --------------------------------------------------------------------------

    def _listed_files(self, entry: dict) -> dict[str, list[Path]]:
        """Each tree's files of a backup, checked present in the pool (BackupError if not)."""
        out = {}
        for tree, info in (entry.get("files") or {}).items():
            listing = self.folder / info["list"]
            try:
                names = [Path(line) for line in listing.read_text().splitlines() if line]
            except OSError as exc:
                raise BackupError(f"the backup folder is damaged: {listing} cannot be read "
                                  f"({exc.strerror})") from None
            # The names become paths under the settings' folders: none may lead out of them.
            outside = [n for n in names if n.is_absolute() or ".." in n.parts]
            if outside:
                raise BackupError(f"the backup folder is damaged: {listing} names "
                                  f"{str(outside[0])[:80]!r}, outside its folder")
            pool = self.folder / FILES_DIR / tree
            missing = [n for n in names if not (pool / n).is_file()]
            if missing:
                raise BackupError(
                    f"the backup folder is damaged: {len(missing)} of {len(names)} {tree} of "
                    f"backup {entry['snapshot']} are missing from {pool} (e.g. {missing[0]})")
            out[tree] = names
        return out

    @translated
    def _snapshot_indices(self, name: str) -> list[str]:
        """The indices snapshot ``name`` holds; BackupError when the repository lacks it."""
        try:
            snaps = self.es.snapshot.get(repository=self.repository, snapshot=name).body
        except NotFoundError:
            snaps = {"snapshots": []}
        found = snaps.get("snapshots") or []
        if not found or found[0].get("state") != "SUCCESS":
            raise BackupError(
                f"the backup folder is damaged: its manifest lists snapshot {name}, which the "
                f"repository {self.location} does not hold (complete)")
        return found[0]["indices"]

    @translated
    def _exists(self, names: list[str]) -> list[str]:
        return [n for n in names if self.es.indices.exists(index=n)]

    def restore(self, snapshot: str | None = None, *, replace: bool = False) -> RestoreReport:
        """Restore a backup of the folder (the newest unless ``snapshot`` names one).

        Into a node without the collection's alias and indices: every index under its own
        name, the alias with it (for another alias than the backup's, under a new name of
        that alias). Where they exist already: refused (Conflict) unless
        ``replace``; then the image index (and its duplicate state) is restored under a new
        name and the alias moved to it in one call, the index it served before kept as it
        is; the keys and decisions indices are closed and restored over (they have fixed
        names: the keys made and the decisions taken since the backup are gone)."""
        started = time.monotonic()
        entry = self.manifest().find(snapshot)
        files = self._listed_files(entry)  # a damaged folder is refused before any change
        if not self.location.is_dir():
            raise BackupError(f"the backup folder is damaged: it has no {REPOSITORY_DIR}/ "
                              "(the snapshots)")
        self.check_location()
        self.register(readonly=True)
        name, index, alias = entry["snapshot"], entry["index"], self.settings.es_index
        held = self._snapshot_indices(name)
        roles = {n: info["role"] for n, info in entry["indices"].items()}
        if set(held) != set(roles):
            raise BackupError(f"the backup folder is damaged: snapshot {name} holds "
                              f"{sorted(held)}, its manifest says {sorted(roles)}")
        # The keys and decisions indices restore under this node's names for them.
        targets = {ROLE_KEYS: self.settings.api_keys_index,
                   ROLE_DECISIONS: self.settings.image_decisions_index}
        fixed = {n: targets[r] for n, r in roles.items() if r in targets}
        images = [n for n, r in roles.items() if r in (ROLE_IMAGES, ROLE_DUPLICATES)]
        manager = IndexManager(self.es, alias)
        current = manager.current_index()
        other_alias = entry["alias"] != alias
        # The image indices' own names matter only where they are restored under them.
        present = self._exists([*([] if other_alias else images), *fixed.values()])
        if (current or present) and not replace:
            what = ([f"alias {alias!r} (on {current})"] if current else []) + present
            raise Conflict("backup_target_exists", (
                f"this Elasticsearch already has {', '.join(what)}; restoring would replace "
                "them. Run again with --replace to restore beside the current image index and "
                "move the alias (the current index is kept), replacing the keys and decisions, or "
                "restore into an empty node"))
        report = RestoreReport(name, index, alias, {}, {})
        # Under its own name with its own alias, on a node without the collection. Else beside
        # whatever is there, or for another alias (ES_INDEX: the backup's concrete name would
        # not be one of that alias's): a new concrete name, the duplicate state renamed with
        # it (the prefix is the image index's name), the alias moved when all is in.
        beside = bool(current or present) or other_alias
        if beside:
            new = _new_index_name(alias)
            self._restore(name, images, include_aliases=False,
                          rename=(index, new))
            renamed = {n: new + n[len(index):] for n in images}
            report.index = new
        else:
            self._restore(name, images, include_aliases=True)
            renamed = {n: n for n in images}
        for source, target in fixed.items():
            if target in present:
                self._close(target)
                report.replaced.append(target)
            self._restore(name, [source], include_aliases=False,
                          rename=(source, target) if source != target else None)
            renamed[source] = target
        if beside:
            report.previous = manager.point_alias(report.index, previous=current)
        report.expected = {renamed[n]: info["documents"] for n, info in
                           entry["indices"].items()}
        report.documents = self._counts(list(report.expected))
        for tree, attribute in FILE_TREES:
            if tree in files and getattr(self.settings, attribute):
                copied, _ = copy_tree(self.folder / FILES_DIR / tree,
                                      Path(getattr(self.settings, attribute)), files[tree])
                report.files[tree] = copied
        report.seconds = time.monotonic() - started
        for name_, (got, want) in report.mismatched.items():
            log.warning("%s: %d documents restored, the backup counted %d (documents written "
                        "while the backup ran?)", name_, got, want)
        return report

    @translated
    def _close(self, index: str) -> None:
        self.es.indices.close(index=index)

    @translated
    def _restore(self, snapshot: str, indices: list[str], *, include_aliases: bool,
                 rename: tuple[str, str] | None = None) -> None:
        kwargs: dict = {}
        if rename:
            # A Java regex: the quoted name at the start, so that "<index>-duplicates" is
            # renamed with its index.
            kwargs = {"rename_pattern": rf"^\Q{rename[0]}\E", "rename_replacement": rename[1]}
        resp = self.es.options(request_timeout=RESTORE_TIMEOUT).snapshot.restore(
            repository=self.repository, snapshot=snapshot, indices=indices,
            include_aliases=include_aliases, include_global_state=False,
            wait_for_completion=True, **kwargs).body
        shards = resp.get("snapshot", {}).get("shards", {})
        if shards.get("failed"):
            raise BackupFailed(f"Elasticsearch restored {shards.get('successful', 0)} of "
                               f"{shards.get('total', '?')} shards of {', '.join(indices)} from "
                               f"snapshot {snapshot}; the backup may be damaged")


def describe(entry: dict) -> str:
    """One line about a backup of a manifest."""
    counts = ", ".join(f"{info['role']} {info['documents']}"
                       for info in entry["indices"].values())
    return (f"{entry['snapshot']}  {entry.get('created_at', '?')}  {entry['index']}  "
            f"{counts}  model {entry.get('model_version') or '?'}")

