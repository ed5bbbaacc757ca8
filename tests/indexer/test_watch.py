"""The watcher: real photos, the real model, a real node, real watchdog (inotify) on tmp_path.

Most tests run :class:`indexer.watch.Watcher` in a thread of the test (the session's model,
no second load); the kill -9 test runs ``python -m indexer watch`` as a process of its own.
Every wait is a bounded poll of the index, never a fixed sleep taken as an assertion.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from imgsearch.decisions import Decisions
from imgsearch.images import content_hash
from imgsearch.settings import Settings
from imgsearch.store import ImageStore, connect
from imgsearch.watchstate import WatchState
from indexer.watch import Watcher
from tests.support import restarted

PROJECT = Path(__file__).resolve().parents[2]
LABELS = ("dress", "hat", "pants", "shoes", "t-shirt")
# Test quiet period: half the default, so the live tests take a file 0.5 s after its last
# write; what is tested (a file still growing is not taken) does not depend on the value.
QUIET = 0.5


def _photos(clothing_test_dir: Path, label: str, start: int, count: int) -> list[Path]:
    return sorted((clothing_test_dir / label).glob("*.jpg"))[start:start + count]


@pytest.fixture
def watch_dir(clothing_test_dir, tmp_path) -> Path:
    """Two photos of each of five labels, one folder per label."""
    root = tmp_path / "watched"
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for f in _photos(clothing_test_dir, label, 0, 2):
            shutil.copyfile(f, root / label / f.name)
    return root


@pytest.fixture
def spare(clothing_test_dir) -> list[Path]:
    """Photos that are not in ``watch_dir``: forty, four of each of the ten labels."""
    labels = sorted(p for p in clothing_test_dir.iterdir() if p.is_dir())
    return [f for label in labels for f in sorted(label.glob("*.jpg"))[4:8]]


@pytest.fixture
def watch_settings(test_settings, tmp_path):
    return test_settings.with_(watch_state_dir=tmp_path / "state", watch_quiet=QUIET,
                               batch_size=8)


def documents(store: ImageStore) -> dict[str, dict]:
    """Every document of the alias, by id (after a refresh: what searches see)."""
    try:
        store.refresh()
    except Exception:  # noqa: BLE001 - no index yet
        return {}
    hits = store.es.search(index=store.alias, size=1000,
                           source=["path", "rel_path", "label", "root"]).body["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def hashes_of(root: Path) -> dict[str, str]:
    """rel_path -> content hash of every photo below ``root``."""
    return {p.relative_to(root).as_posix(): content_hash(p.read_bytes())
            for p in root.rglob("*.jpg")}


def wait_for(what: str, predicate, timeout: float = 30.0, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            told = f"; the watcher said:\n{_tail(log)}" if log else ""
            pytest.fail(f"not within {timeout:.0f}s: {what}{told}")
        time.sleep(0.1)


def in_step(store: ImageStore, root: Path) -> bool:
    """The index holds one document per distinct photo below ``root``, each at a path that
    holds its bytes, with the folder's label."""
    docs, files = documents(store), hashes_of(root)
    if set(docs) != set(files.values()):
        return False
    return all(files.get(d["rel_path"]) == doc_id and d["path"] == str(root / d["rel_path"])
               and d.get("label") == Path(d["rel_path"]).parent.name
               for doc_id, d in docs.items())


class Running:
    """A watcher following ``root`` in a thread of the test until the block ends."""

    def __init__(self, root, settings, embedder, store):
        self.watcher = Watcher(root, settings=settings, embedder=embedder, store=store)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.watcher.run()
        except Exception as exc:  # noqa: BLE001 - kept for the test to look at
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        assert self.watcher.caught_up.wait(120), "the catch-up did not finish"
        return self

    def __exit__(self, *exc) -> None:
        self.watcher.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


def _catch_up(root, settings, embedder, store) -> Watcher:
    watcher = Watcher(root, settings=settings, embedder=embedder, store=store)
    watcher.open()
    watcher.catch_up()
    watcher.state.close()
    return watcher


# -- catching up --------------------------------------------------------------------------


def test_catch_up_applies_every_kind_of_change_made_while_stopped(
        watch_dir, spare, watch_settings, embedder, store):
    first = _catch_up(watch_dir, watch_settings, embedder, store)
    assert sum(b.indexed for b in first.batches) == 10
    assert in_step(store, watch_dir)

    # While stopped: one of each kind of change.
    shutil.copyfile(spare[0], watch_dir / "t-shirt" / "new.jpg")            # added
    changed = sorted((watch_dir / "dress").glob("*.jpg"))[0]
    old_bytes = content_hash(changed.read_bytes())
    shutil.copyfile(spare[1], changed)                                       # changed
    hat = sorted((watch_dir / "hat").glob("*.jpg"))[0]
    moved_id = content_hash(hat.read_bytes())
    hat.rename(watch_dir / "shoes" / "was-a-hat.jpg")                        # moved file
    (watch_dir / "pants").rename(watch_dir / "trousers")                     # moved folder
    deleted = sorted((watch_dir / "shoes").glob("*.jpg"))[0]
    deleted_id = content_hash(deleted.read_bytes())
    deleted.unlink()                                                         # deleted
    # The same bytes at two paths: the copy stays when the original goes, so does the document.
    kept = sorted((watch_dir / "t-shirt").glob("*.jpg"))[0]
    kept_id = content_hash(kept.read_bytes())
    shutil.copyfile(kept, watch_dir / "hat" / "copy.jpg")
    kept.unlink()

    again = _catch_up(watch_dir, watch_settings, embedder, store)
    # Only the added and the changed photo are embedded; moves are path updates.
    assert sum(b.indexed for b in again.batches) == 2
    assert sum(b.moved for b in again.batches) == 4  # a file, a folder of two, the copy
    assert sum(b.deleted for b in again.batches) == 2  # the deleted file, the changed bytes
    assert in_step(store, watch_dir)
    docs = documents(store)
    assert old_bytes not in docs and deleted_id not in docs
    assert docs[moved_id]["rel_path"] == "shoes/was-a-hat.jpg"
    assert docs[moved_id]["label"] == "shoes"
    assert {d["label"] for d in docs.values() if d["rel_path"].startswith("trousers/")} == \
        {"trousers"}
    assert docs[kept_id]["rel_path"] == "hat/copy.jpg"

    # A third start trusts size and mtime: nothing is read.
    third = _catch_up(watch_dir, watch_settings, embedder, store)
    assert third.batches == []


def test_a_batch_cut_short_leaves_no_document_behind(watch_dir, spare, watch_settings,
                                                     embedder, store):
    """Killed after a batch's documents were stored but before its rows: files of it deleted
    or changed again while the watcher was down leave no document of their old bytes."""
    from imgsearch.indexing import run_partition
    from imgsearch.pipeline import now_iso

    first = _catch_up(watch_dir, watch_settings, embedder, store)
    deleted, changed = watch_dir / "hat" / "deleted.jpg", watch_dir / "hat" / "changed.jpg"
    shutil.copyfile(spare[0], deleted)
    shutil.copyfile(spare[1], changed)
    # The batch as far as a kill -9 lets it go: intents recorded, documents stored, no rows.
    state = WatchState(watch_settings.watch_state_dir, first.root, first.target.index)
    state.intend(["hat/deleted.jpg", "hat/changed.jpg"])
    part = run_partition([deleted, changed], first.root, first.target, settings=watch_settings,
                         embedder=embedder, store=store, indexed_at=now_iso())
    assert part.stats.indexed == 2
    state.close()
    deleted.unlink()
    shutil.copyfile(spare[2], changed)  # changed again while the watcher is down

    _catch_up(watch_dir, watch_settings, embedder, store)
    assert in_step(store, watch_dir)
    docs = documents(store)
    assert content_hash(spare[0].read_bytes()) not in docs
    assert content_hash(spare[1].read_bytes()) not in docs
    assert content_hash(spare[2].read_bytes()) in docs
    state = WatchState(watch_settings.watch_state_dir, first.root, first.target.index)
    assert state.intents() == set()
    state.close()


def test_excluded_bytes_are_never_indexed(watch_dir, watch_settings, embedder, store):
    photo = sorted(watch_dir.rglob("*.jpg"))[0]
    digest = content_hash(photo.read_bytes())
    Decisions(store.es, watch_settings.image_decisions_index).decide(
        "excluded", digest, path=str(photo))
    try:
        watcher = _catch_up(watch_dir, watch_settings, embedder, store)
        assert sum(b.excluded for b in watcher.batches) == 1
        docs = documents(store)
        assert digest not in docs and len(docs) == 9
    finally:
        store.es.indices.delete(index=watch_settings.image_decisions_index,
                                ignore_unavailable=True)


def test_bad_files_and_vanished_ones_are_told_and_the_rest_goes_on(
        watch_dir, watch_settings, embedder, store):
    (watch_dir / "hat" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 100)
    (watch_dir / "notes.txt").write_text("not a photo")
    watcher = _catch_up(watch_dir, watch_settings, embedder, store)
    (failure,) = [f for b in watcher.batches for f in b.failed]
    assert failure.rel_path == "hat/broken.jpg"
    assert len(documents(store)) == 10
    # A file named by an event, gone before it is read: no failure, no row, nothing stops.
    watcher.state = WatchState(watch_settings.watch_state_dir, watcher.root,
                               watcher.target.index)
    assert watcher.apply({watch_dir / "hat" / "vanished.jpg": (1000, 1)}, []).failed == []
    assert watcher.state.rows(["hat/vanished.jpg"]) == {}
    # The bad file and the text file are known: a second start reads neither again.
    assert set(watcher.state.rows(["hat/broken.jpg", "notes.txt"])) == {"hat/broken.jpg",
                                                                        "notes.txt"}
    watcher.state.close()
    assert _catch_up(watch_dir, watch_settings, embedder, store).batches == []


# -- following events ---------------------------------------------------------------------


def test_live_changes_are_searchable_within_seconds(
        watch_dir, spare, watch_settings, embedder, store):
    with Running(watch_dir, watch_settings, embedder, store) as running:
        watcher = running.watcher
        assert in_step(store, watch_dir)
        started = time.monotonic()
        shutil.copyfile(spare[0], watch_dir / "hat" / "added.jpg")
        added = content_hash(spare[0].read_bytes())
        wait_for("an added file", lambda: added in documents(store), 10)
        print(f"added: searchable after {time.monotonic() - started:.2f}s")

        shutil.copyfile(spare[1], watch_dir / "hat" / "added.jpg")  # changed in place
        changed = content_hash(spare[1].read_bytes())
        wait_for("a changed file", lambda: changed in documents(store)
                 and added not in documents(store), 10)

        (watch_dir / "hat" / "added.jpg").rename(watch_dir / "dress" / "moved.jpg")
        wait_for("a moved file", lambda: documents(store)[changed]["rel_path"]
                 == "dress/moved.jpg", 10)
        embedded = sum(b.indexed for b in watcher.batches)

        (watch_dir / "shoes").rename(watch_dir / "boots")
        wait_for("a moved folder", lambda: in_step(store, watch_dir), 10)
        assert sum(b.indexed for b in watcher.batches) == embedded  # moves embed nothing

        (watch_dir / "dress" / "moved.jpg").unlink()
        wait_for("a deleted file", lambda: changed not in documents(store), 10)
        shutil.rmtree(watch_dir / "boots")
        wait_for("a deleted folder", lambda: in_step(store, watch_dir), 10)
        assert len(documents(store)) == 8

        # A folder moved in from outside, with its files.
        outside = watch_dir.parent / "outside"
        outside.mkdir()
        for f in spare[2:5]:
            shutil.copyfile(f, outside / f.name)
        outside.rename(watch_dir / "arrived")
        wait_for("a folder moved in", lambda: len(documents(store)) == 11, 10)
        assert {d["label"] for d in documents(store).values()
                if d["rel_path"].startswith("arrived/")} == {"arrived"}


def test_a_burst_is_embedded_in_few_batches(watch_dir, spare, watch_settings, embedder, store):
    with Running(watch_dir, watch_settings, embedder, store) as running:
        watcher = running.watcher
        before = len(watcher.batches)
        burst = watch_dir / "burst"
        burst.mkdir()
        for f in spare:  # forty photos, as fast as the disk takes them
            shutil.copyfile(f, burst / f.name)
        # A batch is reported once its rows are written, just after its documents.
        wait_for("the burst", lambda: sum(b.indexed for b in watcher.batches[before:]) == 40,
                 30)
        assert len(documents(store)) == 50
        batches = watcher.batches[before:]
        print(f"burst of 40: batches of {[b.read for b in batches]}")
        assert sum(b.indexed for b in batches) == 40
        assert len(batches) <= 3


def test_events_lost_by_the_kernel_are_made_up_for(watch_dir, watch_settings, embedder, store):
    """On an inotify queue overflow (which watchdog only logs) the watcher looks at every file:
    here a file whose row it lost, as if its creation's event had been dropped."""
    import logging

    from indexer.watch import INOTIFY_LOGGER

    with Running(watch_dir, watch_settings, embedder, store) as running:
        watcher = running.watcher
        before = len(watcher.batches)
        missed = sorted(watch_dir.rglob("*.jpg"))[0].relative_to(watch_dir).as_posix()
        with watcher.state.change():
            watcher.state.remove(missed)
        logging.getLogger(INOTIFY_LOGGER).warning(
            "Inotify queue overflowed; filesystem events were lost")
        wait_for("the lost file looked at again", lambda: watcher.batches[before:], 10)
        assert [b.read for b in watcher.batches[before:]] == [1]
        assert watcher.state.rows([missed])
        assert in_step(store, watch_dir)


def test_a_half_written_file_waits_until_complete(
        watch_dir, spare, watch_settings, embedder, store):
    data = spare[0].read_bytes()
    # The default quiet period here: a writer pausing a tenth of it stays far from it even
    # when a loaded machine makes a sleep overshoot.
    quiet = Settings().watch_quiet
    watch_settings = watch_settings.with_(watch_quiet=quiet)
    with Running(watch_dir, watch_settings, embedder, store) as running:
        watcher = running.watcher
        before = len(watcher.batches)
        target = watch_dir / "hat" / "slow.jpg"
        step = len(data) // 10 + 1
        chunks = [data[i:i + step] for i in range(0, len(data), step)]
        with target.open("wb") as out:
            # A writer slower than a copy but quicker than the quiet period: a chunk every
            # fifth of it, for two quiet periods in all.
            for chunk in chunks:
                out.write(chunk)
                out.flush()
                assert watcher.batches[before:] == [], "a growing file was taken"
                time.sleep(quiet / 5)
        digest = content_hash(data)
        wait_for("the completed file, reported", lambda: watcher.batches[before:], 10)
        assert digest in documents(store)
        batches = watcher.batches[before:]
        assert [b.read for b in batches] == [1], [vars(b) for b in batches]
        assert batches[0].failed == []
        assert len(documents(store)) == 11


def test_an_alias_moved_by_a_rebuild_is_followed(watch_dir, spare, watch_settings, embedder,
                                                 store):
    from indexer.index import index_folder

    with Running(watch_dir, watch_settings, embedder, store) as running:
        before = running.watcher.target.index
        rebuilt = index_folder(watch_dir, settings=watch_settings, embedder=embedder,
                               store=store, new_index=True, progress=False)
        assert store.indices.current_index() == rebuilt.index != before
        shutil.copyfile(spare[0], watch_dir / "hat" / "after-the-swap.jpg")
        wait_for("a file added after the swap, in the new index",
                 lambda: in_step(store, watch_dir), 15)
        assert running.watcher.target.index == rebuilt.index


def test_the_folder_itself_gone_deletes_nothing(watch_dir, watch_settings, embedder, store):
    with Running(watch_dir, watch_settings, embedder, store) as running:
        shutil.rmtree(watch_dir)
        running.thread.join(15)
        assert not running.thread.is_alive()
    assert "is gone" in str(running.error) and "nothing was deleted" in str(running.error)
    assert len(documents(store)) == 10


def test_bad_arguments_exit_2(tmp_path, capsys):
    from indexer.__main__ import main

    assert main(["watch", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


# -- faults -------------------------------------------------------------------------------


def test_elasticsearch_away_loses_no_event(fault_node, watch_dir, spare, watch_settings,
                                           embedder, tmp_path):
    local = watch_settings.with_(es_url=fault_node.url, es_index=f"watch-{uuid.uuid4().hex[:8]}",
                                 bulk_retries=1, bulk_backoff=0.2, bulk_max_backoff=1.0,
                                 es_request_timeout=5)
    store = ImageStore(connect(local), local.es_index, retries=1, backoff=0.2, max_backoff=1.0)
    with restarted(fault_node), Running(watch_dir, local, embedder, store) as running:
        watcher = running.watcher
        assert in_step(store, watch_dir)
        fault_node.stop()
        stopped = time.monotonic()
        for f in spare[:5]:
            shutil.copyfile(f, watch_dir / "hat" / f.name)
        (sorted((watch_dir / "dress").glob("*.jpg"))[0]).unlink()
        (watch_dir / "pants").rename(watch_dir / "trousers")
        wait_for("the watcher waiting for Elasticsearch", lambda: watcher.waits > 0, 30)
        assert watcher.waiting >= 5  # the events are still queued
        fault_node.start()
        print(f"node away for {time.monotonic() - stopped:.1f}s, {watcher.waits} waits")
        wait_for("every change written after the restart", lambda: in_step(store, watch_dir),
                 60)
        assert len(documents(store)) == 14


def _watch_process(root: Path, settings, state_dir: Path, log: Path,
                   *args: str) -> subprocess.Popen:
    env = dict(os.environ, ES_URL=settings.es_url, ES_INDEX=settings.es_index,
               IMGSEARCH_THUMBNAIL_DIR=str(settings.thumbnail_dir),
               IMGSEARCH_WATCH_STATE_DIR=str(state_dir), IMGSEARCH_WATCH_QUIET=str(QUIET),
               IMGSEARCH_BATCH_SIZE="4", PYTHONPATH=str(PROJECT))
    with log.open("a") as out:  # a file, not a pipe: read while it runs, and never full
        return subprocess.Popen([sys.executable, "-m", "indexer", "watch", str(root),
                                 "--no-progress", *args], env=env, cwd=PROJECT,
                                stdout=out, stderr=subprocess.STDOUT, text=True)


def _tail(log: Path) -> str:
    return "\n".join(log.read_text().splitlines()[-30:])


def test_kill_9_then_the_next_start_catches_up(watch_dir, spare, watch_settings, embedder,
                                               store, tmp_path):
    """The watcher process is killed (SIGKILL) in the middle of a batch while files keep
    arriving; the next start catches up: every photo indexed once, every deleted one gone;
    SIGTERM then stops it with exit 0."""
    state_dir = watch_settings.watch_state_dir
    log = tmp_path / "watch.log"
    proc = _watch_process(watch_dir, watch_settings, state_dir, log)
    try:
        wait_for("the first catch-up", lambda: in_step(store, watch_dir)
                 or proc.poll() is not None, 120, log)
        assert proc.poll() is None, _tail(log)
        burst = watch_dir / "burst"
        burst.mkdir()
        for f in spare[:24]:
            shutil.copyfile(f, burst / f.name)
        wait_for("part of the burst", lambda: len(documents(store)) > 10, 30, log)
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stored = len(documents(store))
    print(f"killed with {stored - 10} of 24 new photos stored")
    assert proc.returncode == -signal.SIGKILL
    # Meanwhile: more arrive, some go.
    for f in spare[24:30]:
        shutil.copyfile(f, burst / f.name)
    for f in sorted(burst.glob("*.jpg"))[:3]:
        f.unlink()
    (sorted((watch_dir / "hat").glob("*.jpg"))[0]).unlink()

    proc = _watch_process(watch_dir, watch_settings, state_dir, log)
    try:
        wait_for("the catch-up after kill -9", lambda: in_step(store, watch_dir)
                 or proc.poll() is not None, 120, log)
        assert proc.poll() is None, _tail(log)
        assert len(documents(store)) == 10 + 30 - 3 - 1
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            print(_tail(log))
            proc.kill()
    assert proc.returncode == 0, _tail(log)
    assert "stopped" in log.read_text()


# -- the metadata sidecar -------------------------------------------------------------------


def _metadata(store: ImageStore) -> dict[str, dict]:
    """rel_path -> the metadata fields of its document (after a refresh)."""
    store.refresh()
    hits = store.es.search(index=store.alias, size=1000, source=[
        "rel_path", "label", "tags", "extra"]).body["hits"]["hits"]
    return {h["_source"]["rel_path"]: {k: v for k, v in h["_source"].items()
                                       if k != "rel_path" and v is not None} for h in hits}


def _replace(path: Path, text: str) -> None:
    """Write ``path`` as editors and tools that save atomically do: a new file renamed over it."""
    fresh = path.with_name(f".{path.name}.new")
    fresh.write_text(text)
    os.replace(fresh, path)


def test_an_edited_sidecar_is_applied_and_a_broken_one_is_kept_out(
        watch_dir, watch_settings, store, tmp_path):
    """``watch --metadata``, a process of its own: a row edited in place, a broken file put over
    it (logged; the rows before kept; still running), a fixed one that removes a row and adds
    one, the file deleted: the documents follow each, without being embedded again."""
    hat = sorted(p.relative_to(watch_dir).as_posix() for p in (watch_dir / "hat").glob("*"))[0]
    dress = sorted(p.relative_to(watch_dir).as_posix()
                   for p in (watch_dir / "dress").glob("*"))[0]
    sidecar = tmp_path / "labels.csv"  # outside the folder: its own folder is watched
    sidecar.write_text(f"path,label,tags,colour\n{hat},cap,wool;winter,red\n")
    log = tmp_path / "watch.log"
    proc = _watch_process(watch_dir, watch_settings, watch_settings.watch_state_dir, log,
                          "--metadata", str(sidecar))
    try:
        wait_for("the first catch-up", lambda: len(documents(store)) == 10
                 or proc.poll() is not None, 120, log)
        assert _metadata(store)[hat] == {"label": "cap", "tags": ["wool", "winter"],
                                         "extra": {"colour": "red"}}
        ids = set(documents(store))

        started = time.monotonic()
        sidecar.write_text(f"path,label,tags,size\n{hat},beanie,wool,M\n")  # in place
        wait_for("the edited row", lambda: _metadata(store)[hat].get("label") == "beanie",
                 10, log)
        print(f"edited row applied after {time.monotonic() - started:.2f}s")
        # Every field replaced: the extra column gone is gone, not merged.
        assert _metadata(store)[hat] == {"label": "beanie", "tags": ["wool"],
                                         "extra": {"size": "M"}}

        _replace(sidecar, f"file_name,label\n{hat},broken\n")  # no path column
        wait_for("the broken file logged", lambda: "not applied" in log.read_text(), 10, log)
        assert proc.poll() is None, _tail(log)
        assert _metadata(store)[hat]["label"] == "beanie"

        _replace(sidecar, f"path,label\n{dress},gown\n")  # the hat row removed
        wait_for("the fixed file", lambda: _metadata(store)[dress].get("label") == "gown",
                 10, log)
        assert _metadata(store)[hat] == {"label": "hat", "tags": []}  # the folder's label
        sidecar.unlink()
        wait_for("the file deleted", lambda: _metadata(store)[dress].get("label") == "dress",
                 10, log)
        assert set(documents(store)) == ids and proc.poll() is None
        text = log.read_text()
        assert f"metadata {hat}: label 'cap' -> 'beanie'" in text
        assert f"metadata {hat}: row removed" in text and "deleted" in text
        assert "batch of" not in text.split("caught up")[1]  # no file was read again
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, _tail(log)


def test_rows_changed_while_stopped_are_applied_by_the_next_start(
        watch_dir, watch_settings, embedder, store):
    """The folder indexed without metadata, then watched with a sidecar lying inside it: the
    first start applies every row (its state had none); rows edited, added and removed while
    it was stopped are applied by the next start, nothing embedded again; a start after no
    change updates nothing."""
    from indexer.index import index_folder

    index_folder(watch_dir, settings=watch_settings, embedder=embedder, store=store,
                 progress=False)
    rels = sorted(hashes_of(watch_dir))
    sidecar = watch_dir / "labels.jsonl"
    rows = [{"path": rels[0], "label": "one", "tags": ["a"]},
            {"path": rels[1], "label": "two", "note": "x"}]
    sidecar.write_text("".join(f"{json.dumps(r)}\n" for r in rows))

    def start() -> Watcher:
        watcher = Watcher(watch_dir, settings=watch_settings, embedder=embedder, store=store,
                          metadata=sidecar)
        watcher.open()
        watcher.catch_up()
        watcher.state.close()
        return watcher

    first = start()
    assert first.metadata_updated == 2 and sum(b.indexed for b in first.batches) == 0
    meta = _metadata(store)
    assert meta[rels[0]] == {"label": "one", "tags": ["a"]}
    assert meta[rels[1]] == {"label": "two", "tags": [], "extra": {"note": "x"}}

    rows = [{"path": rels[1], "label": "deux"}, {"path": rels[2], "tags": "p;q"}]
    sidecar.write_text("".join(f"{json.dumps(r)}\n" for r in rows))
    second = start()
    assert second.metadata_updated == 3 and not any(b.indexed for b in second.batches)
    meta = _metadata(store)
    assert meta[rels[0]] == {"label": Path(rels[0]).parent.name, "tags": []}
    assert meta[rels[1]] == {"label": "deux", "tags": []}
    assert meta[rels[2]] == {"label": Path(rels[2]).parent.name, "tags": ["p", "q"]}
    assert start().metadata_updated == 0


def test_a_persons_label_holds_against_sidecar_rows_that_do_not_answer_it(
        watch_dir, watch_settings, embedder, store):
    """A label set through the API (a metadata decision, imgsearch/decisions.py) survives the
    watcher's applying a changed sidecar whose row for that photo says nothing new about the
    label (its tags changed); a row that states another label than the one the person
    replaced wins (imgsearch/metadata.py with_decision)."""
    from indexer.index import index_folder

    index_folder(watch_dir, settings=watch_settings, embedder=embedder, store=store,
                 progress=False)
    hashes = hashes_of(watch_dir)
    rel = sorted(hashes)[0]
    folder = Path(rel).parent.name
    decisions = Decisions(store.es, watch_settings.image_decisions_index)
    decisions.set_metadata(hashes[rel], {"label": "gown"}, {"label": folder})
    store.update_many({hashes[rel]: {"label": "gown"}}, store.indices.current_index())
    sidecar = watch_dir / "labels.jsonl"
    sidecar.write_text(json.dumps({"path": rel, "tags": ["silk"]}) + "\n")
    watcher = Watcher(watch_dir, settings=watch_settings, embedder=embedder, store=store,
                      metadata=sidecar)
    watcher.open()
    try:
        watcher.catch_up()  # the sidecar's rows applied: the tags, not the label
        assert watcher.metadata_updated == 1
        assert _metadata(store)[rel] == {"label": "gown", "tags": ["silk"]}
        watcher.sync_sidecar({rel: {"label": "evening", "tags": ["silk"]}}, "two")
        assert _metadata(store)[rel] == {"label": "evening", "tags": ["silk"]}
    finally:
        watcher.state.close()
