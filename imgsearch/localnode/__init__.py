"""A real single-node Elasticsearch on 127.0.0.1 for development and tests, without Docker.

:func:`fetch` resolves the pinned distribution with Maven, checks its SHA-256 and unpacks it;
:class:`LocalNode` keeps one node's config, data, logs and pid file in a directory of its own.
Elasticsearch refuses to run as root, so as root the node runs as the system user
``imgsearch-es`` and everything it touches must be reachable by that user.

CLI (``imgsearch/localnode/__main__.py``): ``python -m imgsearch.localnode
{fetch,start,stop,status} [--node-dir DIR] [--port N] [--nodes N]``
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from ..digest import file_sha256
from ..settings import SYSTEM_DIR, Settings

log = logging.getLogger(__name__)

ES_VERSION = "9.2.4"
# The integ-test-zip: server, netty transport, x-pack core and security only, no bundled JDK.
ES_ARTIFACT = f"org.elasticsearch.distribution.integ-test-zip:elasticsearch:{ES_VERSION}:zip"
ES_ZIP_SHA256 = "af7b81fe31627c7523b2546351cd4e47310faa6a72c8db8dc8f7a191e871cfaf"
ES_USER = "imgsearch-es"
MIN_JAVA = 21
CLUSTER_NAME = "imgsearch"
_UNPACKED_MARKER = ".imgsearch-unpacked"
_HEAP_RE = re.compile(r"^\d+[kKmMgG]?$")


class LocalNodeError(RuntimeError):
    """The local node cannot be fetched, started or stopped; the message says why."""


def _is_root() -> bool:
    return os.geteuid() == 0


def es_home_dir(cache_dir: Path | None = None) -> Path:
    """Where :func:`fetch` unpacks the distribution (``cache_dir``: the settings' by default)."""
    parent = SYSTEM_DIR if _is_root() else (cache_dir or Settings.from_env().cache_dir)
    return parent / f"elasticsearch-{ES_VERSION}"


# --- fetching ------------------------------------------------------------------------------


def fetch(cache_dir: Path | None = None) -> Path:
    """Download (once) and unpack (once) the pinned distribution into ``cache_dir`` (the
    settings' by default); return its home directory."""
    cache_dir = cache_dir or Settings.from_env().cache_dir
    home = es_home_dir(cache_dir)
    if (home / _UNPACKED_MARKER).is_file():
        return home
    archive = _download(cache_dir / "m2")
    _verify_sha256(archive)
    _unpack(archive, home)
    return home


def _download(maven_repo: Path) -> Path:
    group, artifact, version, _ = ES_ARTIFACT.split(":")
    archive = maven_repo.joinpath(*group.split("."), artifact, version,
                                  f"{artifact}-{version}.zip")
    if archive.is_file():
        return archive
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalNodeError("Maven (mvn) is needed to download Elasticsearch; install it first")
    log.info("downloading Elasticsearch %s with Maven into %s", ES_VERSION, maven_repo)
    cmd = [mvn, "-q", "-B", "dependency:get", f"-Dartifact={ES_ARTIFACT}", "-Dtransitive=false",
           f"-Dmaven.repo.local={maven_repo}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not archive.is_file():
        output = (proc.stdout + proc.stderr).strip()[-3000:]
        raise LocalNodeError(f"mvn could not fetch {ES_ARTIFACT}:\n{output}")
    return archive


def _verify_sha256(archive: Path) -> None:
    actual = file_sha256(archive)
    if actual != ES_ZIP_SHA256:
        # Maven would keep serving the bad file from its repository, so remove it.
        archive.unlink()
        raise LocalNodeError(
            f"{archive.name} has SHA-256 {actual}, expected {ES_ZIP_SHA256}; "
            "the file was removed, run fetch again"
        )


def _make_dirs(path: Path) -> None:
    """mkdir -p with 0755 dirs whatever the umask, so that the ES user can traverse them."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
        p.chmod(0o755)


def _unpack(archive: Path, home: Path) -> None:
    log.info("unpacking %s into %s", archive.name, home)
    _make_dirs(home.parent)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=home.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                target = Path(zf.extract(info, staging))
                # zipfile drops Unix modes, and some in the zip are 0660/0750: make everything
                # world-readable, keeping only the executable bit from the archive.
                executable = info.is_dir() or (info.external_attr >> 16) & 0o111
                target.chmod(0o755 if executable else 0o644)
        top = staging / f"elasticsearch-{ES_VERSION}"
        (top / _UNPACKED_MARKER).write_text(ES_ZIP_SHA256 + "\n")
        top.chmod(0o755)
        try:
            top.rename(home)
        except OSError:
            # Another process unpacked it first; any complete copy will do.
            if not (home / _UNPACKED_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- Java ----------------------------------------------------------------------------------


def _java_major(java_home: Path) -> int | None:
    java = java_home / "bin" / "java"
    if not os.access(java, os.X_OK):
        return None
    try:
        proc = subprocess.run([str(java), "-version"], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        return None
    major = int(match.group(1))
    # Java 8 and older report themselves as "1.x".
    return int(match.group(2) or 0) if major == 1 else major


def find_java_home(settings: Settings | None = None) -> Path:
    """``ES_JAVA_HOME`` (the settings' ``es_java_home``) if set, else the newest JDK >= 21 in
    ``JAVA_HOME`` or ``/usr/lib/jvm``."""
    home = (settings or Settings.from_env()).es_java_home
    if home:
        major = _java_major(home)
        if major is None or major < MIN_JAVA:
            raise LocalNodeError(
                f"ES_JAVA_HOME={home} is not a Java {MIN_JAVA}+ home (found {major}); "
                f"Elasticsearch {ES_VERSION} needs Java {MIN_JAVA} or newer"
            )
        return home
    candidates = []
    # JAVA_HOME is the system's own variable, not a setting of ours: one more place to look.
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    candidates += sorted(Path("/usr/lib/jvm").glob("*"))
    found: dict[Path, int] = {}
    for home in candidates:
        home = home.resolve()
        if home not in found and (major := _java_major(home)) and major >= MIN_JAVA:
            found[home] = major
    if not found:
        raise LocalNodeError(
            f"Elasticsearch {ES_VERSION} needs Java {MIN_JAVA}+ and none was found in JAVA_HOME "
            "or /usr/lib/jvm; install one (e.g. Temurin 21 or 25) or set ES_JAVA_HOME"
        )
    # The newest, because Elasticsearch is tested first against the JDK it normally bundles.
    return max(found, key=found.__getitem__)


# --- the unprivileged user -----------------------------------------------------------------


def ensure_es_user() -> pwd.struct_passwd:
    """The system user that runs Elasticsearch when we are root, created on first use."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(ES_USER)
    log.info("creating system user %s", ES_USER)
    cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ES_USER]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    # 9: the user was created by a concurrent start.
    if proc.returncode not in (0, 9):
        raise LocalNodeError(f"could not create user {ES_USER}: {proc.stderr.strip()}")
    return pwd.getpwnam(ES_USER)


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Refuse a path that ``user`` cannot reach because a parent lacks o+x (e.g. /root)."""
    for parent in path.resolve().parents:
        if not parent.exists():
            continue  # created later by _make_dirs, with mode 0755
        st = parent.stat()
        if st.st_uid != user.pw_uid and not st.st_mode & stat.S_IXOTH:
            raise LocalNodeError(
                f"{path} is not reachable by user {user.pw_name}: {parent} has mode "
                f"{stat.filemode(st.st_mode)}; use a directory outside it (e.g. under /tmp or "
                f"{SYSTEM_DIR}) or chmod o+x {parent}"
            )


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


# --- small network helpers -----------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


# A proxy from the environment (http_proxy) must never see requests to our loopback node.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str, timeout: float = 5) -> dict | None:
    """``GET url`` on a loopback node (no proxy) as JSON, or None when it does not answer."""
    try:
        with _opener.open(url, timeout=timeout) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


# --- the node ------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # An exited daemon whose new parent does not reap it stays a zombie that kill(0) still sees.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _elasticsearch_yml(http_port: int, transport_port: int, data: Path, logs: Path, *,
                       name: str = "imgsearch-local", seed_hosts: list[str] | None = None,
                       master_nodes: list[str] | None = None,
                       backup_dir: Path | None = None) -> str:
    """The node's configuration: a single-node cluster, or with ``seed_hosts`` a member of a
    cluster on loopback (``master_nodes`` only for its first bootstrap); ``backup_dir`` is its
    ``path.repo``, where snapshots may be written (imgsearch/snapshots.py)."""
    if seed_hosts:
        discovery = f"discovery.seed_hosts: {json.dumps(seed_hosts)}\n"
        if master_nodes:
            discovery += f"cluster.initial_master_nodes: {json.dumps(master_nodes)}\n"
    else:
        discovery = "discovery.type: single-node\n"
    # A filesystem snapshot repository must lie under path.repo; the node refuses any other
    # location. Every node of a cluster needs the same folder (here: one machine, one folder).
    repo = f"path.repo: {json.dumps([str(backup_dir)])}\n" if backup_dir else ""
    return f"""\
# Written by imgsearch.localnode on every start; edits here are overwritten.
cluster.name: {CLUSTER_NAME}
node.name: {name}
path.data: {data}
path.logs: {logs}
{repo}
# Loopback only. That is also why security can be off: nothing outside this machine can
# connect, and nodes bound to loopback skip the production bootstrap checks.
network.host: 127.0.0.1
http.port: {http_port}
transport.port: {transport_port}
{discovery}xpack.security.enabled: false
# Accepted by x-pack core although this distribution has no ML; keeps ML off should the
# distribution ever be swapped for the full one. (ingest.geoip.downloader.enabled is not
# here: without the ingest-geoip module it is an unknown setting, which ES refuses to start on.)
xpack.ml.enabled: false

# Tests delete indices by wildcard.
action.destructive_requires_name: false
# A nearly full development disk must not turn indices read-only in the middle of a test.
cluster.routing.allocation.disk.threshold_enabled: false
"""


class LocalNode:
    """One Elasticsearch node on 127.0.0.1 whose files all live under ``node_dir``."""

    def __init__(self, node_dir: Path, port: int = 9200, heap: str = "2g",
                 es_home: Path | None = None, *, name: str = "imgsearch-local",
                 transport_port: int | None = None, seed_hosts: list[str] | None = None,
                 master_nodes: list[str] | None = None, backup_dir: Path | None = None):
        if not _HEAP_RE.match(heap):
            raise LocalNodeError(f"heap must look like 512m or 2g, not {heap!r}")
        self.node_dir = Path(node_dir).absolute()
        self.port = port
        self.heap = heap
        self.es_home = Path(es_home) if es_home else None
        self.url = f"http://127.0.0.1:{port}"
        self.name = name
        # A single node takes any free transport port; a cluster's members need known ones.
        self.transport_port = transport_port
        self.seed_hosts = seed_hosts
        self.master_nodes = master_nodes
        # path.repo: the folder backups may go to (IMGSEARCH_BACKUP_DIR); None, no backups.
        self.backup_dir = Path(backup_dir).absolute() if backup_dir else None

    def __repr__(self) -> str:
        return f"LocalNode({str(self.node_dir)!r}, port={self.port})"

    @property
    def config_dir(self) -> Path:
        return self.node_dir / "config"

    @property
    def data_dir(self) -> Path:
        return self.node_dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.node_dir / "logs"

    @property
    def pid_file(self) -> Path:
        return self.node_dir / "es.pid"

    @property
    def tmp_dir(self) -> Path:
        return self.node_dir / "tmp"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / f"{CLUSTER_NAME}.log"

    # --- state ---

    def pid(self) -> int | None:
        """The node's process id if the pid file names this node's live server process."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) and self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        # A pid file that outlived its server (a reboot, a SIGKILL) may name a reused pid; the
        # server inherits ES_PATH_CONF from the launcher, which identifies this very node.
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except PermissionError:
            return True  # another user's process: only the pid file vouches for it
        except OSError:
            return not Path("/proc/self").exists()  # gone, or no /proc to ask
        return f"ES_PATH_CONF={self.config_dir}".encode() in environ

    def is_running(self) -> bool:
        return self.pid() is not None

    def health(self) -> dict | None:
        """``GET /_cluster/health``, or None when the node does not answer."""
        return get_json(f"{self.url}/_cluster/health")

    def version(self) -> str | None:
        """The node's Elasticsearch version, or None when it does not answer."""
        # Not from ``GET /``: that handler lives in the rest-root module, which the
        # integ-test-zip lacks (it answers 405).
        nodes = get_json(f"{self.url}/_nodes/_local?filter_path=nodes.*.version") or {}
        versions = [n.get("version") for n in nodes.get("nodes", {}).values()]
        return versions[0] if versions else None

    def is_healthy(self) -> bool:
        health = self.health()
        return bool(health) and health.get("status") in ("green", "yellow")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the node's log and of the launcher's output, for error messages."""
        parts = []
        for path in (self.log_file, self.logs_dir / "launcher.log"):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no log output)"

    # --- start ---

    def start(self, timeout: float = 180, *, wait: bool = True, bootstrap: bool = False) -> None:
        """Start the node and wait until it is yellow or green (unless not ``wait``: a
        cluster's member cannot be healthy before the others are up); no-op if it already
        runs. ``bootstrap``: a cluster's first start, which names its initial masters."""
        if self.is_running():
            log.info("node in %s already runs (pid %s)", self.node_dir, self.pid())
            if wait:
                self._wait_healthy(time.monotonic() + timeout)
            return
        if port_open(self.port):
            raise LocalNodeError(
                f"port {self.port} is already in use by another program; stop it or pick "
                "another port (--port or IMGSEARCH_ES_PORT)"
            )
        es_home = self.es_home or fetch()
        java_home = find_java_home()
        user = ensure_es_user() if _is_root() else None
        if user:
            for path in (self.node_dir, es_home, java_home, self.backup_dir):
                if path:
                    _check_reachable(path, user)
        self._prepare(es_home, user, bootstrap)
        started = time.monotonic()
        self._launch(es_home, java_home, user, timeout)
        if wait:
            self._wait_healthy(started + timeout)
            log.info("node up at %s after %.1fs", self.url, time.monotonic() - started)

    def _prepare(self, es_home: Path, user: pwd.struct_passwd | None,
                 bootstrap: bool = False) -> None:
        _make_dirs(self.node_dir)
        if not self.config_dir.is_dir():
            # Copied once: the keystore that ES creates in it on first start must persist.
            shutil.copytree(es_home / "config", self.config_dir)
        for path in (self.data_dir, self.logs_dir):
            path.mkdir(exist_ok=True)
        # Scratch space of the launcher and the server, emptied because the node is down.
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir()
        (self.config_dir / "elasticsearch.yml").write_text(_elasticsearch_yml(
            self.port, self.transport_port or free_port(), self.data_dir, self.logs_dir,
            name=self.name, seed_hosts=self.seed_hosts,
            master_nodes=self.master_nodes if bootstrap else None, backup_dir=self.backup_dir))
        options = self.config_dir / "jvm.options.d"
        options.mkdir(exist_ok=True)
        (options / "heap.options").write_text(f"-Xms{self.heap}\n-Xmx{self.heap}\n")
        self.pid_file.unlink(missing_ok=True)
        if self.backup_dir:
            _make_dirs(self.backup_dir)
        if user:
            _chown_tree(self.node_dir, user)
            if self.backup_dir:
                # Only the folder itself: the node writes snapshots into it and into folders a
                # backup makes there (which take this owner, imgsearch/snapshots.py); what is
                # already inside keeps its owner.
                os.chown(self.backup_dir, user.pw_uid, user.pw_gid)

    def _launch(self, es_home: Path, java_home: Path, user: pwd.struct_passwd | None,
                timeout: float) -> None:
        cmd = [str(es_home / "bin" / "elasticsearch"), "-d", "-p", str(self.pid_file)]
        if user:
            cmd = ["runuser", "-u", user.pw_name, "--", *cmd]
        # The launcher JVM gets the node's tmp too: it leaves a final-flags* dir behind per start.
        cli_opts = f"{os.environ.get('CLI_JAVA_OPTS', '')} -Djava.io.tmpdir={self.tmp_dir}"
        env = dict(os.environ, ES_JAVA_HOME=str(java_home), ES_PATH_CONF=str(self.config_dir),
                   ES_TMPDIR=str(self.tmp_dir), CLI_JAVA_OPTS=cli_opts.strip())
        env.pop("JAVA_HOME", None)  # ES only reads ES_JAVA_HOME and warns about JAVA_HOME
        log.info("starting Elasticsearch %s on %s (heap %s, Java %s)", ES_VERSION, self.url,
                 self.heap, java_home)
        # Output goes to a file, not a pipe: the daemon could inherit a pipe and keep it open.
        # The working directory is the logs dir because jvm.options names gc.log and
        # hs_err files relative to it.
        with (self.logs_dir / "launcher.log").open("wb") as out:
            try:
                proc = subprocess.run(cmd, env=env, cwd=self.logs_dir, stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                      start_new_session=True)
            except subprocess.TimeoutExpired:
                self.stop()
                raise LocalNodeError(
                    f"Elasticsearch did not start within {timeout:.0f}s:\n{self.log_tail()}"
                ) from None
        if proc.returncode != 0:
            raise LocalNodeError(
                f"Elasticsearch failed to start (exit {proc.returncode}):\n{self.log_tail()}")

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.is_healthy():
                return
            if not self.is_running():
                raise LocalNodeError(f"Elasticsearch exited during start:\n{self.log_tail()}")
            time.sleep(0.5)
        raise LocalNodeError(
            f"{self.url} did not report yellow/green health in time (last: {self.health()}):\n"
            f"{self.log_tail()}"
        )

    # --- stop ---

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, wait up to ``timeout``, SIGKILL as last resort; no-op if not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        log.info("stopping Elasticsearch (pid %d)", pid)
        if not self._signal_and_wait(pid, signal.SIGTERM, timeout):
            log.warning("Elasticsearch pid %d ignored SIGTERM for %.0fs; killing it", pid, timeout)
            if not self._signal_and_wait(pid, signal.SIGKILL, 10):
                raise LocalNodeError(f"Elasticsearch pid {pid} survived SIGKILL")
        # ES removes its pid file on a clean exit, but not after SIGKILL.
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the node, as a crash or a lost machine would stop it (no clean shutdown)."""
        pid = self.pid()
        if pid is None:
            raise LocalNodeError(f"{self} is not running")
        self._signal_and_wait(pid, signal.SIGKILL, 30)
        self.pid_file.unlink(missing_ok=True)

    @staticmethod
    def _signal_and_wait(pid: int, sig: signal.Signals, timeout: float) -> bool:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under /tmp that the ES user can enter, removed afterwards.

    Not pytest's ``tmp_path``: /tmp/pytest-of-root is 0700, out of the ES user's reach.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def throwaway_node(heap: str = "1g", port: int | None = None) -> Iterator[LocalNode]:
    """A started node in a fresh directory under /tmp, stopped and removed afterwards."""
    with scratch_dir("imgsearch-es-") as node_dir:
        node = LocalNode(node_dir, port=port or free_port(), heap=heap)
        try:
            node.start()
            yield node
        finally:
            node.stop()
