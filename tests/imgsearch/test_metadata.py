"""A person's metadata (imgsearch/metadata.py): the sidecar's reading of a row, and the limits
the write API keeps."""

from __future__ import annotations

import pytest

from imgsearch.metadata import MetadataError, checked, row_fields, split_tags


def test_a_sidecar_row_becomes_label_tags_and_extra():
    row = {"path": "a/b.jpg", "label": "dress", "tags": "red; long", "colour": "red",
           "size": 3, "nested": {"x": 1}, "empty": "", "none": None}
    assert row_fields(row) == {"label": "dress", "tags": ["red", "long"],
                               "extra": {"colour": "red", "size": 3, "nested": '{"x": 1}'}}
    assert split_tags("a, b,,c") == ["a", "b", "c"]
    assert split_tags(["a", 2]) == ["a", "2"]
    assert row_fields({"file": "x.jpg"}) == {}


def test_the_api_limits():
    assert checked({"label": " dress ", "tags": ["a", "b", "a"], "extra": {"sku": "A-1",
                                                                         "n": 2, "ok": True}}) \
        == {"label": "dress", "tags": ["a", "b"], "extra": {"sku": "A-1", "n": 2, "ok": True}}
    assert checked({"label": None, "tags": None, "extra": None}) == {
        "label": None, "tags": None, "extra": None}
    assert checked({"extra": {}}) == {"extra": None}
    for fields in ({"width": 3}, {"label": ""}, {"label": "  "}, {"label": 1},
                   {"label": "x" * 513}, {"label": " " + "x" * 512},
                   {"tags": "a,b"}, {"tags": ["a"] * 101}, {"tags": [""]}, {"tags": [None]},
                   {"extra": []}, {"extra": {"a.b": "x"}}, {"extra": {"": "x"}},
                   {"extra": {"a": None}}, {"extra": {"a": [1]}}, {"extra": {"a": "x" * 513}},
                   {"extra": {f"c{i}": i for i in range(51)}}):
        with pytest.raises(MetadataError):
            checked(fields)
    assert len(checked({"tags": [f"t{i}" for i in range(100)]})["tags"]) == 100
