"""Domain fine-tuning: a labelled folder in, a model directory (imgsearch/modelstore.py) out.

The recipe, chosen by measurement on the clothing set (docs/BENCHMARKS.md, "Fine-tuning"):

- **Only the last two conv5 blocks learn** (``Recipe.tune_from_block``; 1 tunes all of
  conv5). Everything before them stays as ImageNet made it, so what it yields for an image is
  fixed: it is computed once per *augmented view* of each training image (the 7x7x2048 output
  of conv5_block1, kept as float16: 200 KB a view) and training then runs those two blocks
  alone, about a ninth of the network's forward cost, forward and backward. That is what makes
  minutes possible on a 2-core CPU.
- **Real image augmentation**, applied to the photo before the frozen layers: random resized
  crop, horizontal flip, brightness/contrast/saturation jitter and small rotations; each epoch
  trains on another of the precomputed views, horizontally flipped at random on the map.
- **Batch norm statistics frozen** (the layers run in inference mode): with 32-image batches of
  ten labels, batch statistics would be noisy and would drift away from the statistics that
  the frozen layers' output was normalised for; their scale and offset still learn.
- **Normalised softmax with a margin** (CosFace): one learnt proxy per label, logits are
  ``scale * (cos(embedding, proxy) - margin for the true label)``. Its embedding is the GAP
  vector itself, compared by cosine exactly as the index compares it. Proxies start at the
  labels' mean base embeddings, so the first steps already pull in the right direction.
- Adam with a cosine decay of the learning rates over the epochs, and early stopping on
  validation precision@10 (leave-one-out over the validation split);
  the best epoch is written as soon as it is found, so Ctrl-C leaves a usable model (the loops
  stop at a batch boundary, never inside a write).
- **Then part of the way back toward the base network** (weight-space interpolation, as in
  WiSE-FT, Wortsman et al. 2022): the model written is ``base + share * (tuned - base)`` for
  the smallest share whose validation P@10 is within ``Recipe.interpolation_tolerance`` of the
  best share's. Trained on five clothing labels and scored on the five it never saw, the
  tuned weights alone were worse than the base model there; the interpolated ones were not,
  and were as good or better on the trained labels. It costs nothing at search time: one
  network of the same shape (docs/BENCHMARKS.md, "Fine-tuning that never forgets").

The embedding stays the 2,048-d GAP of the (tuned) network, L2-normalised: the index mapping
does not change, only the model version (its weights digest) does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import random
import shutil
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .errors import BadInput

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402

from .images import ImageError, content_hash, decode_rgb, read_bytes, sniff_format  # noqa: E402
from .metrics import retrieval_scores  # noqa: E402
from .modelstore import write_model_dir  # noqa: E402
from .walk import walk_files  # noqa: E402

log = logging.getLogger(__name__)

TUNED_STAGE = "conv5"
CONV4_OUTPUT = "conv4_block6_out"
VALIDATION_SPLITS = ("validation", "val", "valid")


class FinetuneError(BadInput):
    """Training data or options that cannot make a model; the message says what to fix."""


@dataclass(frozen=True)
class Recipe:
    """Every choice that shapes the model; all of it goes into the model card."""

    # 8 epochs, 4 views and margin 0.2: clothing test P@10 of the tuned weights 0.924,
    # against 0.918 at margin 0.1 and 0.913 for the earlier 6 epochs, 2 views, margin 0.1
    # (the interpolation then gives some of it back for the labels it never saw); the whole
    # run takes 7.4 minutes on an AVX-512 EPYC (docs/BENCHMARKS.md, "Fine-tuning that never
    # forgets").
    max_epochs: int = 8
    # The first conv5 block that learns (1: the whole stage); the output before it is cached.
    # Blocks 2-3 train 1.55x faster than all of conv5 (18.6 against 12.0 images/s here) and
    # reached validation P@10 0.839 against 0.850 after 3 epochs on 1,000 clothing photos.
    tune_from_block: int = 2
    # Epochs without a better validation P@10 before stopping: validation dips for two epochs
    # mid-run and rises again at epochs 7-8 with the rates decaying.
    patience: int = 3
    # Each view costs a forward pass of the frozen layers over every training image (~70 s
    # for the 3,068 clothing photos on the AVX-512 EPYC, ~5 min on a 2-core AVX2 one).
    views: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-4  # conv5 (Adam)
    head_learning_rate: float = 1e-3  # the label proxies (Adam)
    # "cosine": both rates decay to zero over max_epochs, per step; "constant". On the
    # clothing set cosine reached test P@10 0.913 (mAP 0.900), constant 0.909 (0.887): the
    # constant rate peaked at epoch 3 and then overfitted (docs/BENCHMARKS.md).
    lr_schedule: str = "cosine"
    # Shares of the tuned change kept, tried on validation after training (1: the tuned
    # weights as trained, 0 would be the base network), and the validation P@10 a smaller
    # share may give up against the best of them: the smallest such share is written.
    # 0.005 (17 of the 3,410 results of the clothing validation split's queries) picked 0.8
    # in the three clothing runs, which kept both class-disjoint models at least as good as
    # the base one on the five labels they never saw (the tuned weights alone: 0.022 and
    # 0.015 worse); 0.002 picked 0.9, still worse on one of them.
    interpolations: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
    interpolation_tolerance: float = 0.005
    scale: float = 16.0  # normalised-softmax temperature (logits = scale * cosine)
    margin: float = 0.2  # CosFace margin on the true label's cosine (0.1: test P@10 -0.006)
    label_smoothing: float = 0.1
    # Augmentation of the photo (before the frozen layers)
    crop_scale: tuple[float, float] = (0.35, 1.0)  # area of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation_degrees: float = 10.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    flip: bool = True

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "cosine"):
            raise FinetuneError(f"lr_schedule must be constant or cosine, not {self.lr_schedule!r}")
        if self.tune_from_block not in (1, 2, 3):
            raise FinetuneError("tune_from_block must be 1, 2 or 3 (the conv5 blocks)")
        if min(self.max_epochs, self.views, self.patience, self.batch_size) < 1:
            raise FinetuneError("epochs, views, patience and batch size must be at least 1")
        if not self.interpolations or not all(0 < a <= 1 for a in self.interpolations):
            raise FinetuneError("interpolations must be shares in (0, 1]")

    def describe(self) -> dict:
        return {
            "name": "conv5-tail+cosface-proxies/frozen-bn/cached-augmented-views",
            "tuned_layers": f"{TUNED_STAGE}_block{self.tune_from_block}..3, the rest frozen "
                            f"(cached at {frozen_output(self.tune_from_block)})",
            "batch_norm": "inference mode (statistics frozen), scale/offset trained",
            "loss": (f"normalised softmax with CosFace margin: scale {self.scale}, margin "
                     f"{self.margin}, label smoothing {self.label_smoothing}; proxies start at "
                     "the labels' mean base embeddings"),
            "optimizer": (f"Adam, lr {self.learning_rate} (conv5), {self.head_learning_rate} "
                          f"(proxies), {self.lr_schedule}"),
            "augmentation": {
                "random_resized_crop": {"scale": list(self.crop_scale),
                                        "ratio": [round(r, 4) for r in self.crop_ratio]},
                "horizontal_flip": self.flip,
                "rotation_degrees": self.rotation_degrees,
                "brightness": self.brightness, "contrast": self.contrast,
                "saturation": self.saturation,
                "precomputed_views_per_image": self.views,
                "map_flip": "each epoch flips each cached map horizontally with p=0.5",
            },
            **{k: v for k, v in asdict(self).items() if k in (
                "max_epochs", "patience", "views", "batch_size")},
            "early_stopping": "validation precision@10 (ties: mAP@10), best epoch kept",
            "interpolation": {
                "toward": "the base network's weights, base + share * (tuned - base)",
                "shares_tried": list(self.interpolations),
                "rule": f"the smallest share within {self.interpolation_tolerance} of the best "
                        "share's validation P@10",
            },
        }


@dataclass
class LabelledImage:
    path: Path
    rel_path: str
    label: str
    split: str | None = None


@dataclass
class Skipped:
    rel_path: str
    reason: str
    message: str


@dataclass
class TrainingData:
    train: list[LabelledImage]
    validation: list[LabelledImage]
    labels: list[str]
    split_from: str  # "sidecar" or "stratified seeded split"


@dataclass
class EpochResult:
    epoch: int
    loss: float
    p10: float
    map10: float
    seconds: float  # training and validation
    train_seconds: float  # training steps only


@dataclass
class FinetuneResult:
    model_dir: Path
    card: dict | None  # None: interrupted before any epoch finished, nothing written
    epochs: list[EpochResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0


# --- the training data -----------------------------------------------------------------------


def list_labelled_images(root: Path, sidecar: dict[str, dict] | None = None) -> list[LabelledImage]:
    """Every image file below ``root`` with its label (the sidecar's, else the parent folder's)
    and split (the sidecar's ``split`` column, if any). Files without a label are left out."""
    sidecar = sidecar or {}
    out = []
    for path in walk_files(Path(root)):
        rel = path.relative_to(root).as_posix()
        meta = sidecar.get(rel, {})
        parent = Path(rel).parent
        label = meta.get("label") or (parent.name if parent.as_posix() != "." else None)
        if not label:
            continue
        split = (meta.get("extra") or {}).get("split")
        out.append(LabelledImage(path, rel, str(label), str(split).lower() if split else None))
    return out


def split_data(
    items: list[LabelledImage], *, seed: int, validation_fraction: float = 0.1
) -> TrainingData:
    """Train and validation sets: the sidecar's ``split`` column when it names a validation
    split (other splits, e.g. test, are left out), else a stratified split seeded by ``seed``."""
    if not items:
        raise FinetuneError(
            "no labelled images: give labels in a sidecar (--metadata with a 'label' column) "
            "or put the images in one folder per label"
        )
    splits = {i.split for i in items}
    if splits & set(VALIDATION_SPLITS):
        train = [i for i in items if i.split == "train"]
        validation = [i for i in items if i.split in VALIDATION_SPLITS]
        how = "sidecar"
    else:
        rng = random.Random(seed)
        by_label: dict[str, list[LabelledImage]] = defaultdict(list)
        for item in items:
            by_label[item.label].append(item)
        train, validation = [], []
        for label in sorted(by_label):
            group = sorted(by_label[label], key=lambda i: i.rel_path)
            rng.shuffle(group)
            n_val = max(1, round(validation_fraction * len(group))) if len(group) >= 4 else 0
            validation += group[:n_val]
            train += group[n_val:]
        how = f"stratified seeded split ({validation_fraction:.0%} validation, seed {seed})"
    check_labels(train, validation)
    labels = sorted({i.label for i in train})
    return TrainingData(train, validation, labels, how)


def check_labels(train: list[LabelledImage], validation: list[LabelledImage]) -> None:
    counts = Counter(i.label for i in train)
    if len(counts) < 2:
        found = f"only {next(iter(counts))!r}" if counts else "none"
        raise FinetuneError(
            f"fine-tuning needs at least 2 labels among the training images ({found}): "
            "similar-versus-different is learnt from examples of different labels"
        )
    few = sorted(label for label, n in counts.items() if n < 2)
    if few:
        raise FinetuneError(
            f"these labels have fewer than 2 training images: {', '.join(few[:10])}; "
            "add images or remove the label"
        )
    val_counts = Counter(i.label for i in validation)
    if sum(1 for n in val_counts.values() if n >= 2) < 2:
        raise FinetuneError(
            "the validation split needs at least 2 labels with 2 images each to measure "
            "precision@10 (add images, or drop the 'split' column for an automatic split)"
        )


def data_digest(items: list[LabelledImage], hashes: dict[str, str]) -> str:
    """sha256 over (path, content sha256, label, split) of every image used, sorted."""
    h = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.rel_path):
        h.update(f"{item.rel_path}\0{hashes[item.rel_path]}\0{item.label}\0"
                 f"{item.split or ''}\n".encode())
    return h.hexdigest()


# --- augmentation ----------------------------------------------------------------------------


def augment(rgb: Image.Image, recipe: Recipe, rng: np.random.Generator, size: int) -> np.ndarray:
    """One random view of ``rgb`` as the model's ``uint8 [size, size, 3]`` input."""
    img = rgb
    if recipe.rotation_degrees:
        angle = float(rng.uniform(-recipe.rotation_degrees, recipe.rotation_degrees))
        # Filled with the image's mean colour: a black wedge would be a feature of its own.
        fill = tuple(int(c) for c in np.asarray(img).reshape(-1, 3).mean(axis=0))
        img = img.rotate(angle, Image.Resampling.BILINEAR, expand=False, fillcolor=fill)
    width, height = img.size
    box = None
    for _ in range(10):  # torchvision's RandomResizedCrop
        area = width * height * rng.uniform(*recipe.crop_scale)
        ratio = np.exp(rng.uniform(np.log(recipe.crop_ratio[0]), np.log(recipe.crop_ratio[1])))
        w, h = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
            box = (int(left), int(top), int(left + w), int(top + h))
            break
    if box is None:  # a very long image: its centre square
        side = min(width, height)
        box = ((width - side) // 2, (height - side) // 2,
               (width - side) // 2 + side, (height - side) // 2 + side)
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if recipe.flip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    jitters = [
        (ImageEnhance.Brightness, recipe.brightness),
        (ImageEnhance.Contrast, recipe.contrast),
        (ImageEnhance.Color, recipe.saturation),
    ]
    for i in rng.permutation(len(jitters)):
        enhancer, amount = jitters[i]
        if amount:
            img = enhancer(img).enhance(float(rng.uniform(1 - amount, 1 + amount)))
    return np.asarray(img, dtype=np.uint8)


# --- the network, split at the frozen layer --------------------------------------------------


def frozen_output(tune_from_block: int) -> str:
    """The last layer that does not learn."""
    if tune_from_block == 1:
        return CONV4_OUTPUT
    return f"{TUNED_STAGE}_block{tune_from_block - 1}_out"


def frozen_part(model, tune_from_block: int = 1):
    """``uint8 images -> maps (float16)``: the layers that do not learn, compiled."""
    import keras
    import tensorflow as tf

    from .embedder import INPUT_SIZE
    from .runtime import preprocess_fn

    trunk = keras.Model(model.inputs, model.get_layer(frozen_output(tune_from_block)).output)
    preprocess = preprocess_fn()

    @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8)])
    def forward(pixels):
        maps = trunk(preprocess(tf.cast(pixels, tf.float32)), training=False)
        return tf.cast(maps, tf.float16)

    return forward


def tuned_part(model, tune_from_block: int = 1):
    """Cached maps -> GAP vectors, made of the conv5 layers *of ``model``* (shared, not
    copied): training this changes ``model``, which is what gets saved."""
    import keras

    channels = model.get_layer(frozen_output(tune_from_block)).output.shape[-1]
    x = inputs = keras.Input((None, None, channels))
    for block in range(tune_from_block, 4):
        name = f"{TUNED_STAGE}_block{block}"
        shortcut = x
        if block == 1:
            shortcut = model.get_layer(f"{name}_0_bn")(model.get_layer(f"{name}_0_conv")(x))
        y = x
        for k in (1, 2, 3):
            y = model.get_layer(f"{name}_{k}_bn")(model.get_layer(f"{name}_{k}_conv")(y))
            if k < 3:
                y = model.get_layer(f"{name}_{k}_relu")(y)
        x = model.get_layer(f"{name}_out")(model.get_layer(f"{name}_add")([shortcut, y]))
    outputs = model.get_layer("avg_pool")(x)
    return keras.Model(inputs, outputs, name="conv5_stage")


# --- training --------------------------------------------------------------------------------


class Trainer:
    """Everything one fine-tuning run holds: the network halves, the cached maps, the loop."""

    def __init__(self, base, data: TrainingData, recipe: Recipe, *, seed: int,
                 progress: bool = True, workers: int | None = None):
        import tensorflow as tf

        self.base = base  # an imgsearch.embedder.Embedder: its model is trained in place
        self.data = data
        self.recipe = recipe
        self.seed = seed
        self.progress = progress
        self.workers = workers or min(4, len(os.sched_getaffinity(0)) + 1)
        self.label_index = {label: i for i, label in enumerate(data.labels)}
        self.frozen = frozen_part(base.model, recipe.tune_from_block)
        self.stage = tuned_part(base.model, recipe.tune_from_block)
        self._stage_forward = self._stage_forward_fn()
        # The learning layers' weights as ImageNet made them (the model is trained in place),
        # and the best epoch's: what interpolate_toward_base mixes.
        self.base_weights = [w.numpy() for w in self.stage.weights]
        self.best_weights: list[np.ndarray] | None = None
        self.skipped: list[Skipped] = []
        self.hashes: dict[str, str] = {}
        # Set by a Ctrl-C handler: the loops stop at the next batch, never inside a write.
        self.stop_requested = threading.Event()
        tf.random.set_seed(seed)

    def check_stop(self) -> None:
        if self.stop_requested.is_set():
            raise KeyboardInterrupt

    # -- caching what the frozen layers yield

    def _read(self, item: LabelledImage) -> tuple[LabelledImage, bytes | Skipped]:
        try:
            data = read_bytes(item.path)
            if sniff_format(data) is None:
                raise ImageError("not_an_image", "content is not a supported image")
        except ImageError as exc:
            return item, Skipped(item.rel_path, exc.reason, str(exc))
        self.hashes[item.rel_path] = content_hash(data)
        return item, data

    def _load(self, items, decode: Callable[[bytes], object], what: str):
        """Read and decode ``items`` in threads; unreadable ones are skipped and listed."""
        from tqdm import tqdm

        kept, decoded = [], []

        def work(item):
            item, data = self._read(item)
            if isinstance(data, Skipped):
                return item, data
            try:
                return item, decode(data)
            except ImageError as exc:
                return item, Skipped(item.rel_path, exc.reason, str(exc))

        with ThreadPoolExecutor(self.workers) as pool:
            for item, out in tqdm(pool.map(work, items), total=len(items), desc=what,
                                  unit="img", disable=not self.progress, leave=False):
                if isinstance(out, Skipped):
                    self.skipped.append(out)
                else:
                    kept.append(item)
                    decoded.append(out)
        return kept, decoded

    def _maps(self, pixels_of: Callable[[int], np.ndarray], n: int, desc: str) -> np.ndarray:
        from tqdm import tqdm

        batch = self.recipe.batch_size
        out = None
        with ThreadPoolExecutor(1) as pool, tqdm(total=n, desc=desc, unit="img",
                                                 disable=not self.progress, leave=False) as bar:
            # The next batch is augmented in a thread while this one runs through the network.
            future = pool.submit(pixels_of, 0)
            for start in range(0, n, batch):
                pixels = future.result()
                if start + batch < n:
                    future = pool.submit(pixels_of, start + batch)
                self.check_stop()
                maps = self.frozen(pixels).numpy()
                if out is None:
                    out = np.empty((n, *maps.shape[1:]), np.float16)
                out[start : start + len(maps)] = maps
                bar.update(len(maps))
        return out

    def prepare(self) -> None:
        """Decode everything once, then cache the frozen layers' maps: clean ones for
        validation, and ``views`` augmented ones per training image."""
        size = self.base.input_size
        self.val_items, val_pixels = self._load(
            self.data.validation, lambda d: self.base.decode(d).pixels, "validation images")
        self.val_labels = np.array([i.label for i in self.val_items])
        self.val_maps = self._maps(
            lambda s: np.stack(val_pixels[s : s + self.recipe.batch_size]), len(val_pixels),
            "validation maps")
        # Photos kept at a short side of 1.5x the input: random crops of 35 % of the area
        # then still resize down, never up; 3,068 clothing photos at 336x448 RGB are 1.4 GB.
        self.train_items, photos = self._load(
            self.data.train, lambda d: decode_rgb(d, short_side=int(1.5 * size)),
            "training images")
        check_labels(self.train_items, self.val_items)
        self.train_labels = np.array([self.label_index[i.label] for i in self.train_items])
        self.train_maps = []
        for view in range(self.recipe.views):
            def pixels_of(start, view=view):
                chunk = range(start, min(start + self.recipe.batch_size, len(photos)))
                return np.stack([
                    augment(photos[i], self.recipe,
                            np.random.default_rng((self.seed, view, i)), size)
                    for i in chunk
                ])
            self.train_maps.append(self._maps(
                pixels_of, len(photos), f"augmented view {view + 1}/{self.recipe.views}"))
        photos.clear()  # the decoded photos are no longer needed: free their memory

    # -- the loop

    def embed_maps(self, maps: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = []
        for start in range(0, len(maps), 64):
            v = self._stage_forward(tf.constant(maps[start : start + 64]))
            out.append(v.numpy())
        return np.concatenate(out)

    def measure_base(self) -> None:
        self.before = self.validate()

    def validate(self) -> dict[str, float]:
        return retrieval_scores(self.embed_maps(self.val_maps), self.val_labels)

    def _build_step(self):
        import keras
        import tensorflow as tf

        r = self.recipe
        n_labels = len(self.data.labels)
        # Proxies start at each label's mean base embedding (of the first view).
        sample = self.embed_maps(self.train_maps[0])
        means = np.stack([sample[self.train_labels == c].mean(axis=0) for c in range(n_labels)])
        self.proxies = tf.Variable(means.T.astype(np.float32), name="proxies")
        backbone = self.stage.trainable_variables
        def rate(initial: float):
            if r.lr_schedule == "constant":
                return initial
            steps = r.max_epochs * -(-len(self.train_labels) // r.batch_size)
            return keras.optimizers.schedules.CosineDecay(initial, decay_steps=steps)

        opt_backbone = keras.optimizers.Adam(rate(r.learning_rate))
        opt_head = keras.optimizers.Adam(rate(r.head_learning_rate))

        @tf.function(reduce_retracing=True, autograph=False)  # no Python control flow inside
        def step(maps, labels):
            with tf.GradientTape() as tape:
                emb = tf.math.l2_normalize(self.stage(tf.cast(maps, tf.float32),
                                                      training=False), axis=1)
                cos = emb @ tf.math.l2_normalize(self.proxies, axis=0)
                onehot = tf.one_hot(labels, n_labels)
                logits = r.scale * (cos - r.margin * onehot)
                smooth = onehot * (1 - r.label_smoothing) + r.label_smoothing / n_labels
                loss = tf.reduce_mean(
                    tf.nn.softmax_cross_entropy_with_logits(smooth, logits))
            grads = tape.gradient(loss, backbone + [self.proxies])
            opt_backbone.apply_gradients(zip(grads[:-1], backbone, strict=True))
            opt_head.apply_gradients([(grads[-1], self.proxies)])
            return loss

        return step

    def _stage_forward_fn(self):
        import tensorflow as tf

        @tf.function(reduce_retracing=True, autograph=False)
        def forward(maps):
            return tf.math.l2_normalize(self.stage(tf.cast(maps, tf.float32), training=False),
                                        axis=1)

        return forward

    def train(self, on_epoch: Callable[[EpochResult, bool], None]) -> list[EpochResult]:
        """Epochs until early stopping; ``on_epoch(result, is_best)`` after each (the caller
        writes the model when it is the best). KeyboardInterrupt propagates."""
        from tqdm import tqdm

        r = self.recipe
        step = self._build_step()
        rng = np.random.default_rng((self.seed, 1_000_003))
        results: list[EpochResult] = []
        # The best epoch so far is kept even if it does not beat the base model (the caller
        # says so): a run always leaves a model once its first epoch is done.
        best: tuple[float, float] | None = None
        waited = 0
        n = len(self.train_labels)
        for epoch in range(1, r.max_epochs + 1):
            started = time.perf_counter()
            maps = self.train_maps[(epoch - 1) % len(self.train_maps)]
            order = rng.permutation(n)
            flips = rng.random(n) < 0.5
            losses = []
            bar = tqdm(range(0, n, r.batch_size), desc=f"epoch {epoch}/{r.max_epochs}",
                       unit="batch", disable=not self.progress, dynamic_ncols=True)
            for start in bar:
                idx = np.sort(order[start : start + r.batch_size])
                batch = maps[idx]
                batch[flips[idx]] = batch[flips[idx]][:, :, ::-1]
                self.check_stop()
                losses.append(float(step(batch, self.train_labels[idx])))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            trained = time.perf_counter() - started
            scores = self.validate()
            result = EpochResult(epoch, float(np.mean(losses)), scores["p@10"],
                                 scores["map@10"], time.perf_counter() - started, trained)
            bar.set_postfix(loss=f"{result.loss:.3f}", val_p10=f"{result.p10:.4f}")
            bar.close()
            results.append(result)
            score = (result.p10, result.map10)  # P@10, ties broken by mAP@10
            is_best = best is None or score > best
            if is_best:
                best, waited = score, 0
                self.best_weights = [w.numpy() for w in self.stage.weights]
            else:
                waited += 1
            on_epoch(result, is_best)
            if waited >= r.patience:
                break
        return results

    def interpolate_toward_base(self) -> tuple[dict, list[dict]]:
        """Set the learning layers to ``base + share * (best - base)`` for each of the recipe's
        shares, score each on validation, and leave them at the smallest share within the
        tolerance of the best: ``(that share's row, every row)``, a row being ``{"share",
        "p@10", "map@10"}``."""
        tried = []
        for share in self.recipe.interpolations:
            self._set_share(share)
            scores = self.validate()
            tried.append({"share": share, "p@10": scores["p@10"], "map@10": scores["map@10"]})
        top = max(row["p@10"] for row in tried)
        chosen = min((row for row in tried
                      if row["p@10"] >= top - self.recipe.interpolation_tolerance),
                     key=lambda row: row["share"])
        self._set_share(chosen["share"])
        return chosen, tried

    def _set_share(self, share: float) -> None:
        for weight, base, best in zip(self.stage.weights, self.base_weights, self.best_weights,
                                      strict=True):
            weight.assign(base + share * (best - base))


def finetune(
    root: Path,
    out_dir: Path,
    *,
    settings,
    sidecar: dict[str, dict] | None = None,
    recipe: Recipe | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    max_per_label: int | None = None,
    labels: set[str] | None = None,
    force: bool = False,
    progress: bool = True,
    metadata_name: str | None = None,
    log_epoch: Callable[[str], None] = print,
) -> FinetuneResult:
    """Fine-tune the base model (``settings``) on the labelled images below ``root`` and write
    the best epoch to ``out_dir`` (refused if it exists, unless ``force``). ``labels``: train
    on these labels' images only (bench/finetune.py's class-disjoint split)."""
    from .embedder import Embedder

    recipe = recipe or Recipe()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FinetuneError(f"{out_dir} exists; choose another --out or pass --force")
    items = list_labelled_images(root, sidecar)
    if labels is not None:
        items = [i for i in items if i.label in labels]
    if max_per_label:
        items = sample_per_label(items, max_per_label, seed)
    data = split_data(items, seed=seed, validation_fraction=validation_fraction)
    if settings.model:
        raise FinetuneError("fine-tuning starts from the base model; unset IMGSEARCH_MODEL")
    base = Embedder(settings)
    base_version = base.version
    trainer = Trainer(base, data, recipe, seed=seed, progress=progress)
    result = FinetuneResult(out_dir, None)
    if force and out_dir.exists():
        shutil.rmtree(out_dir)

    def card(epochs: list[EpochResult], best: EpochResult, digest: str, interrupted: bool):
        from .embedder import model_version

        seconds = time.perf_counter() - started
        trained = len(trainer.train_labels) * len(epochs)
        return {
            "model_version": model_version(digest, base.resize_mode),
            "weights_digest": digest,
            "base_model_version": base_version,
            "architecture": base.architecture,
            "resize_mode": base.resize_mode,
            "input_size": base.input_size,
            "dims": base.dims,
            "preprocessing": base.preprocessing,
            "labels": data.labels,
            "training_data": {
                "root": str(Path(root).resolve()),
                "metadata": metadata_name,
                "digest": data_digest(trainer.train_items + trainer.val_items, trainer.hashes),
                "split": data.split_from,
                "train_images": len(trainer.train_items),
                "validation_images": len(trainer.val_items),
                "per_label": dict(sorted(Counter(i.label for i in trainer.train_items).items())),
                "skipped": [asdict(s) for s in trainer.skipped],
            },
            "recipe": recipe.describe(),
            "seed": seed,
            "epochs": len(epochs),
            "best_epoch": best.epoch,
            "interrupted": interrupted,
            "wall_seconds": round(seconds, 1),
            "training_images_per_second": round(
                trained / sum(e.train_seconds for e in epochs), 1) if epochs else None,
            "validation": {
                "metric": "leave-one-out exact search over the validation images, same label "
                          "relevant",
                "before": {k: round(v, 4) for k, v in trainer.before.items()},
                # The model written: the best epoch, moved toward the base when it was.
                "after": {k: round(v, 4) for k, v in (
                    keeper.interpolation["chosen"] if keeper.interpolation else
                    {"p@10": best.p10, "map@10": best.map10}).items() if k != "share"},
                "best_epoch": {"p@10": round(best.p10, 4), "map@10": round(best.map10, 4)},
                "per_epoch": [
                    {"epoch": e.epoch, "loss": round(e.loss, 4), "p@10": round(e.p10, 4),
                     "map@10": round(e.map10, 4), "seconds": round(e.seconds, 1)}
                    for e in epochs
                ],
            },
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "software": {"python": platform.python_version(), **_versions()},
        }

    keeper = BestEpochKeeper(out_dir, base.model, card, log_epoch,
                             proxies_of=lambda: (trainer.proxies.numpy(), data.labels,
                                                 recipe.scale))

    def on_sigint(signum, frame):
        if trainer.stop_requested.is_set():  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        log_epoch("interrupted: stopping after this batch (Ctrl-C again to stop at once)")
        trainer.stop_requested.set()

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        trainer.prepare()
        trainer.measure_base()
        log_epoch(f"{len(trainer.train_items)} training and {len(trainer.val_items)} validation "
                  f"images, {len(data.labels)} labels; base model validation P@10 "
                  f"{trainer.before['p@10']:.4f} mAP@10 {trainer.before['map@10']:.4f}")
        trainer.train(keeper.on_epoch)
        if trainer.best_weights is not None:
            keeper.interpolated(*trainer.interpolate_toward_base())
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    result.epochs = keeper.epochs
    result.skipped = trainer.skipped
    result.seconds = time.perf_counter() - started
    result.card = keeper.finish(result.interrupted)
    return result


CardOf = Callable[[list[EpochResult], EpochResult, str, bool], dict]


class BestEpochKeeper:
    """The model directory of a fine-tune as it runs: the weights of the best epoch so far and
    a card of every epoch so far, rewritten after each one, so a run stopped at any point
    (Ctrl-C, a crash) leaves a usable model. ``card_of(epochs, best, digest, interrupted)``
    makes the card."""

    def __init__(self, out_dir: Path, network, card_of: CardOf, log_epoch: Callable[[str], None],
                 proxies_of: Callable[[], tuple] | None = None):
        self.out_dir = out_dir
        self.network = network  # the Keras model being trained, whose weights are saved
        self.card_of = card_of
        self.log_epoch = log_epoch
        # ``(proxies, labels, scale)`` now: the best epoch's are written beside its weights
        # (imgsearch/labels.py), so that the tuned model predicts labels as it indexes.
        self.proxies_of = proxies_of
        self.proxies: dict | None = None  # the card's entry for the best epoch's proxies
        self.epochs: list[EpochResult] = []
        self.best: EpochResult | None = None
        self.digest: str | None = None  # the best epoch's weights' digest
        # After training: the share toward the base network that was written, and every
        # share tried (Trainer.interpolate_toward_base); None until then, or when interrupted.
        self.interpolation: dict | None = None

    def on_epoch(self, epoch: EpochResult, is_best: bool) -> None:
        from .weights import weights_digest

        self.epochs.append(epoch)
        mark = " *" if is_best else ""
        self.log_epoch(f"epoch {epoch.epoch}: loss {epoch.loss:.4f}, validation P@10 "
                       f"{epoch.p10:.4f} mAP@10 {epoch.map10:.4f} ({epoch.seconds:.0f} s){mark}")
        if is_best:
            self.best, self.digest = epoch, weights_digest(self.network)
            if self.proxies_of is not None:
                from .labels import write_proxies

                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.proxies = write_proxies(self.out_dir, *self.proxies_of())
            write_model_dir(self.out_dir, self.network, self._card(interrupted=False))
        elif self.best is not None:  # the card records every epoch run so far
            write_model_dir(self.out_dir, None, self._card(interrupted=False))

    def interpolated(self, chosen: dict, tried: list[dict]) -> None:
        """The network now holds the best epoch moved toward the base by ``chosen["share"]``:
        write it (a share of 1 is the best epoch's weights, already written)."""
        from .weights import weights_digest

        self.interpolation = {
            "chosen": {k: round(v, 4) for k, v in chosen.items()},
            "tried": [{k: round(v, 4) for k, v in row.items()} for row in tried],
        }
        self.log_epoch("toward the base network: " + ", ".join(
            f"share {row['share']:g} P@10 {row['p@10']:.4f}" for row in tried)
            + f"; wrote share {chosen['share']:g}")
        if chosen["share"] != 1:
            self.digest = weights_digest(self.network)
            write_model_dir(self.out_dir, self.network, self._card(interrupted=False))
        else:
            write_model_dir(self.out_dir, None, self._card(interrupted=False))

    def finish(self, interrupted: bool) -> dict | None:
        """The final card, written (None when no epoch ended: nothing was written)."""
        if self.best is None:
            return None
        card = self._card(interrupted)
        write_model_dir(self.out_dir, None, card)
        return card

    def _card(self, interrupted: bool) -> dict:
        card = self.card_of(self.epochs, self.best, self.digest, interrupted)
        if self.proxies is not None:
            card["proxies"] = self.proxies
        card["interpolation"] = self.interpolation
        return card


def sample_per_label(items: list[LabelledImage], n: int, seed: int) -> list[LabelledImage]:
    """At most ``n`` images per (label, split), chosen with the seed (small test runs)."""
    rng = random.Random(seed)
    groups: dict[tuple, list[LabelledImage]] = defaultdict(list)
    for item in sorted(items, key=lambda i: i.rel_path):
        groups[(item.label, item.split)].append(item)
    out = []
    for key in sorted(groups, key=str):
        group = groups[key]
        rng.shuffle(group)
        out += group[:n]
    return out


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__}
