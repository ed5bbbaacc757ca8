"""What the worst query image costs each endpoint's decoding: CPU seconds and peak memory.

Every case runs in a fresh child process (as a gunicorn worker's memory would start) that
builds the image, then does what the endpoint does with a query photo, with the product's
own functions and caps:

- ``search``: ``POST /api/search`` (and by ``url``: the same bytes once fetched), the model
  input at the query cap (``Settings.query_pixel_cap``, or the old 50 Mpx with ``--old``);
- ``box``: ``POST /api/search`` with ``box=``: the whole photo at twice the input size;
- ``explain``: ``POST /api/images/<id>/explain``: the model input, the query's thumbnail
  (256 px) and its heat map's photo (384 px).

Reported: the child's CPU seconds for the step (user + system, ``resource.getrusage``) and its
peak resident memory above what it held before (``VmHWM`` reset through
``/proc/self/clear_refs``), or the refusal. ``--pythonpath`` measures another checkout (the
"before" column of docs/RELIABILITY.md: ``git archive <commit> imgsearch | tar -x -C DIR``).

    python -m bench.cost                       # this checkout
    python -m bench.cost --pythonpath /tmp/old --old   # a checkout before the query cap
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SIDES = {"50 Mpx": 7070, "25 Mpx": 5000}
KINDS = ("16-bit PNG", "float TIFF", "palette PNG", "CMYK TIFF", "RGBA PNG")

CHILD = r"""
import io, json, resource, sys
from PIL import Image

kind, side, endpoint, cap = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

def encode(img, fmt, **kw):
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()

def make():
    size = (side, side)
    if kind == "16-bit PNG":
        return encode(Image.new("I;16", size, 32768), "PNG")
    if kind == "float TIFF":
        return encode(Image.new("F", size, 0.5), "TIFF", compression="tiff_adobe_deflate")
    if kind == "palette PNG":
        img = Image.new("P", size, 1)
        img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
        return encode(img, "PNG", transparency=0)
    if kind == "CMYK TIFF":
        return encode(Image.new("CMYK", size, (0, 255, 255, 0)), "TIFF",
                      compression="tiff_adobe_deflate")
    return encode(Image.new("RGBA", size, (0, 0, 255, 128)), "PNG")

from imgsearch.images import ImageError, decode_image, decode_rgb, thumbnail_webp

data = make()
open("/proc/self/clear_refs", "w").write("5")
before_rss = status("VmRSS")
t0 = resource.getrusage(resource.RUSAGE_SELF)
refused = None
try:
    if endpoint == "box":
        decode_rgb(data, short_side=448, max_pixels=cap)
    else:
        decode_image(data, target=224, resize_mode="crop", thumbnail_size=0, max_pixels=cap)
        if endpoint == "explain":
            thumbnail_webp(decode_rgb(data, short_side=256), 256)
            decode_rgb(data, short_side=384)
except ImageError as exc:
    refused = exc.reason
t1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime)
print(json.dumps({"kind": kind, "side": side, "endpoint": endpoint, "cpu_s": round(cpu, 3),
                  "extra_mb": round(status("VmHWM") - before_rss), "bytes": len(data),
                  "refused": refused}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pythonpath", default=None, help="the checkout to measure")
    parser.add_argument("--old", action="store_true",
                        help="the checkout has no query cap: use the indexer's 50 Mpx")
    args = parser.parse_args()
    root = args.pythonpath or os.getcwd()
    if args.old:
        cap = 50_000_000
    else:
        sys.path.insert(0, root)
        from imgsearch.settings import Settings

        cap = Settings().query_pixel_cap
    from bench.machine import cpu_line

    print(f"# {cpu_line()}; query cap {cap:,} pixels; checkout {root}")
    print("| endpoint | image | bytes | CPU s | + peak MB | answer |")
    print("|---|---|---|---|---|---|")
    for endpoint in ("search", "box", "explain"):
        for label, side in SIDES.items():
            for kind in KINDS:
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, kind, str(side), endpoint, str(cap)],
                    capture_output=True, text=True, cwd=root,
                    env={**os.environ, "PYTHONPATH": root},
                    timeout=600)
                if done.returncode != 0:
                    print(f"| {endpoint} | {kind} {label} | | | | failed: "
                          f"{done.stderr.strip().splitlines()[-1][:80]} |")
                    continue
                r = json.loads(done.stdout)
                answer = f"400 {r['refused']}" if r["refused"] else "200"
                print(f"| {endpoint} | {kind} {label} | {r['bytes']:,} | {r['cpu_s']:.2f} | "
                      f"{r['extra_mb']} | {answer} |", flush=True)


if __name__ == "__main__":
    main()
