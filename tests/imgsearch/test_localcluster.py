"""Three Elasticsearch nodes on loopback as one cluster (imgsearch/localcluster.py), and the
store on it: shards spread with their replicas, and nothing lost when a node dies mid-write.

Each node has a 512 MiB heap; the cluster forms in about a minute on 2 cores. Every wait is
bounded.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest

from imgsearch.localcluster import throwaway_cluster
from imgsearch.store import ImageStore, StoreError

DOCS = 3000
BATCH = 100


@pytest.fixture(scope="module")
def cluster():
    with throwaway_cluster(3, heap="512m") as cluster:
        yield cluster


@pytest.fixture
def cluster_settings(cluster, settings):
    """Settings for the cluster (every node in ES_URL), a fresh alias, 3 shards x 1 replica,
    and write retries quick enough for a test."""
    return settings.with_(es_url=cluster.es_url, es_index=f"c-{time.time_ns()}", es_shards=3,
                          es_replicas=1, bulk_retries=8, bulk_backoff=0.5, bulk_max_backoff=4)


@pytest.fixture
def cluster_store(cluster, cluster_settings):
    store = ImageStore.from_settings(cluster_settings)
    store.indices.point_alias(store.indices.create_index("test-model", cluster_settings))
    cluster.wait_for(status="green", nodes=3, timeout=60)
    yield store
    store.es.indices.delete(index=f"{store.alias}-*", ignore_unavailable=True)


def test_three_nodes_go_green_with_no_two_copies_of_a_shard_on_one_node(cluster,
                                                                      cluster_store):
    health = cluster.wait_for(status="green", nodes=3, timeout=60)
    assert health["number_of_nodes"] == 3
    copies = cluster.shard_copies(cluster_store.indices.current_index())
    assert len(copies) == 6 and {c["state"] for c in copies} == {"STARTED"}
    by_shard: dict[str, list[str]] = {}
    for c in copies:
        by_shard.setdefault(c["shard"], []).append(c["node"])
    for shard, nodes in by_shard.items():
        assert len(nodes) == len(set(nodes)) == 2, (shard, nodes)
    assert len({c["node"] for c in copies}) == 3  # every node holds part of the index


def _documents(count: int) -> list[dict]:
    vectors = np.random.default_rng(0).standard_normal((count, 2048)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [{"content_hash": f"{i:064x}", "model_version": "test-model", "label": f"l{i % 7}",
             "vector": vectors[i]} for i in range(count)]


def test_a_node_killed_during_bulk_indexing_loses_nothing(cluster, cluster_store,
                                                         cluster_settings):
    """SIGKILL the node holding the most primaries while batches are written and searches
    run: every document ends indexed exactly once, no search fails, and the cluster is green
    again once the node is back."""
    store = cluster_store
    copies = cluster.shard_copies(store.indices.current_index())
    primaries = Counter(c["node"] for c in copies if c["prirep"] == "p")
    victim = cluster.node_named(primaries.most_common(1)[0][0])
    docs = _documents(DOCS)
    by_id = {d["content_hash"]: d for d in docs}

    search_errors: list[str] = []
    searches = 0
    stop = threading.Event()

    def search_while_writing():
        nonlocal searches
        reader = ImageStore.from_settings(cluster_settings)
        while not stop.is_set():
            try:
                reader.knn(docs[0]["vector"], k=5, num_candidates=50)
                searches += 1
            except StoreError as exc:
                search_errors.append(str(exc))
            time.sleep(0.05)

    reader = threading.Thread(target=search_while_writing, daemon=True)
    reader.start()
    failed: list[str] = []
    rewritten = 0
    try:
        for start in range(0, DOCS, BATCH):
            if start == DOCS // 3:
                victim.kill()
            failed += [doc_id for doc_id, _ in store.bulk_index(docs[start:start + BATCH]).failed]
        # Items the cluster refused while shards moved are written again, as a re-run of the
        # indexer would write them (content-hash ids make that harmless).
        for _ in range(10):
            if not failed:
                break
            time.sleep(1)
            rewritten += len(failed)
            failed = [doc_id for doc_id, _ in store.bulk_index([by_id[i] for i in failed]).failed]
        assert not failed
    finally:
        stop.set()
        reader.join(30)
    store.refresh()
    assert store.count() == DOCS
    assert store.existing_ids(by_id) == set(by_id)
    assert searches > 0 and search_errors == []
    print(f"{searches} searches during the writes, none failed; {rewritten} documents refused "
          "while shards moved were written again")

    victim.start(wait=False)
    cluster.wait_for(status="green", nodes=3, timeout=180)
    assert store.count() == DOCS
