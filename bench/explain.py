"""Why it matched: how exact the split of a cosine over the cells is, and what it costs.

Indexes a labelled split into a throwaway alias, then explains ``--pairs`` (query, result)
pairs, each result one of its query's top 10 ("more like this"), through the web app's API:

- exactness: the largest gap between a grid's sum and the cosine it explains, and between
  that cosine (of maps recomputed from the files) and the one the search reported (of the
  indexed vectors);
- latency of ``GET /api/images/<id>/explain`` with neither map cached (two files read,
  decoded and run through the network), with both cached, and of the PNG heat map.

    python -m bench.explain --pairs 60

Needs Elasticsearch at ES_URL (``make es-up``).
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

import numpy as np

from bench.throwaway import indexed_folder
from imgsearch.embedder import Embedder
from imgsearch.settings import Settings
from webapp import create_app


def timed(client, url: str) -> tuple[float, object]:
    started = time.perf_counter()
    response = client.get(url)
    elapsed = 1000 * (time.perf_counter() - started)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return elapsed, response


def percentiles(values) -> str:
    return f"p50 {np.percentile(values, 50):.0f} ms, p95 {np.percentile(values, 95):.0f} ms"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path,
                   default=Settings.from_env().datasets_dir / "clothing-small")
    p.add_argument("--split", default="test")
    p.add_argument("--pairs", type=int, default=60)
    args = p.parse_args(argv)

    settings = Settings.from_env()
    embedder = Embedder(settings)
    print(f"{platform.node()}: model {embedder.version} ({embedder.runtime})")
    root = args.dataset / "images" / args.split
    with indexed_folder(root, settings, embedder, "explain") as (local, store, _):
        # Anonymous reads, as `make serve` on loopback: the benchmark measures the explainer.
        app = create_app(local.with_(public_read=True), embedder=embedder, store=store)
        explainer = app.extensions["imgsearch.explainer"]
        client = app.test_client()
        ids = [h["_id"] for h in store.es.search(index=store.alias, size=10_000,
                                                 source=False).body["hits"]["hits"]]
        rng = random.Random(0)
        sum_gap, cosine_gap, cold, warm, png = [], [], [], [], []
        for query in rng.sample(ids, args.pairs):
            hits = client.get(f"/api/images/{query}/similar?k=10").get_json()["hits"]
            hit = rng.choice(hits)
            url = f"/api/images/{hit['id']}/explain?query={query}"
            explainer.maps.clear()  # neither map cached: the first look at a result
            ms, response = timed(client, url)
            cold.append(ms)
            body = response.get_json()
            for side in ("query", "result"):
                sum_gap.append(abs(np.sum(body[side]["cells"]) - body["cosine"]))
            cosine_gap.append(abs(body["cosine"] - hit["cosine"]))
            warm.append(timed(client, url)[0])
            png.append(timed(client, url + "&format=png")[0])
    print(f"{args.pairs} pairs (a query and one of its top 10) of the {args.split} split")
    print(f"largest |sum of a grid's shares - cosine|: {max(sum_gap):.2e}")
    print(f"largest |cosine of the maps - cosine the search reported|: {max(cosine_gap):.2e} "
          f"(mean {np.mean(cosine_gap):.2e})")
    print(f"explain, neither map cached: {percentiles(cold)}")
    print(f"explain, both maps cached:   {percentiles(warm)}")
    print(f"PNG heat map (maps cached):  {percentiles(png)}")


if __name__ == "__main__":
    main()
