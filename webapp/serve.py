"""``python -m webapp.serve`` (``make serve``, the compose stack): nginx in front of gunicorn.

gunicorn (``webapp/gunicorn.conf.py``) listens on a Unix socket in a private run directory;
nginx (``webapp/nginx.conf``) listens on ``WEBAPP_BIND`` (default ``127.0.0.1:8000``), reads
every request in full before passing it on, and answers the refusals it makes itself (request
line 414, headers 431, a body too large 413) in the product's JSON shape, and closes a
connection whose headers or body stop arriving (no 408: see the deadlines there). Why:
the comment at the top of webapp/nginx.conf, and docs/RELIABILITY.md.

Both run as children of this process: SIGTERM or SIGINT stops both gracefully, and when
either one exits the other is stopped too (exit status 1), nginx's workers included, so
nothing is left behind.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgsearch.settings import Settings

from .errors import human_size

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
# Seconds a request body may pause between two reads, and seconds the request line and
# headers may take in all (webapp/nginx.conf says why): WEBAPP_BODY_TIMEOUT,
# WEBAPP_HEADER_TIMEOUT.
BODY_GAP_S = 30
HEADER_S = 10
# Connections one address may hold at once (WEBAPP_CONN_PER_ADDRESS).
CONN_PER_ADDRESS = 64
# gunicorn's workers and threads (WEBAPP_WORKERS, WEBAPP_THREADS; the same defaults as
# webapp/gunicorn.conf.py, which a gunicorn run without this launcher reads).
WORKERS, THREADS = 2, 16
# Room beyond the upload limit for the multipart framing and the other form fields.
FORM_SLACK_BYTES = 1024 * 1024


def nginx_listen(bind: str) -> str:
    """gunicorn's ``host:port`` (``[::1]:8000`` for IPv6) as nginx's ``listen`` takes it."""
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"WEBAPP_BIND must be host:port, not {bind!r}")
    return f"{host}:{port}"


def _whole(name: str, default: int) -> int:
    """The whole number (seconds or a count, at least 1) in variable ``name``."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"{name} must be a whole number, at least 1, not {raw!r}")
    return int(raw)


def render(bind: str, socket: Path, run: Path, max_upload: int, max_conns: int) -> str:
    """webapp/nginx.conf with its {{NAME}}s filled in."""
    user = ""
    if os.geteuid() == 0:
        # As root, nginx's workers would otherwise run as nobody, who cannot reach the run
        # directory or the socket.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    values = {
        "USER": user, "RUN": str(run), "SOCKET": str(socket), "LISTEN": nginx_listen(bind),
        "BODY_GAP": str(_whole("WEBAPP_BODY_TIMEOUT", BODY_GAP_S)), "MAX_CONNS": str(max_conns),
        "HEADER_TIMEOUT": str(_whole("WEBAPP_HEADER_TIMEOUT", HEADER_S)),
        "CONN_PER_ADDRESS": str(_whole("WEBAPP_CONN_PER_ADDRESS", CONN_PER_ADDRESS)),
        "MAX_BODY": str(max_upload + FORM_SLACK_BYTES), "MAX_UPLOAD": str(max_upload),
        "MAX_UPLOAD_HUMAN": human_size(max_upload),
    }
    text = (HERE / "nginx.conf").read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    return text


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        raise SystemExit("make serve needs nginx in front of gunicorn: install it "
                         "(Debian: apt-get install nginx-light), see README.md, 'Limits'.")
    return found


def main() -> int:
    bind = os.environ.get("WEBAPP_BIND", "127.0.0.1:8000")
    settings = Settings.from_env()
    nginx = nginx_binary()
    run = Path(tempfile.mkdtemp(prefix="imgsearch-serve-"))
    socket = run / "gunicorn.sock"
    conf = run / "nginx.conf"
    workers = _whole("WEBAPP_WORKERS", WORKERS)
    threads = _whole("WEBAPP_THREADS", THREADS)
    conf.write_text(render(bind, socket, run, settings.max_upload_bytes, workers * threads))
    # The workers share their rate-limit buckets through a file in the run directory.
    env = dict(os.environ, WEBAPP_BIND=f"unix:{socket}", WEBAPP_BEHIND_PROXY="1",
               WEBAPP_STATE_DIR=str(run), WEBAPP_WORKERS=str(workers),
               WEBAPP_PROXY_REFUSALS=str(run / "proxy-refusals.log"),
               WEBAPP_THREADS=str(threads))
    env.setdefault("PYTHONPATH", str(PROJECT))
    children = [
        subprocess.Popen([sys.executable, "-m", "gunicorn", "--config",
                          str(HERE / "gunicorn.conf.py"), "webapp:create_app()"],
                         cwd=PROJECT, env=env),
        # A process group of its own: its workers outlive a master that is killed, and are
        # ended with the group below.
        subprocess.Popen([nginx, "-p", str(run), "-c", str(conf), "-e", "stderr",
                          "-g", "daemon off;"], cwd=run, start_new_session=True),
    ]
    # Graceful stops: gunicorn finishes its requests on SIGTERM, nginx on SIGQUIT.
    stops = (signal.SIGTERM, signal.SIGQUIT)
    stopping = []

    def stop(signum=None, frame=None):
        if not stopping:
            stopping.append(signum)
            for child, sig in zip(children, stops, strict=True):
                if child.poll() is None:
                    child.send_signal(sig)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"webapp.serve: nginx on http://{bind} -> gunicorn on {socket}", file=sys.stderr,
          flush=True)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
        stop()
        deadline = time.monotonic() + 60
        for child in children:
            try:
                child.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(children[1].pid, signal.SIGKILL)
        shutil.rmtree(run, ignore_errors=True)
    # Stopped by a signal: a clean exit; a child that died by itself: a failure.
    return 0 if stopping and stopping[0] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
