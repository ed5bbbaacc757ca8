"""``python -m indexer keys``: the key printed once, listed without it, revoked by name, and
bad arguments as exit 2, through the real CLI process on the real node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from tests.support import PROJECT


def keys_cli(settings, index, *args):
    env = dict(os.environ, PYTHONPATH=str(PROJECT), ES_URL=settings.es_url,
               IMGSEARCH_KEYS_INDEX=index)
    return subprocess.run([sys.executable, "-m", "indexer", "keys", *args], cwd=PROJECT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_create_list_revoke(settings):
    from imgsearch.esclient import connect
    from imgsearch.keys import KeyStore

    index = f"t-keys-{uuid.uuid4().hex[:12]}"
    try:
        made = keys_cli(settings, index, "create", "--name", "prometheus", "--scope", "admin")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert key.startswith("isk_") and "shown only now" in made.stderr
        store = KeyStore(connect(settings), index)
        assert store.authenticate(key).scope == "admin"

        listed = keys_cli(settings, index, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(r["name"], r["scope"], r["revoked_at"]) for r in rows] == [
            ("prometheus", "admin", None)]
        assert key not in listed.stdout + listed.stderr

        taken = keys_cli(settings, index, "create", "--name", "prometheus", "--scope", "read")
        assert taken.returncode == 1 and "already named 'prometheus'" in taken.stderr
        bad = keys_cli(settings, index, "create", "--name", "x", "--scope", "root")
        assert bad.returncode == 2 and "invalid choice: 'root'" in bad.stderr

        gone = keys_cli(settings, index, "revoke", "prometheus")
        assert gone.returncode == 0, gone.stderr
        assert store.authenticate(key) is None
        again = keys_cli(settings, index, "revoke", "prometheus")
        assert again.returncode == 2 and "no active key is named 'prometheus'" in again.stderr
        plain = keys_cli(settings, index, "list")
        assert "prometheus" in plain.stdout and "revoked" in plain.stdout
    finally:
        connect(settings).indices.delete(index=index, ignore_unavailable=True)
