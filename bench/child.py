"""A measurement in a fresh process of its own, as several benchmarks take them."""

from __future__ import annotations

import subprocess

STDERR_LINES = 30


def run_child(command: list[str], **kwargs) -> str:
    """``command``'s standard output. If it fails, SystemExit with the end of its standard error:
    ``CalledProcessError`` alone would keep the child's traceback out of sight."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-STDERR_LINES:])
        raise SystemExit(f"{' '.join(command)} failed (exit status {done.returncode}):\n{tail}")
    return done.stdout
