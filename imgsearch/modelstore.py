"""Fine-tuned models on disk: one directory per model, found by its model version.

A model directory holds

- ``model.weights.h5``: the Keras weights of the whole headless ResNet50 (``pooling='avg'``),
  tuned layers and frozen ones alike, so that it loads without the base weights;
- ``model_card.json``: what the model is and how it was made (base model version, data digest,
  label set, recipe, hyper-parameters, seed, epochs, wall time, validation scores before and
  after) and its identity: ``weights_digest`` (sha256 over the weight values,
  :func:`imgsearch.weights.weights_digest`) and ``model_version``.

Loading recomputes the digest from the weights and refuses a directory whose weights do not
match their card: a corrupt or swapped file never serves random or foreign vectors.

The model store (``IMGSEARCH_MODEL_STORE``, default ``var/models``) is a directory of model
directories. The web app looks a model up there by the version recorded in an index's
``_meta``, so it can follow the alias to an index built by another model without a restart.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .settings import Settings
from .weights import WeightsError

WEIGHTS_FILE = "model.weights.h5"
CARD_FILE = "model_card.json"
CARD_FIELDS = (
    "model_version", "weights_digest", "base_model_version", "architecture", "resize_mode",
    "input_size", "dims", "labels", "training_data", "recipe", "seed", "epochs", "wall_seconds",
    "validation",
)


def is_model_dir(path: Path) -> bool:
    return (Path(path) / CARD_FILE).is_file()


def read_card(model_dir: Path) -> dict:
    path = Path(model_dir) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{model_dir} is not a model directory: it has no {CARD_FILE}") from None
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot read the model card {path}: {e}") from e
    missing = [f for f in CARD_FIELDS if f not in card] if isinstance(card, dict) else CARD_FIELDS
    if missing:
        raise WeightsError(f"the model card {path} lacks {', '.join(missing)}")
    return card


def load_model_dir(model_dir: Path):
    """``(keras_model, weights_digest, card)`` of a tuned model, its digest verified."""
    from .weights import build_resnet50, load_weights_file, weights_digest

    model_dir = Path(model_dir)
    card = read_card(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise WeightsError(f"{model_dir} has no {WEIGHTS_FILE}")
    model = build_resnet50(include_top=False, pooling="avg")
    load_weights_file(model, weights)
    digest = weights_digest(model)
    if digest != card["weights_digest"]:
        raise WeightsError(
            f"{weights} holds weights with digest {digest[:16]}..., but its model card says "
            f"{card['weights_digest'][:16]}...: the file is corrupt or not this model's. "
            "Fine-tune again, or restore the directory from a copy."
        )
    return model, digest, card


def write_model_dir(model_dir: Path, keras_model, card: dict) -> None:
    """Write (or overwrite) the weights and then the card, each atomically; with
    ``keras_model=None`` only the card (whose digest must still be the weights').

    The card is written last and names the digest of the weights beside it, so a crash
    between the two leaves a directory that refuses to load rather than one that lies.
    """
    missing = [f for f in CARD_FIELDS if f not in card]
    if missing:  # checked before anything is written: an incomplete card replaces nothing
        raise ValueError(f"model card lacks {missing}")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if keras_model is not None:
        fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".weights-", suffix=".weights.h5")
        os.close(fd)
        try:
            keras_model.save_weights(tmp)
            os.replace(tmp, model_dir / WEIGHTS_FILE)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".card-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    os.replace(tmp, model_dir / CARD_FILE)


class ModelStore:
    """A directory of model directories, looked up by model version."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def models(self) -> dict[str, Path]:
        """``{model_version: directory}`` of every readable model in the store."""
        found: dict[str, Path] = {}
        if not self.root.is_dir():
            return found
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and is_model_dir(child):
                try:
                    found[read_card(child)["model_version"]] = child
                except WeightsError:
                    continue  # a half-written or foreign directory is not a model
        return found

    def find(self, version: str) -> Path | None:
        return self.models().get(version)


def resolve_model_dir(settings: Settings) -> Path | None:
    """The tuned model that ``IMGSEARCH_MODEL`` names (None: the base model).

    It may be a model directory or a model version found in the model store.
    """
    name = settings.model
    if not name or name == "base":
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        if not is_model_dir(path):
            raise WeightsError(f"IMGSEARCH_MODEL={name}: {path} has no {CARD_FILE}")
        return path
    found = ModelStore(settings.model_store).find(name)
    if found is None:
        raise WeightsError(
            f"IMGSEARCH_MODEL={name!r} is neither a model directory nor a model version in the "
            f"model store {settings.model_store} (IMGSEARCH_MODEL_STORE)"
        )
    return found
