"""Which model answers queries, and against which concrete index: following the alias.

A query vector is only comparable with the vectors of the index its own model built. When the
indexer rebuilds behind the alias with another model (``--new-index`` after fine-tuning), the
web app must switch model and index together, without a restart and without a single response
that mixes the two. :class:`ModelFollower` keeps that pair (a :class:`Route`):

- every query asks :meth:`ModelFollower.route` and searches the route's *concrete* index, never
  the alias, so a swap between two steps of one query cannot mix versions;
- at most every ``check_interval`` seconds it looks where the alias points (one small request);
  if the index there was built by the model it holds, the route moves at once; if by another,
  that model is loaded from the model store in a background thread while queries keep going
  to the old index with the old model; when it is ready, the route moves in one assignment.

A version that cannot be found (not in the store, a corrupt directory) is retried every
``retry_interval`` seconds; meanwhile the old pair keeps answering and ``/healthz`` says why.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .model import ImageModel
from .modelstore import ModelStore
from .settings import Settings
from .store import ImageStore, StoreError
from .weights import WeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A model and the concrete index its vectors live in (None: nothing indexed yet)."""

    model: ImageModel
    index: str | None

    @property
    def model_version(self) -> str:
        return self.model.version


class ModelFollower:
    def __init__(
        self,
        settings: Settings,
        store: ImageStore,
        model: ImageModel,
        *,
        loader: Callable[[str], ImageModel] | None = None,
        check_interval: float = 1.0,
        retry_interval: float = 30.0,
    ):
        self.settings = settings
        self.store = store
        self.check_interval = check_interval
        self.retry_interval = retry_interval
        self._loader = loader or self._load_from_store
        self._route = Route(model, None)
        self._models = {model.version: model}  # loaded models by version (see _switch)
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._loading: str | None = None
        self._failed: dict[str, tuple[float, str]] = {}  # version -> (when, why)
        self.alias_index: str | None = None
        self.alias_version: str | None = None
        self._check()

    # -- what queries use -----------------------------------------------------------------

    def route(self) -> Route:
        """The current (model, index) pair; checks the alias when it is due. Never raises:
        if Elasticsearch cannot say, the current pair stands (the query itself then fails
        with the store's error)."""
        if time.monotonic() - self._checked_at >= self.check_interval:
            self._check()
        return self._route

    @property
    def model(self) -> ImageModel:
        return self._route.model

    def status(self) -> dict:
        """For ``/healthz``: what is served, where the alias points, and any switch pending."""
        route = self._route
        failed = self._failed.get(self.alias_version or "")
        return {
            "serving": {"model_version": route.model_version, "index": route.index},
            "alias": {"index": self.alias_index, "model_version": self.alias_version},
            "loading": self._loading,
            "error": failed[1] if failed else None,
        }

    # -- following the alias --------------------------------------------------------------

    def _check(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is checking right now; its answer is as good
        try:
            self._checked_at = time.monotonic()
            try:
                index, version = self.store.indices.alias_target()
            except StoreError as exc:
                log.debug("cannot check the alias: %s", exc)
                return
            self.alias_index, self.alias_version = index, version
            if index is None or index == self._route.index:
                return
            model = self._models.get(version)
            if version is None:
                self._failed[""] = (time.monotonic(),
                                    f"the index {index} records no model version in its _meta")
            elif model is not None:
                self._switch(Route(model, index))
            elif self._loading is None and self._may_try(version):
                self._loading = version
                threading.Thread(
                    target=self._load, args=(version,), name="model-loader", daemon=True
                ).start()
        finally:
            self._lock.release()

    def _may_try(self, version: str) -> bool:
        failed = self._failed.get(version)
        return failed is None or time.monotonic() - failed[0] >= self.retry_interval

    def _load(self, version: str) -> None:
        try:
            log.info("the alias now points at an index of model %s: loading it", version)
            model = self._loader(version)
            if model.version != version:
                raise WeightsError(f"the model loaded for {version} says it is {model.version}")
            model.warm_up()
        except Exception as exc:  # noqa: BLE001 - whatever failed, the old route keeps serving
            log.error("cannot load model %s (still serving %s): %s", version,
                      self._route.model_version, exc)
            self._failed[version] = (time.monotonic(), str(exc))
            self._loading = None
            return
        self._failed.pop(version, None)
        self._models[version] = model  # before _loading clears, so no check loads it twice
        self._loading = None
        self._checked_at = float("-inf")
        self._check()  # moves the route, to wherever the alias points by now

    def _switch(self, route: Route) -> None:
        previous = self._route
        self._route = route  # one assignment: readers see the old pair or the new one
        # Keep the serving model and the base one (a swap back is then instant); drop the rest.
        self._models = {
            v: m for v, m in self._models.items()
            if v == route.model_version or m.is_base
        }
        if previous.index is not None:
            log.info("now serving %s from %s (was %s from %s)", route.model_version,
                     route.index, previous.model_version, previous.index)

    def _load_from_store(self, version: str):
        """The model of ``version``: from the model store, else the base model if it is that
        one (an index rebuilt with the base model after a tuned one)."""
        from .embedder import Embedder

        path = ModelStore(self.settings.model_store).find(version)
        if path is not None:
            return Embedder(self.settings, model_dir=path)
        # Not a tuned model of the store: the base model, unless it is loaded and is not it.
        if not any(m.is_base for m in self._models.values()):
            base = Embedder(self.settings.with_(model=""))
            if base.version == version:
                return base
        raise WeightsError(
            f"model {version} is not in the model store {self.settings.model_store} "
            "(IMGSEARCH_MODEL_STORE): copy its directory there"
        )


def initial_model(settings: Settings, store: ImageStore) -> ImageModel:
    """The model a server starts with: the one that built the index behind the alias, when
    the model store has it; otherwise the configured one (``IMGSEARCH_MODEL``), which the
    follower then replaces as soon as the alias's model can be loaded."""
    from .embedder import Embedder

    try:
        _, version = store.indices.alias_target()
    except StoreError as exc:
        log.warning("cannot ask Elasticsearch which model built the index (%s); starting "
                    "with the configured model", exc)
        version = None
    path = ModelStore(settings.model_store).find(version) if version else None
    return Embedder(settings, model_dir=path) if path else Embedder(settings)
