"""Schemathesis (its CLI, every phase and every check) against the real server, nginx in front
of gunicorn as ``make serve`` runs it, on the session's indexed photos: any server error, any
response that contradicts webapp/openapi.yaml (status, content type, schema, headers, Allow),
data the document calls valid refused, or data it calls invalid accepted, fails the test.

Bounded: deterministic examples (the same on every run, no example database), at most
``MAX_EXAMPLES`` per operation and phase, one worker, and a deadline for the whole run.
Nothing leaves the machine: tests/webapp/schemathesis_hooks.py rewrites every ``url`` value
before its request is sent, and the server may fetch from no host at all
(IMGSEARCH_URL_ALLOW_HOSTS empty, so loopback is refused before any connection).
tests/webapp/schemathesis.toml: where the document cannot say what valid is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import PROJECT, served

HERE = Path(__file__).resolve().parent
MAX_EXAMPLES = 20
DEADLINE_S = 420


def _config(store, path: Path) -> Path:
    """tests/webapp/schemathesis.toml, with ids of indexed images to draw from."""
    hits = store.es.search(index=store.alias, size=20, source=False).body["hits"]["hits"]
    ids = json.dumps([h["_id"] for h in hits])
    path.write_text((HERE / "schemathesis.toml").read_text() + f"""
[dictionaries.indexed]
values = {ids}

[parameters]
"path.id" = {{ dictionary = "indexed", probability = 0.8 }}
"query.query" = {{ dictionary = "indexed", probability = 0.8 }}
""")
    return path


def test_the_server_keeps_to_its_document(clothing_index, tmp_path):
    settings, store, _ = clothing_index
    report = tmp_path / "events.ndjson"
    config = _config(store, tmp_path / "schemathesis.toml")
    with served(settings, tmp_path / "serve.log", IMGSEARCH_URL_ALLOW_HOSTS="") as (_, port):
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
             "--no-color", "run",
             str(PROJECT / "webapp" / "openapi.yaml"), "--url", f"http://127.0.0.1:{port}",
             "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
             "--request-timeout", "60", "--report", "ndjson", "--report-ndjson-path",
             str(report), "--suppress-health-check", "too_slow"],
            cwd=PROJECT, capture_output=True, text=True, timeout=DEADLINE_S,
            env=dict(os.environ, PYTHONPATH=str(PROJECT),
                     SCHEMATHESIS_HOOKS="tests.webapp.schemathesis_hooks"),
        )
    print(run.stdout[-20000:])
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    events = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    assert len(events) > 50, "Schemathesis hardly ran"
    # The server log has no traceback: no request crashed a worker or reached the 500 handler.
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log and "unhandled error" not in log
