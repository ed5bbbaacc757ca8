"""Near-duplicate groups through the product: the grouping, the CLI verb and the web API.

A folder of eight real photos of different garments, three of them with a copy made here
(re-encoded at JPEG quality 50, resized to half, captioned) and one with an exact copy under
another name, is indexed once into an alias of its own.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid

import pytest
from PIL import Image, ImageDraw, ImageFont

from imgsearch.decisions import Decisions
from imgsearch.duplicates import (
    BelowFloor,
    DuplicateGroups,
    NoPairsState,
    check_threshold,
    find_duplicates,
)
from imgsearch.images import content_hash
from imgsearch.search import QueryError
from imgsearch.store import ImageStore, IndexMissing, connect

LABELS = ("dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "skirt")


def _jpeg(image: Image.Image, quality: int = 95) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _captioned(image: Image.Image) -> Image.Image:
    image = image.copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=image.height // 20)
    draw.text((image.width // 10, image.height * 4 // 5), "shop.example.com", font=font,
              fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
    return image


COPIES = {  # label -> how its copy is made
    "shoes": lambda im: _jpeg(im, 50),
    "hat": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2), Image.LANCZOS)),
    "dress": lambda im: _jpeg(_captioned(im)),
}


@pytest.fixture(scope="module")
def near_copies(settings, embedder, clothing_test_dir, tmp_path_factory):
    """``(settings, store, originals, copies)``: ids of the photos by label, and of each copy by
    the label of its original."""
    from indexer.index import index_folder

    folder = tmp_path_factory.mktemp("near-copies")
    originals, copies = {}, {}
    for label in LABELS:
        path = sorted((clothing_test_dir / label).glob("*.jpg"))[0]
        data = path.read_bytes()
        (folder / label).mkdir()
        shutil.copyfile(path, folder / label / path.name)
        originals[label] = content_hash(data)
        if label in COPIES:
            with Image.open(path) as im:
                copy = COPIES[label](im.convert("RGB"))
            (folder / "copies").mkdir(exist_ok=True)
            (folder / "copies" / f"{label}-copy.jpg").write_bytes(copy)
            copies[label] = content_hash(copy)
    # The same bytes under another name: one document, never a group of its own.
    shutil.copyfile(folder / "pants" / next((folder / "pants").iterdir()).name,
                    folder / "copies" / "pants-again.jpg")
    local = settings.with_(es_index=f"t-dups-{uuid.uuid4().hex[:8]}",
                           thumbnail_dir=tmp_path_factory.mktemp("near-copies-thumbs"))
    store = ImageStore(connect(local), local.es_index)
    report = index_folder(folder, settings=local, embedder=embedder, store=store,
                          progress=False)
    assert report.stats.indexed == len(LABELS) + len(COPIES)
    assert report.stats.duplicates == 1
    yield local, store, originals, copies
    store.es.indices.delete(index=f"{store.alias}-*", ignore_unavailable=True)


def test_each_copy_is_grouped_with_its_original_and_nothing_else(near_copies):
    settings, store, originals, copies = near_copies
    before = store.count()
    report = find_duplicates(store, settings.duplicate_threshold)
    groups = {frozenset(m.id for m in g.members) for g in report.groups}
    assert groups == {frozenset({originals[label], copies[label]}) for label in COPIES}
    assert report.documents == before == len(LABELS) + len(COPIES)  # the exact copy once
    assert report.queries == report.documents
    assert report.index == store.indices.current_index()
    assert report.model_version == store.indices.index_model_version()
    for group in report.groups:
        first, second = group.members
        assert first.cosine == 1.0
        assert settings.duplicate_threshold <= second.cosine < 1.0
        assert group.min_cosine == second.cosine
        assert "vector" not in first.source and first.source["path"].endswith(".jpg")
    # Largest first, then the tightest.
    assert [g.min_cosine for g in report.groups] == sorted(
        (g.min_cosine for g in report.groups), reverse=True)
    assert store.count() == before  # nothing written


def test_a_looser_threshold_groups_more_and_min_size_filters(near_copies):
    settings, store, _, _ = near_copies
    assert find_duplicates(store, 1.0).groups == []
    loose = find_duplicates(store, 0.5)
    assert loose.images >= find_duplicates(store, settings.duplicate_threshold).images
    big = find_duplicates(store, 0.5, min_size=3)
    assert all(g.size >= 3 for g in big.groups)


@pytest.mark.parametrize("value", [0.49, 1.01, float("nan"), -1.0])
def test_thresholds_outside_the_range_are_refused(value, near_copies):
    with pytest.raises(QueryError, match="threshold must be a cosine from 0.5 to 1.0"):
        check_threshold(value)
    with pytest.raises(QueryError, match="min_size"):
        find_duplicates(near_copies[1], 0.9, min_size=1)


def test_a_missing_index_is_the_stores_error(settings):
    store = ImageStore(connect(settings), f"never-{uuid.uuid4().hex[:8]}")
    with pytest.raises(IndexMissing):
        find_duplicates(store, 0.9)


def _groups(store, settings) -> DuplicateGroups:
    return DuplicateGroups(store, Decisions(store.es, settings.image_decisions_index),
                           settings.duplicate_threshold)


def test_the_kept_pairs_group_as_the_exhaustive_search_does(near_copies):
    """At every threshold from the floor up, the groups from the pairs kept while indexing are
    the exhaustive search's; kept per state version and threshold."""
    settings, store, _, _ = near_copies
    groups = _groups(store, settings)
    for threshold in (settings.duplicate_floor, 0.92, settings.duplicate_threshold, 0.97, 1.0):
        kept, cached = groups.groups(threshold)
        assert not cached
        exhaustive = find_duplicates(store, threshold)
        assert {frozenset(c) for c in kept.components} == {
            frozenset(m.id for m in g.members) for g in exhaustive.groups}, threshold
        assert groups.groups(threshold) == (kept, True)
    page = groups.page(settings.duplicate_threshold)
    assert (page.documents, page.unvisited, page.cached) == (len(LABELS) + len(COPIES), 0, True)
    assert [g.members[0].cosine for g in page.groups] == [1.0] * len(COPIES)


def test_a_threshold_below_the_floor_is_refused_with_how_to_lower_it(near_copies):
    settings, store, _, _ = near_copies
    with pytest.raises(BelowFloor, match="IMGSEARCH_DUPLICATE_FLOOR=0.85.*--rebuild"):
        _groups(store, settings).groups(0.85)


def test_an_index_without_pairs_says_how_to_make_them(near_copies, monkeypatch, capsys):
    """An index built before pairs were kept (here: its pairs dropped) is refused with the
    command that makes them, and that command makes the same groups."""
    from imgsearch.pairs import PairState

    settings, store, _, _ = near_copies
    state = PairState(store.es, store.indices.current_index())
    before = {frozenset(c) for c in _groups(store, settings).groups()[0].components}
    state.drop()
    with pytest.raises(NoPairsState, match="duplicates --update"):
        _groups(store, settings).groups()
    code, _, err = _cli(monkeypatch, capsys, settings)
    assert code == 1 and "duplicates --update" in err
    code, _, err = _cli(monkeypatch, capsys, settings, "--update")
    assert code == 0 and f"pairs of {len(LABELS) + len(COPIES)} images found" in err
    assert state.counts()[0] == len(LABELS) + len(COPIES)
    assert {frozenset(c) for c in _groups(store, settings).groups()[0].components} == before
    code, _, err = _cli(monkeypatch, capsys, settings, "--update")  # nothing left to visit
    assert code == 0 and "pairs of 0 images found" in err


# -- the CLI verb ---------------------------------------------------------------------------


def _cli(monkeypatch, capsys, settings, *args, **env):
    from indexer.__main__ import main

    monkeypatch.setenv("ES_URL", env.get("es_url", settings.es_url))
    monkeypatch.setenv("ES_INDEX", env.get("es_index", settings.es_index))
    code = main(["duplicates", "--no-progress", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prints_the_groups(near_copies, monkeypatch, capsys):
    settings, _, originals, copies = near_copies
    code, out, err = _cli(monkeypatch, capsys, settings)
    assert code == 0
    assert out.count("group ") == len(COPIES)
    assert "copies/shoes-copy.jpg" in out
    assert f"3 groups of 6 images among {len(LABELS) + len(COPIES)} documents" in err

    code, out, _ = _cli(monkeypatch, capsys, settings, "--json")
    assert code == 0
    groups = [json.loads(line) for line in out.splitlines()]
    assert {frozenset(m["id"] for m in g["members"]) for g in groups} == {
        frozenset({originals[label], copies[label]}) for label in COPIES}
    assert all(g["members"][0]["cosine"] == 1.0 for g in groups)


@pytest.mark.parametrize("args", [["--threshold", "0.3"], ["--min-size", "1"]])
def test_cli_refuses_bad_arguments(near_copies, monkeypatch, capsys, args):
    code, out, err = _cli(monkeypatch, capsys, near_copies[0], *args)
    assert code == 2 and out == "" and err.startswith("error: ")
    with pytest.raises(SystemExit) as exited:  # argparse: not a number at all
        _cli(monkeypatch, capsys, near_copies[0], "--threshold", "x")
    assert exited.value.code == 2


def test_cli_says_what_is_missing(near_copies, monkeypatch, capsys):
    settings = near_copies[0]
    code, _, err = _cli(monkeypatch, capsys, settings, es_index=f"never-{uuid.uuid4().hex[:8]}")
    assert code == 1 and "no images are indexed" in err and "python -m indexer" in err
    code, _, err = _cli(monkeypatch, capsys, settings, es_url="http://127.0.0.1:9")
    assert code == 1 and "not reachable" in err and "make es-up" in err


# -- the web API and page -------------------------------------------------------------------


@pytest.fixture
def dup_client(near_copies, embedder):
    from tests.support import build_app

    settings, store, _, _ = near_copies
    return build_app(settings, embedder, store).test_client()


def _error(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_api_returns_the_groups_with_links(near_copies, dup_client):
    settings, store, originals, copies = near_copies
    response = dup_client.get("/api/duplicates")
    assert response.status_code == 200
    body = response.get_json()
    assert body["threshold"] == settings.duplicate_threshold
    assert (body["total_groups"], body["images_in_groups"]) == (3, 6)
    assert body["documents"] == len(LABELS) + len(COPIES)
    assert body["index"] == store.indices.current_index() and body["cached"] is False
    members = {frozenset(m["id"] for m in g["members"]) for g in body["groups"]}
    assert members == {frozenset({originals[label], copies[label]}) for label in COPIES}
    member = body["groups"][0]["members"][1]
    assert member["thumbnail_url"] == f"/thumbnails/{member['id']}.webp"
    assert member["detail_url"] == f"/images/{member['id']}"
    assert set(member) >= {"id", "cosine", "path", "file_name", "metadata"}
    assert dup_client.get(member["thumbnail_url"]).status_code == 200

    again = dup_client.get("/api/duplicates?limit=1&offset=1").get_json()
    assert again["cached"] is True and again["computed_at"] == body["computed_at"]
    assert again["groups"] == body["groups"][1:2]
    assert dup_client.get("/api/duplicates?threshold=1.0").get_json()["groups"] == []


@pytest.mark.parametrize("query,code,words", [
    ("threshold=abc", "invalid_parameter", "threshold must be a number"),
    ("threshold=0.2", "invalid_parameter", "from 0.5 to 1.0"),
    ("threshold=nan", "invalid_parameter", "from 0.5 to 1.0"),
    ("limit=0", "invalid_parameter", "limit must be between 1 and 100"),
    ("limit=many", "invalid_parameter", "limit must be a whole number"),
    ("offset=-1", "invalid_parameter", "offset must be between"),
    ("k=5", "unknown_parameter", "Known: threshold, limit, offset"),
])
def test_api_refuses_bad_parameters(dup_client, query, code, words):
    response = dup_client.get(f"/api/duplicates?{query}")
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == code and words in error["message"]


def test_api_and_page_on_a_missing_index(near_copies, embedder):
    from tests.support import build_app

    settings = near_copies[0].with_(es_index=f"never-{uuid.uuid4().hex[:8]}")
    missing_alias_client = build_app(settings, embedder).test_client()
    response = missing_alias_client.get("/api/duplicates")
    assert response.status_code == 503
    assert _error(response)["code"] == "index_empty"
    page = missing_alias_client.get("/duplicates")
    assert page.status_code == 503 and b"make index IMAGES=" in page.data


def test_page_shows_each_group_linking_to_detail_pages(near_copies, dup_client):
    _, _, originals, copies = near_copies
    page = dup_client.get("/duplicates")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert html.count('class="dup-group"') == 3
    for label in COPIES:
        assert f'href="/images/{copies[label]}"' in html
        assert f'href="/images/{originals[label]}"' in html
    assert "3 groups of\n        6 images" in html
    bad = dup_client.get("/duplicates?threshold=2")
    assert bad.status_code == 400 and b"from 0.5 to 1.0" in bad.data


# -- skipping near-duplicates at index time -------------------------------------------------


def test_indexing_can_skip_near_duplicates(test_settings, store, embedder, clothing_test_dir,
                                           tmp_path, caplog):
    """A copy of an indexed photo is found by the kNN check against the index; a copy of a
    photo this run indexed a batch earlier (one photo a batch), by the check in memory."""
    from indexer.index import format_summary, index_folder

    hat, pants = (sorted((clothing_test_dir / label).glob("*.jpg"))[0]
                  for label in ("hat", "pants"))
    first, folder = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    folder.mkdir()
    shutil.copyfile(hat, first / "hat.jpg")
    settings = test_settings.with_(batch_size=1)
    index_folder(first, settings=settings, embedder=embedder, store=store, progress=False)

    shutil.copyfile(pants, folder / "a-pants.jpg")
    with Image.open(hat) as im:
        (folder / "b-hat-small.jpg").write_bytes(COPIES["hat"](im.convert("RGB")))
    with Image.open(pants) as im:
        (folder / "c-pants-q50.jpg").write_bytes(COPIES["shoes"](im.convert("RGB")))
    caplog.set_level("INFO", logger="imgsearch.indexing")
    report = index_folder(folder, settings=settings, embedder=embedder, store=store,
                          progress=False, skip_near_duplicates=True)
    assert (report.stats.indexed, report.stats.near_duplicates) == (1, 2)
    assert report.exit_code == 0 and report.to_json()["near_duplicates"] == 2
    assert "near-duplicates:  2 skipped" in format_summary(report)
    hat_id, pants_id = (content_hash(p.read_bytes()) for p in (hat, pants))
    assert f"skipped b-hat-small.jpg: a near-duplicate of {hat_id}" in caplog.text
    assert f"skipped c-pants-q50.jpg: a near-duplicate of {pants_id}" in caplog.text
    copies = [content_hash(p.read_bytes()) for p in sorted(folder.glob("[bc]-*.jpg"))]
    assert store.existing_ids(copies) == set()

    # Without the option the copies are indexed like any photo.
    again = index_folder(folder, settings=settings, embedder=embedder, store=store,
                         progress=False)
    assert (again.stats.indexed, again.stats.already_present) == (2, 1)


def test_skipping_near_duplicates_needs_the_local_engine(tmp_path, capsys):
    from indexer.index import main

    assert main([str(tmp_path), "--skip-near-duplicates", "--engine", "ray"]) == 2
    assert "needs the local engine" in capsys.readouterr().err
