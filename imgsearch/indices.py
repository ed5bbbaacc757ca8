"""The index lifecycle: the mapping, concrete indices behind the alias, their identity, the swap.

Readers and writers only ever name the alias (``images``). Each concrete index is
``<alias>-<UTC timestamp>`` and records in its ``_meta`` the model version that produced its
vectors (and its region mode), so a vector from another model can never be mixed in by
accident. :class:`IndexManager` creates indices (shards and replicas from settings), checks
versions, and moves the alias in one atomic call that fails if another run moved it.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from elasticsearch import ApiError, Elasticsearch, NotFoundError

from .esclient import StoreError, translated
from .regions import REGION_MODES, RegionMode, mode_from_meta
from .settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

MAPPING_FILE = PROJECT_ROOT / "es_mappings" / "images.json"
VECTOR_FIELD = "vector"
REGIONS_FIELD = "regions"  # nested: {"vector", "box"} per region (imgsearch/regions.py)
# The fields of the model's tags (imgsearch/tags.py), which indices made before them lack.
TAG_FIELDS = ("model_tags", "model_synsets", "model_tagger", "predicted_label",
              "predicted_confidence")
# True on images hidden as a copy of another (imgsearch/resolution.py); searches leave them out.
HIDDEN_FIELD = "hidden"


class ModelVersionMismatch(StoreError):
    pass


class AliasMoved(StoreError):
    """The alias no longer pointed where a swap expected it to: another run moved it."""


def index_body(
    model_version: str,
    vector_index_type: str = "hnsw",
    m: int = 16,
    ef_construction: int = 100,
    rescore_oversample: float = 3.0,
    *,
    regions: RegionMode | None = None,
    region_index_type: str = "bbq_hnsw",
    shards: int = 1,
    replicas: int = 0,
) -> dict:
    """The create-index body: ``es_mappings/images.json`` with the vector options filled in,
    and the nested region field only when the index holds ``regions`` (its mode in ``_meta``).

    Quantised types get ``rescore_vector``: every kNN query then re-ranks ``oversample * k``
    candidates by their float vectors, which is what brings their recall back to float HNSW's.
    """
    raw = json.loads(MAPPING_FILE.read_text())
    body = {k: v for k, v in raw.items() if not k.startswith("_")}
    mappings = body["mappings"]
    mappings["_meta"] = {"model_version": model_version, "created_by": "imgsearch"}
    body["settings"].update(number_of_shards=shards, number_of_replicas=replicas)
    properties = mappings["properties"]
    properties[VECTOR_FIELD]["index_options"] = _vector_options(
        vector_index_type, m, ef_construction, rescore_oversample)
    if regions is None:
        del properties[REGIONS_FIELD]
    else:
        mappings["_meta"]["regions"] = {**regions.to_meta(), "index_type": region_index_type}
        properties[REGIONS_FIELD]["properties"][VECTOR_FIELD]["index_options"] = _vector_options(
            region_index_type, m, ef_construction, rescore_oversample)
    return body


def _vector_options(index_type: str, m: int, ef_construction: int,
                    rescore_oversample: float) -> dict[str, Any]:
    options: dict[str, Any] = {"type": index_type, "m": m, "ef_construction": ef_construction}
    if index_type != "hnsw":
        options["rescore_vector"] = {"oversample": rescore_oversample}
    return options


class IndexManager:
    """Creates, checks and swaps the concrete indices behind ``alias``."""

    def __init__(self, es: Elasticsearch, alias: str):
        self.es = es
        self.alias = alias

    @translated
    def current_index(self) -> str | None:
        """The concrete index the alias points at, or None when there is none yet."""
        try:
            found = self.es.indices.get_alias(name=self.alias)
        except NotFoundError:
            return None
        names = sorted(found.body)
        if len(names) != 1:
            raise StoreError(f"alias {self.alias!r} points at {len(names)} indices: {names}")
        return names[0]

    @translated
    def alias_target(self) -> tuple[str | None, str | None]:
        """``(concrete index, its model version)`` behind the alias; ``(None, None)`` when
        there is no index yet."""
        index = self.current_index()
        return index, (self.index_model_version(index) if index else None)

    @translated
    def index_model_version(self, index: str | None = None) -> str | None:
        return self.index_meta(index).get("model_version")

    @translated
    def index_regions(self, index: str | None = None) -> RegionMode | None:
        """The region mode ``index`` was built with; None when it holds no region vectors."""
        return mode_from_meta(self.index_meta(index).get("regions"))

    @translated
    def index_meta(self, index: str | None = None) -> dict:
        """The ``_meta`` of ``index`` (default: the alias's); empty when there is no index."""
        index = index or self.current_index()
        if index is None:
            return {}
        mapping = self.es.indices.get_mapping(index=index).body[index]["mappings"]
        return mapping.get("_meta", {})

    @translated
    def create_index(self, model_version: str, settings: Settings) -> str:
        """Create a new timestamped concrete index (the alias is not touched), with region
        vectors when ``settings.regions`` asks for them."""
        name = f"{self.alias}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
        body = index_body(
            model_version,
            settings.vector_index_type,
            settings.hnsw_m,
            settings.hnsw_ef_construction,
            settings.rescore_oversample,
            regions=REGION_MODES.get(settings.regions),
            region_index_type=settings.region_index_type,
            shards=settings.es_shards,
            replicas=settings.es_replicas,
        )
        self.es.indices.create(index=name, **body)
        log.info("created index %s (%s%s)", name, settings.vector_index_type,
                 f", regions {settings.regions} as {settings.region_index_type}"
                 if settings.regions != "off" else "")
        return name

    @translated
    def point_alias(self, index: str, previous: str | None | object = ...) -> str | None:
        """Move the alias to ``index`` from ``previous`` (default: wherever it points now), in
        one ``_aliases`` call; returns the index it left, if any.

        The call removes the alias from ``previous`` only if it is still there (``must_exist``)
        and makes ``index`` its one write index: if another run moved the alias meanwhile
        (or is giving a new alias its first index), Elasticsearch refuses the whole call,
        nothing changes, and this raises :class:`AliasMoved`. Of two runs racing to swap the
        same alias, exactly one wins.
        """
        if previous is ...:
            previous = self.current_index()
        if previous == index:
            return None
        actions: list[dict] = [
            {"add": {"index": index, "alias": self.alias, "is_write_index": True}}]
        if previous:
            actions.insert(0, {"remove": {"index": previous, "alias": self.alias,
                                          "must_exist": True}})
        try:
            self.es.indices.update_aliases(actions=actions)
        except ApiError as exc:
            if exc.status_code in (404, 500) or "write index" in str(exc):
                now = self._alias_indices()
                raise AliasMoved(
                    f"alias {self.alias!r} moved while this run built {index}: it points at "
                    f"{', '.join(now) or 'nothing'} now, not {previous or 'nothing'} (another "
                    f"run switched it first). {index} is complete but not searched; delete it, "
                    "or run again with --new-index to build on the current state."
                ) from exc
            raise
        return previous  # type: ignore[return-value]

    @translated
    def swap_in_progress(self) -> str | None:
        """The concrete index of this alias newer than the one it points at, if any: a
        ``--new-index`` build under way (its index exists from its first batch to the swap)
        or one that stopped before its swap. A write to the alias then would miss the new
        index, which is about to replace it (the newest such index is named)."""
        current = self.current_index()
        pattern = re.compile(rf"^{re.escape(self.alias)}-\d{{8}}-\d{{6}}-\d{{6}}$")
        try:
            names = self.es.indices.get_settings(
                index=f"{self.alias}-*", name="index.creation_date",
                expand_wildcards="open,closed").body
        except NotFoundError:
            return None
        # The names are timestamps (create_index), so they sort by age; another index whose
        # name starts with the alias (its keys, its decisions) is not one of its indices.
        newer = sorted(n for n in names if pattern.match(n) and (current is None or n > current))
        return newer[-1] if newer else None

    @translated
    def refresh_interval(self, index: str) -> float | None:
        """Seconds between the scheduled refreshes of ``index`` (after which a write is seen
        by searches); None when refreshes are off (``-1``) or set in a unit not handled."""
        body = self.es.indices.get_settings(index=index, name="index.refresh_interval",
                                            include_defaults=True).body[index]
        value = (body.get("settings") or body.get("defaults") or {}).get(
            "index", {}).get("refresh_interval", "1s")
        units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        match = re.match(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$", str(value))
        return float(match.group(1)) * units[match.group(2)] if match else None

    def _alias_indices(self) -> list[str]:
        try:
            return sorted(self.es.indices.get_alias(name=self.alias).body)
        except NotFoundError:
            return []

    @translated
    def ensure_index(self, model_version: str, settings: Settings) -> str:
        """The index behind the alias, created on first use; refuses another model's index."""
        if self.es.indices.exists(index=self.alias) and self.current_index() is None:
            raise StoreError(
                f"{self.alias!r} is a concrete index, not an alias; delete it or set ES_INDEX "
                "to another name"
            )
        index = self.current_index()
        if index is None:
            index = self.create_index(model_version, settings)
            self.point_alias(index)
            return index
        self.check_model_version(model_version, index)
        return index

    @translated
    def ensure_tag_fields(self, index: str) -> bool:
        """Add the tag fields to the mapping of ``index`` when it lacks them (an index made
        before tags existed: its ``dynamic: strict`` mapping would refuse documents that carry
        them); new fields are all a put-mapping may add, and all this needs. True if added."""
        mapping = self.es.indices.get_mapping(index=index).body[index]["mappings"]
        missing = [f for f in TAG_FIELDS if f not in mapping.get("properties", {})]
        if not missing:
            return False
        properties = json.loads(MAPPING_FILE.read_text())["mappings"]["properties"]
        self.es.indices.put_mapping(index=index,
                                    properties={f: properties[f] for f in missing})
        log.info("index %s: added the tag fields %s to its mapping", index, ", ".join(missing))
        return True

    @translated
    def ensure_hidden_field(self, index: str) -> bool:
        """Add ``hidden`` (images hidden as duplicates) to the mapping of ``index`` when it
        lacks it, as :meth:`ensure_tag_fields` adds the tags. True if added."""
        mapping = self.es.indices.get_mapping(index=index).body[index]["mappings"]
        if HIDDEN_FIELD in mapping.get("properties", {}):
            return False
        properties = json.loads(MAPPING_FILE.read_text())["mappings"]["properties"]
        self.es.indices.put_mapping(index=index,
                                    properties={HIDDEN_FIELD: properties[HIDDEN_FIELD]})
        log.info("index %s: added the field %s to its mapping", index, HIDDEN_FIELD)
        return True

    @translated
    def check_model_version(self, model_version: str, index: str | None = None) -> None:
        stored = self.index_model_version(index)
        if stored != model_version:
            raise ModelVersionMismatch(
                f"index {index or self.alias!r} holds vectors of model version {stored!r}, but "
                f"this run embeds with {model_version!r}. Mixing them would make scores "
                "meaningless. Rebuild behind the alias with `python -m indexer <dir> "
                "--new-index` (the old index stays searchable until the new one is complete)."
            )
