"""Several Elasticsearch nodes on 127.0.0.1 forming one cluster, for tests and demos.

The integ-test-zip carries transport-netty4, so nodes of it on loopback find each other through
``discovery.seed_hosts`` (their fixed transport ports) and elect a master. Each node is a
:class:`~imgsearch.localnode.LocalNode` with its own ports, data directory and heap. A cluster
forms once: ``cluster.initial_master_nodes`` is written only while no node has any cluster state
yet (first bootstrap); afterwards nodes rejoin the cluster they belong to, and writing it again
could bootstrap a second cluster from a wiped node.

What a real cluster needs beyond loopback is in README.md ("A cluster").
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .localnode import LocalNode, LocalNodeError, get_json, port_open, scratch_dir

log = logging.getLogger(__name__)


class LocalCluster:
    """``size`` nodes under ``base_dir`` (``node-1``, ``node-2``, ...); node ``i`` serves HTTP on
    ``ports[i]`` and talks to the others on ``transport_ports[i]``."""

    def __init__(self, base_dir: Path, size: int = 3, *, ports: list[int] | None = None,
                 transport_ports: list[int] | None = None, heap: str = "512m",
                 backup_dir: Path | None = None):
        if size < 2:
            raise LocalNodeError("a cluster has at least 2 nodes; use LocalNode for one")
        self.base_dir = Path(base_dir).absolute()
        self.size = size
        ports = ports or [9200 + i for i in range(size)]
        transport_ports = transport_ports or [9300 + i for i in range(size)]
        if len(ports) != size or len(transport_ports) != size:
            raise LocalNodeError(f"{size} nodes need {size} HTTP and {size} transport ports")
        names = [f"imgsearch-{i + 1}" for i in range(size)]
        seeds = [f"127.0.0.1:{p}" for p in transport_ports]
        self.nodes = [
            LocalNode(self.base_dir / f"node-{i + 1}", port=ports[i], heap=heap,
                      name=names[i], transport_port=transport_ports[i], seed_hosts=seeds,
                      master_nodes=names, backup_dir=backup_dir)
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def es_url(self) -> str:
        """The value of ``ES_URL`` for this cluster: every node, comma-separated."""
        return ",".join(self.urls)

    def bootstrapped(self) -> bool:
        """Whether any node has cluster state, i.e. the cluster has formed before."""
        return any((n.data_dir / "_state").exists() for n in self.nodes)

    def health(self) -> dict | None:
        """Cluster health from the first node that answers."""
        for node in self.nodes:
            health = node.health()
            if health:
                return health
        return None

    def start(self, timeout: float = 240) -> None:
        """Start every node that is not running, at once (a master needs a quorum, so nodes
        started one by one would each wait for the next), then wait for green with all
        nodes in."""
        bootstrap = not self.bootstrapped()
        down = [n for n in self.nodes if not n.is_running()]
        for node in down:
            if port_open(node.port) or port_open(node.transport_port):
                raise LocalNodeError(
                    f"port {node.port} or {node.transport_port} is in use by another program")
        started = time.monotonic()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for future in [pool.submit(n.start, timeout, wait=False, bootstrap=bootstrap)
                           for n in down]:
                future.result()
        self.wait_for(status="green", nodes=self.size, timeout=timeout - (time.monotonic() -
                                                                           started))
        log.info("cluster of %d nodes green after %.1fs", self.size, time.monotonic() - started)

    def wait_for(self, *, status: str = "green", nodes: int | None = None,
                 timeout: float = 120) -> dict:
        """Wait until the cluster reports ``status`` (or better) with ``nodes`` nodes."""
        order = {"red": 0, "yellow": 1, "green": 2}
        deadline = time.monotonic() + max(timeout, 1)
        health = None
        while time.monotonic() < deadline:
            health = self.health()
            if (health and order.get(health.get("status"), -1) >= order[status]
                    and (nodes is None or health.get("number_of_nodes") == nodes)):
                return health
            time.sleep(0.5)
        raise LocalNodeError(
            f"the cluster did not reach {status} with {nodes} nodes in time (last: {health}):\n"
            + "\n".join(n.log_tail(15) for n in self.nodes))

    def stop(self, timeout: float = 60) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for future in [pool.submit(n.stop, timeout) for n in self.nodes]:
                future.result()

    def node_named(self, name: str) -> LocalNode:
        return next(n for n in self.nodes if n.name == name)

    def shard_copies(self, index: str) -> list[dict]:
        """``_cat/shards`` of ``index``: shard, prirep (p/r), state and node of every copy."""
        for url in self.urls:
            rows = get_json(f"{url}/_cat/shards/{index}?format=json&h=shard,prirep,state,node")
            if rows is not None:
                return rows
        raise LocalNodeError("no node answers")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (held open together while they are picked,
    so that none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@contextlib.contextmanager
def throwaway_cluster(size: int = 3, heap: str = "512m") -> Iterator[LocalCluster]:
    """A started cluster in a fresh directory under /tmp (reachable by the ES user), stopped
    and removed afterwards."""
    with scratch_dir("imgsearch-cluster-") as base:
        ports = free_ports(2 * size)
        cluster = LocalCluster(base, size, ports=ports[:size], transport_ports=ports[size:],
                               heap=heap)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
