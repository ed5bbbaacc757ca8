"""int8 post-training quantisation of a model for OpenVINO: an opt-in model of its own.

``python -m indexer quantize <photos> [--model M]`` calibrates NNCF's int8 quantisation on a few
hundred photos of the collection and writes a model directory (:mod:`imgsearch.modelstore`)
beside the others:

- ``model.weights.h5``: the fp32 Keras weights it was quantised from (the reference, and what
  the model store verifies);
- ``openvino/model.xml`` + ``model.bin``: the int8 OpenVINO model, its files' SHA-256 in the card;
- ``model_card.json``: the source model's card plus ``quantization`` (source version, calibration
  photos and their digest, NNCF preset, timings) and a model version of its own.

int8 vectors are not fp32 vectors: on the clothing test split their top-10 neighbours overlap
fp32's by far less than the 0.98 that sharing an index would need (docs/BENCHMARKS.md, "int8"),
so an int8 model always has its own version (``<source version>/int8=<digest>``) and builds its
own index; the store refuses to mix them. It runs on OpenVINO only.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .digest import digest_problem, file_digests
from .errors import BadInput
from .images import ImageError, content_hash
from .ircache import IR_FILES
from .model import ImageModel
from .modelstore import CARD_FIELDS, read_card, write_model_dir
from .runtime import RuntimeUnavailable
from .walk import IMAGE_SUFFIXES, walk_files
from .weights import WeightsError

log = logging.getLogger(__name__)

IR_DIR = "openvino"
# Fewer photos than this calibrate activation ranges badly; NNCF's own default is 300.
MIN_CALIBRATION = 20


class QuantizeError(BadInput):
    """Bad input for quantisation: no photos, an existing output, a model that is int8."""


@dataclass
class QuantizeResult:
    out_dir: Path
    card: dict
    skipped: list[tuple[str, str]] = field(default_factory=list)


def calibration_paths(root: Path, samples: int, seed: int) -> list[Path]:
    """A seeded random choice of ``samples`` image files below ``root`` (all if fewer): the
    indexer's walk, and the files whose names promise an image."""
    paths = [p for p in walk_files(Path(root)) if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(paths) > samples:
        picked = np.random.default_rng(seed).choice(len(paths), samples, replace=False)
        paths = [paths[i] for i in sorted(picked)]
    return paths


def quantize(
    source: ImageModel, root: Path, out_dir: Path, *, samples: int = 300, seed: int = 0,
    force: bool = False,
) -> QuantizeResult:
    """Quantise ``source`` (an fp32 model) to int8, calibrated
    on photos below ``root``, into ``out_dir`` (refused if it exists, unless ``force``)."""
    import nncf
    import openvino as ov

    from .runtime import convert
    from .weights import weights_digest

    started = time.perf_counter()
    out_dir = Path(out_dir)
    if source.is_quantized:
        raise QuantizeError(f"{source.version} is already an int8 model")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise QuantizeError(f"{out_dir} exists; choose another --out or pass --force")
    if samples < MIN_CALIBRATION:
        raise QuantizeError(f"--samples must be at least {MIN_CALIBRATION}")
    paths = calibration_paths(root, samples, seed)
    inputs, skipped, digest = [], [], hashlib.sha256()
    for path in paths:
        rel = path.relative_to(root).as_posix()
        try:
            data = path.read_bytes()
            inputs.append(source.decode(data).pixels[None])
        except (OSError, ImageError) as exc:
            skipped.append((rel, str(exc)))
            continue
        digest.update(f"{rel}\0{content_hash(data)}\n".encode())
    if len(inputs) < MIN_CALIBRATION:
        raise QuantizeError(f"{root} has {len(inputs)} usable photos; calibration needs at "
                            f"least {MIN_CALIBRATION}")
    decoded = time.perf_counter()

    # convert() declines OpenVINO's telemetry first; NNCF's reads the same recorded choice.
    fp32 = convert(source.model, source.input_size)
    int8 = nncf.quantize(fp32, nncf.Dataset(inputs), subset_size=len(inputs),
                         preset=nncf.QuantizationPreset.PERFORMANCE)
    quantized = time.perf_counter()

    if force and out_dir.exists():
        shutil.rmtree(out_dir)
    ir_dir = out_dir / IR_DIR
    ir_dir.mkdir(parents=True)
    ov.save_model(int8, ir_dir / "model.xml", compress_to_fp16=False)
    ir_sha = file_digests(ir_dir, IR_FILES)
    calibration_digest = digest.hexdigest()
    identity = hashlib.sha256(f"{calibration_digest}{ir_sha['model.bin']}".encode()).hexdigest()
    card = {**(source.card or _base_card(source))}
    card.update({
        "model_version": f"{source.version}/int8={identity[:12]}",
        # Of the headless weights written beside it (the base model's own digest covers its
        # classifier too), so that loading can verify them.
        "weights_digest": weights_digest(source.model),
        "quantization": {
            "precision": "int8",
            "runtime": "openvino",
            "source_model_version": source.version,
            "method": "nncf.quantize post-training, preset PERFORMANCE, fast bias correction",
            "calibration": {"root": str(Path(root).resolve()), "images": len(inputs),
                            "digest": calibration_digest, "seed": seed,
                            "skipped": [{"path": p, "reason": r} for p, r in skipped]},
            "sha256": ir_sha,
            "seconds": {"decode": round(decoded - started, 1),
                        "quantize": round(quantized - decoded, 1)},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "software": {"python": platform.python_version(), "openvino": ov.__version__,
                         "nncf": nncf.__version__},
        },
    })
    write_model_dir(out_dir, source.model, card)
    return QuantizeResult(out_dir, card, skipped)


def _base_card(source: ImageModel) -> dict:
    """The card fields of the base model, which has no card of its own."""
    card = {f: None for f in CARD_FIELDS}
    card.update({
        "model_version": source.version, "base_model_version": source.version,
        "architecture": source.architecture,
        "resize_mode": source.resize_mode, "input_size": source.input_size,
        "dims": source.dims, "preprocessing": source.preprocessing, "labels": [], "epochs": 0,
    })
    return card


def is_quantized(card: dict | None) -> bool:
    return bool(card and card.get("quantization"))


def load_quantized(model_dir: Path, card: dict | None = None):
    """The int8 OpenVINO model of ``model_dir``, its files checked against the card."""
    import openvino as ov

    card = card or read_card(model_dir)
    ir_dir = Path(model_dir) / IR_DIR
    problem = digest_problem(ir_dir, IR_FILES, card["quantization"].get("sha256") or {})
    if problem is not None:
        raise WeightsError(
            f"the int8 model in {ir_dir} is unusable ({problem} in the model card): a file is "
            "missing, corrupt or not this model's. Quantise again (python -m indexer quantize)."
        )
    return ov.Core().read_model(ir_dir / "model.xml")


def require_openvino(runtime: str, setting: str, model_dir: Path) -> None:
    if runtime != "openvino":
        raise RuntimeUnavailable(
            f"{model_dir} is an int8 model, which runs on OpenVINO only, but "
            f"IMGSEARCH_RUNTIME={setting} resolves to {runtime}: install openvino "
            "(`make setup`) or set IMGSEARCH_RUNTIME=openvino"
        )
