"""The Ray engine (indexer/distributed.py) on a real local Ray cluster: a head without CPUs and
two one-CPU worker nodes (``ray.cluster_utils.Cluster``), real photos, the session's node."""

from __future__ import annotations

import shutil
import signal
import threading
import time

import pytest

from imgsearch.images import content_hash
from indexer import distributed
from indexer.distributed import RayEngine
from indexer.index import index_folder

LABELS = ("dress", "hat", "pants", "shoes", "t-shirt")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    # ray.init makes SIGTERM exit this process with status 1 and nothing said, and leaves that
    # handler behind after shutdown: the suite's own SIGTERM handling is put back afterwards.
    sigterm = signal.getsignal(signal.SIGTERM)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()
    signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture
def photos(clothing_test_dir, tmp_path):
    """Forty real photos, eight of each of five labels."""
    root = tmp_path / "photos"
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for f in sorted((clothing_test_dir / label).glob("*.jpg"))[:8]:
            shutil.copyfile(f, root / label / f.name)
    return root


def test_a_worker_node_removed_mid_job_loses_nothing(ray_cluster, photos, test_settings, store,
                                                     embedder, monkeypatch):
    """One of the two worker nodes goes away while partitions are being indexed: the job
    finishes on the other, every photo is indexed once, and a re-run indexes nothing new."""
    cluster, workers = ray_cluster
    monkeypatch.setattr(distributed, "PARTITION_FILES", 4)  # ten partitions for two actors
    reports = []

    def run():
        reports.append(index_folder(
            photos, settings=test_settings, embedder=embedder, store=store, progress=False,
            engine=RayEngine(cluster.address, max_workers=2, progress=False)))

    job = threading.Thread(target=run)
    job.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.is_alive():
        if store.indices.current_index() and store.count() > 0:  # the first partitions are written
            break
        time.sleep(0.5)
    assert job.is_alive(), "the job ended before a worker node could be removed"
    written_before = store.count()
    cluster.remove_node(workers[1])
    job.join(600)
    assert not job.is_alive(), "the job did not finish after losing a worker node"

    report = reports[0]
    assert report.aborted is None and report.exit_code == 0, report.to_json()
    ids = {content_hash(p.read_bytes()) for p in photos.rglob("*.jpg")}
    store.refresh()
    assert store.count() == len(ids) == 40
    assert store.existing_ids(ids) == ids
    # The actors' documents carry the same tags as a local run's.
    assert store.existing_ids(ids, tagged_by=embedder.tagger.version) == ids
    assert report.stats.seen == 40 and report.stats.failed == []
    assert report.stats.indexed + report.stats.already_present == 40
    print(f"worker node removed with {written_before} of 40 photos written; the job went on")
    # Every photo has its near-duplicate pairs state, found by the actors' writers (or by
    # the driver's finish for a partition that stopped between writes and pairs).
    from imgsearch.pairs import PairState

    state = PairState(store.es, store.indices.current_index())
    assert state.visited(sorted(ids)) == ids

    again = index_folder(photos, settings=test_settings, embedder=embedder, store=store,
                         progress=False,
                         engine=RayEngine(cluster.address, max_workers=2, progress=False))
    assert again.exit_code == 0
    assert again.stats.indexed == 0 and again.stats.already_present == 40
    assert store.count() == 40


def test_the_cli_runs_on_ray_with_the_local_summary_and_exit_status(ray_cluster, photos,
                                                                    test_settings, store,
                                                                    monkeypatch, capsys):
    from indexer.cli import EXIT_OK
    from indexer.index import main

    cluster, _ = ray_cluster
    for name, value in (("ES_URL", test_settings.es_url), ("ES_INDEX", store.alias),
                        ("IMGSEARCH_THUMBNAIL_DIR", str(test_settings.thumbnail_dir))):
        monkeypatch.setenv(name, value)
    for bad in (["--address", cluster.address], ["--engine", "ray", "--ray-workers", "0"]):
        assert main([str(photos), *bad]) == 2
    code = main([str(photos), "--engine", "ray", "--address", cluster.address,
                 "--no-progress", "--sync"])
    err = capsys.readouterr().err
    assert code == EXIT_OK, err[-2000:]
    assert "indexed:          40" in err and "failed:           0" in err
    assert store.count() == 40
