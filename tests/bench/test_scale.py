"""The scale benchmark's synthetic collection and its streamed exact search."""

from __future__ import annotations

import numpy as np

from bench.scale import CHUNK, Collection, exact_neighbours


def _base(n: int = 50, dims: int = 64) -> np.ndarray:
    rng = np.random.default_rng(7)
    base = np.maximum(rng.standard_normal((n, dims), np.float32), 0)  # post-ReLU-like
    return base / np.linalg.norm(base, axis=1, keepdims=True)


def test_rows_are_deterministic_unit_and_non_negative():
    collection = Collection(_base(), size=CHUNK + 100, sigma=0.5)
    first = collection.chunk(1)
    assert first.shape == (100, 64)
    np.testing.assert_array_equal(first, Collection(_base(), CHUNK + 100, 0.5).chunk(1))
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    assert (first >= 0).all()
    # A copy stays close to the photo it comes from, closer than to the others.
    sims = first @ collection.base.T
    assert (sims.argmax(axis=1) == np.arange(CHUNK, CHUNK + 100) % 50).mean() > 0.9


def test_streamed_exact_search_equals_brute_force(tmp_path):
    collection = Collection(_base(), size=2 * CHUNK + 321, sigma=0.5)
    queries = collection.queries(20)
    found = exact_neighbours(collection, queries, 10, tmp_path / "exact.npy")
    rows = np.concatenate([rows for _, rows in collection.chunks()])
    sims = queries @ rows.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    # Same similarities in the same order (ties aside, the same ids).
    np.testing.assert_allclose(np.take_along_axis(sims, found, axis=1),
                               np.take_along_axis(sims, expected, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "exact.npy"), found)  # cached
