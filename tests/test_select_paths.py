"""The branch-free select (``_numba_bits.pick``) and the byte-at-a-time backward from packed bits.

Both change only how a kernel computes its result, so every case compares with the NumPy
reference bit for bit, on both sides of the serial/parallel switch (SERIAL_BELOW elements), on rows
whose first mask bit is and is not on a byte boundary, and with NaN/Inf where elements are dropped
(a select gives exactly 0 there; a multiply by a 0/1 flag would give NaN).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._numba_kernels import SERIAL_BELOW, SERIAL_BELOW_BITS
from fastdrop._numba_bits import pick
from fastdrop._numba_variants import GAUSSIAN_SERIAL_BELOW, box_muller_pair

from conftest import assert_bitwise_equal

DTYPES = [np.float16, np.float32, np.float64]


def _values(shape, dtype, seed):
    values = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    flat = values.reshape(-1)
    flat[::7] = np.nan
    flat[3::11] = np.inf
    flat[5::13] = -np.inf
    return values


def _seed_only(mask):
    return fastdrop.DropoutMask(mask.p, mask.seed, mask.offset, mask.shape, mask.input_shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [1, 3, 7, 8, 9, 15, 16, 17, 4095, 4097])
def test_backward_from_bits_rows_on_and_off_byte_boundaries(dtype, width):
    # Rows of `width` elements: a width that is not a multiple of 8 starts most rows mid-byte.
    shape = (5, width)
    dy = _values(shape, dtype, width)
    dy_host = dy.copy()
    _, mask = fastdrop.dropout(dy, 0.4, seed=21, offset=3, keep_bits=True)
    expected = reference.dropout_backward(dy_host, 0.4, seed=21, offset=3)
    assert_bitwise_equal(fastdrop.dropout_backward(dy, mask), expected)
    assert_bitwise_equal(fastdrop.dropout_backward(dy, _seed_only(mask)), expected)
    assert_bitwise_equal(dy, dy_host)  # the input is untouched


@pytest.mark.parametrize("n", [SERIAL_BELOW_BITS - 9, SERIAL_BELOW_BITS + 13])
@pytest.mark.parametrize("order", ["C", "F", "strided", "reversed"])
def test_backward_from_bits_layouts_serial_and_parallel(n, order):
    rows = 4
    width = n // rows
    base = _values((rows, 2 * width), np.float32, n)
    views = {
        "C": np.ascontiguousarray(base[:, :width]),
        "F": np.asfortranarray(base[:, :width]),
        "strided": base[:, ::2],
        "reversed": base[::-1, width - 1 :: -1],
    }
    dy = views[order]
    _, mask = fastdrop.dropout(dy, 0.25, seed=8, offset=1, keep_bits=True)
    expected = reference.dropout_backward(np.array(dy), 0.25, seed=8, offset=1)
    assert_bitwise_equal(fastdrop.dropout_backward(dy, mask), expected)
    out = np.full(dy.shape, 7.0, dtype=np.float32)
    fastdrop.dropout_backward(dy, mask, out=out)
    assert_bitwise_equal(out, expected)


@pytest.mark.parametrize("mask_shape", [(6, 1, 1), (1, 5, 9), (6, 5, 1), (6, 1, 9)])
def test_backward_from_bits_broadcast_masks(mask_shape):
    dy = _values((6, 5, 9), np.float64, 4)
    _, mask = fastdrop.dropout(dy, 0.5, seed=2, offset=6, mask_shape=mask_shape, keep_bits=True)
    expected = reference.dropout_backward(dy.copy(), 0.5, seed=2, offset=6, mask_shape=mask_shape)
    assert_bitwise_equal(fastdrop.dropout_backward(dy, mask), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [100, SERIAL_BELOW - 1, SERIAL_BELOW, 2 * SERIAL_BELOW + 5])
def test_forward_and_variants_with_nonfinite_values_both_sides_of_the_switch(dtype, n):
    x = _values(n, dtype, n)
    x_host = x.copy()
    y, _ = fastdrop.dropout(x, 0.3, seed=5, offset=2)
    assert_bitwise_equal(y, reference.dropout(x_host, 0.3, seed=5, offset=2))
    y, _ = fastdrop.alpha_dropout(x, 0.3, seed=5, offset=2)
    assert_bitwise_equal(y, reference.alpha_dropout(x_host, 0.3, seed=5, offset=2))
    x2 = x.reshape(1, -1) if n % 4 else x.reshape(-1, 4)
    bias = np.random.default_rng(1).standard_normal(x2.shape[-1]).astype(dtype)
    residual = np.random.default_rng(2).standard_normal(x2.shape).astype(dtype)
    y, _ = fastdrop.bias_dropout_add(x2, bias, residual, 0.3, seed=5, offset=2)
    with np.errstate(invalid="ignore"):  # inf + -inf in the kept values of the oracle
        expected = reference.bias_dropout_add(x2.copy(), bias, residual, 0.3, seed=5, offset=2)
    assert_bitwise_equal(y, expected)


def test_dropped_nan_gives_exact_zero_with_the_sign_of_plus_zero():
    x = np.full(SERIAL_BELOW * 2, np.nan, dtype=np.float32)
    for n in (64, x.size):  # serial twin and parallel kernel
        y, mask = fastdrop.dropout(x[:n], 0.5, seed=1)
        keep = mask.to_array()
        assert np.isnan(y[keep]).all()
        dropped = y[~keep]
        assert dropped.size > 0
        assert (dropped.view(np.uint32) == 0).all()  # +0.0, not -0.0 and not NaN


@numba.njit
def _pick_many(flags, a, b):
    out = np.empty(flags.size, dtype=np.float64)
    for i in range(flags.size):
        out[i] = pick(flags[i], a[i], b)
    return out


@numba.njit
def _pick_mixed(flag, a, b):
    return pick(flag, a, b)


def test_pick_chooses_elementwise_and_unifies_types():
    flags = np.array([True, False, True, False])
    a = np.array([1.5, np.nan, np.nan, 2.0])
    got = _pick_many(flags, a, -3.0)
    np.testing.assert_array_equal(got, [1.5, -3.0, np.nan, -3.0])
    assert _pick_mixed(True, np.float32(2.5), 1) == 2.5
    assert _pick_mixed(False, np.float32(2.5), 1) == 1.0
    assert _pick_mixed(False, np.int64(4), np.int32(-2)) == -2


def test_pick_rejects_a_non_boolean_condition():
    with pytest.raises(numba.core.errors.TypingError):
        _pick_mixed(1, 2.0, 3.0)


# ------------------------------------------------------------------ Gaussian: branch-free Box-Muller

@numba.njit
def _kernel_normals(radius_words, angle_words):
    out = np.empty(2 * radius_words.size)
    for i in range(radius_words.size):
        z_even, z_odd = box_muller_pair(np.uint64(radius_words[i]), np.uint64(angle_words[i]))
        out[2 * i] = z_even
        out[2 * i + 1] = z_odd
    return out


def _edge_words():
    """Radius words at both ends, at every power of two (the frexp exponent changes) and around
    the sqrt(1/2) mantissa switch; angle words at and beside every octant boundary."""
    radius = {0, 1, 2, 2**32 - 1, 2**32 - 2}
    for k in range(33):
        radius.update({2**k - 2, 2**k - 1, 2**k} if k else {0})
        switch = int(2**k * 0.7071067811865476 * 2)  # word + 1 near sqrt(1/2) * 2**(k+1)
        radius.update(w for w in range(switch - 3, switch + 3) if 0 <= w < 2**32)
    radius = sorted(w for w in radius if 0 <= w < 2**32)
    angle = sorted({(o << 29) + d for o in range(8) for d in (0, 1, 2**28, 2**29 - 2, 2**29 - 1)})
    pairs = [(r, a) for r in radius for a in angle]
    return np.array([p[0] for p in pairs], np.uint32), np.array([p[1] for p in pairs], np.uint32)


def test_box_muller_pair_matches_the_reference_on_edge_words(monkeypatch):
    radius_words, angle_words = _edge_words()
    interleaved = np.empty(2 * radius_words.size, dtype=np.uint32)
    interleaved[0::2], interleaved[1::2] = radius_words, angle_words
    # The reference draws its words from random_bits: hand it these instead.
    monkeypatch.setattr(reference, "random_bits", lambda n, *, seed, offset=0: interleaved[:n])
    expected = reference.standard_normals(interleaved.size, seed=0)
    got = _kernel_normals(radius_words, angle_words)
    np.testing.assert_array_equal(got.view(np.uint64), expected.view(np.uint64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 5, 4095, 4097, GAUSSIAN_SERIAL_BELOW - 1, GAUSSIAN_SERIAL_BELOW + 3])
def test_gaussian_dropout_every_start_parity(dtype, n):
    x = np.random.default_rng(n).standard_normal(n).astype(dtype)
    for offset in (0, 1, 2, 3, 2**64 - n - 1):
        y, noise = fastdrop.gaussian_dropout(x, 0.2, seed=17, offset=offset)
        assert_bitwise_equal(y, reference.gaussian_dropout(x, 0.2, seed=17, offset=offset))
        dx = fastdrop.gaussian_dropout_backward(x, noise)
        assert_bitwise_equal(dx, reference.gaussian_dropout_backward(x, 0.2, seed=17, offset=offset))


def test_cached_kernel_scalars_keep_the_sign_of_zero():
    from fastdrop._numba_backend import compute_scalars

    assert compute_scalars(np.dtype(np.float32), 1.0, 0.0, 0.0)[2].tobytes() == np.float32(0.0).tobytes()
    negative = compute_scalars(np.dtype(np.float32), 1.0, 0.0, -0.0)[2]
    assert negative.tobytes() == np.float32(-0.0).tobytes()
    assert compute_scalars(np.dtype(np.float16), 0.1)[0].dtype == np.float32  # the compute dtype


def test_unpacking_multiply_gives_bit_k_in_byte_k_for_every_byte():
    from fastdrop._numba_kernels import _BIT_PER_BYTE, _SPREAD_BYTE

    every = np.arange(256, dtype=np.uint64)
    spread = ((every * _SPREAD_BYTE) & _BIT_PER_BYTE).astype("<u8")
    flags = spread.view(np.uint8).reshape(256, 8) != 0
    expected = np.unpackbits(every.astype(np.uint8)[:, None], axis=1, bitorder="little").astype(bool)
    np.testing.assert_array_equal(flags, expected)


def test_cached_kernel_scalars_take_any_number_of_values():
    from fastdrop._numba_backend import compute_scalars

    values = (1.0, -0.0, 0.0, 2.5, -1.0, 3.0, 4.0, 5.0, 6.0, -0.0)  # more than eight
    got = compute_scalars(np.dtype(np.float64), *values)
    assert [v.tobytes() for v in got] == [np.float64(v).tobytes() for v in values]
