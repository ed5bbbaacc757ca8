"""The compose stack's Elasticsearch roles (docker-compose.yml, the setup service) on a real
9.2.4 node with security on: what tests/test_docker_compose.py can only read, used.

The roles are taken from the setup script as it PUTs them. The node's users are in its file
realm and its roles in roles.yml: the native realm keeps them in the ``.security`` index,
which this distribution cannot create (no analysis-common module), while the privileges a
role grants are checked the same way wherever it is defined. As ``imgsearch`` (role
``imgsearch_app``): a folder indexed, a key made, a decision taken. As ``imgsearch_backup``
(role ``imgsearch_backup``): a backup, ``restore --replace``, and a restore into the emptied
node; refused: a document write, an index deletion. The app's user may not back up. Which
privilege each call needs (each one shown necessary by taking it away): docs/DOCKER.md,
"Backups".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from imgsearch.decisions import Decisions
from imgsearch.esclient import connect
from imgsearch.keys import KeyStore
from imgsearch.localnode import LocalNode, free_port
from imgsearch.snapshots import Backups
from imgsearch.store import ImageStore, StoreError
from tests.test_docker_compose import COMPOSE_FILE, setup_roles

INDEX = "images"
# Test-only passwords and their bcrypt hashes, made once with the distribution's
# `bin/elasticsearch-users useradd` (a JVM start per user, seconds each, saved here).
USERS = {
    "admin": ("admin-pw-123", "$2a$10$69JkV10/ZyRTEAaBMvXlq.U/Dde2b.ehCepOlEak/P2u3.FDqZKH.",
              "superuser"),
    "imgsearch": ("app-pw-12345", "$2a$10$KRQbg3gnkXDVmuT90sAGmOpvoWi4sOHXRnJmjA5LRYAoq26At.4Im",
                  "imgsearch_app"),
    "imgsearch_backup": ("backup-pw-123",
                         "$2a$10$40wzye7kvoI1tKnr9AqsZ.H/uHy/UFUDYCv3ZvQ4/Xz.VIQKrQScO",
                         "imgsearch_backup"),
}


def compose_roles() -> dict[str, dict]:
    """The roles the setup script PUTs, for ``ES_INDEX=images``."""
    roles = setup_roles(yaml.safe_load(COMPOSE_FILE.read_text()))
    return json.loads(json.dumps(roles).replace("$ES_INDEX", INDEX))


class SecureNode(LocalNode):
    """The local node with security on (HTTP without TLS, on loopback), its users and the
    compose roles in its config folder."""

    def _prepare(self, es_home, user, bootstrap=False):
        super()._prepare(es_home, user, bootstrap)
        yml = self.config_dir / "elasticsearch.yml"
        yml.write_text(yml.read_text().replace(
            "xpack.security.enabled: false",
            "xpack.security.enabled: true\nxpack.security.http.ssl.enabled: false\n"
            "xpack.security.transport.ssl.enabled: false"))
        (self.config_dir / "roles.yml").write_text("".join(
            f"{name}: {json.dumps(body)}\n" for name, body in compose_roles().items()))
        (self.config_dir / "users").write_text("".join(
            f"{name}:{hashed}\n" for name, (_, hashed, _) in USERS.items()))
        (self.config_dir / "users_roles").write_text("".join(
            f"{role}:{name}\n" for name, (_, _, role) in USERS.items()))
        if user:  # the node runs as its own user, who must read them
            for name in ("elasticsearch.yml", "roles.yml", "users", "users_roles"):
                os.chown(self.config_dir / name, user.pw_uid, user.pw_gid)

    def health(self) -> dict | None:
        try:
            return self.client("admin").cluster.health().body
        except Exception:  # noqa: BLE001 - not up yet
            return None

    def client(self, user: str):
        from elasticsearch import Elasticsearch

        return Elasticsearch(self.url, basic_auth=(user, USERS[user][0]), request_timeout=30)


@pytest.fixture(scope="module")
def secure_node():
    # In /tmp, as the session's node (tests/conftest.py): its unprivileged user must reach it.
    node_dir = Path(tempfile.mkdtemp(prefix="imgsearch-test-secure-es-", dir="/tmp"))
    os.chmod(node_dir, 0o755)
    node = SecureNode(node_dir / "node", port=free_port(), heap="512m",
                      backup_dir=node_dir / "backups")
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(node_dir, ignore_errors=True)


def test_the_compose_roles_index_back_up_and_restore(secure_node, settings, embedder,
                                                     clothing_test_dir, tmp_path):
    from indexer.index import index_folder

    assert set(compose_roles()) == {"imgsearch_app", "imgsearch_backup"}
    photos = tmp_path / "photos"
    for label in ("dress", "hat"):
        (photos / label).mkdir(parents=True)
        for f in sorted((clothing_test_dir / label).glob("*.jpg"))[:2]:
            shutil.copyfile(f, photos / label / f.name)
    app = settings.with_(es_url=secure_node.url, es_index=INDEX, es_username="imgsearch",
                         es_password=USERS["imgsearch"][0], thumbnail_dir=tmp_path / "thumbs",
                         upload_dir=tmp_path / "uploads", backup_dir=secure_node.backup_dir,
                         keys_index=None, decisions_index=None)  # the stack's: <alias>-keys
    backup = app.with_(es_username="imgsearch_backup", es_password=USERS["imgsearch_backup"][0])
    folder = secure_node.backup_dir / "nightly"

    # The app's user: indexes (its index, the duplicate pairs), makes a key, takes a decision.
    store = ImageStore.from_settings(app)
    report = index_folder(photos, settings=app, embedder=embedder, store=store, progress=False)
    assert report.stats.indexed == 4
    KeyStore(store.es, app.api_keys_index).create("admin", "admin")
    ids = sorted(store.ids_under_root(str(photos)))
    Decisions(store.es, app.image_decisions_index).decide("hidden", ids[0], kept=ids[1])
    with pytest.raises(StoreError, match="403|unauthorized"):  # no repository, no snapshot
        Backups(connect(app), app, folder).backup()

    # The backup user: a backup, a restore beside the index, a restore into an empty node.
    backups = Backups(connect(backup), backup, folder)
    entry = backups.backup()
    assert {i["role"]: i["documents"] for i in entry["indices"].values()} == {
        "images": 4, "duplicates": entry["indices"][f"{entry['index']}-duplicates"]["documents"],
        "keys": 1, "decisions": 1}
    replaced = backups.restore(replace=True)
    assert sorted(replaced.replaced) == sorted([app.api_keys_index, app.image_decisions_index])
    assert store.indices.current_index() == replaced.index != entry["index"]
    admin = secure_node.client("admin")
    admin.indices.delete(index=f"{INDEX}*", expand_wildcards="all")
    restored = backups.restore()
    assert restored.documents == restored.expected
    assert store.count() == 4
    assert Decisions(store.es, app.image_decisions_index).hidden([ids[0]]) == {ids[0]: ids[1]}

    # What the backup user may not do: write documents, delete indices.
    es = secure_node.client("imgsearch_backup")
    from elasticsearch import AuthorizationException

    with pytest.raises(AuthorizationException):
        es.index(index=INDEX, id="x", document={"label": "x"})
    with pytest.raises(AuthorizationException):
        es.indices.delete(index=restored.index)
