"""Near-duplicate groups: which cosine threshold groups a photo with its copies, and nothing else?

    python -m bench.duplicates --images ../shared/datasets/clothing-small/images/test \
        [--originals 120] [--thresholds 0.80 0.85 ...] [--es-url URL]

The first ``--originals`` photos of the folder (sorted, spread over the labels by taking every
n-th) each get copies made with PIL: JPEG re-encoded at quality 30, 60 and 90, resized to 50 %,
cropped to the central 90 %, brightness +10 % and -10 %, a caption drawn across the photo and a
small one in a corner (re-encoded at quality 95 where the transform is not itself an
encoding). Every real photo of the folder and every copy is indexed by the product's indexer
into a throwaway alias (a throwaway node, unless ``--es-url`` names one), then
:func:`imgsearch.duplicates.find_duplicates` groups them at each threshold. True pairs: an
original with each of its copies, and two copies of one original; pairs found: every two
members of a group. Reported per threshold: pairs found, pair precision and recall, the groups
and the grouping time, and the share of each transform's copies grouped with their original;
the false pairs at the chosen threshold (real photo with real photo: the set's own
look-alikes); and, as a check of the approximate kNN, the share of the pairs an exact
all-pairs search finds at that threshold that end up in one group.

Then the upkeep of the kept pairs (imgsearch/pairs.py): the time the indexer's writer thread
spent finding and storing each batch's pairs (per image), the same for every image again
(``duplicates --rebuild``), whether the kept groups equal the exhaustive ones at each
threshold, and what ``GET /api/duplicates`` costs from them (first request at a threshold,
then kept), through the web app's test client.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import uuid
from contextlib import contextmanager
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from bench.machine import cpu_line
from imgsearch.images import content_hash
from imgsearch.pairs import NUM_CANDIDATES

THRESHOLDS = (0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.98)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _caption(image: Image.Image, small: bool = False) -> Image.Image:
    """A caption across the middle of the photo, as a reposting site or a shop stamps one
    (letters 1/14 of the height); ``small``: a watermark in the lower corner (1/30)."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    font = ImageFont.load_default(size=max(10, h // (30 if small else 14)))
    text = "SALE -50% shop.example.com"
    box = draw.textbbox((0, 0), text, font=font)
    if small:
        x, y = w - (box[2] - box[0]) - w // 20, h - (box[3] - box[1]) - h // 20
    else:
        x, y = (w - (box[2] - box[0])) // 2, (h - (box[3] - box[1])) // 2
    draw.text((x, y), text, font=font, fill=(255, 255, 255), stroke_width=2,
              stroke_fill=(0, 0, 0))
    return image


def _crop90(image: Image.Image) -> Image.Image:
    w, h = image.size
    dx, dy = round(w * 0.05), round(h * 0.05)
    return image.crop((dx, dy, w - dx, h - dy))


TRANSFORMS = {
    "jpeg_q30": lambda im: _jpeg(im, 30),
    "jpeg_q60": lambda im: _jpeg(im, 60),
    "jpeg_q90": lambda im: _jpeg(im, 90),
    "resize_50": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2), Image.LANCZOS), 95),
    "crop_90": lambda im: _jpeg(_crop90(im), 95),
    "bright_+10": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(1.1), 95),
    "bright_-10": lambda im: _jpeg(ImageEnhance.Brightness(im).enhance(0.9), 95),
    "text": lambda im: _jpeg(_caption(im), 95),
    "text_small": lambda im: _jpeg(_caption(im, small=True), 95),
}


def make_set(images: Path, folder: Path, originals: int) -> dict[str, tuple[str, str, str]]:
    """Real photos and copies under ``folder``: ``{id: (origin id, transform, path)}`` where a
    real photo's transform is ``"original"`` (origin: itself)."""
    paths = sorted(images.rglob("*.jpg"))
    step = max(1, len(paths) // originals)
    chosen = set(paths[::step][:originals])
    out: dict[str, tuple[str, str, str]] = {}
    for path in paths:
        data = path.read_bytes()
        origin = content_hash(data)
        target = folder / "real" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        out[origin] = (origin, "original", str(target))
        if path not in chosen:
            continue
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
        for name, make in TRANSFORMS.items():
            copy = make(rgb)
            target = folder / "copies" / path.parent.name / f"{path.stem}__{name}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(copy)
            out[content_hash(copy)] = (origin, name, str(target))
    return out


def pairs_of(groups) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in combinations([m.id for m in g.members], 2)}


def exact_pairs(ids: list[str], vectors: np.ndarray, threshold: float) -> set[tuple[str, str]]:
    sims = vectors @ vectors.T
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return {tuple(sorted((ids[a], ids[b]))) for a, b in zip(i, j, strict=True)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--originals", type=int, default=120)
    p.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    p.add_argument("--chosen", type=float, default=None,
                   help="the threshold of the per-transform table (default: the setting's)")
    p.add_argument("--es-url", help="an Elasticsearch to use (default: a throwaway node)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--without-pairs", action="store_true",
                   help="also index the same photos with the pairs hook off, for the "
                   "indexing overhead of the kept pairs")
    p.add_argument("--pair-candidates", type=int, nargs="*", default=[],
                   help="also rebuild the kept pairs with these HNSW candidate counts (the "
                   f"product's: {NUM_CANDIDATES}) and compare their groups with the "
                   "exhaustive ones")
    args = p.parse_args(argv)

    from imgsearch.localnode import scratch_dir, throwaway_node

    with scratch_dir("bench-duplicates-") as folder:
        if args.es_url:
            run(args, folder, args.es_url)
        else:
            with throwaway_node(heap="1g") as node:
                run(args, folder, node.url)


def run(args, folder: Path, es_url: str) -> None:
    from imgsearch.duplicates import find_duplicates
    from imgsearch.embedder import Embedder
    from imgsearch.settings import Settings
    from imgsearch.store import ImageStore
    from indexer.index import index_folder

    settings = Settings.from_env(es_url=es_url, es_index=f"bench-dups-{uuid.uuid4().hex[:6]}",
                                 thumbnail_dir=folder / "thumbnails")
    chosen = args.chosen if args.chosen is not None else settings.duplicate_threshold
    started = time.perf_counter()
    truth_of = make_set(args.images, folder / "photos", args.originals)
    args.photos = folder / "photos"
    made = time.perf_counter() - started
    copies = sum(1 for _, t, _ in truth_of.values() if t != "original")
    print(f"{len(truth_of)} images ({copies} copies of {args.originals} originals) made in "
          f"{made:.1f} s")
    store = ImageStore.from_settings(settings)
    embedder = Embedder(settings)
    try:
        with timed_pairs() as upkeep:
            report = index_folder(folder / "photos", settings=settings, embedder=embedder,
                                  store=store, progress=False)
        print(f"indexed {report.stats.indexed} in {report.seconds:.1f} s, of which the writer "
              f"thread found and stored pairs for {upkeep['seconds']:.1f} s "
              f"({1000 * upkeep['seconds'] / report.stats.indexed:.1f} ms an image)")
        index = store.indices.current_index()
        rows_by_id = [row for page in store.vector_pages(index) for row in page]
        ids = [i for i, _ in rows_by_id]
        vectors = np.asarray([v for _, v in rows_by_id], dtype=np.float32)
        by_origin: dict[str, list[str]] = {}
        for doc_id, (origin, _, _) in truth_of.items():
            by_origin.setdefault(origin, []).append(doc_id)
        truth = {tuple(sorted(p)) for members in by_origin.values() if len(members) > 1
                 for p in combinations(members, 2)}
        out = {"cpu": cpu_line(), "date": time.strftime("%Y-%m-%d"), "images": len(ids),
               "originals": args.originals, "copies": copies, "true_pairs": len(truth),
               "index_seconds": round(report.seconds, 1), "rows": []}
        print(f"{out['cpu']}\n{len(ids)} documents, {len(truth)} true pairs\n")
        print("| threshold | pairs found | precision | recall | groups | images in groups "
              "| false pairs (real-real) | exact-search pairs found by kNN | grouping s |")
        print("|---|---|---|---|---|---|---|---|---|")
        reports = {}
        for threshold in args.thresholds:
            dup = find_duplicates(store, threshold, index=index)
            reports[threshold] = dup
            found = pairs_of(dup.groups)
            right = found & truth
            false = found - truth
            real_real = {pr for pr in false
                         if truth_of[pr[0]][1] == "original" == truth_of[pr[1]][1]}
            exact = exact_pairs(ids, vectors, threshold)
            row = {
                "threshold": threshold, "pairs": len(found),
                "precision": len(right) / len(found) if found else 1.0,
                "recall": len(right) / len(truth), "groups": len(dup.groups),
                "images_in_groups": dup.images, "false_pairs": len(false),
                "false_real_real": len(real_real),
                "knn_recall_of_exact": len(found & exact) / len(exact) if exact else 1.0,
                "seconds": round(dup.seconds, 2),
            }
            out["rows"].append(row)
            print(f"| {threshold:.2f} | {row['pairs']} | {row['precision']:.3f} | "
                  f"{row['recall']:.3f} | {row['groups']} | {row['images_in_groups']} | "
                  f"{row['false_pairs']} ({row['false_real_real']}) | "
                  f"{row['knn_recall_of_exact']:.3f} | {row['seconds']:.1f} |")
        print("\nCopies grouped with their original, per transform\n")
        print("| threshold | " + " | ".join(TRANSFORMS) + " |")
        print("|---|" + "---|" * len(TRANSFORMS))
        out["per_transform"] = {}
        for threshold, dup in reports.items():
            group_of = {m.id: n for n, g in enumerate(dup.groups) for m in g.members}
            shares = {}
            for name in TRANSFORMS:
                hits = [group_of.get(doc_id) is not None
                        and group_of.get(doc_id) == group_of.get(origin)
                        for doc_id, (origin, t, _) in truth_of.items() if t == name]
                shares[name] = sum(hits) / len(hits)
            out["per_transform"][str(threshold)] = shares
            print(f"| {threshold:.2f} | " + " | ".join(f"{v:.3f}" for v in shares.values())
                  + " |")
        dup = reports.get(chosen) or find_duplicates(store, chosen, index=index)
        out["chosen"] = chosen
        found = pairs_of(dup.groups)
        sims = dict(zip(ids, vectors, strict=True))
        false = sorted(found - truth, key=lambda pr: -float(sims[pr[0]] @ sims[pr[1]]))
        print(f"\nFalse pairs at {chosen} ({len(false)}), most similar first:")
        out["false_pairs"] = []
        for a, b in false[:20]:
            cosine = float(sims[a] @ sims[b])
            pa, pb = truth_of[a][2], truth_of[b][2]
            out["false_pairs"].append({"cosine": round(cosine, 4), "a": pa, "b": pb})
            print(f"  {cosine:.4f}  {Path(pa).relative_to(folder)}  "
                  f"{Path(pb).relative_to(folder)}")
        print(f"\nGrouping at {chosen}: {dup.queries} kNN queries in {dup.seconds:.2f} s "
              f"({1000 * dup.seconds / dup.queries:.1f} ms a document)")
        out["upkeep"] = upkeep_figures(args, settings, store, embedder, reports, report,
                                       upkeep["seconds"])
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        store.es.indices.delete(index=f"{store.alias}-*", ignore_unavailable=True)


@contextmanager
def timed_pairs():
    """The seconds :meth:`PairFinder.after_write` (the indexer's pairs hook) runs, summed."""
    from imgsearch.pairs import PairFinder

    total = {"seconds": 0.0}
    original = PairFinder.after_write

    def after_write(self, docs, failed=()):
        started = time.perf_counter()
        try:
            return original(self, docs, failed)
        finally:
            total["seconds"] += time.perf_counter() - started

    PairFinder.after_write = after_write
    try:
        yield total
    finally:
        PairFinder.after_write = original


def upkeep_figures(args, settings, store, embedder, reports, report, hook_seconds) -> dict:
    """The kept pairs: their cost at indexing and again for every image, their agreement with
    the exhaustive groups, and the API's cost from them."""
    from imgsearch.pairs import DEFAULT_K, PairFinder, PairState
    from imgsearch.store import ImageStore
    from indexer.index import index_folder
    from webapp import create_app

    index = store.indices.current_index()
    images = report.stats.indexed
    state = PairState(store.es, index)
    visited, pairs = state.counts()
    state.drop()
    started = time.perf_counter()
    again, found = PairFinder(store, index, settings.duplicate_floor).visit_missing()
    rebuild = time.perf_counter() - started
    print(f"\nKept pairs at the floor {settings.duplicate_floor}: {pairs} pairs of {visited} "
          f"images; found at indexing in {hook_seconds:.1f} s "
          f"({1000 * hook_seconds / images:.1f} ms an image); all again (--rebuild) in "
          f"{rebuild:.1f} s ({1000 * rebuild / again:.1f} ms an image, {found} pairs)")
    stored = state.counts()[1]
    print(f"(stored: {stored} pairs; each pair is found from both sides)")
    app = create_app(settings.with_(public_read=True), embedder=embedder, store=store)
    finder = app.extensions["imgsearch.duplicates"]
    client = app.test_client()
    rows = []
    print("\n| threshold | kept pairs | groups | = exhaustive | first request ms (grouping "
          "ms) | kept ms |")
    print("|---|---|---|---|---|---|")
    for threshold in args.thresholds:
        if threshold < settings.duplicate_floor:
            continue
        t0 = time.perf_counter()
        response = client.get(f"/api/duplicates?threshold={threshold}&limit=20")
        first = time.perf_counter() - t0
        body = response.get_json()
        assert response.status_code == 200, body
        t0 = time.perf_counter()
        for _ in range(5):
            client.get(f"/api/duplicates?threshold={threshold}&limit=20")
        kept = (time.perf_counter() - t0) / 5
        same = None
        if threshold in reports:
            kept_groups, _ = finder.groups(threshold)
            same = {frozenset(c) for c in kept_groups.components} == {
                frozenset(m.id for m in g.members) for g in reports[threshold].groups}
        rows.append({"threshold": threshold, "pairs": body["pairs"],
                     "groups": body["total_groups"], "same_as_exhaustive": same,
                     "first_ms": round(1000 * first, 1), "grouping_ms": 1000 * body["seconds"],
                     "kept_ms": round(1000 * kept, 1)})
        print(f"| {threshold:.2f} | {body['pairs']} | {body['total_groups']} | {same} | "
              f"{1000 * first:.0f} ({1000 * body['seconds']:.0f}) | {1000 * kept:.0f} |")
    candidates = []
    if args.pair_candidates:
        print("\nThe kept pairs rebuilt with fewer HNSW candidates per image (k = "
              f"{DEFAULT_K}): do their groups still equal the exhaustive ones?")
        print("| candidates | ms an image (--rebuild) | pairs | "
              + " | ".join(f"= exhaustive at {t:.2f}" for t in args.thresholds
                           if t >= settings.duplicate_floor and t in reports) + " |")
        for n in args.pair_candidates:
            state.drop()
            started = time.perf_counter()
            again, found = PairFinder(store, index, settings.duplicate_floor,
                                      num_candidates=n).visit_missing()
            seconds = time.perf_counter() - started
            same = {}
            for threshold in args.thresholds:
                if threshold >= settings.duplicate_floor and threshold in reports:
                    kept_groups, _ = finder.groups(threshold)
                    same[threshold] = {frozenset(c) for c in kept_groups.components} == {
                        frozenset(m.id for m in g.members) for g in reports[threshold].groups}
            candidates.append({"candidates": n, "ms_an_image": round(1000 * seconds / again, 2),
                               "pairs": found, "same_as_exhaustive": same})
            print(f"| {n} | {1000 * seconds / again:.2f} | {found} | "
                  + " | ".join(str(v) for v in same.values()) + " |")
    without = None
    if args.without_pairs:
        # The same photos indexed again into an alias of their own with the pairs hook off:
        # what the pairs cost the indexer's throughput, not only its writer thread.
        alias = f"{settings.es_index}-nopairs"
        other = ImageStore.from_settings(settings.with_(es_index=alias))
        try:
            with no_pairs():
                plain = index_folder(args.photos, settings=settings.with_(es_index=alias),
                                     embedder=embedder, store=other, progress=False)
            without = round(plain.seconds, 1)
            print(f"\nthe same {plain.stats.indexed} images indexed without pairs in "
                  f"{plain.seconds:.1f} s (with: {report.seconds:.1f} s)")
        finally:
            other.es.indices.delete(index=f"{alias}-*", ignore_unavailable=True)
    return {"floor": settings.duplicate_floor, "pairs": stored, "images": visited,
            "index_seconds": round(report.seconds, 1), "index_seconds_without_pairs": without,
            "index_hook_seconds": round(hook_seconds, 2), "rebuild_seconds": round(rebuild, 2),
            "rows": rows, "candidates": candidates}


@contextmanager
def no_pairs():
    """The indexer's pairs hook turned off (for the comparison only)."""
    from imgsearch.pairs import PairFinder

    original = PairFinder.after_write
    PairFinder.after_write = lambda self, docs, failed=(): None
    try:
        yield
    finally:
        PairFinder.after_write = original


if __name__ == "__main__":
    main()
