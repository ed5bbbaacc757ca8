"""The local node: a real Elasticsearch started, used, stopped; plus its refusals."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from imgsearch import localnode
from imgsearch.localnode import LocalNode, LocalNodeError
from imgsearch.localnode import __main__ as localnode_cli
from imgsearch.settings import Settings


@pytest.fixture(scope="module")
def node():
    """A throwaway node of this module's own, so that stopping it harms no other test."""
    node_dir = Path(tempfile.mkdtemp(prefix="imgsearch-test-localnode-", dir="/tmp"))
    node_dir.chmod(0o755)  # not tmp_path: /tmp/pytest-of-root is 0700, out of the ES user's reach
    node = LocalNode(node_dir, port=localnode.free_port(), heap="1g")
    node.start()
    yield node
    node.stop()
    shutil.rmtree(node_dir, ignore_errors=True)


def test_node_is_healthy_and_pinned_version(node):
    assert node.is_running()
    assert node.health()["status"] in ("green", "yellow")
    assert node.version().startswith("9.2")


def test_node_listens_on_loopback_only(node):
    http = Elasticsearch(node.url).nodes.info(node_id="_local", metric="http").body
    (info,) = http["nodes"].values()
    assert info["http"]["publish_address"] == f"127.0.0.1:{node.port}"
    assert info["http"]["bound_address"] == [f"127.0.0.1:{node.port}"]


def test_create_and_delete_index(node):
    es = Elasticsearch(node.url)
    es.indices.create(index="localnode-smoke", mappings={"properties": {
        "v": {"type": "dense_vector", "dims": 3, "similarity": "cosine"}}})
    es.index(index="localnode-smoke", document={"v": [1.0, 0.0, 0.0]}, refresh=True)
    assert es.count(index="localnode-smoke")["count"] == 1
    es.indices.delete(index="localnode-*")  # wildcards allowed: destructive_requires_name off
    assert not es.indices.exists(index="localnode-smoke")


def test_start_is_idempotent(node):
    pid = node.pid()
    node.start(timeout=10)
    assert node.pid() == pid


def test_stop_closes_port_and_removes_pid(node):
    pid = node.pid()
    node.stop()
    assert not localnode.port_open(node.port)
    assert not node.pid_file.exists()
    assert _process_gone(pid)
    assert not node.is_running() and node.health() is None
    node.stop()  # idempotent


def _process_gone(pid: int) -> bool:
    # An exited daemon stays a zombie until PID 1 gets round to reaping it: that counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_java_older_than_21_is_refused(monkeypatch):
    java17 = next((p for p in Path("/usr/lib/jvm").glob("*17*") if (p / "bin/java").exists()),
                  None)
    if java17 is None:
        pytest.skip("no Java 17 here to refuse")
    monkeypatch.setenv("ES_JAVA_HOME", str(java17))
    with pytest.raises(LocalNodeError, match="Java 21"):
        localnode.find_java_home()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the node to another user")
def test_node_dir_out_of_reach_is_refused(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    node = LocalNode(private / "node", port=localnode.free_port(), heap="1g")
    with pytest.raises(LocalNodeError, match="not reachable by user imgsearch-es"):
        node.start(timeout=10)


def test_stale_pid_file_naming_another_process_is_ignored(tmp_path):
    node = LocalNode(tmp_path, port=localnode.free_port())
    node.pid_file.write_text(str(os.getpid()))  # a reused pid: this very test process
    assert not node.is_running()
    node.stop()  # must not signal us
    assert not node.pid_file.exists()


def test_bad_heap_is_refused():
    with pytest.raises(LocalNodeError, match="heap"):
        LocalNode(Path("/tmp/unused"), heap="lots")


def test_corrupt_download_is_removed(tmp_path):
    bogus = tmp_path / "elasticsearch.zip"
    bogus.write_bytes(b"not the zip")
    with pytest.raises(LocalNodeError, match="SHA-256"):
        localnode._verify_sha256(bogus)
    assert not bogus.exists()


def test_java_home_from_the_settings_is_checked(tmp_path):
    with pytest.raises(LocalNodeError, match=f"ES_JAVA_HOME={tmp_path} is not a Java 21"):
        localnode.find_java_home(Settings(es_java_home=tmp_path))


def test_cli_defaults_come_from_the_settings(monkeypatch, tmp_path, capsys):
    """``python -m imgsearch.localnode status``: the node directory and port of the settings
    (IMGSEARCH_ES_NODE_DIR, IMGSEARCH_ES_PORT), and with IMGSEARCH_ES_NODES a cluster beside it."""
    port = localnode.free_port()
    monkeypatch.setenv("IMGSEARCH_ES_NODE_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("IMGSEARCH_ES_PORT", str(port))
    assert localnode_cli.main(["status"]) == 1  # nothing runs there
    out = capsys.readouterr().out
    assert f"node dir: {tmp_path / 'demo'}" in out and f"http://127.0.0.1:{port}" in out
    monkeypatch.setenv("IMGSEARCH_ES_NODES", "2")
    assert localnode_cli.main(["status"]) == 1
    out = capsys.readouterr().out
    assert f"data in {tmp_path / 'cluster-2' / 'node-2' / 'data'}" in out
    assert f"http://127.0.0.1:{port + 1}" in out
    monkeypatch.setenv("IMGSEARCH_ES_NODES", "0")
    assert localnode_cli.main(["status"]) == 2
    assert "IMGSEARCH_ES_NODES must be at least 1" in capsys.readouterr().err


def test_the_backup_dir_is_the_nodes_path_repo(tmp_path):
    """Snapshots may only go under path.repo (imgsearch/snapshots.py): the node lists its
    backup folder there, and without one lists nothing."""
    import yaml

    conf = yaml.safe_load(localnode._elasticsearch_yml(
        9200, 9300, tmp_path / "data", tmp_path / "logs", backup_dir=tmp_path / "backups"))
    assert conf["path.repo"] == [str(tmp_path / "backups")]
    plain = yaml.safe_load(localnode._elasticsearch_yml(
        9200, 9300, tmp_path / "data", tmp_path / "logs"))
    assert "path.repo" not in plain
