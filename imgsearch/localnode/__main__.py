"""The local Elasticsearch: one node on 127.0.0.1, or with --nodes N a cluster of N nodes on
loopback (behind make es-fetch, es-up, es-status and es-down).

CLI: python -m imgsearch.localnode {fetch,start,stop,status} [--node-dir DIR] [--port N]
[--nodes N] [--heap SIZE]
"""

# The CLI that drives both lives here, apart from imgsearch.localnode (one node) and
# imgsearch.localcluster (several nodes of it), so that neither module imports the other.

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..localcluster import LocalCluster
from ..settings import Settings
from . import ES_VERSION, LocalNode, LocalNodeError, fetch, find_java_home


def _cmd_fetch(args: argparse.Namespace) -> int:
    home = fetch()
    print(f"Elasticsearch {ES_VERSION} is ready in {home}")
    print(f"Java for it: {find_java_home()}")
    return 0


def _cluster(args: argparse.Namespace) -> LocalCluster:
    """The local cluster that ``--nodes N`` names: HTTP ports from ``--port`` up, transport
    ports 100 above them, node directories under ``--node-dir``."""
    ports = [args.port + i for i in range(args.nodes)]
    return LocalCluster(args.node_dir, args.nodes, ports=ports,
                        transport_ports=[p + 100 for p in ports], heap=args.heap,
                        backup_dir=args.backup_dir)


def _cmd_start(args: argparse.Namespace) -> int:
    if args.nodes > 1:
        cluster = _cluster(args)
        cluster.start(timeout=max(args.timeout, 240))
        print(f"Elasticsearch cluster of {args.nodes} nodes is green: "
              f"ES_URL={cluster.es_url} (data under {cluster.base_dir})")
        return 0
    node = LocalNode(args.node_dir, port=args.port, heap=args.heap, backup_dir=args.backup_dir)
    was_running = node.is_running()
    node.start(timeout=args.timeout)
    verb = "already running" if was_running else "started"
    print(f"Elasticsearch {verb} at {node.url} (data in {node.data_dir})")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    if args.nodes > 1:
        _cluster(args).stop()
        print(f"Elasticsearch cluster of {args.nodes} nodes stopped")
        return 0
    node = LocalNode(args.node_dir, port=args.port)
    if not node.is_running():
        print(f"Elasticsearch is not running (node dir {node.node_dir})")
        return 0
    node.stop()
    print("Elasticsearch stopped")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if args.nodes > 1:
        cluster = _cluster(args)
        health = cluster.health() or {}
        for node in cluster.nodes:
            pid = node.pid()
            print(f"{node.name}: {f'running (pid {pid})' if pid else 'not running'} at "
                  f"{node.url}, data in {node.data_dir}")
        print(f"health: {health.get('status', 'no answer')}, "
              f"{health.get('number_of_nodes', 0)} nodes in the cluster")
        return 0 if health.get("status") == "green" else 1
    node = LocalNode(args.node_dir, port=args.port)
    pid = node.pid()
    health = node.health() or {}
    version = node.version()
    print(f"node dir: {node.node_dir}")
    print(f"process:  {f'running (pid {pid})' if pid else 'not running'}")
    print(f"url:      {node.url}")
    print(f"health:   {health.get('status', 'no answer')}")
    print(f"version:  {version or '-'}")
    return 0 if pid and node.is_healthy() else 1


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()  # the flags' defaults
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m imgsearch.localnode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("fetch", "start", "stop", "status"))
    parser.add_argument("--node-dir", type=Path, default=None,
                        help="config, data and logs of the node, or of a cluster's nodes "
                        "(IMGSEARCH_ES_NODE_DIR)")
    parser.add_argument("--nodes", type=int, default=settings.es_nodes,
                        help="nodes of a local cluster on ports --port, --port + 1, ... "
                        "(IMGSEARCH_ES_NODES; default 1, a single node)")
    parser.add_argument("--port", type=int, default=settings.es_port,
                        help="HTTP port on 127.0.0.1 (IMGSEARCH_ES_PORT)")
    parser.add_argument("--heap", default=settings.es_heap,
                        help="JVM heap of each node, e.g. 1g (start only; IMGSEARCH_ES_HEAP; "
                        "default 2g for one node, 512m each for a cluster's)")
    parser.add_argument("--timeout", type=float, default=180,
                        help="seconds to wait for a healthy node (start only)")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    args.heap = args.heap or ("2g" if args.nodes == 1 else "512m")
    # A cluster's nodes live beside the single node's directory, in cluster-N.
    args.node_dir = args.node_dir or (settings.es_node_dir if args.nodes == 1 else
                                      settings.es_node_dir.with_name(f"cluster-{args.nodes}"))
    # The node's path.repo: the folder backups may go to (python -m indexer backup).
    args.backup_dir = settings.backup_dir
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    commands = {"fetch": _cmd_fetch, "start": _cmd_start, "stop": _cmd_stop,
                "status": _cmd_status}
    try:
        return commands[args.command](args)
    except LocalNodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
