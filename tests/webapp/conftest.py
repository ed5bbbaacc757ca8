"""Fixtures for web app tests beyond ``app``/``client`` (tests/conftest.py): apps on other
settings, on the session's real node and model.

Every response any test client receives is checked for a leaked stack trace, so each test
also proves that its error path is handled.
"""

from __future__ import annotations

import uuid

import pytest

from imgsearch.images import content_hash
from tests.support import build_app as _build


@pytest.fixture
def build_app(embedder):
    """``build_app(settings, store=None)``: an app on other settings, with the session model."""
    return lambda settings, store=None: _build(settings, embedder, store)


@pytest.fixture
def make_client(clothing_index, embedder):
    """A client for an app whose settings differ from the indexed app's: ``make_client(
    max_upload_bytes=...)``, ``make_client(es_url=...)``."""

    def make(**changes):
        settings, _, _ = clothing_index
        return _build(settings.with_(**changes), embedder).test_client()

    return make


@pytest.fixture
def missing_alias_client(make_client):
    """An app on an alias that has never been created (nothing indexed yet)."""
    return make_client(es_index=f"never-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def photos(clothing_test_dir):
    """Real photos of the indexed split, by label."""
    return {
        label.name: sorted(label.glob("*.jpg"))
        for label in sorted(clothing_test_dir.iterdir())
        if label.is_dir()
    }


@pytest.fixture(scope="session")
def shoe(photos):
    """One indexed photo: ``(path, bytes, id)``."""
    path = photos["shoes"][0]
    data = path.read_bytes()
    return path, data, content_hash(data)
