"""Converted OpenVINO models on disk, one per model version, checked before every use.

Converting the ResNet50 forward pass takes about 7 s and a few hundred MB of memory; reading
the converted model back takes well under a second. Each entry is a folder under
``<cache_dir>/openvino/`` named after a digest of the model version, holding the OpenVINO IR
(``model.xml`` + ``model.bin``, fp32) and ``manifest.json``: the model version, the OpenVINO
version that converted it and the SHA-256 of both files. An entry whose files do not match
their digests (a torn copy, a disk error, an edit) or that another OpenVINO version wrote is
converted again, never used.

Entries are written into a temporary folder and renamed into place, so two processes that
convert at once (two gunicorn workers on a fresh machine) both end with a whole entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .digest import digest_problem, file_digests

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# An OpenVINO model on disk (its "IR"): the graph and its weights.
IR_FILES = ("model.xml", "model.bin")


class IRCache:
    def __init__(self, cache_dir: Path):
        self.root = Path(cache_dir) / "openvino"

    def entry(self, version: str) -> Path:
        return self.root / hashlib.sha256(version.encode()).hexdigest()[:24]

    def get_or_convert(self, version: str, convert: Callable):
        """The OpenVINO model of ``version``: read from the cache when its entry is whole,
        else ``convert()``-ed and stored."""
        import openvino as ov

        entry = self.entry(version)
        problem = self.check(entry, version)
        if problem is None:
            return ov.Core().read_model(entry / "model.xml")
        if problem != "missing":
            log.warning("cached OpenVINO model %s is unusable (%s): converting it again",
                        entry, problem)
        model = convert()
        self.store(entry, version, model)
        return model

    def check(self, entry: Path, version: str) -> str | None:
        """None when ``entry`` holds ``version`` intact, else what is wrong with it."""
        import openvino as ov

        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except FileNotFoundError:
            return "missing"
        except (OSError, ValueError) as exc:
            return f"unreadable manifest: {exc}"
        if not isinstance(manifest, dict) or manifest.get("model_version") != version:
            return "manifest of another model"
        if manifest.get("openvino") != ov.__version__:
            return f"converted by OpenVINO {manifest.get('openvino')}, this is {ov.__version__}"
        return digest_problem(entry, IR_FILES, manifest.get("sha256") or {})

    def store(self, entry: Path, version: str, model) -> None:
        import openvino as ov

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        except OSError as exc:
            # A read-only or full cache costs the next start another conversion, nothing more.
            log.warning("could not cache the OpenVINO model in %s: %s", self.root, exc)
            return
        try:
            # fp32 weights: fp16 compression would change the vectors (and the model version).
            ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)
            manifest = {
                "model_version": version,
                "openvino": ov.__version__,
                "sha256": file_digests(tmp, IR_FILES),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if entry.exists():  # a damaged entry: make way for the new one
                shutil.rmtree(entry, ignore_errors=True)
            try:
                os.rename(tmp, entry)
            except OSError:  # another process stored it first; theirs is as good
                log.info("OpenVINO model %s was stored by another process", entry)
        except OSError as exc:
            log.warning("could not cache the OpenVINO model in %s: %s", self.root, exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
