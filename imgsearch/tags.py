"""Tags from the model: the base network's own ImageNet classifier, on the forward pass that
makes the vector, with WordNet's hierarchy so that a broad word finds the specific classes.

The base weights hold ResNet50's 1,000-way head (``predictions``, Dense 2048 -> 1000 + softmax)
on top of the same pooled 2,048-d feature that is indexed. The forward pass returns the unit
vector and the pooled feature's norm (:func:`imgsearch.runtime.compile_forward`), so the head
costs one 2048x1000 product per image in NumPy and no second network pass.

Each image keeps its top :data:`MAX_TAGS` classes with probability >= :data:`MIN_PROBABILITY`
(chosen by measurement on the clothing set: ``python -m bench.tags``, README "Tags"). A
document gets, for those classes and every broader WordNet synset above them (save the few
roots in :data:`TOO_GENERAL`):

- ``model_tags`` (keyword): their names (a synset's first lemma), for filters and facets;
- ``model_synsets`` (sparse_vector): ``{wordnet id: summed probability}`` of the image's kept
  classes below each synset, so that a ``sparse_vector`` query whose ``query_vector`` is
  ``{id: 1}`` for each sense of a word scores each image by how likely it shows the word ("dog"
  sums the breeds), in one query, without a script or a nested query. (``rank_features``
  would do the same, but lives in the mapper-extras module, which the local node's
  distribution lacks; ``sparse_vector`` is in the server. Values are kept to ~9 bits, so a
  score is its probability to ~0.4 %.)
- ``model_tagger`` (keyword): :attr:`Tagger.version`, which documents were tagged by which
  tagger: a re-run re-tags documents without it (imgsearch/store.py).

Only the base model tags: a tuned model's backbone no longer makes the features that head was
trained on, and an int8 model's graph is a model of its own (README "Tags").
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

DATA_FILE = Path(__file__).resolve().parent / "data" / "imagenet_wordnet.json"
# Chosen on the clothing validation split by the F1 of tag precision and image recall
# (bench/tags.py, README "Tags"): top 2 at p >= 0.2 scored 0.538 there, top 5 at 0.1 0.474,
# top 1 at any threshold <= 0.1 0.525; above 0.2 at most 4 classes can pass, so the count
# hardly matters (top 3 or 5 at 0.2: 0.537). On the test split: precision 0.618, recall 0.653.
MAX_TAGS = 2
MIN_PROBABILITY = 0.2
# Synsets above nearly every class: as tags they say nothing and would fill every facet.
TOO_GENERAL = frozenset({
    "n00001740",  # entity
    "n00001930",  # physical entity
    "n00002684",  # object, physical object
    "n00003553",  # whole, unit
    "n00021939",  # artifact, artefact
    "n00004258",  # living thing, animate thing
    "n00004475",  # organism, being
    "n03575240",  # instrumentality, instrumentation
})


def normalise(word: str) -> str:
    """A lemma or a query word as looked up: lower case, ``_``/``-`` as spaces, one space."""
    return " ".join(re.sub(r"[_\-]+", " ", word.lower()).split())


@dataclass(frozen=True)
class Vocabulary:
    """The 1,000 classes in the classifier's order and the WordNet synsets above them."""

    classes: tuple[str, ...]  # WordNet ids, class order
    synsets: dict[str, dict]  # id -> {"lemmas": [...], "parents": [...]}
    digest: str

    @classmethod
    def load(cls, path: Path = DATA_FILE) -> Vocabulary:
        raw = path.read_bytes()
        data = json.loads(raw)
        return cls(tuple(data["classes"]), data["synsets"], hashlib.sha256(raw).hexdigest())

    def name(self, wnid: str) -> str:
        return self.synsets[wnid]["lemmas"][0]

    def class_name(self, index: int) -> str:
        return self.name(self.classes[index])

    @cached_property
    def ancestors(self) -> dict[str, frozenset[str]]:
        """Every synset of the table -> itself and every synset above it."""
        out: dict[str, frozenset[str]] = {}

        def up(wnid: str) -> frozenset[str]:
            if wnid not in out:
                found = {wnid}
                for parent in self.synsets[wnid]["parents"]:
                    found |= up(parent)
                out[wnid] = frozenset(found)
            return out[wnid]

        for wnid in self.synsets:
            up(wnid)
        return out

    @cached_property
    def class_concepts(self) -> list[tuple[str, ...]]:
        """Per class, in class order: itself and its broader synsets, less :data:`TOO_GENERAL`."""
        return [tuple(sorted(self.ancestors[c] - TOO_GENERAL)) for c in self.classes]

    @cached_property
    def _by_lemma(self) -> dict[str, tuple[str, ...]]:
        index: dict[str, list[str]] = {}
        for wnid, entry in self.synsets.items():
            for lemma in entry["lemmas"]:
                index.setdefault(normalise(lemma), []).append(wnid)
        return {k: tuple(sorted(set(v))) for k, v in index.items()}

    def senses(self, word: str) -> tuple[str, ...]:
        """The synsets that ``word`` names (any of their lemmas, so synonyms work), trying a
        plural's singular when the word itself is not a lemma ("shoes" -> "shoe")."""
        word = normalise(word)
        for form in _singulars(word):
            if form in self._by_lemma:
                return self._by_lemma[form]
        return ()

    def classes_for(self, word: str) -> list[int]:
        """Indices of the classes at or below any sense of ``word``."""
        senses = set(self.senses(word))
        return [i for i, c in enumerate(self.classes) if senses & self.ancestors[c]]

    def known_words(self) -> list[str]:
        return sorted(self._by_lemma)


@functools.cache
def _class_names(path: Path = DATA_FILE) -> frozenset[str]:
    vocabulary = Vocabulary.load(path)
    return frozenset(vocabulary.class_name(i) for i in range(len(vocabulary.classes)))


def classes_among(model_tags: list[str] | None) -> list[str]:
    """Of a document's ``model_tags`` (its classes and every broader word), the ImageNet
    classes themselves: what the model saw ("running shoe", not "footwear, covering,
    clothing")."""
    names = _class_names()
    return [tag for tag in model_tags or () if tag in names]


def _singulars(word: str) -> list[str]:
    forms = [word]
    if word.endswith("ies"):
        forms.append(word[:-3] + "y")
    if word.endswith("es"):
        forms.append(word[:-2])
    if word.endswith("s"):
        forms.append(word[:-1])
    return forms


class Tagger:
    """The ImageNet head with the vocabulary: pooled features -> each image's tag fields."""

    uses_norms = True  # the head takes pooled features: unit vectors times their norms

    def __init__(self, kernel: np.ndarray, bias: np.ndarray, vocabulary: Vocabulary | None = None,
                 *, max_tags: int = MAX_TAGS, min_probability: float = MIN_PROBABILITY):
        self.kernel = np.asarray(kernel, np.float32)
        self.bias = np.asarray(bias, np.float32)
        self.vocabulary = vocabulary or Vocabulary.load()
        if self.kernel.shape != (2048, len(self.vocabulary.classes)):
            raise ValueError(f"an ImageNet head is 2048x1000, not {self.kernel.shape}")
        self.max_tags, self.min_probability = max_tags, min_probability
        self.version = (f"imagenet1k-wordnet30/v={self.vocabulary.digest[:12]}"
                        f"/top{max_tags}/p>={min_probability:g}")

    def probabilities(self, vectors: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """``[N, 2048]`` unit vectors and their pooled features' norms -> ``[N, 1000]``
        softmax probabilities (vector x norm is the pooled feature to float32 rounding)."""
        logits = (vectors * norms[:, None]) @ self.kernel + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def top(self, probabilities: np.ndarray) -> list[list[tuple[int, float]]]:
        """Per image, its kept classes (index, probability), most likely first."""
        out = []
        for row in probabilities:
            best = np.argsort(-row)[: self.max_tags]
            out.append([(int(i), float(row[i])) for i in best if row[i] >= self.min_probability])
        return out

    def fields(self, kept: list[tuple[int, float]]) -> dict:
        """One image's document fields from its kept classes."""
        concepts: dict[str, float] = {}
        for index, p in kept:
            for wnid in self.vocabulary.class_concepts[index]:
                concepts[wnid] = concepts.get(wnid, 0.0) + p
        names = sorted({self.vocabulary.name(w) for w in concepts})
        return {
            "model_tags": names,
            "model_synsets": {w: round(min(p, 1.0), 4) for w, p in sorted(concepts.items())},
            "model_tagger": self.version,
        }

    def tag(self, vectors: np.ndarray, norms: np.ndarray) -> list[dict]:
        return [self.fields(k) for k in self.top(self.probabilities(vectors, norms))]
