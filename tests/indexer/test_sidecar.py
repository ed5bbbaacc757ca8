"""The sidecar reader's parts the watcher uses (indexer/sidecar.py): the digest of the bytes
parsed, the rows that changed between two tables, and the fields a row gives a document
(imgsearch/pipeline.py ``metadata_fields``, which the watcher applies). (Parsing itself:
tests/imgsearch/test_pipeline.py.)"""

from __future__ import annotations

import hashlib

import pytest

from imgsearch.pipeline import metadata_fields
from indexer.sidecar import (
    SidecarError,
    changed_rows,
    describe_change,
    read_sidecar,
)


def test_the_digest_is_of_the_bytes_parsed(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_bytes(b"path,label\na/x.jpg,cap\n")
    table, digest = read_sidecar(f)
    assert table == {"a/x.jpg": {"label": "cap"}}
    assert digest == hashlib.sha256(f.read_bytes()).hexdigest()


def test_text_that_is_not_utf8_is_a_sidecar_error(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_bytes(b"path,label\na/x.jpg,\xff\xfe\n")
    with pytest.raises(SidecarError, match="not UTF-8"):
        read_sidecar(f)


def test_changed_rows_are_added_changed_and_removed_ones():
    old = {"a.jpg": {"label": "x"}, "b.jpg": {"label": "y"}, "c.jpg": {"tags": ["t"]}}
    new = {"a.jpg": {"label": "x"}, "b.jpg": {"label": "z"}, "d.jpg": {"label": "w"}}
    assert changed_rows(old, new) == {"b.jpg": {"label": "z"}, "c.jpg": None,
                                      "d.jpg": {"label": "w"}}
    assert changed_rows(new, new) == {}


def test_a_rows_fields_are_those_a_fresh_index_writes():
    row = {"label": "cap", "tags": ["wool"], "extra": {"size": "M"}}
    assert metadata_fields("hat/x.jpg", row) == row
    # No row, or a row without a label: the parent folder's name, no tags, no extra.
    assert metadata_fields("hat/x.jpg", None) == {"label": "hat", "tags": [], "extra": None}
    assert metadata_fields("x.jpg", {"tags": ["t"]}) == {"label": None, "tags": ["t"],
                                                         "extra": None}
    assert describe_change({"label": "cap"}, {"label": "beanie"}) == (
        "label 'cap' -> 'beanie'")
