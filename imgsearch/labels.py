"""Predicted labels from a fine-tuned model: the domain's own labels, on the vector's pass.

Fine-tuning (imgsearch/finetune.py) learns one proxy per label, a unit vector that the label's
images' embeddings are pulled towards (normalised softmax: ``logits = scale * cos(embedding,
proxy)``). That is a classifier over exactly the vectors the index stores, so a new photo can
arrive labelled: its predicted label is the proxy nearest its vector, and the confidence is
that label's softmax probability at the training scale. It costs one ``[2048, labels]``
product per image, on the vectors already computed: no second network pass.

The proxies of the best epoch are written beside its weights (``proxies.npy``, float32
``[2048, labels]``, unit columns in the card's ``labels`` order) and named in the card with
their sha256 and the scale; a model tuned before that has none, and indexes without
predictions. A document gets ``predicted_label`` (keyword, for filters and facets),
``predicted_confidence`` (float) and ``model_tagger`` (:attr:`Labeler.version`: a re-run
predicts for documents without it, as it tags them for the base model).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .weights import WeightsError

PROXIES_FILE = "proxies.npy"


def proxies_digest(proxies: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(proxies, np.float32).tobytes()).hexdigest()


def unit_columns(proxies: np.ndarray) -> np.ndarray:
    proxies = np.asarray(proxies, np.float32)
    return proxies / np.maximum(np.linalg.norm(proxies, axis=0, keepdims=True), 1e-12)


def write_proxies(model_dir: Path, proxies: np.ndarray, labels: list[str], scale: float) -> dict:
    """Write ``proxies`` (``[dims, labels]``) to ``model_dir`` atomically; the card's entry."""
    proxies = unit_columns(proxies)
    if proxies.shape[1] != len(labels):
        raise ValueError(f"{proxies.shape[1]} proxies for {len(labels)} labels")
    model_dir = Path(model_dir)
    tmp = model_dir / f".{PROXIES_FILE}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, proxies)
    tmp.replace(model_dir / PROXIES_FILE)
    return {"file": PROXIES_FILE, "sha256": proxies_digest(proxies), "scale": float(scale),
            "labels": list(labels)}


class Labeler:
    """A tuned model's proxies: vectors -> each image's predicted label and confidence."""

    uses_norms = False  # cosines of the unit vectors themselves

    def __init__(self, proxies: np.ndarray, labels: list[str], scale: float):
        self.proxies = unit_columns(proxies)
        self.labels = list(labels)
        self.scale = float(scale)
        self.version = f"proxies/{proxies_digest(self.proxies)[:12]}/scale={self.scale:g}"

    @classmethod
    def from_model_dir(cls, model_dir: Path, entry: dict) -> Labeler:
        """The proxies a card's ``proxies`` entry names, their digest checked."""
        path = Path(model_dir) / entry["file"]
        try:
            proxies = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"cannot read the label proxies {path}: {exc}") from exc
        if proxies_digest(proxies) != entry["sha256"]:
            raise WeightsError(f"{path} is not the proxies its model card names (digest "
                               "differs): fine-tune again, or restore the directory")
        return cls(proxies, entry["labels"], entry["scale"])

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """``[N, dims]`` unit vectors -> ``[N, labels]`` softmax probabilities."""
        logits = self.scale * (np.asarray(vectors, np.float32) @ self.proxies)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, vectors: np.ndarray) -> list[tuple[str, float]]:
        probs = self.probabilities(vectors)
        best = probs.argmax(axis=1)
        return [(self.labels[i], float(probs[n, i])) for n, i in enumerate(best)]

    def tag(self, vectors: np.ndarray, norms: np.ndarray | None = None) -> list[dict]:
        """Each image's document fields (the tagger's interface: norms are not needed)."""
        return [{"predicted_label": label, "predicted_confidence": round(confidence, 4),
                 "model_tagger": self.version}
                for label, confidence in self.predict(vectors)]
