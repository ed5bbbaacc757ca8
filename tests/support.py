"""Helpers shared by the web app, reliability and benchmark tests (fixtures stay in the
conftests)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask.testing import FlaskClient

from imgsearch.localnode import free_port
from imgsearch.settings import Settings
from webapp import create_app

PROJECT = Path(__file__).resolve().parents[1]


class CheckedClient(FlaskClient):
    """A test client that fails any response showing a stack trace."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        assert b"Traceback" not in response.get_data(), response.get_data(as_text=True)
        return response


def build_app(settings, embedder, store=None, **options):
    """An app in testing mode whose clients check every response."""
    app = create_app(settings, embedder=embedder, store=store, **options)
    app.config.update(TESTING=True)
    app.test_client_class = CheckedClient
    return app


def wait_healthy(port: int, deadline: float) -> None:
    """Until ``GET /healthz`` on 127.0.0.1:``port`` answers 200 (AssertionError at
    ``deadline``, a ``time.monotonic()``)."""
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.5)
    raise AssertionError("gunicorn did not become healthy in time")


def server_environment(settings: Settings, port: int, env: dict[str, str]) -> dict[str, str]:
    """A server's environment for ``settings``: its node, alias, thumbnails, keys index and
    whether reads are public, bound to ``port`` of 127.0.0.1; ``env`` wins."""
    return {
        **os.environ, "PYTHONPATH": str(PROJECT), "ES_URL": settings.es_url,
        "ES_INDEX": settings.es_index, "IMGSEARCH_THUMBNAIL_DIR": str(settings.thumbnail_dir),
        "WEBAPP_BIND": f"127.0.0.1:{port}",
        "IMGSEARCH_PUBLIC_READ": "1" if settings.public_read else "0",
        "IMGSEARCH_KEYS_INDEX": settings.api_keys_index,
        **env,
    }


@contextmanager
def gunicorn_server(settings: Settings, log: Path, **env: str) -> Iterator[
        tuple[subprocess.Popen, int]]:
    """The product's server (``gunicorn --config webapp/gunicorn.conf.py``) on ``settings``'
    node, alias and thumbnails, on a free port of 127.0.0.1, once it answers ``/healthz``:
    ``(process, port)``. ``env`` adds to its environment (``WEBAPP_WORKERS="2"``, ...); its
    output goes to ``log``. Stopped with SIGTERM afterwards."""
    with _running(["-m", "gunicorn", "--config", "webapp/gunicorn.conf.py",
                   "webapp:create_app()"], settings, log, env, stop_within=60) as running:
        yield running


@contextmanager
def served(settings: Settings, log: Path, **env: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """The server as ``make serve`` runs it (``python -m webapp.serve``: nginx in front of
    gunicorn) on ``settings``' node, alias and thumbnails, on a free port of 127.0.0.1, once
    ``/healthz`` answers 200: ``(process, port)``. ``env`` adds to its environment; its output
    (both servers') goes to ``log``. Stopped with SIGTERM afterwards, which stops both."""
    with _running(["-m", "webapp.serve"], settings, log, env, stop_within=90) as running:
        yield running


@contextmanager
def _running(args: list[str], settings: Settings, log: Path, env: dict[str, str], *,
             stop_within: float) -> Iterator[tuple[subprocess.Popen, int]]:
    """``python <args>`` as a server of ``settings`` (server_environment) until it answers
    ``/healthz``; SIGTERM afterwards, SIGKILL if it is not gone within ``stop_within`` s."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=PROJECT,
                                env=server_environment(settings, port, env), stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            wait_healthy(port, time.monotonic() + 240)
            yield proc, port
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=stop_within)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def restarted(node):
    """Whatever happens inside, ``node`` is running again afterwards."""
    try:
        yield node
    finally:
        if not node.is_running():
            node.start()


def jpeg_q50(path: Path) -> bytes:
    """A real photo re-encoded as a JPEG of quality 50: a near-duplicate of it."""
    import io

    from PIL import Image

    out = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(out, "JPEG", quality=50)
    return out.getvalue()
