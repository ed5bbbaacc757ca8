"""Shared fixtures: one real Elasticsearch node and one real model for the whole session.

The node is throwaway (its own data dir under /tmp, a free port); each test that writes gets
its own alias, so tests never see each other's documents.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from imgsearch.settings import Settings

DATASET_HINT = (
    "The labelled photo sets live in {path} (setting IMGSEARCH_DATASETS_DIR). "
    "clothing-small is the public repository alexeygrigorev/clothing-dataset-small "
    "(CC0, commit 11961516): put its images under clothing-small/images/<split>/<label>/ "
    "with labels.csv (path,label,split) beside them."
)


# Tests make requests far faster than a person: no per-client rate limit in their apps and
# servers (which inherit this), unless a test sets one (tests/reliability/test_rate_limits.py).
os.environ.setdefault("IMGSEARCH_RATE_LIMIT", "0")

# The short fine-tune of the tests: this many photos per label of each split (train and
# validation) of the clothing set.
TUNED_PER_LABEL = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def es_node():
    """A real single-node Elasticsearch on 127.0.0.1, started once per session."""
    from imgsearch.localnode import LocalNode

    node_dir = Path(tempfile.mkdtemp(prefix="imgsearch-test-es-", dir="/tmp"))
    os.chmod(node_dir, 0o755)  # the unprivileged ES user must reach it
    # path.repo of its own, inside the throwaway directory (tests/imgsearch/test_snapshots.py).
    node = LocalNode(node_dir, port=_free_port(), heap="1g", backup_dir=node_dir / "backups")
    node.start()
    yield node
    node.stop()
    shutil.rmtree(node_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def fault_node():
    """A node of its own that a test may stop and start again (its data dir persists): the
    reliability tests' and the watcher's. A test that stops it starts it again, even when it
    fails (tests/support.py ``restarted``)."""
    from imgsearch.localnode import LocalNode, free_port

    node_dir = Path(tempfile.mkdtemp(prefix="imgsearch-fault-es-", dir="/tmp"))
    node_dir.chmod(0o755)  # the unprivileged ES user must reach it
    node = LocalNode(node_dir, port=free_port(), heap="512m")
    node.start()
    yield node
    node.stop()
    shutil.rmtree(node_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(es_node, tmp_path_factory) -> Settings:
    return Settings.from_env(
        es_url=es_node.url,
        es_index="test-images",
        thumbnail_dir=tmp_path_factory.mktemp("thumbnails"),
        # As `make serve` runs it: anonymous reads (tests/webapp/test_auth.py tests both ways),
        # and one keys index for every app of the session, whatever its alias.
        public_read=True,
        keys_index="test-keys",
        backup_dir=es_node.backup_dir,
    )


@pytest.fixture(scope="session")
def admin_headers(settings) -> dict[str, str]:
    """Request headers with an ``admin`` key of the session's keys index (what /healthz's
    details and full paths need)."""
    from imgsearch.esclient import connect
    from imgsearch.keys import KeyStore

    key, _ = KeyStore(connect(settings), settings.api_keys_index).create(
        f"admin-{uuid.uuid4().hex[:8]}", "admin")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def embedder(settings):
    """The real ResNet50 with the real ImageNet weights, loaded once."""
    from imgsearch.embedder import Embedder

    embedder = Embedder(settings)
    embedder.warm_up()
    return embedder


def _delete_alias_indices(store) -> None:
    store.es.indices.delete(index=f"{store.alias}-*", ignore_unavailable=True)


@pytest.fixture
def store(settings):
    """A store on a fresh alias of its own, removed afterwards."""
    from imgsearch.store import ImageStore, connect

    store = ImageStore(connect(settings), f"t-{uuid.uuid4().hex[:12]}")
    yield store
    _delete_alias_indices(store)


@pytest.fixture
def test_settings(settings, store, tmp_path) -> Settings:
    """Settings pointing at the per-test alias and a per-test thumbnail store."""
    return settings.with_(es_index=store.alias, thumbnail_dir=tmp_path / "thumbnails")


@pytest.fixture(scope="session")
def datasets_dir(settings) -> Path:
    path = settings.datasets_dir
    if not (path / "clothing-small" / "images").is_dir():
        pytest.fail(DATASET_HINT.format(path=path), pytrace=False)
    return path


@pytest.fixture(scope="session")
def clothing_test_dir(datasets_dir) -> Path:
    """The 372 photos of the clothing set's test split, one folder per label."""
    return datasets_dir / "clothing-small" / "images" / "test"


@pytest.fixture(scope="session")
def clothing_index(settings, embedder, clothing_test_dir, tmp_path_factory):
    """The clothing test split indexed once: ``(settings, store, report)``."""
    from imgsearch.store import ImageStore, connect
    from indexer.index import index_folder

    local = settings.with_(
        es_index="clothing-test", thumbnail_dir=tmp_path_factory.mktemp("clothing-thumbs")
    )
    store = ImageStore(connect(local), local.es_index)
    report = index_folder(
        clothing_test_dir, settings=local, embedder=embedder, store=store, progress=False
    )
    yield local, store, report
    _delete_alias_indices(store)


@pytest.fixture(scope="session")
def region_index(settings, embedder, clothing_test_dir, tmp_path_factory):
    """Sixty photos of the clothing test split (twelve of each of five labels) indexed with
    standard region vectors: ``(settings, store, report, folder)``."""
    from imgsearch.store import ImageStore, connect
    from indexer.index import index_folder

    folder = tmp_path_factory.mktemp("region-photos")
    for label in REGION_LABELS:
        (folder / label).mkdir()
        for f in sorted((clothing_test_dir / label).glob("*.jpg"))[:12]:
            shutil.copyfile(f, folder / label / f.name)
    local = settings.with_(
        es_index="clothing-regions", regions="standard",
        thumbnail_dir=tmp_path_factory.mktemp("region-thumbs"),
    )
    store = ImageStore(connect(local), local.es_index)
    report = index_folder(folder, settings=local, embedder=embedder, store=store,
                          progress=False)
    yield local, store, report, folder
    _delete_alias_indices(store)


REGION_LABELS = ("dress", "hat", "pants", "shoes", "t-shirt")


@pytest.fixture
def app(clothing_index, embedder):
    """The web app on the indexed clothing test split (372 photos); its test clients fail
    any response that shows a stack trace."""
    from tests.support import build_app

    settings, store, _ = clothing_index
    return build_app(settings, embedder, store)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def photo_dir(clothing_test_dir, tmp_path) -> Path:
    """A private folder of 10 real photos (two from each of five labels) that a test may
    change."""
    root = tmp_path / "photos"
    for label in ("dress", "hat", "pants", "shoes", "t-shirt"):
        for f in sorted((clothing_test_dir / label).glob("*.jpg"))[:2]:
            (root / label).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, root / label / f.name)
    return root


@pytest.fixture(scope="session")
def tuned_model(settings, datasets_dir, tmp_path_factory):
    """A model fine-tuned briefly on a small part of the clothing set (12 photos per label of
    the train split, the validation split's first 12 per label), written into a model store of
    its own: ``(model_dir, FinetuneResult)``. About a minute on a 2-core CPU."""
    from imgsearch.finetune import Recipe, finetune
    from indexer.sidecar import load_sidecar

    root = datasets_dir / "clothing-small"
    out = tmp_path_factory.mktemp("model-store") / "clothing-small-tuned"
    result = finetune(
        root / "images", out, settings=settings, sidecar=load_sidecar(root / "labels.csv"),
        recipe=Recipe(max_epochs=2, views=1, patience=2, lr_schedule="constant"),
        max_per_label=TUNED_PER_LABEL,
        progress=False, log_epoch=print,
    )
    return out, result

