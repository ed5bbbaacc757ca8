"""The store's index options against a real node: quantised indices rescore by default."""

from __future__ import annotations

import numpy as np
import pytest
from elasticsearch import helpers

from imgsearch.regions import REGION_MODES
from imgsearch.store import REGIONS_FIELD, VECTOR_FIELD, ImageStore, connect, index_body


def test_float_hnsw_has_nothing_to_rescore():
    options = index_body("v", "hnsw")["mappings"]["properties"][VECTOR_FIELD]["index_options"]
    assert options == {"type": "hnsw", "m": 16, "ef_construction": 100}


def test_region_vectors_are_a_nested_field_only_in_indices_that_hold_them():
    plain = index_body("v", "hnsw")["mappings"]
    assert REGIONS_FIELD not in plain["properties"] and "regions" not in plain["_meta"]
    mappings = index_body("v", "int8_hnsw", regions=REGION_MODES["fine"],
                          region_index_type="bbq_hnsw")["mappings"]
    assert mappings["_meta"]["regions"] == {"mode": "fine", "area": 2.0, "scales": 3,
                                            "index_type": "bbq_hnsw"}
    regions = mappings["properties"][REGIONS_FIELD]
    assert regions["type"] == "nested"
    vector = regions["properties"][VECTOR_FIELD]
    assert vector["dims"] == 2048 and vector["similarity"] == "dot_product"
    assert vector["index_options"]["type"] == "bbq_hnsw"
    assert vector["index_options"]["rescore_vector"] == {"oversample": 3.0}
    assert mappings["properties"][VECTOR_FIELD]["index_options"]["type"] == "int8_hnsw"


@pytest.mark.parametrize("index_type", ["int8_hnsw", "bbq_hnsw"])
def test_quantised_index_rescores_to_float_recall(clothing_index, index_type):
    """The clothing vectors in a quantised index: the product's kNN query finds the exact
    top 10 again, because the index rescores oversampled candidates with the floats."""
    settings, source, _ = clothing_index
    docs = [
        (hit["_id"], hit["_source"][VECTOR_FIELD])
        for hit in helpers.scan(source.es, index=source.alias, _source=[VECTOR_FIELD],
                                source_exclude_vectors=False)
    ]
    ids = [doc_id for doc_id, _ in docs]
    vectors = np.array([v for _, v in docs], np.float32)

    quantised = settings.with_(es_index=f"{source.alias}-{index_type.replace('_', '-')}",
                               vector_index_type=index_type)
    store = ImageStore(connect(quantised), quantised.es_index)
    index = store.indices.create_index(source.indices.index_model_version(), quantised)
    try:
        store.indices.point_alias(index)
        options = store.es.indices.get_mapping(index=index).body[index]["mappings"][
            "properties"][VECTOR_FIELD]["index_options"]
        assert options["type"] == index_type
        assert options["rescore_vector"] == {"oversample": 3.0}
        helpers.bulk(store.es, ({"_index": index, "_id": i, VECTOR_FIELD: v}
                                for i, v in zip(ids, vectors, strict=True)))
        store.refresh()

        exact = np.argsort(-(vectors @ vectors.T), axis=1)[:, :10]
        queries = range(0, len(ids), 8)
        recall = np.mean([
            len({h["id"] for h in store.knn(vectors[q], k=10)} & {ids[j] for j in exact[q]}) / 10
            for q in queries
        ])
        assert recall >= 0.95
    finally:
        store.es.indices.delete(index=index, ignore_unavailable=True)


def test_of_two_concurrent_alias_swaps_exactly_one_wins(store, test_settings):
    """Two runs built new indices from the same alias state and swap at once: one moves the
    alias, the other is refused with a message saying what happened; the alias points at the
    winner alone."""
    import threading

    from imgsearch.store import AliasMoved

    old = store.indices.create_index("v", test_settings)
    store.indices.point_alias(old)
    candidates = [store.indices.create_index("v", test_settings) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def swap(index: str) -> None:
        barrier.wait()
        try:
            outcomes[index] = store.indices.point_alias(index, old)
        except AliasMoved as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=swap, args=(i,)) for i in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [i for i, o in outcomes.items() if o == old]
    losers = [o for o in outcomes.values() if isinstance(o, AliasMoved)]
    assert len(winners) == 1 and len(losers) == 1
    assert store.indices.current_index() == winners[0]
    assert "moved while this run built" in str(losers[0]) and winners[0] in str(losers[0])


def test_a_new_alias_gets_one_first_index_only(store, test_settings):
    from imgsearch.store import AliasMoved

    first, second = (store.indices.create_index("v", test_settings) for _ in range(2))
    assert store.indices.point_alias(first, None) is None
    with pytest.raises(AliasMoved, match="points at"):
        store.indices.point_alias(second, None)
    assert store.indices.current_index() == first


def test_client_errors_become_the_stores_own(settings):
    """Nothing outside the store handles the client's exceptions: an unreachable node and a
    missing index arrive as StoreUnavailable and IndexMissing."""
    from imgsearch.localnode import free_port
    from imgsearch.store import IndexMissing, StoreUnavailable

    nowhere = settings.with_(es_url=f"http://127.0.0.1:{free_port()}", es_request_timeout=2)
    with pytest.raises(StoreUnavailable):
        ImageStore(connect(nowhere).options(max_retries=0), "images").count()
    with pytest.raises(IndexMissing):
        ImageStore(connect(settings), "never-made-index").facets(["label"])
