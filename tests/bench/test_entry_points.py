"""Every benchmark under bench/ run end to end, so that a benchmark that breaks fails the suite.

Each entry point runs as docs/BENCHMARKS.md and the Makefile run it, at the smallest sizes it
accepts: on 36 real photos of the clothing set (three of four labels in each split, with a
labels.csv of the set's format), against the session's real Elasticsearch node, with the real
model. Nothing is mocked. Entry points run in this process (``main(argv)``: TensorFlow and the
weights are loaded already, which keeps the whole file near two minutes on two shared cores)
except where a benchmark's design needs other processes: its own fresh process per runtime or
variant (embedding, bf16, indexing, which start those themselves), a gunicorn server
(api_runtimes starts its own; api_latency.py and load.py, run as the scripts they are, get one
from :func:`tests.support.gunicorn_server`). Each test checks that the run succeeded and that it
printed or wrote its key figures, finite and in range.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import PROJECT, gunicorn_server

LABELS = ("dress", "hat", "pants", "shoes")
SPLITS = ("train", "validation", "test")
# Photos of each label in each split: 12 a split, 36 in all. A split needs 12 for every figure
# to be defined: a query's top 10 of 11 others, and one result after them (feedback's next page).
PER_LABEL = 3
# A printed figure; not the digits of a name such as p50, P@10 or fp32.
NUMBER = re.compile(r"(?<![\w@.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def figures(line: str) -> list[float]:
    """The numbers of a printed line; none of them may be NaN or infinite."""
    assert not re.search(r"\b(nan|inf)\b", line, re.IGNORECASE), line
    return [float(n) for n in NUMBER.findall(line)]


def lines_starting(out: str, prefix: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(prefix)]


def run_script(args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """A bench script run as ``python bench/<script>.py ...`` from the project root."""
    done = subprocess.run([sys.executable, *args], cwd=PROJECT, capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dataset(datasets_dir, tmp_path_factory) -> Path:
    """A labelled set in the clothing set's layout: images/<split>/<label>/*.jpg and
    labels.csv (path,label,split), three real photos of each of four labels in each split."""
    root = tmp_path_factory.mktemp("datasets") / "tiny-clothing"
    source = datasets_dir / "clothing-small" / "images"
    rows = []
    for split in SPLITS:
        for label in LABELS:
            (root / "images" / split / label).mkdir(parents=True)
            for photo in sorted((source / split / label).glob("*.jpg"))[:PER_LABEL]:
                shutil.copyfile(photo, root / "images" / split / label / photo.name)
                rows.append((f"{split}/{label}/{photo.name}", label, split))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "split"))
        writer.writerows(rows)
    assert len(rows) == len(SPLITS) * len(LABELS) * PER_LABEL
    return root


@pytest.fixture(scope="module")
def test_split(dataset) -> Path:
    return dataset / "images" / "test"


@pytest.fixture(autouse=True)
def bench_env(monkeypatch, es_node, tmp_path):
    """What a benchmark reads from the environment: the session's node; thumbnails, models and
    any default alias of its own; PYTHONPATH for the processes it starts."""
    monkeypatch.setenv("ES_URL", es_node.url)
    monkeypatch.setenv("ES_INDEX", f"bench-test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("IMGSEARCH_THUMBNAIL_DIR", str(tmp_path / "thumbnails"))
    monkeypatch.setenv("IMGSEARCH_MODEL_STORE", str(tmp_path / "models"))
    monkeypatch.setenv("PYTHONPATH", str(PROJECT))


@pytest.fixture
def private_cache(monkeypatch, settings, tmp_path) -> Path:
    """A cache directory whose entries are the real cache's (weights, converted models) but
    whose bench/ is empty: scale and cluster cache their vectors there, and must compute them
    here rather than read them back, or leave this set's files in the user's cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for entry in settings.cache_dir.iterdir():
        if entry.name != "bench":
            (cache / entry.name).symlink_to(entry)
    monkeypatch.setenv("IMGSEARCH_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def int8_model(dataset, tmp_path_factory) -> Path:
    """The base model quantised to int8 by the product's CLI (make quantize-bench), calibrated on
    20 of the 36 photos (the fewest it accepts)."""
    from indexer.cli import EXIT_OK
    from indexer.quantize import main as quantize_main

    out = tmp_path_factory.mktemp("int8") / "base-int8"
    assert quantize_main([str(dataset / "images"), "--samples", "20", "--out", str(out)]) == EXIT_OK
    return out


@pytest.fixture(scope="module")
def served(settings, embedder, test_split, tmp_path_factory):
    """The test split indexed into an alias of its own and served by the product's gunicorn
    (one worker): ``(url, settings, worker pids)``."""
    from imgsearch.store import ImageStore, connect
    from indexer.index import index_folder

    local = settings.with_(es_index=f"bench-served-{uuid.uuid4().hex[:8]}",
                           thumbnail_dir=tmp_path_factory.mktemp("served-thumbs"))
    store = ImageStore(connect(local), local.es_index)
    report = index_folder(test_split, settings=local, embedder=embedder, store=store,
                          progress=False)
    assert report.stats.indexed == len(LABELS) * PER_LABEL
    log = tmp_path_factory.mktemp("served") / "gunicorn.log"
    try:
        with gunicorn_server(local, log, WEBAPP_WORKERS="1", WEBAPP_THREADS="4") as (proc, port):
            workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                     text=True).stdout.split()
            assert len(workers) == 1
            yield f"http://127.0.0.1:{port}", local, workers
    finally:
        store.es.indices.delete(index=f"{local.es_index}-*", ignore_unavailable=True)


# -- one process, one model --------------------------------------------------------------------


def test_quality(dataset, capsys):
    from bench.quality import main

    main(["--dataset", str(dataset), "--split", "test"])
    out = capsys.readouterr().out
    assert "split test: 12 images, 4 labels" in out
    (knn,) = lines_starting(out, "Elasticsearch kNN")
    (exact,) = lines_starting(out, "exact (numpy brute force)")
    p10, map10 = figures(knn)
    assert 0 <= p10 <= 1 and 0 <= map10 <= 1
    assert figures(exact)[:2] == [p10, map10]  # 8 vectors: the kNN is exact
    (recall,) = lines_starting(out, "recall@10 of kNN against exact:")
    assert figures(recall)[-1] == 1.0


def test_resize_modes(dataset, capsys):
    from bench.resize_modes import main

    main(["--dataset", str(dataset), "--split", "test"])
    out = capsys.readouterr().out
    assert "12 images, 4 labels" in out
    for mode in ("squash", "crop", "pad"):
        (row,) = lines_starting(out, f"{mode} ")
        p10, map10, seconds = figures(row)
        assert 0 <= p10 <= 1 and 0 < map10 <= 1 and seconds > 0


def test_int8(dataset, int8_model, capsys):
    from bench.int8 import main

    main(["--dataset", str(dataset), "--int8", str(int8_model), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["photos"] == 12 and summary["calibration_images"] == 20
    assert summary["int8"].startswith(summary["fp32"] + "/int8=")
    for scores in (summary["fp32_scores"], summary["int8_scores"]):
        assert {"p@10", "map@10"} <= scores.keys()
        assert all(0 <= v <= 1 for v in scores.values())
    assert 0 <= summary["top10_overlap"] <= 1
    assert 0.9 < summary["cosine"]["min"] <= summary["cosine"]["median"] <= 1
    assert isinstance(summary["within_bounds"], bool)


def test_explain(dataset, capsys):
    from bench.explain import main

    main(["--dataset", str(dataset), "--pairs", "3"])
    out = capsys.readouterr().out
    assert "3 pairs (a query and one of its top 10) of the test split" in out
    (sums,) = lines_starting(out, "largest |sum of a grid's shares - cosine|:")
    assert figures(sums)[0] < 1e-9  # the shares add up to the cosine
    (cosines,) = lines_starting(out, "largest |cosine of the maps - cosine the search reported|")
    assert figures(cosines)[0] < 1e-4  # the maps explain the very match that was found
    for prefix in ("explain, neither map cached:", "explain, both maps cached:",
                   "PNG heat map (maps cached):"):
        (line,) = lines_starting(out, prefix)
        p50, p95 = figures(line)
        assert 0 < p50 <= p95


def test_feedback_chooses_on_validation_and_reports_on_test(dataset, capsys):
    from bench.feedback import GRID_LIKE, GRID_UNLIKE, main

    main(["--dataset", str(dataset), "--choose"])
    out = capsys.readouterr().out
    validation, _, test = out.partition("\ntest split")
    grid = lines_starting(validation, "| 1 / ")
    assert len(grid) == len(GRID_LIKE) * len(GRID_UNLIKE)
    assert "chosen by P@10 of the unseen:" in validation
    assert ", 12 queries" in test
    rows = lines_starting(test, "| 1 / ")
    # The chosen weights, then the product's unless they are the chosen ones.
    assert len(rows) in (1, 2)
    assert len(rows) == 1 or rows[1].endswith("(the product's weights)")
    for row in grid + rows:
        _, _, _, before, after, unseen, next_page, better, same, worse = figures(row)[:10]
        assert 0 <= before <= after <= 1  # liked images come back, unliked ones never
        assert 0 <= unseen <= 1 and 0 <= next_page <= 1
        assert better + same + worse == 12
    assert figures(lines_starting(out, "two kNN searches")[0])[-1] > 0


def test_finetune_trains_then_scores_base_and_tuned(dataset, tmp_path, capsys):
    from bench.finetune import main

    model_dir, figures_file = tmp_path / "tuned", tmp_path / "finetune.jsonl"
    main(["--dataset", str(dataset), "--epochs", "1", "--views", "1", "--out", str(model_dir),
          "--json", str(figures_file)])
    out = capsys.readouterr().out
    assert "trained on 12 images, validated on 12; 1 epochs" in out
    assert (model_dir / "model_card.json").is_file()
    (line,) = figures_file.read_text().splitlines()
    written = json.loads(line)
    assert written["card"]["epochs"] == 1
    for name in ("base", "tuned"):
        m = written["test"][name]
        assert m["images"] == 12
        assert all(0 <= v <= 1 for v in (*m["exact"].values(), *m["es"].values()))
        assert m["recall@10"] == 1.0  # 12 vectors: the kNN is exact
        (row,) = lines_starting(out, f"{name} ")
        assert len(figures(row)) >= 6
    labels = written["labels"]
    assert 0 <= labels["accuracy"] <= 1 and set(labels["per_label"]) == set(LABELS)
    assert "predicted labels on the test split" in out


def test_finetune_on_a_class_disjoint_split_scores_seen_and_unseen_apart(dataset, tmp_path,
                                                                        capsys):
    from bench.finetune import main

    figures_file = tmp_path / "disjoint.jsonl"
    main(["--dataset", str(dataset), "--epochs", "1", "--views", "1", "--disjoint", "A",
          "--out", str(tmp_path / "tuned"), "--json", str(figures_file)])
    out = capsys.readouterr().out
    seen = sorted(LABELS)[0::2]
    assert f"trained on {', '.join(seen)}" in out
    (line,) = figures_file.read_text().splitlines()
    written = json.loads(line)
    assert written["disjoint"] == "A" and written["card"]["labels"] == seen
    shares = written["shares"]
    assert "0.0" in shares and len(shares) == 1 + len(written["card"]["interpolation"]["tried"])
    for scores in shares.values():
        assert set(scores) == {"all", "seen", "unseen"}
        assert all(0 <= v <= 1 for v in scores.values())


def test_duplicates(test_split, es_node, tmp_path, capsys):
    from bench.duplicates import TRANSFORMS, main

    written = tmp_path / "duplicates.json"
    main(["--images", str(test_split), "--originals", "2", "--thresholds", "0.90", "0.94",
          "--es-url", es_node.url, "--json", str(written)])
    out = capsys.readouterr().out
    assert "30 images (18 copies of 2 originals)" in out
    figures_ = json.loads(written.read_text())
    assert figures_["images"] == 30 and figures_["true_pairs"] == 2 * (10 * 9 // 2)
    assert [r["threshold"] for r in figures_["rows"]] == [0.90, 0.94]
    for row in figures_["rows"]:
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert row["knn_recall_of_exact"] == 1.0
        assert lines_starting(out, f"| {row['threshold']:.2f} | {row['pairs']} |")
    shares = figures_["per_transform"]["0.94"]
    assert shares.keys() == TRANSFORMS.keys()
    assert shares["jpeg_q90"] == 1.0  # a re-encoded copy is always found at the default
    # The pairs kept at indexing group as the exhaustive search does, at each threshold.
    upkeep = figures_["upkeep"]
    assert upkeep["images"] == 30 and upkeep["pairs"] > 0
    assert [r["same_as_exhaustive"] for r in upkeep["rows"]] == [True, True]


def test_regions_product(test_split, capsys):
    """The product's region search (bench-regions) in one region mode of its two (standard, the
    default) and one region index type of three (bbq_hnsw, the default), two boxes a size."""
    from bench.regions import main

    main(["--images", str(test_split), "--types", "bbq_hnsw", "--queries", "2"])
    out = capsys.readouterr().out
    (head,) = lines_starting(out, "whole-photo P@10 without regions")
    global_p10 = figures(head)[0]
    assert "standard" in head
    assert len(lines_starting(out, "global    global")) == 3
    rows = lines_starting(out, "standard  bbq_hnsw")
    assert len(rows) == 3, out
    for row in rows:
        r1, r10 = (float(v) for v in re.findall(r"R@1 (\S+) R@10 (\S+)", row)[0])
        assert 0 <= r1 <= r10 <= 1
        assert "refused 0" in row
        # Region vectors must not change whole-photo search.
        assert float(re.search(r"whole-photo P@10 (\S+)", row)[1]) == global_p10
        figures(row)


def test_regions_design(test_split, capsys):
    """The measurements that chose the region modes (bench-regions-design), one area and one
    scale, with the nested-kNN measurement on Elasticsearch."""
    from bench.regions import main

    main(["--design", "--images", str(test_split), "--queries", "2", "--areas", "1",
          "--scales", "2", "--es-types", "bbq_hnsw"])
    out = capsys.readouterr().out
    assert len(lines_starting(out, "ES nested kNN bbq_hnsw")) == 3
    for mode in ("global ", "1x L2 q224 ", "1x L2 qscaled "):
        rows = lines_starting(out, mode)
        assert len(rows) == 3, out
        for row in rows:
            r1, r10 = figures(row.removeprefix(mode))[2:4]
            assert 0 <= r1 <= r10 <= 1


def test_scale(dataset, private_cache, tmp_path, capsys):
    """bench-scale at 300 vectors in each index type (100,000 and 1M in docs/BENCHMARKS.md)."""
    from bench.scale import main

    written = tmp_path / "scale.jsonl"
    main(["--dataset", str(dataset), "--sizes", "300", "--queries", "10", "--quiet",
          "--num-candidates", "100", "--out", str(written)])
    out = capsys.readouterr().out
    results = [json.loads(line) for line in written.read_text().splitlines()]
    assert [r["index_type"] for r in results] == ["hnsw", "int8_hnsw", "bbq_hnsw"]
    for r in results:
        assert r["size"] == 300 and r["rate"] > 0 and r["sizes"]["hot_bytes"] > 0
        # Quantised types: without rescoring and with --oversample's default.
        assert len(r["searches"]) == (1 if r["index_type"] == "hnsw" else 2)
        for s in r["searches"]:
            assert 0.5 <= s["recall_at_10"] <= 1 and s["client_p50_ms"] > 0
    table = [line for line in out.splitlines()
             if re.match(r"\s+300 (hnsw|int8_hnsw|bbq_hnsw) ", line)]
    assert len(table) == 5
    # The vectors and the exact neighbours were computed here, and cached under their names.
    assert len(list((private_cache / "bench").glob("tiny-clothing-*.npz"))) == 1
    assert len(list((private_cache / "bench").glob("exact-300-s0.5-q10-*.npy"))) == 1


def test_cluster_on_the_session_node(dataset, private_cache, es_node):
    """bench-cluster without its first part: ``--es-url`` measures on the session's node, since
    forming a throwaway 3-node cluster, killing one of its nodes and waiting for green again
    takes 30-90 s on this machine (tests/imgsearch/test_localcluster.py forms and breaks one);
    1 vs 3 shards, bytes per vector and the Ray indexer (one worker node, of the benchmark's 1
    and 2) run end to end. In a process of its own: a Ray cluster started and shut down in the
    suite's process made the next one (tests/indexer/test_distributed.py) end the whole run
    with status 1 and nothing said."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cluster", "--dataset", str(dataset), "--vectors", "300",
         "--queries", "10", "--candidates", "50", "--es-url", es_node.url,
         "--ray-workers", "1"],
        cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)}, capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["vectors"] == 300 and "recovery" not in out and "formation_s" not in out
    assert [(r["shards"], r["num_candidates"]) for r in out["shards"]] == [(1, 50), (3, 50)]
    assert all(0.5 <= r["recall@10"] <= 1 and r["p50_ms"] > 0 for r in out["shards"])
    assert [r["type"] for r in out["bytes"]] == ["hnsw", "int8_hnsw", "bbq_hnsw"]
    hot = [r["hot_bytes_per_vector"] for r in out["bytes"]]
    assert hot[0] > hot[1] > hot[2] > 0  # floats, then int8, then 1-bit codes
    assert [(r["engine"], r["workers"], r["images"]) for r in out["ray"]] == [
        ("local", None, 12), ("ray", 1, 12)]
    assert all(r["images_per_second"] > 0 for r in out["ray"])


# -- benchmarks that start processes of their own ---------------------------------------------


def test_embedding(test_split, capsys):
    """bench-embedding: each runtime in a fresh process of its own, one round of 4 photos."""
    from bench.embedding import main

    main(["--images", str(test_split), "-n", "4", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "4 photos, model resnet50-avg/" in out
    (naive,) = lines_starting(out, "naive predict per image:")
    assert all(v > 0 for v in figures(naive)[:2])
    (limit,) = lines_starting(out, "limit: peak")
    assert figures(limit)[0] > 0
    for runtime in ("tensorflow", "openvino"):
        (row,) = lines_starting(out, f"{runtime} ")
        batch, x_tf, of_limit, single, x_tf_single, piped, of_forward = figures(
            row.split(None, 2)[2])
        assert batch > 0 and single > 0 and piped > 0 and of_limit > 0 and of_forward > 0
        if runtime == "tensorflow":
            assert x_tf == x_tf_single == 1.0


def test_bf16(dataset, capsys):
    """bench-bf16 with the product's bf16 setting against fp32 (of the four variants), each
    rate timed for a quarter of a second."""
    from bench.bf16 import main

    main(["--dataset", str(dataset), "--split", "test", "--variants", "bf16",
          "--seconds", "0.25"])
    out = capsys.readouterr().out
    assert "12 photos of tiny-clothing/test" in out
    (fp32,) = lines_starting(out, "fp32 ")
    assert figures(fp32)[-3:] == [1.0, 1.0, 1.0]  # the reference against itself
    (bf16,) = lines_starting(out, "bf16 ")
    batch32, speedup, batch1, cos_min, cos_mean, overlap = figures(bf16)[-6:]
    assert batch32 > 0 and speedup > 0 and batch1 > 0
    assert 0.99 < cos_min <= cos_mean <= 1 and 0 <= overlap <= 1


def test_indexing(test_split, capsys):
    """bench-indexing on OpenVINO, in a process of its own (of the benchmark's two runtimes)."""
    from bench.indexing import main

    main(["--images", str(test_split), "--runtimes", "openvino"])
    out = capsys.readouterr().out
    (row,) = lines_starting(out, "openvino ")
    assert "regions off" in row and "(12 images," in row
    forward, before, after, end_to_end, share = figures(row.partition("(batch 32)")[2])[:5]
    assert forward > 0 and before > 0 and after > 0 and end_to_end > 0 and share > 0


def test_api_runtimes(test_split, settings, monkeypatch, capsys):
    """bench-api-runtimes on OpenVINO (one server of the benchmark's two fp32 runtimes, with
    one worker: the machine has two cores), at concurrency 1 and 4."""
    from bench.api_runtimes import main
    from imgsearch.store import connect

    monkeypatch.setenv("WEBAPP_WORKERS", "1")
    main(["--images", str(test_split), "-n", "4", "--runtimes", "openvino"])
    out = capsys.readouterr().out
    for concurrency in (1, 4):
        (row,) = lines_starting(out, f"openvino       c={concurrency}:")
        assert all(v > 0 for v in figures(row.partition(":")[2])[:3])
    # Its throwaway index is gone.
    assert not connect(settings).indices.get(index="bench-api-*", allow_no_indices=True).body


def test_api_latency_script(served, test_split):
    """bench-api: bench/api_latency.py, as a script, against a running gunicorn."""
    url, _, _ = served
    done = run_script(["bench/api_latency.py", "--url", url, str(test_split), "-n", "6",
                       "-k", "5", "-c", "2", "--warmup", "2"])
    assert "6 uploads (after 2 warm-up), 6 distinct images, k=5, concurrency 2" in done.stdout
    for name in ("end to end", "server decode", "server embed", "server search",
                 "server total"):
        (row,) = [line for line in done.stdout.splitlines() if line.strip().startswith(name)]
        p50, p95, p99, mean, most = figures(row)
        assert 0 <= p50 <= p95 <= p99 <= most and mean >= 0


def test_load_script_with_an_indexer_alongside(served, test_split, datasets_dir, tmp_path):
    """bench/load.py, as a script: two clients for 5 s with /healthz polled, and the indexer
    adding two photos to the served index meanwhile (stopped if the load ends first)."""
    url, local, workers = served
    more = tmp_path / "more" / "t-shirt"
    more.mkdir(parents=True)
    for photo in sorted((datasets_dir / "clothing-small/images/test/t-shirt").glob("*.jpg"))[:2]:
        shutil.copyfile(photo, more / photo.name)
    done = run_script(
        ["bench/load.py", str(test_split), "--url", url, "--clients", "2", "--seconds", "5",
         "--pids", *workers, "--index-dir", str(more.parent), "--json"],
        env={**os.environ, "ES_INDEX": local.es_index})
    summary = json.loads(done.stdout)
    assert summary["requests"] > 0 and summary["5xx"] == 0 and not summary["connection_errors"]
    assert set(summary["statuses"]) == {"200"}
    assert summary["healthz"]["polls"] >= 1 and summary["healthz"]["failures"] == 0
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    (rss,) = summary["worker_rss_mib"].values()
    assert rss["start"] > 0 and rss["end"] > 0
    assert summary["documents"]["start"] == len(LABELS) * PER_LABEL
    indexer = summary["indexer"]
    if indexer["finished_during_load"]:
        assert indexer["exit_code"] == 0
        assert summary["documents"]["end"] == summary["documents"]["start"] + 2
    else:  # stopped with SIGTERM at the end of the load, as load.py documents
        # ... unless it was finishing as the signal came (seen once in a full run: exit 0
        # with both photos stored), which is a finished run.
        assert indexer["exit_code"] != 0 or (
            summary["documents"]["end"] == summary["documents"]["start"] + 2)



def test_load_script_open_loop(served, test_split):
    """bench/load.py --rate: uploads arrive on a schedule (5 a second for 3 s, well within one
    worker's capacity), so all are admitted and none refused."""
    url, _, workers = served
    done = run_script(["bench/load.py", str(test_split), "--url", url, "--rate", "5",
                       "--clients", "10", "--seconds", "3", "--pids", *workers, "--json"])
    summary = json.loads(done.stdout)
    assert summary["rate"] == 5 and 12 <= summary["requests"] <= 16
    assert summary["statuses"] == {"200": summary["requests"]}
    assert summary["refused_share"] == 0 and summary["refusals"] == {}
    admitted = summary["admitted_latency_ms"]
    assert admitted["n"] == summary["requests"] and 0 < admitted["p50"] <= admitted["p95"]


def test_words(dataset, capsys):
    from bench.words import main

    results = main(["--dataset", str(dataset)])
    out = capsys.readouterr().out
    assert "chosen on validation:" in out
    for split in ("validation", "test"):
        image = results[split]["image"]
        assert {"image", "filter"} <= set(image) and all(0 <= v <= 1 for v in image.values())
        assert set(results[split]["alone"]) == {"dress", "hat", "longsleeve", "outwear", "pants",
                                                "shirt", "shoes", "shorts", "skirt", "t-shirt"}


def test_int8_variants(dataset, capsys):
    from bench.int8_variants import main

    results = main(["--dataset", str(dataset), "--variants", "D2", "--calibration", "6"])
    assert "D2" in results  # the mixed-precision path (A is test_int8's product model)
    for r in results.values():
        assert 0 <= r["overlap"] <= 1 and 0 <= r["p10"] <= 1 and r["cos"] > 0.9
    assert "overlap@10" in capsys.readouterr().out


def test_stages(test_split, capsys):
    """bench.stages without its node (the bulk write's own check is the indexer's)."""
    from bench.stages import main

    out = main(["--images", str(test_split), "-n", "12", "--no-node"])
    assert out["stages"]["embed (batch 32, every core)"] > 0
    assert 0 < out["ceiling"] <= out["forward_rate"]
    assert "ceiling of the whole pipeline" in capsys.readouterr().out


def test_live(datasets_dir, settings, monkeypatch, tmp_path, capsys):
    """bench-live at its smallest: a watcher process, the indexer, one gunicorn worker, 21 real
    photos of the clothing test split and 1,000 synthetic vectors."""
    from bench.live import main
    from imgsearch.store import connect

    monkeypatch.setenv("WEBAPP_WORKERS", "1")
    written = tmp_path / "live.json"
    figures_ = main(["--images", str(datasets_dir / "clothing-small" / "images" / "test"),
                     "--singles", "1", "--burst", "8", "--posts", "2", "--vectors", "1000",
                     "--warm", "3", "--json", str(written)])
    out = capsys.readouterr().out
    assert json.loads(written.read_text()) == figures_
    assert figures_["cpu"] in out and "| measured | n | p50 | p95 | also |" in out
    for kind in ("atomic", "plain"):
        single = figures_["singles"][kind]
        assert single["searchable_s"]["n"] == 1
        assert 0 < single["stored_s"]["p50"] <= single["searchable_s"]["p50"] < 120
        burst = figures_["burst"][kind]
        assert burst["files"] == burst["knn_confirmed"] == 8  # a kNN search finds every one
        assert sum(burst["batches"]) == 8 and burst["batch_s"] > 0
        assert 0 < burst["per_file_s"]["p50"] <= burst["per_file_s"]["max"] \
            <= burst["all_searchable_s"]
        assert burst["images_per_s"] > 0
        for line in lines_starting(out, "| watcher, "):
            figures(line)
    indexer = figures_["indexer"]
    assert indexer["images"] == 8 and indexer["images_per_s"] > 0
    assert indexer["watcher_over_indexer"] > 0
    upkeep = figures_["upkeep"]
    assert upkeep["images"] == 1 + 2 + 16  # every photo the watcher indexed
    assert upkeep["wall_ms_per_image"] > 0 and upkeep["es_cpu_ms_per_image"] > 0
    collection = figures_["collection"]
    assert collection["vectors"] == 1000 and collection["pairs"] > 0
    rows = figures_["duplicates"]
    assert [r["threshold"] for r in rows] == [0.90, 0.95, 0.98]
    assert rows[0]["pairs"] == collection["pairs"]  # every stored pair is at the floor
    for row in rows:
        assert row["groups"] > 0 and row["first_ms"] > 0
        assert row["warm_ms"]["n"] == row["warm_cached"] == 3  # one worker: its kept groups
    assert rows[0]["groups"] >= rows[-1]["groups"] and rows[0]["pairs"] > rows[-1]["pairs"]
    cold = figures_["cold_read"]
    assert cold["pairs"] == collection["pairs"] and cold["scroll_ms"] > 0
    posts = figures_["posts"]
    assert posts["statuses"] == {"201": 2}
    assert 0 < posts["latency_s"]["p50"] <= posts["searchable_s"]["p50"]
    # Its throwaway indices (images, pairs, keys, decisions) are gone; ES_INDEX never made.
    es = connect(settings)
    for made in ("bench-live-*", f"{os.environ['ES_INDEX']}*"):
        assert not es.indices.get(index=made, allow_no_indices=True).body, made
