"""Pipeline stages on their own: reading, skipping, sidecars (no model, no node)."""

from __future__ import annotations

import pytest

from imgsearch.pipeline import Candidate, Failure, Ignored, RunStats, read_file, skip_known
from indexer.sidecar import SidecarError, load_sidecar

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def test_read_decides_by_content_not_by_name(tmp_path):
    (tmp_path / "picture.dat").write_bytes(PNG_1PX)
    (tmp_path / "fake.jpg").write_text("hello")
    (tmp_path / "notes.txt").write_text("hello")
    assert isinstance(read_file(tmp_path / "picture.dat", tmp_path), Candidate)
    fake = read_file(tmp_path / "fake.jpg", tmp_path)
    assert isinstance(fake, Failure) and fake.reason == "not_an_image"
    assert isinstance(read_file(tmp_path / "notes.txt", tmp_path), Ignored)


def test_skip_known_drops_indexed_and_repeated_content(tmp_path):
    items = [Candidate(tmp_path / n, n, b"", h) for n, h in
             (("a", "h1"), ("b", "h2"), ("c", "h1"), ("d", "h3"))]
    items.append(Ignored("x.txt"))
    stats = RunStats()
    asked = []

    def exists(ids):
        asked.append(list(ids))
        return {"h2"}

    out = list(skip_known(items, exists, stats, group=2))
    assert [c.rel_path for c in out] == ["a", "d"]
    assert (stats.already_present, stats.duplicates, stats.ignored) == (1, 1, 1)
    assert asked == [["h1", "h2"], ["h3"]]
    assert stats.hashes == {"h1", "h2", "h3"}


def test_sidecar_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("path,label,split,tags\n./test/dress/a.jpg,dress,test,red;long\n")
    table = load_sidecar(csv_file)
    assert table == {"test/dress/a.jpg": {"label": "dress", "tags": ["red", "long"],
                                          "extra": {"split": "test"}}}
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"path": "x.jpg", "label": "<b>x</b>", "tags": ["t"], "n": 3}\n\n')
    assert load_sidecar(jsonl)["x.jpg"] == {"label": "<b>x</b>", "tags": ["t"],
                                            "extra": {"n": 3}}


@pytest.mark.parametrize("content,suffix,message", [
    ("label\nx\n", ".csv", "no 'path' column"),
    ("{not json}\n", ".jsonl", "not valid JSON"),
])
def test_sidecar_errors_say_where(tmp_path, content, suffix, message):
    f = tmp_path / f"meta{suffix}"
    f.write_text(content)
    with pytest.raises(SidecarError, match=message):
        load_sidecar(f)


def test_relocated_fields_move_a_folder_label_and_keep_a_given_one(tmp_path):
    from imgsearch.pipeline import relocated_fields

    new = tmp_path / "shoes" / "x.jpg"
    by_folder = {"rel_path": "hat/x.jpg", "label": "hat"}
    given = {"rel_path": "hat/x.jpg", "label": "summer sale"}
    fields = relocated_fields(new, "shoes/x.jpg", root=tmp_path, sidecar={}, stored=by_folder)
    assert fields == {"path": str(new), "root": str(tmp_path), "rel_path": "shoes/x.jpg",
                      "file_name": "x.jpg", "folder": "shoes", "label": "shoes"}
    assert relocated_fields(new, "shoes/x.jpg", root=tmp_path, sidecar={},
                            stored=given)["label"] == "summer sale"
    sidecar = {"shoes/x.jpg": {"label": "boots"}}
    assert relocated_fields(new, "shoes/x.jpg", root=tmp_path, sidecar=sidecar,
                            stored=given)["label"] == "boots"
    # To the top of the folder: no folder, so no label from it.
    top = relocated_fields(tmp_path / "x.jpg", "x.jpg", root=tmp_path, sidecar={},
                           stored=by_folder)
    assert top["label"] is None and top["folder"] == "."


def test_a_copy_is_no_move_while_the_original_exists(tmp_path):
    from imgsearch.pipeline import moved_from

    original, copy = tmp_path / "a.jpg", tmp_path / "b.jpg"
    original.write_bytes(b"x")
    copy.write_bytes(b"x")
    assert not moved_from({"path": str(original)}, copy)
    assert not moved_from({"path": str(copy)}, copy)
    original.unlink()
    assert moved_from({"path": str(original)}, copy)


def test_skip_known_leaves_out_excluded_bytes_and_hears_of_moves(tmp_path):
    here = tmp_path / "new.jpg"
    here.write_bytes(b"x")
    items = [Candidate(here, "new.jpg", b"", "h1"), Candidate(tmp_path / "b", "b", b"", "h2"),
             Candidate(tmp_path / "c", "c", b"", "h3")]
    stats = RunStats(by_path={})
    moves = []
    out = list(skip_known(
        items, lambda ids: {"h1": {"path": str(tmp_path / "gone.jpg")}}, stats,
        excluded=lambda ids: {"h2"} & set(ids), relocate=lambda c, s: moves.append(c.rel_path)))
    assert [c.rel_path for c in out] == ["c"]
    assert (stats.already_present, stats.excluded) == (1, 1)
    assert moves == ["new.jpg"]
    assert stats.by_path == {"new.jpg": "h1", "b": "h2", "c": "h3"}
    assert stats.done == 2  # c is not done yet: it goes on to be embedded
