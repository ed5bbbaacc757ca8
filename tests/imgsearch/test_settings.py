"""Settings come from the environment, validated."""

import pytest

from imgsearch.settings import Settings


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
