"""The indexer under faults: Elasticsearch stopped mid-run, the process interrupted by
SIGINT, SIGTERM or SIGKILL at a random point. Every time, re-running the same command ends
with exactly one document per image: none lost, none duplicated, nothing embedded twice."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from elasticsearch import NotFoundError

from imgsearch.images import content_hash
from imgsearch.settings import Settings, retry_window
from imgsearch.store import ImageStore, StoreError
from indexer.cli import EXIT_ABORTED, EXIT_OK
from indexer.index import index_folder

from .conftest import all_ids

PROJECT = Path(__file__).resolve().parents[2]


def _hashes(root: Path) -> set[str]:
    return {content_hash(p.read_bytes()) for p in root.rglob("*.jpg")}


# -- the retry policy ---------------------------------------------------------------------


def test_retry_policy_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMGSEARCH_BULK_RETRIES", "3")
    monkeypatch.setenv("IMGSEARCH_BULK_BACKOFF", "0.5")
    monkeypatch.setenv("IMGSEARCH_BULK_MAX_BACKOFF", "1")
    s = Settings.from_env()
    assert (s.bulk_retries, s.bulk_backoff, s.bulk_max_backoff) == (3, 0.5, 1.0)
    assert s.bulk_retry_window == 0.5 + 1 + 1
    # The default gives up after about a minute of waiting, not never and not at once.
    assert Settings().bulk_retry_window == retry_window(6, 1.0, 30.0) == 61.0
    monkeypatch.setenv("IMGSEARCH_BULK_RETRIES", "-1")
    with pytest.raises(ValueError, match="IMGSEARCH_BULK_RETRIES"):
        Settings.from_env()


def test_connection_errors_are_retried_with_capped_backoff(monkeypatch):
    """Against a closed port every write is retried with doubling, capped delays, then
    gives up with a message that says what to do."""
    import imgsearch.store as store_module

    sleeps: list[float] = []
    monkeypatch.setattr(store_module.time, "sleep", sleeps.append)
    settings = Settings(es_url="http://127.0.0.1:9", bulk_retries=5, bulk_backoff=1.0,
                        bulk_max_backoff=4.0)
    store = ImageStore.from_settings(settings)
    with pytest.raises(StoreError, match=r"bulk write failed after 6 attempt\(s\)") as err:
        store.bulk_index([{"content_hash": "a" * 64, "label": "x"}], "nowhere")
    assert sleeps == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert sum(sleeps) == settings.bulk_retry_window
    assert "run the same command again" in str(err.value)
    sleeps.clear()
    with pytest.raises(StoreError, match="existence check failed"):
        store.existing_ids(["a" * 64], "nowhere")
    assert sleeps == [1.0, 2.0, 4.0, 4.0, 4.0]


# -- Elasticsearch stopped in the middle of a run ------------------------------------------


def test_elasticsearch_stopped_mid_run_then_rerun_completes(
    fault_node, settings, embedder, forty_photos, tmp_path
):
    local = settings.with_(
        es_url=fault_node.url, es_index=f"fault-{uuid.uuid4().hex[:8]}",
        thumbnail_dir=tmp_path / "thumbs", batch_size=8,
        bulk_retries=3, bulk_backoff=0.2, bulk_max_backoff=1.0,
    )
    store = ImageStore.from_settings(local)
    real_bulk = store.bulk_index
    calls = []

    def bulk_then_stop(docs, index=None):
        calls.append(len(docs))
        if len(calls) == 3:  # two batches are stored; the node goes down under the third
            fault_node.stop()
        return real_bulk(docs, index)

    store.bulk_index = bulk_then_stop
    started = time.monotonic()
    first = index_folder(forty_photos, settings=local, embedder=embedder, store=store,
                         progress=False)
    aborted_after = time.monotonic() - started
    assert first.aborted and first.exit_code == EXIT_ABORTED
    # The first request of the run to meet the stopped node gives up after its 4 attempts:
    # the third batch's write, or the next batch's lookup of people's decisions before it.
    assert re.search(r"(bulk write|decisions lookup) failed after 4 attempt\(s\)", first.aborted)
    assert "run the same command again" in first.aborted
    assert first.stats.indexed == 16
    print(f"aborted after {aborted_after:.1f}s, {len(calls)} bulk calls, "
          f"{first.embedded} embedded, {first.stats.indexed} stored")

    fault_node.start()
    store = ImageStore.from_settings(local)
    store.refresh()
    stored = store.count()
    assert stored == first.stats.indexed  # acknowledged writes survived the stop
    second = index_folder(forty_photos, settings=local, embedder=embedder, store=store,
                          progress=False)
    assert second.aborted is None and second.exit_code == EXIT_OK
    assert second.embedded == 40 - stored  # what was stored is not embedded again
    assert second.stats.already_present == stored
    assert store.count() == 40
    assert all_ids(store) == _hashes(forty_photos)
    store.es.indices.delete(index=f"{store.alias}-*")


# -- the indexer interrupted ---------------------------------------------------------------


def _count(store) -> int:
    try:
        store.es.indices.refresh(index=store.alias)
        return store.count()
    except NotFoundError:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_indexer_converges_on_rerun(
    sig, settings, store, embedder, forty_photos, tmp_path
):
    """``python -m indexer`` gets the signal at a random moment once documents are being
    written; the re-run completes the index with one document per image."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    env = dict(os.environ, ES_URL=settings.es_url, ES_INDEX=store.alias,
               IMGSEARCH_THUMBNAIL_DIR=str(tmp_path / "thumbs"), PYTHONPATH=str(PROJECT),
               IMGSEARCH_BULK_RETRIES="2", IMGSEARCH_BULK_BACKOFF="0.2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "indexer", str(forty_photos), "--no-progress",
         "--batch-size", "4"],
        env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _count(store) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        delay = rng.uniform(0.0, 0.4)
        time.sleep(delay)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"seed {seed}: {sig.name} {delay:.2f}s after the first stored batch; "
          f"exit {proc.returncode}")
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == EXIT_ABORTED, stderr[-3000:]
        assert "ABORTED: interrupted" in stderr
    stored = _count(store)
    assert 0 < stored < 40, f"the signal came too late to interrupt anything ({stored})"
    if sig != signal.SIGKILL:
        # The summary counts every write that was stored, those finished after the signal too.
        reported = re.search(r"^  indexed:\s+(\d+)$", stderr, re.MULTILINE)
        assert reported and int(reported.group(1)) == stored, stderr[-2000:]

    rerun = index_folder(forty_photos, settings=settings.with_(es_index=store.alias,
                         thumbnail_dir=tmp_path / "thumbs"),
                         embedder=embedder, store=store, progress=False)
    assert rerun.exit_code == EXIT_OK, rerun.aborted
    assert rerun.embedded == 40 - stored
    assert store.count() == 40
    assert all_ids(store) == _hashes(forty_photos)
    # Thumbnails exist for every image, whatever the moment of the interruption.
    thumbs = {p.stem for p in (tmp_path / "thumbs").rglob("*.webp")}
    assert _hashes(forty_photos) <= thumbs

