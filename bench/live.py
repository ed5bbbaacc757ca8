"""A collection that lives: how soon a new photo is found, and what its duplicates' upkeep costs.

    python -m bench.live --images ../shared/datasets/clothing-small/images \
        [--singles 20] [--burst 1000] [--posts 50] [--vectors 100000] [--json FILE]

Against Elasticsearch at ES_URL (``make es-up``), on throwaway aliases of its own
(``bench-live-<random>-watch|indexer|collection``, with their keys and decisions indices; all
removed afterwards, ES_INDEX is never touched), with distinct real photos of ``--images``
(read-only: their bytes are written into a temporary folder):

1. **Watcher latency.** ``python -m indexer watch <folder>`` runs as a child process (default
   quiet period, IMGSEARCH_WATCH_QUIET). *Atomic* files are written to a folder beside the
   watched one and renamed in (they appear whole); *plain* copies are ``shutil.copyfile``'d
   straight in (they appear empty and grow: the quiet period waits until they stop changing).
   Single files, one at a time, each waited for (``--singles`` atomic, then as many plain);
   then a burst of ``--burst`` renamed in at once, then ``--burst`` others copied in at once.
   Timed from the moment a file appears to when it is *stored* (a real-time get by id finds
   it; single files only) and *searchable*: single files, a kNN search with its own stored
   vector (the product's ``store.knn``, k = 10) returns it; a burst, one search by id over the
   files not yet found (a search, so a refresh is needed as for kNN: the same visibility, one
   request for the lot instead of a kNN query a file every poll), and afterwards every file of
   it checked with a kNN search of its own vector. Everything is polled every ``--poll`` s.
2. **Watcher against indexer.** The atomic burst's images/s (its count over first appearance
   to last searchable, quiet period and refresh included) against ``python -m indexer <that
   folder>`` into a fresh alias, same environment (model, runtime): the indexer's own
   ``images_per_second`` (``--report``: model load excluded, its final refresh included).
3. **Duplicate upkeep at indexing.** Over the watcher's index, its pairs state dropped and
   found again as the writer finds it after each bulk (:meth:`PairFinder.visit`, a refresh and
   one ``_msearch`` of kNN at the floor a batch of IMGSEARCH_BATCH_SIZE, and the pairs'
   bulk): wall ms an image, and Elasticsearch's CPU (its process's, bench/stages.py's reading).
4. **GET /api/duplicates at ``--vectors`` vectors.** Random unit vectors in clusters of
   near-copies (a base and noisy copies of it, cosines 0.86-0.995) written straight into the
   collection alias's index with the indexer's model version, and their pairs (every pair of a
   cluster at the floor or closer, found exactly) stored by :meth:`PairState.record`, as the
   indexer stores them. Served by the product's gunicorn (webapp/gunicorn.conf.py); at each
   threshold, the first request after a change (the state's version renewed:
   :meth:`PairState.touch`, what any write or decision does), then ``--warm`` more on the same
   keep-alive connection (so the same worker), p50/p95.
5. **POST /api/images** through that server with a ``write`` key (created in the collection's
   own keys index), ``--posts`` distinct photos one after another into the same collection:
   the answer's latency, and from the request to a kNN search of its vector returning it.

The server runs with IMGSEARCH_RATE_LIMIT=0: this measures latency, not the limiter.
Prints a table (every figure with the CPU model and flags); ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.api_latency import multipart, percentile
from bench.child import run_child
from bench.machine import cpu_line
from bench.stages import process_cpu_s
from imgsearch.images import content_hash
from imgsearch.localnode import free_port
from imgsearch.pairs import PairFinder, PairState
from imgsearch.pipeline import now_iso, path_fields
from imgsearch.settings import PROJECT_ROOT, Settings
from imgsearch.store import ImageStore, connect

# How long one file, one burst or one server start may take before the bench gives up.
FILE_TIMEOUT = 120.0
BURST_TIMEOUT = 1800.0
START_TIMEOUT = 600.0
# Near-copy clusters of the synthetic collection: sizes and how often each is drawn. Four in
# five vectors stand alone; the rest are in clusters of 2 to 10 (about 46 % of the vectors, a
# collection with many copies), at most 10 so that every member keeps all its pairs (PairFinder
# keeps an image's 10 nearest).
CLUSTER_SIZES = (1, 2, 3, 5, 10)
CLUSTER_WEIGHTS = (0.80, 0.10, 0.05, 0.03, 0.02)
# Noise of a copy: cosine to its base 1/sqrt(1 + sigma^2), 0.995 down to 0.928; two copies of
# one base 0.86-0.99, across the thresholds measured.
SIGMA = (0.1, 0.4)
BULK_DOCS = 500  # synthetic documents a bulk request (~10 MB of JSON)
RECORD_IDS = 5000  # images marked visited (with their pairs) a PairState.record


def summary(values: list[float]) -> dict:
    """p50 / p95 (nearest rank: each a measured value), mean and count, in the unit given."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(percentile(values, 50), 4),
            "p95": round(percentile(values, 95), 4),
            "mean": round(statistics.fmean(values), 4), "max": round(max(values), 4)}


def distinct_photos(images: Path, count: int) -> list[tuple[Path, bytes, str]]:
    """The first ``count`` photos under ``images`` (sorted) with bytes no other of them has:
    ``(path, bytes, content hash)``. Copies are named by their hash (``name``): one name a
    photo, whatever folder it came from."""
    out, seen = [], set()
    for path in sorted(images.rglob("*.jpg")):
        data = path.read_bytes()
        digest = content_hash(data)
        if digest not in seen:
            seen.add(digest)
            out.append((path, data, digest))
            if len(out) == count:
                return out
    raise SystemExit(f"{images} holds {len(out)} distinct photos; this run needs {count}")


def name(photo: tuple[Path, bytes, str]) -> str:
    return f"{photo[2][:20]}.jpg"


def es_cpu_reader(es) -> Callable[[], float] | None:
    """Seconds of CPU the node has used, read from its process when it runs on this machine
    (bench/stages.py's reading), else from its own node stats; None if neither is there."""
    nodes = es.nodes.info(node_id="_local", metric="process").body["nodes"]
    pid = next(iter(nodes.values()))["process"]["id"]
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"elasticsearch" in cmdline.read_bytes():
        return lambda: process_cpu_s(pid)

    def from_stats() -> float:
        stats = es.nodes.stats(node_id="_local", metric="process").body["nodes"]
        return next(iter(stats.values()))["process"]["cpu"]["total_in_millis"] / 1000

    try:
        from_stats()
    except Exception:  # noqa: BLE001 - no CPU figure rather than no benchmark
        return None
    return from_stats


# -- child processes ---------------------------------------------------------------------------


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """A child's environment: this one, with the throwaway alias, its keys, decisions,
    thumbnails, uploads and watch state (never the user's)."""
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "ES_URL": settings.es_url,
            "ES_INDEX": settings.es_index, "IMGSEARCH_KEYS_INDEX": settings.api_keys_index,
            "IMGSEARCH_DECISIONS_INDEX": settings.image_decisions_index,
            "IMGSEARCH_THUMBNAIL_DIR": str(settings.thumbnail_dir),
            "IMGSEARCH_UPLOAD_DIR": str(settings.upload_dir),
            "IMGSEARCH_WATCH_STATE_DIR": str(settings.watch_state_dir), **extra}


class Child:
    """``python <args>`` in the background, its output in ``log`` (a file: read while it runs,
    never full as a pipe would be)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        with log.open("a") as out:
            self.proc = subprocess.Popen([sys.executable, *args], cwd=PROJECT_ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def wait_for_line(self, text: str, timeout: float) -> str:
        """The first line of its output holding ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.log.name}: exited {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.2)
        raise SystemExit(f"{self.log.name}: no {text!r} within {timeout:.0f} s:\n{self.tail()}")

    def batches(self) -> list[tuple[int, float]]:
        """``(paths, seconds)`` of each batch the watcher logged so far (``batch of N paths:
        ... (S s)``)."""
        return [(int(line.split("batch of ", 1)[1].split()[0]),
                 float(line.rsplit("(", 1)[1].rstrip("s)")))
                for line in self.log.read_text(errors="replace").splitlines()
                if "indexer.watch: batch of " in line]

    def stop(self) -> int:
        """SIGTERM (the product's clean stop), SIGKILL after 60 s; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode


# -- when a photo can be found -----------------------------------------------------------------


class Probe:
    """Polls the alias of ``store`` for documents, every ``poll`` seconds."""

    def __init__(self, store: ImageStore, poll: float):
        self.store = store
        self.poll = poll

    def single(self, doc_id: str, since: float) -> tuple[float, float]:
        """``(stored, searchable)`` seconds after ``since`` (a ``perf_counter``): a real-time
        get by id finds it; then a kNN search with its stored vector returns it."""
        stored = vector = None
        deadline = since + FILE_TIMEOUT
        while time.perf_counter() < deadline:
            if vector is None:
                source = self.store.get(doc_id, with_vector=True)
                if source is not None:
                    stored, vector = time.perf_counter() - since, source["vector"]
            if vector is not None and any(
                    hit["id"] == doc_id for hit in self.store.knn(vector, k=10)):
                return stored, time.perf_counter() - since
            time.sleep(self.poll)
        raise SystemExit(f"{doc_id} was not searchable within {FILE_TIMEOUT:.0f} s")

    def burst(self, appeared: dict[str, float], total: int, lock: threading.Lock
              ) -> dict[str, float]:
        """When each of ``total`` documents was found by a search by id (a ``perf_counter``),
        polling those that have appeared (``appeared`` fills while this runs)."""
        found: dict[str, float] = {}
        deadline = time.perf_counter() + BURST_TIMEOUT
        while len(found) < total:
            with lock:
                pending = [i for i in appeared if i not in found]
            if pending:
                hits = self.store.es.search(index=self.store.alias, query={"ids": {
                    "values": pending}}, size=len(pending), source=False).body["hits"]["hits"]
                now = time.perf_counter()
                found.update((h["_id"], now) for h in hits)
            if len(found) < total:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"{total - len(found)} of a burst of {total} not "
                                     f"searchable within {BURST_TIMEOUT:.0f} s")
                time.sleep(self.poll)
        return found

    def knn_finds(self, ids: list[str]) -> int:
        """How many of ``ids`` a kNN search with their own stored vector returns (k = 10)."""
        confirmed = 0
        for start in range(0, len(ids), 200):
            chunk = ids[start:start + 200]
            vectors = self.store.vectors(chunk)
            answers = self.store.knn_many([vectors[i] for i in chunk if i in vectors],
                                          index=self.store.alias, k=10)
            present = [i for i in chunk if i in vectors]
            confirmed += sum(doc_id in {other for other, _ in hits}
                             for doc_id, hits in zip(present, answers, strict=True))
        return confirmed


# -- 1 and 2: the watcher, and the indexer on the same photos ----------------------------------


def watcher_figures(args, settings: Settings, indexer_settings: Settings, photos,
                    work: Path) -> dict:
    """Parts 1 and 3 (the upkeep runs over the watcher's index once it stopped)."""
    watched, outside = work / "watched", work / "outside"
    warm, singles_a, singles_p, burst_a, burst_p = _share(photos, args.singles, args.burst)
    folders = {part: watched / part for part in ("warmup", "singles-atomic", "singles-plain",
                                                   "burst-atomic", "burst-plain")}
    for folder in (*folders.values(), outside):
        folder.mkdir(parents=True)
    # One photo before the start: the catch-up embeds it, so the model's first batch (graph
    # tracing) and the node's first writes are out of the figures.
    (folders["warmup"] / name(warm[0])).write_bytes(warm[0][1])
    store = ImageStore(connect(settings), settings.es_index)
    probe = Probe(store, args.poll)
    watcher = Child(["-m", "indexer", "watch", str(watched), "--no-progress"],
                    child_env(settings), work / "watch.log")
    out: dict = {}
    try:
        model = watcher.wait_for_line("indexer.watch: model ", START_TIMEOUT)
        out["model"] = model.split("indexer.watch: model ", 1)[1].strip()
        watcher.wait_for_line("caught up in", START_TIMEOUT)
        probe.single(warm[0][2], time.perf_counter())
        out["singles"] = {"atomic": _singles(probe, singles_a, folders["singles-atomic"],
                                             outside, atomic=True),
                          "plain": _singles(probe, singles_p, folders["singles-plain"], outside,
                                            atomic=False)}
        out["burst"] = {}
        told = 1 + 2 * len(singles_a)  # paths the watcher has taken so far
        for kind, photos_of, atomic in (("atomic", burst_a, True), ("plain", burst_p, False)):
            before = len(_told(watcher, told))
            out["burst"][kind] = _burst(probe, photos_of, folders[f"burst-{kind}"], outside,
                                        atomic=atomic)
            told += len(photos_of)
            batches = _told(watcher, told)[before:]
            out["burst"][kind]["batches"] = [paths for paths, _ in batches]
            # The watcher's own time for them (reading to rows written; no quiet period).
            out["burst"][kind]["batch_s"] = round(sum(s for _, s in batches), 1)
    finally:
        status = watcher.stop()
    if status != 0:
        raise SystemExit(f"the watcher exited {status} on SIGTERM:\n{watcher.tail()}")
    time.sleep(2)  # let the node finish what the last writes started (merges) before timing it
    out["upkeep"] = upkeep_figures(settings, store)
    out["indexer"] = indexer_figures(indexer_settings, folders["burst-atomic"], work)
    out["indexer"]["watcher_over_indexer"] = round(
        out["burst"]["atomic"]["images_per_s"] / out["indexer"]["images_per_s"], 3)
    return out


def _told(watcher: Child, paths: int) -> list[tuple[int, float]]:
    """The watcher's batches once they add up to ``paths``: a batch's log line follows its
    documents, so the last one found may not be logged yet."""
    deadline = time.monotonic() + 30
    while True:
        batches = watcher.batches()
        if sum(n for n, _ in batches) >= paths or time.monotonic() > deadline:
            return batches
        time.sleep(0.2)


def _share(photos, singles: int, burst: int):
    """The photos of each part of the watcher's run, none used twice."""
    cuts = np.cumsum([1, singles, singles, burst, burst])
    return [photos[a:b] for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]


def _appear(source: Path, data: bytes, target: Path, outside: Path, atomic: bool) -> float:
    """Make ``target`` appear (renamed in from ``outside``, or copied straight in from
    ``source``): the ``perf_counter`` at which it did."""
    if atomic:
        staged = outside / target.name
        staged.write_bytes(data)
        at = time.perf_counter()
        os.rename(staged, target)
        return at
    at = time.perf_counter()
    shutil.copyfile(source, target)
    return at


def _singles(probe: Probe, photos, folder: Path, outside: Path, atomic: bool) -> dict:
    stored, searchable = [], []
    for photo in photos:
        path, data, digest = photo
        since = _appear(path, data, folder / name(photo), outside, atomic)
        s, f = probe.single(digest, since)
        stored.append(s)
        searchable.append(f)
    return {"stored_s": summary(stored), "searchable_s": summary(searchable)}


def _burst(probe: Probe, photos, folder: Path, outside: Path, atomic: bool) -> dict:
    if atomic:  # written beside the folder first (not timed), then renamed in at once
        for photo in photos:
            (outside / name(photo)).write_bytes(photo[1])
    appeared: dict[str, float] = {}
    lock = threading.Lock()

    def arrive() -> None:
        for photo in photos:
            at = time.perf_counter()
            if atomic:
                os.rename(outside / name(photo), folder / name(photo))
            else:
                shutil.copyfile(photo[0], folder / name(photo))
            with lock:
                appeared[photo[2]] = at

    # The files arrive while the probe polls: a burst slower to copy than the quiet period
    # would otherwise be found late.
    arriving = threading.Thread(target=arrive)
    arriving.start()
    try:
        found = probe.burst(appeared, len(photos), lock)
    finally:
        arriving.join()
    per_file = [found[d] - appeared[d] for d in appeared]
    first, last = min(appeared.values()), max(found.values())
    ids = list(appeared)
    return {"files": len(photos), "arrival_s": round(max(appeared.values()) - first, 3),
            "all_searchable_s": round(last - first, 4),  # as summary() rounds
            "images_per_s": round(len(photos) / (last - first), 2),
            "per_file_s": summary(per_file), "knn_confirmed": probe.knn_finds(ids)}


def upkeep_figures(settings: Settings, store: ImageStore) -> dict:
    """Part 3: the watcher's images' pairs found again, batch by batch, as the writer does."""
    index = store.indices.current_index()
    rows = [row for page in store.vector_pages(index) for row in page]
    state = PairState(store.es, index)
    state.drop()
    finder = PairFinder(store, index, settings.duplicate_floor)
    floor = finder.floor  # the state made again (not timed: once an index)
    cpu = es_cpu_reader(store.es)
    cpu_before = cpu() if cpu else None
    wall = 0.0
    pairs = 0
    for start in range(0, len(rows), settings.batch_size):
        batch = rows[start:start + settings.batch_size]
        started = time.perf_counter()
        pairs += finder.visit([i for i, _ in batch], [v for _, v in batch])
        wall += time.perf_counter() - started
    es_ms = (cpu() - cpu_before) * 1000 / len(rows) if cpu else None
    return {"images": len(rows), "batch": settings.batch_size, "floor": floor, "pairs": pairs,
            "wall_ms_per_image": round(1000 * wall / len(rows), 2),
            "es_cpu_ms_per_image": round(es_ms, 2) if es_ms is not None else None}


def indexer_figures(settings: Settings, folder: Path, work: Path) -> dict:
    """Part 2: ``python -m indexer <folder>`` into a fresh alias of its own."""
    report = work / "indexer-report.json"
    run_child([sys.executable, "-m", "indexer", str(folder), "--no-progress", "--report",
               str(report)], cwd=PROJECT_ROOT, env=child_env(settings))
    done = json.loads(report.read_text())
    return {"images": done["indexed"], "seconds": done["seconds"],
            "images_per_s": done["images_per_second"]}


# -- 4 and 5: a synthetic collection behind the server; adds through the API -------------------


def synthetic_collection(store: ImageStore, index: str, version: str, count: int,
                         floor: float, seed: int = 0) -> dict:
    """``count`` unit vectors in near-copy clusters written into ``index``, and their pairs at
    ``floor`` stored as the indexer stores them. Returns what was written."""
    rng = np.random.default_rng(seed)
    dims = 2048
    state = PairState(store.es, index)
    state.ensure(floor)
    started = time.perf_counter()
    written = pairs_total = clusters = 0
    visited: list[str] = []
    pairs: list[tuple[str, str, float]] = []
    indexed_at = now_iso()
    root = Path("/synthetic")

    def batches():
        nonlocal written, pairs_total, clusters
        docs: list[dict] = []
        while written < count:
            size = min(int(rng.choice(CLUSTER_SIZES, p=CLUSTER_WEIGHTS)), count - written)
            base = rng.standard_normal(dims).astype(np.float32)
            members = [base / np.linalg.norm(base)]
            for _ in range(size - 1):
                sigma = rng.uniform(*SIGMA)
                copy = members[0] + sigma * rng.standard_normal(dims).astype(np.float32) \
                    / np.sqrt(dims)
                members.append(copy / np.linalg.norm(copy))
            ids = [hashlib.sha256(f"synthetic-{written + j}".encode()).hexdigest()
                   for j in range(size)]
            if size > 1:
                clusters += 1
                sims = np.stack(members) @ np.stack(members).T
                pairs.extend((ids[a], ids[b], float(sims[a, b]))
                             for a in range(size) for b in range(a + 1, size)
                             if sims[a, b] >= floor)
            for j, (doc_id, vector) in enumerate(zip(ids, members, strict=True)):
                rel = f"synthetic/{written + j:07d}.jpg"
                docs.append({"content_hash": doc_id, **path_fields(
                    root / rel, rel, root=root, sidecar={}), "model_version": version,
                    "indexed_at": indexed_at, "vector": vector})
            visited.extend(ids)
            written += size
            if len(docs) >= BULK_DOCS or written == count:
                yield docs
                docs = []

    def send(docs: list[dict]) -> None:
        result = store.bulk_index(docs, index)
        if result.failed:
            raise SystemExit(f"synthetic documents refused: {result.failed[:3]}")

    # Two requests in flight (one encoded while the node indexes the other), and at most two
    # more made and waiting: 100k vectors held at once would be 800 MB.
    with ThreadPoolExecutor(max_workers=2) as pool:
        flying: deque = deque()
        for docs in batches():
            flying.append(pool.submit(send, docs))
            if len(flying) >= 4:
                flying.popleft().result()
        for future in flying:
            future.result()
    store.refresh(index)
    wrote_vectors = time.perf_counter() - started
    for start in range(0, len(visited), RECORD_IDS):
        chunk = set(visited[start:start + RECORD_IDS])
        state.record(chunk, [p for p in pairs if p[0] in chunk])
        pairs_total += sum(1 for p in pairs if p[0] in chunk)
    return {"vectors": written, "clusters": clusters, "pairs": pairs_total,
            "write_s": round(wrote_vectors, 1),
            "pairs_s": round(time.perf_counter() - started - wrote_vectors, 1)}


class Server:
    """The product's gunicorn on the collection alias, on a free port of 127.0.0.1."""

    def __init__(self, settings: Settings, work: Path):
        self.port = free_port()
        # Latency, not the limiter: every request of the bench comes from one address.
        env = child_env(settings, WEBAPP_BIND=f"127.0.0.1:{self.port}", IMGSEARCH_RATE_LIMIT="0")
        self.child = Child(["-m", "gunicorn", "--config", "webapp/gunicorn.conf.py",
                            "webapp:create_app()"], env, work / "gunicorn.log")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if self.request("GET", "/healthz", fresh=True)[1] == 200:
                    break
            except (OSError, http.client.HTTPException):  # not listening yet, or restarting
                pass
            if self.child.proc.poll() is not None or time.monotonic() > deadline:
                self.child.stop()
                raise SystemExit(f"the server did not start:\n{self.child.tail()}")
            time.sleep(1)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, fresh: bool = False) -> tuple[float, int, dict]:
        """``(seconds, status, JSON body)``; on the kept connection unless ``fresh``."""
        conn = (http.client.HTTPConnection("127.0.0.1", self.port, timeout=300) if fresh
                else self.conn)
        for attempt in (1, 2):
            started = time.perf_counter()
            try:
                conn.request(method, path, body, headers or {})
                response = conn.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                # The kept connection closed by the server while idle (its keep-alive is
                # 5 s): once more on a new one; the failed attempt is not timed.
                if fresh or attempt == 2:
                    raise
                conn = self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                              timeout=300)
        elapsed = time.perf_counter() - started
        if fresh:
            conn.close()
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = {"raw": data[:200].decode(errors="replace")}
        return elapsed, response.status, parsed

    def stop(self) -> None:
        self.conn.close()
        self.child.stop()


def duplicates_figures(server: Server, state: PairState, auth: dict, thresholds, warm: int
                       ) -> list[dict]:
    """Part 4: at each threshold, the first request after a change, then ``warm`` more."""
    rows = []
    server.request("GET", f"/api/duplicates?threshold={thresholds[0]}", headers=auth)
    for threshold in thresholds:
        state.touch()  # a change: every worker's kept groups are made again
        first, status, body = server.request("GET", f"/api/duplicates?threshold={threshold}",
                                             headers=auth)
        if status != 200:
            raise SystemExit(f"GET /api/duplicates?threshold={threshold}: {status} {body}")
        again = [server.request("GET", f"/api/duplicates?threshold={threshold}",
                                headers=auth) for _ in range(warm)]
        rows.append({"threshold": threshold, "groups": body["total_groups"],
                     "images_in_groups": body["images_in_groups"], "pairs": body["pairs"],
                     "first_ms": round(1000 * first, 1),
                     "grouping_ms": round(1000 * body["seconds"], 1),
                     "warm_ms": summary([1000 * s for s, _, _ in again]),
                     # Answered from the worker's kept groups (the same worker: one connection).
                     "warm_cached": sum(bool(b.get("cached")) for _, _, b in again)})
    return rows


def cold_read_figures(state: PairState, decisions_index: str) -> dict:
    """What the first request after a change reads, timed here piece by piece as
    imgsearch/duplicates.py reads it: every pair at the floor (one scroll), then the people's
    decisions: every hidden/distinct one in one scroll (what it does when they are fewer than
    the images in pairs), and for comparison the lookups by id of every image and pair
    (1,000 a request: what it does otherwise)."""
    from imgsearch.decisions import Decisions

    floor = state.info().floor
    started = time.perf_counter()
    pairs = state.pairs_at_least(floor)
    scrolled = time.perf_counter() - started
    decisions = Decisions(state.es, decisions_index)
    ids = sorted({i for a, b, _ in pairs for i in (a, b)})
    started = time.perf_counter()
    for start in range(0, len(ids), 1000):
        decisions.hidden(ids[start:start + 1000])
    for start in range(0, len(pairs), 1000):
        decisions.distinct([(a, b) for a, b, _ in pairs[start:start + 1000]])
    by_id = time.perf_counter() - started
    started = time.perf_counter()
    decisions.count("hidden", "distinct")
    for kind in ("hidden", "distinct"):
        for _ in decisions.every(kind):
            pass
    return {"pairs": len(pairs), "images": len(ids), "scroll_ms": round(1000 * scrolled, 1),
            "decisions_ms": round(1000 * by_id, 1),
            "decisions_scan_ms": round(1000 * (time.perf_counter() - started), 1)}


def posts_figures(server: Server, probe: Probe, photos, auth: dict) -> dict:
    """Part 5: each photo added by ``POST /api/images``, then waited for until searchable."""
    latency, searchable, statuses = [], [], {}
    for path, data, digest in photos:
        body, ctype = multipart(data, path.name, {})
        since = time.perf_counter()
        # A connection of its own, as a client adding a photo opens one.
        seconds, status, answer = server.request(
            "POST", "/api/images", body, {**auth, "Content-Type": ctype}, fresh=True)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status != 201 or answer.get("id") != digest:
            raise SystemExit(f"POST /api/images of {path.name}: {status} {answer}")
        latency.append(seconds)
        searchable.append(probe.single(digest, since)[1])
    return {"statuses": statuses, "latency_s": summary(latency),
            "searchable_s": summary(searchable)}


def collection_figures(args, settings: Settings, version: str, photos, work: Path) -> dict:
    from imgsearch.keys import KeyStore

    store = ImageStore(connect(settings), settings.es_index)
    index = store.indices.ensure_index(version, settings)
    out = {"collection": synthetic_collection(store, index, version, args.vectors,
                                              settings.duplicate_floor)}
    key, _ = KeyStore(store.es, settings.api_keys_index).create("bench-live", "write")
    auth = {"Authorization": f"Bearer {key}"}
    server = Server(settings, work)
    try:
        thresholds = [t for t in args.thresholds if t >= settings.duplicate_floor]
        state = PairState(store.es, index)
        out["duplicates"] = duplicates_figures(server, state, auth, thresholds, args.warm)
        out["cold_read"] = cold_read_figures(state, settings.image_decisions_index)
        out["posts"] = posts_figures(server, Probe(store, args.poll), photos, auth)
    finally:
        server.stop()
    return out


# -- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True, help="photos (read, never written)")
    p.add_argument("--singles", type=int, default=20, help="single files of each kind (20)")
    p.add_argument("--burst", type=int, default=1000, help="files of each burst (1000)")
    p.add_argument("--posts", type=int, default=50, help="photos added by POST (50)")
    p.add_argument("--vectors", type=int, default=100_000,
                   help="synthetic vectors behind GET /api/duplicates (100000)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.90, 0.95, 0.98],
                   help="GET /api/duplicates thresholds (those under the floor are left out)")
    p.add_argument("--warm", type=int, default=20, help="warm requests a threshold (20)")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between polls (0.05)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    if min(args.singles, args.burst, args.posts, args.vectors, args.warm) < 1:
        p.error("every count must be at least 1")

    base = Settings.from_env()
    run = f"bench-live-{uuid.uuid4().hex[:8]}"
    photos = distinct_photos(args.images, 1 + 2 * args.singles + 2 * args.burst + args.posts)
    posted = photos[len(photos) - args.posts:]
    load = os.getloadavg()[0]
    aliases = [f"{run}-watch", f"{run}-indexer", f"{run}-collection"]
    es = connect(base)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
            work = Path(tmp)

            def local(alias: str) -> Settings:
                return base.with_(es_index=alias, keys_index=f"{alias}-keys",
                                  decisions_index=f"{alias}-decisions",
                                  thumbnail_dir=work / f"thumbnails-{alias}",
                                  upload_dir=work / f"uploads-{alias}",
                                  watch_state_dir=work / f"state-{alias}")

            figures = watcher_figures(args, local(aliases[0]), local(aliases[1]),
                                      photos[:len(photos) - args.posts], work)
            version = ImageStore(es, aliases[0]).indices.index_model_version()
            figures |= collection_figures(args, local(aliases[2]), version, posted, work)
    finally:
        for alias in aliases:
            es.indices.delete(index=f"{alias}-*", ignore_unavailable=True)
    figures = {"cpu": cpu_line(), "date": time.strftime("%Y-%m-%d"),
               "load_at_start": round(load, 2), "quiet_s": base.watch_quiet,
               "floor": base.duplicate_floor, **figures}
    print_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


def _ms(s: dict, key: str) -> str:
    return f"{1000 * s[key]:.0f} ms"


def print_table(f: dict) -> None:
    print(f"CPU: {f['cpu']}; model {f['model']}; quiet period {f['quiet_s']} s; "
          f"1-min load at start {f['load_at_start']}; {f['date']}")
    print("| measured | n | p50 | p95 | also |")
    print("|---|---|---|---|---|")
    for kind, how in (("atomic", "renamed in (atomic)"), ("plain", "copied in (plain)")):
        s = f["singles"][kind]
        print(f"| watcher, one file {how}: searchable (kNN) | {s['searchable_s']['n']} | "
              f"{_ms(s['searchable_s'], 'p50')} | {_ms(s['searchable_s'], 'p95')} | stored "
              f"(get by id) p50 {_ms(s['stored_s'], 'p50')}, p95 {_ms(s['stored_s'], 'p95')} |")
    for kind, how in (("atomic", "renamed in (atomic)"), ("plain", "copied in (plain)")):
        b = f["burst"][kind]
        print(f"| watcher, burst of {b['files']} {how}: each file searchable | {b['files']} | "
              f"{_ms(b['per_file_s'], 'p50')} | {_ms(b['per_file_s'], 'p95')} | all in "
              f"{b['all_searchable_s']:.1f} s ({b['images_per_s']:.1f} images/s; arrived in "
              f"{b['arrival_s']:.2f} s; kNN finds {b['knn_confirmed']}/{b['files']}; batches "
              f"{b['batches']}, {b['batch_s']:.1f} s by the watcher's log) |")
    i = f["indexer"]
    print(f"| `python -m indexer` on the atomic burst's photos | {i['images']} | | | "
          f"{i['images_per_s']:.1f} images/s; watcher / indexer = "
          f"{i['watcher_over_indexer']:.2f} |")
    u = f["upkeep"]
    cpu = (f"{u['es_cpu_ms_per_image']:.2f} core-ms of Elasticsearch"
           if u["es_cpu_ms_per_image"] is not None else "Elasticsearch's CPU not readable")
    print(f"| duplicate upkeep at indexing (PairFinder.visit, batches of {u['batch']}) | "
          f"{u['images']} | | | {u['wall_ms_per_image']:.2f} ms wall and {cpu} an image; "
          f"{u['pairs']} pairs at {u['floor']} |")
    c = f["collection"]
    for row in f["duplicates"]:
        w = row["warm_ms"]
        print(f"| GET /api/duplicates?threshold={row['threshold']}, {c['vectors']} vectors: "
              f"warm | {w['n']} | {w['p50']:.0f} ms | {w['p95']:.0f} ms | first after a "
              f"change {row['first_ms']:.0f} ms (grouping {row['grouping_ms']:.0f} ms); "
              f"{row['groups']} groups, {row['pairs']} pairs; {row['warm_cached']} of "
              f"{w['n']} from the kept groups |")
    r = f["cold_read"]
    print(f"| of a first request, timed alone: the {r['pairs']} pairs' scroll, then the "
          f"decisions (one scroll; by id for {r['images']} images and the pairs instead) | 1 "
          f"| | | {r['scroll_ms']:.0f} ms + {r['decisions_scan_ms']:.0f} ms (by id: "
          f"{r['decisions_ms']:.0f} ms) |")
    posts = f["posts"]
    print(f"| POST /api/images (201), into the {c['vectors']}-vector collection | "
          f"{posts['latency_s']['n']} | {_ms(posts['latency_s'], 'p50')} | "
          f"{_ms(posts['latency_s'], 'p95')} | |")
    print(f"| POST /api/images -> searchable (kNN) | {posts['searchable_s']['n']} | "
          f"{_ms(posts['searchable_s'], 'p50')} | {_ms(posts['searchable_s'], 'p95')} | |")
    print(f"synthetic collection: {c['vectors']} vectors ({c['clusters']} near-copy clusters, "
          f"{c['pairs']} pairs at the floor {f['floor']}) written in {c['write_s']} s, pairs "
          f"stored in {c['pairs_s']} s")


if __name__ == "__main__":
    main()
