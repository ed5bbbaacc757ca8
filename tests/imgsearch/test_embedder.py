"""The embedder's precision: what ``auto`` asks for, and that the precision each runtime
reports is the one it computes in, on whatever CPU runs the suite.

oneDNN fixes its maths mode once per process, so the precisions are compared in fresh Python
processes embedding the same real photo, on each runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imgsearch.embedder import BF16_CPU_FLAGS, cpu_flags, resolve_precision
from imgsearch.settings import PROJECT_ROOT


@pytest.mark.parametrize("flags,expected", [
    ({"avx2", "fma", "avx512f", "avx512_bf16"}, "bf16"),
    ({"avx2", "amx_tile", "amx_bf16"}, "bf16"),
    ({"avx2", "fma", "avx512f"}, "fp32"),  # AVX-512 alone only emulates bf16
    (set(), "fp32"),
])
def test_auto_asks_for_what_the_cpu_has(flags, expected):
    assert resolve_precision("auto", frozenset(flags)) == expected


@pytest.mark.parametrize("requested", ["fp32", "bf16"])
def test_an_explicit_precision_stands(requested):
    assert resolve_precision(requested, frozenset()) == requested
    assert resolve_precision(requested, BF16_CPU_FLAGS) == requested


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 amx_bf16\n\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


EMBED_CAT = """
import io, json
from skimage import data
from PIL import Image
from imgsearch.embedder import Embedder
from imgsearch.settings import Settings
e = Embedder(Settings.from_env())
png = io.BytesIO()
Image.fromarray(data.chelsea()).save(png, "PNG")
print(json.dumps({"precision": e.precision, "vector": e.embed_bytes(png.getvalue()).tolist()}))
"""


def _embed_in_fresh_process(precision: str, runtime: str) -> tuple[str, np.ndarray]:
    env = dict(os.environ, IMGSEARCH_PRECISION=precision, IMGSEARCH_RUNTIME=runtime,
               PYTHONPATH=str(PROJECT_ROOT))
    out = subprocess.run([sys.executable, "-c", EMBED_CAT], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["precision"], np.array(result["vector"], np.float32)


# What each runtime computes in when bf16 is asked for, per kind of CPU, as measured:
# - AVX2 only (AMD EPYC Zen 3): neither has native bf16; both compute fp32.
# - AVX-512 + AVX512_BF16 + VNNI, no AMX (AMD EPYC Zen 5, 2026-12-01): OpenVINO bf16;
#   TensorFlow 2.21's oneDNN ignores the bf16 maths mode and stays fp32, bit for bit.
# - AVX-512 + AMX (Intel Sapphire Rapids, 2026-11): both bf16 (TensorFlow at 1.44x fp32,
#   docs/BENCHMARKS.md).
COMPUTED_IN_BF16 = {
    "avx2": {"tensorflow": "fp32", "openvino": "fp32"},
    "avx512_bf16": {"tensorflow": "fp32", "openvino": "bf16"},
    "amx": {"tensorflow": "bf16", "openvino": "bf16"},
}


def cpu_kind(flags: frozenset[str]) -> str | None:
    """One of COMPUTED_IN_BF16's kinds, or None for a CPU none of them describes."""
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    if "avx2" in flags and "avx512f" not in flags:
        return "avx2"
    return None


@pytest.mark.parametrize("flags,kind", [
    ({"avx2", "fma"}, "avx2"),
    ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, "avx512_bf16"),
    ({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "amx"),
    ({"avx2", "avx512f"}, None),  # e.g. Skylake-SP: not a kind measured yet
])
def test_cpu_kinds(flags, kind):
    assert cpu_kind(frozenset(flags)) == kind


@pytest.mark.parametrize("runtime", ["tensorflow", "openvino"])
def test_each_runtime_reports_the_precision_it_computes_in(runtime):
    p32, fp32 = _embed_in_fresh_process("fp32", runtime)
    p16, bf16 = _embed_in_fresh_process("bf16", runtime)
    auto, auto_vector = _embed_in_fresh_process("auto", runtime)
    assert p32 == "fp32"
    assert np.linalg.norm(bf16) == pytest.approx(1.0, abs=1e-5)
    if p16 == "fp32":
        # Said fp32: computed fp32, bit for bit what an fp32 run gives.
        assert np.array_equal(fp32, bf16)
    else:
        assert p16 == "bf16"
        assert not np.array_equal(fp32, bf16)  # the kernels really rounded to bf16
        # TensorFlow rounds only the inputs of convolutions and matrix products (0.9998
        # measured on AMX); OpenVINO also keeps activations in bf16 between layers, so its
        # bound is looser (0.99997 measured for this photo on the Zen 5 EPYC, 2026-12-01).
        assert float(fp32 @ bf16) >= (0.9998 if runtime == "tensorflow" else 0.998)
    # auto asks for bf16 exactly where the CPU has it, and then computes what bf16 does.
    expected_auto = p16 if resolve_precision("auto") == "bf16" else "fp32"
    assert auto == expected_auto
    assert np.array_equal(auto_vector, bf16 if auto == "bf16" else fp32)
    kind = cpu_kind(cpu_flags())
    if kind is not None:
        assert p16 == COMPUTED_IN_BF16[kind][runtime], f"{runtime} on a {kind} CPU"
