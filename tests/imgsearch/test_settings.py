"""Settings come from the environment, validated."""

import os
import re
from dataclasses import fields
from pathlib import Path

import pytest

from imgsearch.settings import PROJECT_ROOT, SYSTEM_DIR, Settings


def test_defaults_and_env(monkeypatch):
    monkeypatch.setenv("ES_URL", "http://example.invalid:9200")
    monkeypatch.setenv("IMGSEARCH_VECTOR_INDEX", "int8_hnsw")
    monkeypatch.setenv("ES_PASSWORD", "secret")
    s = Settings.from_env()
    assert s.es_url == "http://example.invalid:9200"
    assert s.es_index == "images"
    assert s.vector_index_type == "int8_hnsw"
    assert s.describe()["es_password"] == "***"
    assert (s.regions, s.region_index_type) == ("off", "bbq_hnsw")
    monkeypatch.setenv("IMGSEARCH_REGIONS", "fine")
    assert Settings.from_env().regions == "fine"


@pytest.mark.parametrize("name,value", [("IMGSEARCH_VECTOR_INDEX", "flat"),
                                        ("IMGSEARCH_RESIZE", "stretch"),
                                        ("IMGSEARCH_BATCH_SIZE", "0"),
                                        ("IMGSEARCH_PRECISION", "fp16"),
                                        ("IMGSEARCH_REGIONS", "on"),
                                        ("IMGSEARCH_REGION_INDEX", "flat"),
                                        ("IMGSEARCH_INFERENCE_THREADS", "-1"),
                                        ("IMGSEARCH_DUPLICATE_THRESHOLD", "0.3"),
                                        ("IMGSEARCH_DUPLICATE_THRESHOLD", "1.5")])
def test_bad_values_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        Settings.from_env()


@pytest.mark.parametrize("name,value", [("IMGSEARCH_ES_SHARDS", "0"),
                                        ("IMGSEARCH_ES_REPLICAS", "-1"),
                                        ("IMGSEARCH_RESCORE_OVERSAMPLE", "0.5"),
                                        ("IMGSEARCH_RESCORE_OVERSAMPLE", "11"),
                                        ("IMGSEARCH_URL_TIMEOUT", "0"),
                                        ("IMGSEARCH_URL_ALLOW_HOSTS", "ok.example,http://x/"),
                                        ("IMGSEARCH_BULK_BACKOFF", "-1"),
                                        ("IMGSEARCH_BULK_MAX_BACKOFF", "-0.5"),
                                        ("IMGSEARCH_RUNTIME", "onnx")])
def test_every_check_names_its_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{name} "):
        Settings.from_env()


@pytest.mark.parametrize("name,value", [("IMGSEARCH_BATCH_SIZE", "many"),
                                        ("IMGSEARCH_BATCH_SIZE", "2.5"),
                                        ("IMGSEARCH_URL_TIMEOUT", "soon"),
                                        ("ES_REQUEST_TIMEOUT", "30s")])
def test_a_value_that_does_not_parse_names_its_variable(monkeypatch, name, value):
    """Not Python's bare "invalid literal for int()": the variable, what it takes, the value."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=rf"^{name} must be a (whole )?number, not '{value}'$"):
        Settings.from_env()


def test_unset_or_empty_means_the_default(monkeypatch):
    for name in Settings.variables():
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert Settings.from_env() == defaults
    for name in Settings.variables():
        monkeypatch.setenv(name, "")
    assert Settings.from_env() == defaults


def test_every_variable_sets_its_field(monkeypatch):
    monkeypatch.setenv("IMGSEARCH_BATCH_SIZE", "7")
    monkeypatch.setenv("IMGSEARCH_URL_TIMEOUT", "2.5")
    monkeypatch.setenv("IMGSEARCH_CACHE_DIR", "/tmp/somewhere")
    monkeypatch.setenv("IMGSEARCH_URL_ALLOW_HOSTS", " intranet.example , 10.0.0.7,,[::1]")
    monkeypatch.setenv("ES_USERNAME", "")
    s = Settings.from_env()
    assert (s.batch_size, s.url_timeout, s.cache_dir) == (7, 2.5, Path("/tmp/somewhere"))
    assert s.url_allow_hosts == ("intranet.example", "10.0.0.7", "[::1]")
    assert s.es_username is None


def test_overrides_win_and_are_checked_too(monkeypatch):
    with pytest.raises(TypeError):
        Settings.from_env(no_such_setting=1)
    monkeypatch.setenv("IMGSEARCH_BATCH_SIZE", "not a number")  # overridden: never read
    assert Settings.from_env(batch_size=4).batch_size == 4
    with pytest.raises(ValueError, match="^IMGSEARCH_BATCH_SIZE must be at least 1"):
        Settings.from_env(batch_size=0)


def test_each_setting_declares_one_variable_of_its_own():
    variables = Settings.variables()
    assert sorted(variables.values()) == sorted(f.name for f in fields(Settings))
    assert all(re.fullmatch(r"(ES|IMGSEARCH)_[A-Z0-9_]+", v) for v in variables)


def test_readme_configuration_table_lists_each_variable_once():
    """One row per setting's variable (or per group of them); every variable the table names
    is one that Settings reads, except gunicorn's WEBAPP_* (webapp/gunicorn.conf.py)."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = [name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`",
                                                         row.split("|")[1])]
    listed = [n for n in named if not n.startswith("WEBAPP_")]
    assert sorted(listed) == sorted(Settings.variables()), (
        f"missing: {sorted(set(Settings.variables()) - set(listed))}, unknown: "
        f"{sorted(set(listed) - set(Settings.variables()))}, "
        f"twice: {sorted({n for n in listed if listed.count(n) > 1})}")


def test_local_node_settings(monkeypatch, tmp_path):
    for name in ("IMGSEARCH_ES_PORT", "IMGSEARCH_ES_NODE_DIR", "IMGSEARCH_ES_HEAP",
                 "IMGSEARCH_ES_NODES", "ES_JAVA_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.es_port, s.es_heap, s.es_nodes, s.es_java_home) == (9200, None, 1, None)
    if os.geteuid() == 0:
        assert s.es_node_dir == SYSTEM_DIR / "nodes" / "demo"
    else:
        assert s.es_node_dir == Path.home() / ".local/share/imgsearch/nodes/demo"
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
        assert Settings.from_env().es_node_dir == tmp_path / "imgsearch/nodes/demo"
    monkeypatch.setenv("IMGSEARCH_ES_PORT", "9260")
    monkeypatch.setenv("IMGSEARCH_ES_NODE_DIR", str(tmp_path / "node"))
    monkeypatch.setenv("IMGSEARCH_ES_HEAP", "1g")
    monkeypatch.setenv("IMGSEARCH_ES_NODES", "3")
    monkeypatch.setenv("ES_JAVA_HOME", "/usr/lib/jvm/some-jdk")
    s = Settings.from_env()
    assert (s.es_port, s.es_node_dir, s.es_heap, s.es_nodes, s.es_java_home) == (
        9260, tmp_path / "node", "1g", 3, Path("/usr/lib/jvm/some-jdk"))
    monkeypatch.setenv("IMGSEARCH_ES_NODES", "0")
    with pytest.raises(ValueError, match="^IMGSEARCH_ES_NODES must be at least 1"):
        Settings.from_env()
