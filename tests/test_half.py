"""The CPU kernels' float16 conversions against NumPy's, bit for bit."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fastdrop import _numba_half

IMPLEMENTATIONS = [
    "bits",
    pytest.param("native", marks=pytest.mark.skipif(
        not _numba_half.NATIVE_HALF, reason="no half conversion instructions on this CPU")),
]


def _kernels(kind):
    widen_one = getattr(_numba_half, f"half_to_float_{kind}")
    narrow_one = getattr(_numba_half, f"float_to_half_{kind}")

    @numba.njit(cache=False)
    def widen(bits, out):
        for i in range(bits.size):
            out[i] = widen_one(bits[i])

    @numba.njit(cache=False)
    def narrow(values, out):
        for i in range(values.size):
            out[i] = narrow_one(values[i])

    return widen, narrow


def _signalling_nan(values: np.ndarray) -> np.ndarray:
    bits = values.view(np.uint32)
    return np.isnan(values) & ((bits & np.uint32(0x400000)) == 0)


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_every_half_widens_exactly(kind):
    widen, _ = _kernels(kind)
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = np.empty(bits.size, dtype=np.float32)
    widen(bits, got)
    expected = bits.view(np.float16).astype(np.float32)
    same = got.view(np.uint32) == expected.view(np.uint32)
    if kind == "native":  # hardware quiets signalling NaNs (payload kept); nothing else differs
        quieted = expected.view(np.uint32) | np.uint32(0x400000)
        same |= _signalling_nan(expected) & (got.view(np.uint32) == quieted)
    assert same.all(), [hex(int(b)) for b in bits[~same][:5]]


def _float32_sample() -> np.ndarray:
    """Every sign, exponent and top-10 mantissa pattern with the 13 dropped bits at the rounding
    edges (0, 1, just below / at / above the tie, all ones), plus 2**20 random patterns."""
    top = np.arange(1 << 19, dtype=np.uint32) << np.uint32(13)  # sign, exponent, 10 mantissa bits
    low = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF], dtype=np.uint32)
    edges = (top[:, None] | low[None, :]).ravel()
    rng = np.random.default_rng(0)
    randoms = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([edges, randoms]).view(np.float32)


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_float32_rounds_to_half_as_numpy(kind):
    _, narrow = _kernels(kind)
    values = _float32_sample()
    if kind == "native":  # signalling NaNs come out quiet; kernels never narrow one (see module)
        values = values[~_signalling_nan(values)]
    got = np.empty(values.size, dtype=np.uint16)
    narrow(values, got)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    mismatched = np.flatnonzero(got != expected)
    assert mismatched.size == 0, [
        (hex(int(values.view(np.uint32)[i])), hex(int(got[i])), hex(int(expected[i]))) for i in mismatched[:5]
    ]


def test_named_generic_cpu_uses_the_bit_conversions(tmp_path):
    """With NUMBA_CPU_NAME=generic (portable caches) x86-64 has no F16C: LLVM's half conversions
    would become helper calls Numba does not link (a crash), so the integer versions must be
    chosen, and float16 dropout must still equal the reference."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, fastdrop\n"
        "from fastdrop import _numba_half, reference\n"
        "x = np.random.default_rng(0).standard_normal(5000).astype(np.float16)\n"
        "y, _ = fastdrop.dropout(x, 0.3, seed=2, offset=1)\n"
        "expected = reference.dropout(x, 0.3, seed=2, offset=1)\n"
        "assert np.array_equal(y.view(np.uint16), expected.view(np.uint16))\n"
        "print(_numba_half.NATIVE_HALF)\n"
    )
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path))
    env.pop("NUMBA_CPU_FEATURES", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    import platform

    if platform.machine().lower() in ("x86_64", "amd64"):
        assert result.stdout.strip() == "False"
