"""``python -m indexer backup`` and ``restore`` through the real CLI process on the real node:
a backup printed and listed, a backup-wipe-restore round trip, a backup stopped by SIGTERM,
and every refusal as its exit status and one line on stderr (the collection already there, a
folder outside path.repo, Elasticsearch down, a folder without a backup, an unknown snapshot,
bad arguments)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from imgsearch.esclient import connect
from imgsearch.localnode import free_port
from imgsearch.store import ImageStore
from indexer.index import index_folder
from tests.support import PROJECT


@pytest.fixture(scope="module")
def collection(settings, embedder, clothing_test_dir, tmp_path_factory):
    """Six real photos indexed under an alias of their own."""
    alias = f"bkcli-{uuid.uuid4().hex[:10]}"
    local = settings.with_(es_index=alias, keys_index=f"{alias}-keys",
                           thumbnail_dir=tmp_path_factory.mktemp("bkcli-thumbs"),
                           upload_dir=tmp_path_factory.mktemp("bkcli-uploads"))
    folder = tmp_path_factory.mktemp("bkcli-photos")
    for label in ("dress", "hat", "shoes"):
        for f in sorted((clothing_test_dir / label).glob("*.jpg"))[:2]:
            shutil.copyfile(f, folder / f"{label}-{f.name}")
    es = connect(local)
    report = index_folder(folder, settings=local, embedder=embedder,
                          store=ImageStore(es, alias), progress=False)
    assert report.stats.indexed == 6
    yield local
    es.indices.delete(index=f"{alias}-*", ignore_unavailable=True)


def cli(settings, *args, es_url: str | None = None):
    env = dict(os.environ, PYTHONPATH=str(PROJECT), ES_URL=es_url or settings.es_url,
               ES_INDEX=settings.es_index, IMGSEARCH_KEYS_INDEX=settings.keys_index,
               IMGSEARCH_THUMBNAIL_DIR=str(settings.thumbnail_dir),
               IMGSEARCH_UPLOAD_DIR=str(settings.upload_dir),
               IMGSEARCH_BACKUP_DIR=str(settings.backup_dir))
    return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=120)


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_backup_prints_its_snapshot_and_restore_lists_it(collection):
    folder = collection.backup_dir / collection.es_index
    done = cli(collection, "backup", str(folder))
    assert done.returncode == 0, done.stderr
    snapshot = done.stdout.strip()
    assert snapshot.startswith(f"{collection.es_index}-")
    assert "6 thumbnails (6 new)" in done.stderr
    # Without DIR: IMGSEARCH_BACKUP_DIR itself.
    again = cli(collection, "backup")
    assert again.returncode == 0, again.stderr
    listed = cli(collection, "restore", str(folder), "--list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(snapshot) and "images 6" in lines[0]
    # Into the node that has the collection: refused, exit 1, saying how.
    refused = cli(collection, "restore", str(folder))
    assert refused.returncode == 1
    assert "--replace" in one_error_line(refused)
    unknown = cli(collection, "restore", str(folder), "--snapshot", "no-such-snapshot")
    assert unknown.returncode == 2
    assert "no backup named 'no-such-snapshot'" in one_error_line(unknown)


def test_backup_wipe_restore_gives_the_same_top_10(settings, embedder, clothing_test_dir,
                                                  tmp_path):
    """The issue's round trip on one node: back up, delete every index and thumbnail of the
    collection, restore with the CLI: the same answers, the key, the thumbnails."""
    from imgsearch.keys import KeyStore
    from imgsearch.thumbnails import ThumbnailStore

    alias = f"bkwipe-{uuid.uuid4().hex[:10]}"
    local = settings.with_(es_index=alias, keys_index=f"{alias}-keys",
                           thumbnail_dir=tmp_path / "thumbs", upload_dir=tmp_path / "uploads")
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = sorted((clothing_test_dir / "pants").glob("*.jpg"))
    for f in photos[:12]:
        shutil.copyfile(f, folder / f.name)
    es = connect(local)
    store = ImageStore(es, alias)
    index_folder(folder, settings=local, embedder=embedder, store=store, progress=False)
    key, _ = KeyStore(es, local.api_keys_index).create("wiped", "read")
    queries = [embedder.embed_bytes(f.read_bytes()) for f in photos[12:14]]

    def top10():  # warm first: tests/imgsearch/test_snapshots.py::_answers says why
        for q in queries:
            store.knn(q, k=10)
        return [[(h["id"], h["score"]) for h in store.knn(q, k=10)] for q in queries]

    before = top10()
    try:
        backup = local.backup_dir / alias
        assert cli(local, "backup", str(backup)).returncode == 0
        es.indices.delete(index=f"{alias}-*")
        shutil.rmtree(local.thumbnail_dir)
        done = cli(local, "restore", str(backup))
        assert done.returncode == 0, done.stderr
        assert f"{alias}-keys 1" in done.stderr and "12 thumbnails" in done.stderr
        assert top10() == before
        assert KeyStore(es, local.api_keys_index).authenticate(key) is not None
        thumbs = ThumbnailStore(local.thumbnail_dir)
        assert all(thumbs.path(h[0]) for top in before for h in top)
    finally:
        es.indices.delete(index=f"{alias}-*", ignore_unavailable=True)


def test_a_folder_outside_path_repo_is_refused(collection, tmp_path):
    proc = cli(collection, "backup", str(tmp_path / "elsewhere"))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "path.repo" in line and "IMGSEARCH_BACKUP_DIR" in line
    assert not (tmp_path / "elsewhere").exists()


def test_elasticsearch_down_is_exit_1_in_one_line(collection):
    down = f"http://127.0.0.1:{free_port()}"  # a node that is not running
    folder = collection.backup_dir / f"down-{uuid.uuid4().hex[:8]}"
    for args in (("backup", str(folder)), ("restore", str(collection.backup_dir /
                                                           collection.es_index))):
        proc = cli(collection, *args, es_url=down)
        assert proc.returncode == 1
        assert "is not reachable" in one_error_line(proc) and "make es-up" in proc.stderr
    assert not folder.exists()  # nothing written while Elasticsearch was away


def test_a_folder_without_a_backup_and_bad_arguments_are_exit_2(collection):
    proc = cli(collection, "restore", str(collection.backup_dir / "never-backed-up"))
    assert proc.returncode == 2
    assert "does not exist" in one_error_line(proc)
    assert cli(collection, "restore", "--no-such-flag").returncode == 2
    assert cli(collection, "backup", "a", "b").returncode == 2


def test_an_interrupted_backup_records_nothing_and_leaves_no_snapshot(collection):
    """SIGTERM (handled as Ctrl-C) in the middle of a snapshot, slowed to 16 KB/s so that it
    lasts seconds: exit 1, no manifest, the snapshot deleted; the next backup completes."""
    import signal
    import time

    from imgsearch.snapshots import MANIFEST, repository_name

    folder = collection.backup_dir / f"interrupted-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=str(PROJECT), ES_URL=collection.es_url,
               ES_INDEX=collection.es_index, IMGSEARCH_KEYS_INDEX=collection.keys_index,
               IMGSEARCH_THUMBNAIL_DIR=str(collection.thumbnail_dir),
               IMGSEARCH_UPLOAD_DIR=str(collection.upload_dir),
               IMGSEARCH_BACKUP_DIR=str(collection.backup_dir),
               IMGSEARCH_BACKUP_MAX_BYTES_PER_SEC=str(16 * 1024))
    proc = subprocess.Popen([sys.executable, "-m", "indexer", "backup", str(folder)],
                            cwd=PROJECT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    es = connect(collection)
    repository = repository_name(folder)
    deadline = time.monotonic() + 60
    running = []
    while not running and time.monotonic() < deadline and proc.poll() is None:
        try:
            snaps = es.snapshot.get(repository=repository, snapshot="_all")["snapshots"]
        except Exception:  # not registered yet
            snaps = []
        running = [s["snapshot"] for s in snaps if s["state"] == "IN_PROGRESS"]
        time.sleep(0.05)
    assert running, "the snapshot was never seen running"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "interrupted; no backup was recorded" in err, err
    assert not (folder / MANIFEST).exists()
    assert es.snapshot.get(repository=repository, snapshot="_all")["snapshots"] == []
    done = cli(collection, "backup", str(folder))
    assert done.returncode == 0, done.stderr
    assert (folder / MANIFEST).exists()
