"""The CPU kernels' float16 conversions against NumPy's, bit for bit."""

from __future__ import annotations

import numba
import numpy as np

from fastdrop._numba_half import float_to_half, half_to_float


@numba.njit(cache=False)
def _widen(bits, out):
    for i in range(bits.size):
        out[i] = half_to_float(bits[i])


@numba.njit(cache=False)
def _narrow(values, out):
    for i in range(values.size):
        out[i] = float_to_half(values[i])


def test_every_half_widens_exactly():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = np.empty(bits.size, dtype=np.float32)
    _widen(bits, got)
    expected = bits.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def _float32_sample() -> np.ndarray:
    """Every sign, exponent and top-10 mantissa pattern with the 13 dropped bits at the rounding
    edges (0, 1, just below / at / above the tie, all ones), plus 2**20 random patterns."""
    top = np.arange(1 << 19, dtype=np.uint32) << np.uint32(13)  # sign, exponent, 10 mantissa bits
    low = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF], dtype=np.uint32)
    edges = (top[:, None] | low[None, :]).ravel()
    rng = np.random.default_rng(0)
    randoms = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([edges, randoms]).view(np.float32)


def test_float32_rounds_to_half_as_numpy():
    values = _float32_sample()
    got = np.empty(values.size, dtype=np.uint16)
    _narrow(values, got)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    mismatched = np.flatnonzero(got != expected)
    assert mismatched.size == 0, [
        (hex(int(values.view(np.uint32)[i])), hex(int(got[i])), hex(int(expected[i]))) for i in mismatched[:5]
    ]
