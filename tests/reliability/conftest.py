"""Fixtures for fault, load and hostile-input tests.

``fault_node`` is a second throwaway Elasticsearch node that tests may stop and start (the
session's ``es_node`` must stay up for everyone else). The ``app``/``client``
fixtures come from tests/conftest.py: every response is checked for a leaked stack trace.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def forty_photos(clothing_test_dir, tmp_path) -> Path:
    """A private folder of 40 real photos, four from each of the ten labels."""
    root = tmp_path / "forty"
    for label in sorted(p for p in clothing_test_dir.iterdir() if p.is_dir()):
        (root / label.name).mkdir(parents=True)
        for f in sorted(label.glob("*.jpg"))[:4]:
            shutil.copyfile(f, root / label.name / f.name)
    assert len(list(root.rglob("*.jpg"))) == 40
    return root


def all_ids(store) -> set[str]:
    store.refresh()
    hits = store.es.search(index=store.alias, size=10_000, source=False).body["hits"]["hits"]
    return {h["_id"] for h in hits}
