"""The index lifecycle's checks that the write API relies on (imgsearch/indices.py), on the
real node: a swap in progress, and the refresh interval."""

from __future__ import annotations

# No model is needed: an index records the version it is given.
VERSION = "test-model/v1"


def test_a_newer_index_of_the_alias_is_a_swap_in_progress(store, settings):
    indices = store.indices
    assert indices.swap_in_progress() is None  # nothing at all yet
    current = indices.ensure_index(VERSION, settings)
    # The alias's other indices (keys, decisions) share its name's start: not its builds.
    store.es.indices.create(index=f"{store.alias}-decisions")
    assert indices.swap_in_progress() is None
    newer = indices.create_index(VERSION, settings)
    assert indices.swap_in_progress() == newer
    indices.point_alias(newer, current)
    # After the swap the old index stays (older): nothing is in progress.
    assert indices.swap_in_progress() is None
    store.es.indices.delete(index=f"{store.alias}-decisions")


def test_the_refresh_interval(store, settings):
    index = store.indices.ensure_index(VERSION, settings)
    assert store.indices.refresh_interval(index) == 1.0
    store.es.indices.put_settings(index=index, settings={"index.refresh_interval": "-1"})
    assert store.indices.refresh_interval(index) is None
    store.es.indices.put_settings(index=index, settings={"index.refresh_interval": "500ms"})
    assert store.indices.refresh_interval(index) == 0.5
