"""The search service: what the web app and ``python -m indexer search`` ask of the product.

It owns the whole query path (decode -> embed -> kNN with filters) and its timings, so views
and commands never build Elasticsearch queries themselves. Every query runs on one
:class:`~imgsearch.serving.Route`: the model that embeds it and the concrete index that model
built, so a query vector never meets another model's vectors, even while the alias swaps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import BadInput
from .filters import Filters
from .indices import HIDDEN_FIELD
from .limits import Slots
from .model import ImageModel
from .regions import RegionMode
from .serving import ModelFollower, Route
from .settings import Settings
from .store import VECTOR_FIELD, ImageStore, StoreError
from .tags import Tagger
from .words import COMBINE_WEIGHT, WordParser, WordQuery

MAX_K = 100
MAX_NUM_CANDIDATES = 10_000
FACET_FIELDS = ("label", "folder", "format", "model_tags", "predicted_label")
# Marked images one query may carry, of each kind (a page of results is 12-96).
MAX_FEEDBACK = 100
# Rocchio's weights of the query vector, the mean liked vector and the mean unliked vector,
# the best of a 5 x 5 grid on the clothing validation split (textbook 1 / 0.75 / 0.25 came
# 11th of 25). On the test split, one round of true-label marks on the top 10 lifts the
# precision of the next 10 unseen results to 0.751, against 0.575 for ranks 11-20 unmarked
# and 0.703 with the textbook weights (docs/BENCHMARKS.md, "Relevance feedback").
FEEDBACK_WEIGHTS = (1.0, 1.0, 1.0)


# Images hidden as copies of another (imgsearch/resolution.py) are never results, nor counted
# among the filters' values: every search (a filter inside the kNN query, so that k visible
# images come back; a filter of the words' query) and the facets apply it. Elasticsearch
# caches a term filter's bitset per segment, and on an index without the field (made before
# duplicates could be hidden) it excludes nothing.
NOT_HIDDEN = {"bool": {"must_not": [{"term": {HIDDEN_FIELD: True}}]}}


class QueryError(BadInput):
    """Search parameters a person can fix (the message says how)."""


class UnknownId(QueryError):
    """A parameter names an image id that is not in the index searched."""

    code = "unknown_id"


class WordsUnavailable(QueryError):
    """Words on an index whose model does not tag (a tuned or int8 model)."""

    code = "words_unavailable"


class RegionsMissing(QueryError):
    """A search with part of a photo on an index built without region vectors."""

    code = "no_regions"


@dataclass(frozen=True)
class Feedback:
    """Results marked as good (``like``) and bad (``unlike``) for the next search: its vector
    moves towards the first and away from the second (:func:`rocchio`), using their stored
    vectors, and the unliked images are left out of its results."""

    like: tuple[str, ...] = ()
    unlike: tuple[str, ...] = ()

    def __post_init__(self):
        """At most MAX_FEEDBACK of each kind, and no image both liked and unliked."""
        for name, ids in (("like", self.like), ("unlike", self.unlike)):
            if len(ids) > MAX_FEEDBACK:
                raise QueryError(f"at most {MAX_FEEDBACK} {name} ids, not {len(ids)}")
        both = set(self.like) & set(self.unlike)
        if both:
            raise QueryError(f"{sorted(both)[0]} is both liked and unliked; mark it one way")

    def __bool__(self) -> bool:
        return bool(self.like or self.unlike)

    def to_json(self, weights: tuple[float, float, float]) -> dict:
        alpha, beta, gamma = weights
        return {"like": list(self.like), "unlike": list(self.unlike),
                "weights": {"query": alpha, "like": beta, "unlike": gamma}}


def rocchio(query, liked, unliked, weights=FEEDBACK_WEIGHTS) -> np.ndarray:
    """``alpha q + beta mean(liked) - gamma mean(unliked)``, unit length (Rocchio, 1971)."""
    alpha, beta, gamma = weights
    moved = alpha * np.asarray(query, np.float64)
    if len(liked):
        moved += beta * np.mean(np.asarray(liked, np.float64), axis=0)
    if len(unliked):
        moved -= gamma * np.mean(np.asarray(unliked, np.float64), axis=0)
    norm = np.linalg.norm(moved)
    if norm < 1e-9:
        raise QueryError("the marks cancel the query out: like fewer or unlike fewer images")
    return (moved / norm).astype(np.float32)


@dataclass
class Hit:
    id: str
    # Elasticsearch's kNN score, (1 + cosine) / 2 for unit vectors; for words, the words'
    # score (imgsearch/words.py); for an image with words, cosine + the weighted words' score.
    score: float
    cosine: float | None  # None when no image was compared (words alone)
    source: dict

    # With a box query: the indexed region that matched, {"box": [x0, y0, x1, y1]} as
    # fractions of this image; the score and cosine are that region's.
    region: dict | None = None

    def to_json(self) -> dict:
        cosine = round(self.cosine, 6) if self.cosine is not None else None
        return {"id": self.id, "score": round(self.score, 6), "cosine": cosine,
                **({"region": self.region} if self.region else {}), **self.source}


@dataclass
class SearchResult:
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)
    query: dict = field(default_factory=dict)
    model_version: str | None = None  # of the query vector and of the index searched
    index: str | None = None  # the concrete index searched


def check_limits(k: int, num_candidates: int | None, offset: int = 0) -> tuple[int, int]:
    """Validated ``(k, num_candidates)``; ``num_candidates`` defaults to max(100, 10 k)."""
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}")
    if not 0 <= offset <= 1000:
        raise QueryError("offset must be between 0 and 1000")
    if num_candidates is None:
        num_candidates = min(MAX_NUM_CANDIDATES, max(100, 10 * (k + offset)))
    if not k + offset <= num_candidates <= MAX_NUM_CANDIDATES:
        raise QueryError(f"num_candidates must be between k + offset and {MAX_NUM_CANDIDATES}")
    return k, num_candidates


class SearchService:
    """Search by image bytes or by an indexed image's stored vector.

    ``model`` is the model to start with; ``follow_alias`` (the web app) switches to the model
    of whatever index the alias points at, loading it from the model store, with
    ``check_interval`` seconds between looks at the alias.
    """

    feedback_weights = FEEDBACK_WEIGHTS  # Rocchio's (query, like, unlike); bench/feedback.py

    def __init__(self, settings: Settings, store: ImageStore, model: ImageModel, *,
                 check_interval: float = 1.0):
        self.settings = settings
        self.store = store
        self.models = ModelFollower(settings, store, model, check_interval=check_interval)
        # Decodes at once in this process (queries, explanations, heat maps): Busy (503) for a
        # request that waits longer than decode_wait for one.
        self.decodes = Slots("image decodes", settings.decode_slots, settings.decode_wait)
        self._region_modes: dict[str, RegionMode | None] = {}
        self._parser: WordParser | None = None  # made on the first search by words

    @property
    def model(self) -> ImageModel:
        """The model that answers queries now."""
        return self.models.model

    def route(self) -> Route:
        """The (model, concrete index) pair for one query."""
        route = self.models.route()
        if route.index is None and self.models.alias_index is not None:
            status = self.models.status()
            raise StoreError(
                f"the index {status['alias']['index']} holds vectors of model "
                f"{status['alias']['model_version']}, and that model is not loaded yet"
                + (f" ({status['error']})" if status["error"] else "; try again in a moment")
            )
        return route

    def search_image(
        self,
        data: bytes,
        *,
        k: int = 10,
        num_candidates: int | None = None,
        filters: Filters | None = None,
        offset: int = 0,
        box: tuple[float, float, float, float] | None = None,
        feedback: Feedback | None = None,
        words: str | None = None,
    ) -> SearchResult:
        """Nearest indexed images to an uploaded image (raises ``ImageError`` if it is bad);
        with ``box`` (fractions ``x0, y0, x1, y1``), to that part of it, by region vectors;
        with ``feedback``, to the query moved by the marked results; with ``words``, the
        visual neighbours re-ranked by how well their tags match the words."""
        k, num_candidates = check_limits(k, num_candidates, offset)
        feedback = feedback or Feedback()
        if box is not None and feedback:
            raise QueryError("like and unlike refine searches with the whole photo; they cannot "
                             "be combined with a box")
        route = self.route()
        wanted = self._words(route, words) if words else None
        model = route.model
        query: dict = {"k": k, "num_candidates": num_candidates, "offset": offset}
        mode = self._box_mode(route) if box is not None else None
        t0 = time.perf_counter()
        cap = self.settings.query_pixel_cap
        if mode is None:
            with self.decodes.hold():
                image = model.decode(data, max_pixels=cap)
            query.update(width=image.width, height=image.height, format=image.format)
            t1 = time.perf_counter()
            vector = model.embed(image.pixels)[0]
        else:
            with self.decodes.hold():
                pixels = model.box_input(data, box, mode, max_pixels=cap)
            query.update(box=list(box), regions=mode.name)
            t1 = time.perf_counter()
            vector = model.embed_region(pixels)
        t2 = time.perf_counter()
        vector = self._refine(route, vector, feedback, query)
        if wanted is None:
            hits = self._knn(route, vector, k, num_candidates, filters, offset=offset,
                             regions=mode is not None, exclude_ids=feedback.unlike)
        else:
            query["words"] = wanted.to_json()
            hits = self._knn(route, vector, num_candidates, num_candidates, filters,
                             regions=mode is not None, exclude_ids=feedback.unlike,
                             with_tags=True)
            hits = rerank(hits, wanted)[offset : offset + k] if wanted else []
        t3 = time.perf_counter()
        return SearchResult(
            hits, milliseconds(decode=t1 - t0, embed=t2 - t1, search=t3 - t2, total=t3 - t0),
            query, route.model_version, route.index,
        )

    def search_words(self, words: str, *, k: int = 10, filters: Filters | None = None,
                     offset: int = 0) -> SearchResult:
        """Images ranked by how strongly their tags match ``words`` (imgsearch/words.py): no
        image decoded or embedded, one query. Words that name nothing are answered with no
        hits and the nearest known words, not an error."""
        k, _ = check_limits(k, None, offset)
        route = self.route()
        wanted = self._words(route, words)
        t0 = time.perf_counter()
        query: dict = {"k": k, "offset": offset, "words": wanted.to_json()}
        raw = self.store.scored(wanted.es_query(), k=k, offset=offset, index=route.index,
                                filters=[*(filters.to_es() if filters else []), NOT_HIDDEN]
                                ) if wanted else []
        hits = [Hit(h["id"], h["score"], None, h["source"]) for h in raw]
        t1 = time.perf_counter()
        return SearchResult(hits, milliseconds(search=t1 - t0, total=t1 - t0), query,
                            route.model_version, route.index)

    def _words(self, route, words: str) -> WordQuery:
        """``words`` parsed, on an index whose model tags; WordsUnavailable otherwise."""
        if not isinstance(getattr(route.model, "tagger", None), Tagger):
            raise WordsUnavailable(
                f"the index {route.index} was built by a model without tags "
                f"({route.model_version}: only the base model tags its images), so it cannot "
                "be searched by words. Build an index with the base model, or search with a "
                "photo.")
        if self._parser is None:
            self._parser = WordParser(route.model.tagger.vocabulary)
        return self._parser.parse(words)

    def _box_mode(self, route) -> RegionMode:
        """The region mode a box query on ``route`` is described in; RegionsMissing when its
        index has no region vectors."""
        mode = self.region_mode(route.index)
        if mode is None:
            raise RegionsMissing(
                f"the index {route.index} was built without region vectors, so it cannot be "
                "searched with part of a photo. Build one that has them with `python -m indexer "
                "<dir> --new-index --regions standard` (or `make index IMAGES=<dir> "
                "REGIONS=standard`); the current index stays searchable meanwhile."
            )
        return mode

    def serving_regions(self) -> RegionMode | None:
        """The region mode of the index that queries go to now; None when it has no region
        vectors (or there is no index yet): only whole photos can be searched then."""
        index = self.models.route().index
        return self.region_mode(index) if index else None

    def region_mode(self, index: str | None):
        """The region mode ``index`` was built with (None: no regions), looked up once per
        index: an index's ``_meta`` never changes."""
        if index not in self._region_modes:
            self._region_modes[index] = self.store.indices.index_regions(index) if index else None
        return self._region_modes[index]

    def similar(
        self,
        doc_id: str,
        *,
        k: int = 10,
        num_candidates: int | None = None,
        filters: Filters | None = None,
        offset: int = 0,
        feedback: Feedback | None = None,
    ) -> SearchResult | None:
        """"More like this": neighbours of an indexed image by its stored vector (no
        re-embedding), moved by ``feedback`` if given; None when the id is unknown. The image
        itself is left out."""
        k, num_candidates = check_limits(k, num_candidates, offset)
        feedback = feedback or Feedback()
        route = self.route()
        t0 = time.perf_counter()
        source = self.store.get(doc_id, with_vector=True, index=route.index)
        if source is None:
            return None
        query = {"k": k, "num_candidates": num_candidates, "offset": offset, "like": doc_id}
        vector = self._refine(route, source[VECTOR_FIELD], feedback, query)
        hits = self._knn(
            route, vector, k, num_candidates, filters, offset=offset,
            exclude_ids=(doc_id, *feedback.unlike),
        )
        t1 = time.perf_counter()
        return SearchResult(
            hits, milliseconds(search=t1 - t0, total=t1 - t0), query, route.model_version,
            route.index,
        )

    def _refine(self, route, vector, feedback: Feedback, query: dict):
        """``vector`` moved by the marked images' stored vectors (one read for all of them),
        the marks and weights noted in ``query``; ``vector`` itself without marks."""
        if not feedback:
            return vector
        query["feedback"] = feedback.to_json(self.feedback_weights)
        stored = self.store.vectors((*feedback.like, *feedback.unlike), index=route.index)
        missing = [i for i in (*feedback.like, *feedback.unlike) if i not in stored]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                              else "")
            raise UnknownId(f"like/unlike name images that are not indexed: {shown}")
        return rocchio(vector, [stored[i] for i in feedback.like],
                       [stored[i] for i in feedback.unlike], self.feedback_weights)

    def get(self, doc_id: str) -> dict | None:
        return self.store.get(doc_id)

    def facets(self, size: int = 50) -> dict:
        """Counts per label, folder and format, and the value ranges, over what a search can
        return: the whole index less the images hidden as copies."""
        return self.store.facets(FACET_FIELDS, size=size, filters=[NOT_HIDDEN])

    def health(self) -> dict:
        """What ``/healthz`` reports. ``ok`` needs Elasticsearch reachable, an index behind the
        alias and a loaded model whose version is the one the index was built with."""
        es = self.store.health()
        follow = self.models.status()
        serving = follow["serving"]
        version = serving["model_version"]
        model = self.models.model
        problems = []
        if version is None:
            problems.append("the model is not loaded")
        if not es["reachable"]:
            problems.append(
                f"Elasticsearch at {self.settings.es_url} is not reachable ({es['error']})"
            )
        elif es["error"]:
            problems.append(f"Elasticsearch error: {es['error']}")
        elif es["status"] == "red":
            problems.append("the Elasticsearch cluster is red (some data is unavailable)")
        elif es["index"] is None:
            problems.append(
                f"no index behind the alias {self.store.alias!r}: index a folder with "
                "`make index IMAGES=<dir>`"
            )
        elif serving["index"] is None:
            problems.append(
                f"the index holds vectors of model {es['model_version']!r}, and that model is "
                + ("loading" if follow["loading"] else f"not available ({follow['error']})")
            )
        return {
            "ok": not problems,
            "reason": "; ".join(problems) or None,
            "elasticsearch": {
                "url": self.settings.es_url, "reachable": es["reachable"],
                "status": es["status"],
            },
            "index": {
                "alias": self.store.alias, "present": es["index"] is not None,
                "name": es["index"], "documents": es["documents"],
                "model_version": es["model_version"],
            },
            # The precision is the one the runtime computes in on this CPU (imgsearch/runtime.py).
            "model": {"loaded": version is not None, "version": version,
                      "precision": model.precision, "runtime": model.runtime},
            # What queries use now, and any switch to the alias's model still under way.
            "serving": serving,
            "switching": {"to": follow["alias"]["model_version"], "loading": follow["loading"],
                          "error": follow["error"]}
            if follow["alias"]["model_version"] not in (None, version) else None,
        }

    def _knn(self, route, vector, k, num_candidates, filters, *, offset=0, exclude_ids=(),
             regions=False, with_tags=False):
        raw = self.store.knn(
            vector,
            index=route.index,
            k=k,
            num_candidates=num_candidates,
            filters=[*(filters.to_es() if filters else []), NOT_HIDDEN],
            exclude_ids=exclude_ids,
            offset=offset,
            regions=regions,
            with_tags=with_tags,
        )
        return [Hit(h["id"], h["score"], h["cosine"], h["source"], h.get("region")) for h in raw]


def rerank(hits: list[Hit], words: WordQuery,
           weight: float | None = None) -> list[Hit]:
    """Visual neighbours re-ordered by cosine + ``weight`` x their words' score (the score
    each hit then carries); the weight measured by bench/words.py."""
    weight = COMBINE_WEIGHT if weight is None else weight
    for hit in hits:
        # The sparse vector was fetched for this only: answers show model_tags instead.
        hit.score = hit.cosine + weight * words.score(hit.source.pop("model_synsets", None))
    return sorted(hits, key=lambda h: -h.score)


def milliseconds(**seconds: float) -> dict[str, float]:
    """Durations in seconds, as the answers report them: milliseconds to 0.01."""
    return {name: round(s * 1000.0, 2) for name, s in seconds.items()}
