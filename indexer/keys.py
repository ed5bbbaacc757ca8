"""``python -m indexer keys create --name NAME --scope read|write|admin`` prints a new API key
(once: only its hash is stored); ``keys list`` shows every key's name, scope, creation, last
use and revocation (never a key); ``keys revoke NAME`` revokes the active key of that name, on
every web app worker within a second (imgsearch/keys.py).

Exit status: 0 done; 1 Elasticsearch unreachable, or a name already taken; 2 bad arguments
(an unknown scope, a bad name, no such key to revoke).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from imgsearch.keys import SCOPES, KeyStore
from imgsearch.settings import Settings

from . import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m indexer keys",
        description="Create, list and revoke the web app's API keys.",
        epilog="Exit status: 0 done, 1 Elasticsearch unreachable or the name is taken, "
        "2 bad arguments.",
    )
    verbs = p.add_subparsers(dest="action", required=True)
    create = verbs.add_parser("create", help="make a key and print it (shown this once only)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--scope", required=True, choices=SCOPES,
                        help="read: search and view; write: also change the collection; "
                        "admin: also manage keys and read /metrics")
    listing = verbs.add_parser("list", help="every key's name, scope and dates (never a key)")
    listing.add_argument("--json", action="store_true", help="one JSON object a key")
    revoke = verbs.add_parser("revoke", help="revoke the active key of a name")
    revoke.add_argument("name")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has said what was wrong
        return cli.EXIT_USAGE if exc.code else cli.EXIT_OK
    cli.set_up_logging(logging.WARNING)
    return cli.run(lambda settings: keys_command(args, settings))


def keys_command(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.esclient import connect

    keys = KeyStore(connect(settings), settings.api_keys_index)
    if args.action == "create":
        key, record = keys.create(args.name, args.scope)
        # The key alone on stdout (so `key=$(python -m indexer keys create ...)` works), what
        # it is on stderr.
        print(key)
        print(f"created key {record.name!r} (scope {record.scope}); it is shown only now: "
              "store it where its user keeps secrets", file=sys.stderr)
    elif args.action == "list":
        records = keys.list_keys()
        for r in records:
            if args.json:
                print(json.dumps(r.to_json()))
            else:
                state = f"revoked {r.revoked_at}" if r.revoked_at else "active"
                print(f"{r.name:24s} {r.scope:6s} created {r.created_at}  last used "
                      f"{r.last_used_at or 'never'}  {state}")
        print(f"{len(records)} key(s) in {keys.index}", file=sys.stderr)
    else:
        record = keys.revoke(args.name)
        print(f"revoked key {record.name!r} (scope {record.scope})", file=sys.stderr)
    return cli.EXIT_OK
