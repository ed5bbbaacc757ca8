"""``python -m indexer finetune``: bad input gets a clear message and exit status before any
model is loaded; Ctrl-C keeps the best epoch so far, usable; a tuned model never writes into
an index of another model."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgsearch.embedder import Embedder
from imgsearch.modelstore import load_model_dir, read_card
from imgsearch.settings import PROJECT_ROOT
from indexer.cli import EXIT_ABORTED, EXIT_USAGE
from indexer.finetune import main as finetune_main
from indexer.index import main as index_main


def _labelled(root: Path, source: Path, labels: dict[str, int]) -> Path:
    for label, n in labels.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for f in sorted((source / label).glob("*.jpg"))[:n]:
            shutil.copyfile(f, root / label / f.name)
    return root


@pytest.fixture(scope="module")
def train_dir(datasets_dir):
    return datasets_dir / "clothing-small" / "images" / "train"


@pytest.mark.parametrize("labels,message", [
    ({}, "no labelled images"),
    ({"dress": 6}, "at least 2 labels"),
    ({"dress": 6, "hat": 1}, "fewer than 2 training images: hat"),
])
def test_unusable_folders_exit_2_with_a_message(tmp_path, train_dir, capsys, labels, message):
    root = _labelled(tmp_path / "photos", train_dir, labels)
    root.mkdir(exist_ok=True)
    assert finetune_main([str(root), "--out", str(tmp_path / "model")]) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_an_existing_model_directory_is_kept_unless_forced(tmp_path, train_dir, capsys):
    root = _labelled(tmp_path / "photos", train_dir, {"dress": 6, "hat": 6})
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert finetune_main([str(root), "--out", str(out)]) == EXIT_USAGE
    assert "exists; choose another --out or pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "must be at least 1"),
    (["--validation-fraction", "1.5"], "between 0 and 1"),
    (["--metadata", "/nonexistent/labels.csv"], "cannot read metadata file"),
])
def test_bad_options_exit_2(tmp_path, train_dir, capsys, args, message):
    root = _labelled(tmp_path / "photos", train_dir, {"dress": 4, "hat": 4})
    assert finetune_main([str(root), *args]) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_ctrl_c_keeps_the_best_epoch_so_far_usable(tmp_path, train_dir, settings):
    root = _labelled(tmp_path / "photos", train_dir, {"dress": 8, "hat": 8, "shoes": 8})
    photo = next((root / "hat").iterdir()).read_bytes()
    (root / "hat" / "cut-short.jpg").write_bytes(photo[: len(photo) // 3])
    out = tmp_path / "model"
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "indexer", "finetune", str(root), "--out", str(out),
         "--epochs", "100", "--patience", "100", "--validation-fraction", "0.25",
         "--no-progress"],
        cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )
    lines = []
    deadline = time.monotonic() + 600
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("epoch 2:"):  # epoch 1 is written; interrupt in epoch 3
                proc.send_signal(signal.SIGINT)
                break
            assert time.monotonic() < deadline, "".join(lines)
        lines += proc.stderr.readlines()
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    err = "".join(lines)
    assert code == EXIT_ABORTED, err[-3000:]
    assert "interrupted; kept" in err
    assert "skipped hat/cut-short.jpg: [truncated]" in err
    card = read_card(out)
    assert card["interrupted"] is True and card["epochs"] >= 2
    assert card["training_data"]["skipped"][0]["rel_path"] == "hat/cut-short.jpg"
    load_model_dir(out)  # the digest verifies
    model = Embedder(settings, model_dir=out)
    assert model.version == card["model_version"]
    assert model.embed_bytes(photo).shape == (2048,)


def test_a_tuned_model_is_refused_by_an_index_of_the_base_model(
    tuned_model, test_settings, store, embedder, photo_dir, monkeypatch, capsys
):
    from indexer.index import index_folder

    index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                 progress=False)
    model_dir, _ = tuned_model
    monkeypatch.setenv("ES_URL", test_settings.es_url)
    monkeypatch.setenv("ES_INDEX", store.alias)
    monkeypatch.setenv("IMGSEARCH_THUMBNAIL_DIR", str(test_settings.thumbnail_dir))
    code = index_main([str(photo_dir), "--model", str(model_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_ABORTED
    assert f"holds vectors of model version '{embedder.version}'" in err
    assert "--new-index" in err
    assert store.indices.index_model_version() == embedder.version


@pytest.mark.parametrize("content", ["junk", "foreign"])
def test_corrupt_or_foreign_base_weights_exit_1_never_random_weights(
    tmp_path, train_dir, capsys, monkeypatch, content
):
    """IMGSEARCH_WEIGHTS naming a file that is not ResNet50's weights: a clear error."""
    import keras

    weights = tmp_path / "base.weights.h5"
    if content == "junk":
        weights.write_bytes(b"not an hdf5 file" * 64)
    else:  # a real Keras weights file, of another network
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.save_weights(str(weights))
    monkeypatch.setenv("IMGSEARCH_WEIGHTS", str(weights))
    root = _labelled(tmp_path / "photos", train_dir, {"dress": 8, "hat": 8})
    args = [str(root), "--out", str(tmp_path / "model"), "--validation-fraction", "0.25"]
    assert finetune_main(args) == EXIT_ABORTED
    assert f"cannot load {weights}" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
