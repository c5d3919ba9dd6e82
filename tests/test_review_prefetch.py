"""Review tests for the prefetching Philox phase, the 32-bit keep compare, the flag-byte bit
packing and the threshold-0 shortcuts (commits d2ef1ef and 3c33ec1), against the NumPy
reference. Sizes straddle the serial/parallel switch (SERIAL_BELOW elements) and CHUNK."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._numba_kernels import CHUNK, SERIAL_BELOW

from conftest import assert_bitwise_equal

TOP = 2**64


def _normal(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


VIEWS = {
    "contiguous": (lambda shape: shape, lambda a: a),
    "negative": (lambda shape: shape, lambda a: a[::-1, ::-1]),
    "every_other": (lambda shape: (shape[0], 2 * shape[1] + 1), lambda a: a[:, 1::2]),
    "transposed": (lambda shape: shape[::-1], lambda a: a.T),
}


def _view(view, shape, dtype, seed):
    base_shape, pick = VIEWS[view]
    return pick(_normal(base_shape(shape), dtype, seed))


# Widths: whole CHUNKs only, whole plus a partial one; rows 3 -> > SERIAL_BELOW elements (parallel).
@pytest.mark.parametrize("view", sorted(VIEWS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [3 * CHUNK, 3 * CHUNK + 5])
def test_parallel_long_rows_views_and_unaligned_offsets(view, dtype, width):
    shape = (3, width)
    assert shape[0] * shape[1] >= SERIAL_BELOW
    n = shape[0] * shape[1]
    for offset in (1, 2, 3, TOP - n - 1):
        x = _view(view, shape, dtype, offset % 7)
        x_host = x.copy()
        expected = reference.dropout(x_host, 0.3, seed=77, offset=offset)
        y, mask = fastdrop.dropout(x, 0.3, seed=77, offset=offset, keep_bits=True)
        assert_bitwise_equal(y, expected)
        keep = reference.keep_mask(shape, 0.3, seed=77, offset=offset)
        np.testing.assert_array_equal(mask.bits, reference.pack_bits(keep))
        from_seed = fastdrop.DropoutMask(mask.p, mask.seed, mask.offset, mask.shape, mask.input_shape)
        assert_bitwise_equal(fastdrop.dropout_backward(x, from_seed), expected)
        assert_bitwise_equal(fastdrop.dropout_backward(x, mask), expected)


@pytest.mark.parametrize("rows", [SERIAL_BELOW // CHUNK - 1, SERIAL_BELOW // CHUNK])  # serial twin, parallel kernel
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 5])
def test_serial_and_parallel_sides_and_thread_counts(rows, offset):
    shape = (rows, CHUNK)
    x_host = _normal(shape, np.float32, rows)
    expected = reference.dropout(x_host, 0.45, seed=3, offset=offset)
    keep = reference.keep_mask(shape, 0.45, seed=3, offset=offset)
    threads = numba.get_num_threads()
    try:
        for n_threads in sorted({1, threads}):
            numba.set_num_threads(n_threads)
            y, mask = fastdrop.dropout(x_host, 0.45, seed=3, offset=offset, keep_bits=True)
            assert_bitwise_equal(y, expected)
            np.testing.assert_array_equal(mask.bits, reference.pack_bits(keep))
            # In place through a reversed view: rank-3 strided views, prefetching on negative strides.
            x = x_host[::-1].copy()[::-1]
            fastdrop.dropout(x, 0.45, seed=3, offset=offset, out=x)
            assert_bitwise_equal(x, expected)
    finally:
        numba.set_num_threads(threads)


@pytest.mark.parametrize("n", [CHUNK, 2 * CHUNK, 2 * CHUNK + 3])
def test_end_of_the_counter_space(n):
    """The last words of the stream (offset + n == 2**64 and just below), every alignment:
    the tail counter of an unaligned whole CHUNK is the stream's last counter."""
    x = _normal(n, np.float64, n)
    for slack in range(5):
        offset = TOP - n - slack
        y, mask = fastdrop.dropout(x, 0.5, seed=2**64 - 1, offset=offset, keep_bits=True)
        assert_bitwise_equal(y, reference.dropout(x, 0.5, seed=2**64 - 1, offset=offset))
        keep = reference.keep_mask((n,), 0.5, seed=2**64 - 1, offset=offset)
        np.testing.assert_array_equal(mask.bits, reference.pack_bits(keep))


def _p_for_threshold(t: int) -> float:
    """A p whose contract threshold is exactly t (1 <= t < 2**32): (2**32 - t) / 2**32 is exact."""
    p = (2**32 - t) / 2**32
    assert round((1.0 - p) * 2**32) == t
    return p


@pytest.mark.parametrize("offset", [0, 3])
def test_threshold_exactly_at_a_word(offset):
    """keep iff word < t, checked where t equals a word of the draw (dropped) and that word + 1
    (kept): the 32-bit `word <= t - 1` compare, including the largest and smallest words."""
    n = 2 * CHUNK + 7
    words = reference.random_bits(n, seed=9, offset=offset).astype(np.int64)
    picks = {int(words.argmax()), int(words.argmin()), CHUNK - 1, CHUNK, CHUNK + 3, n - 1}
    x = _normal(n, np.float32, 1)
    residual = _normal(n, np.float32, 2)
    for i in sorted(picks):
        for t in (int(words[i]), int(words[i]) + 1):
            if not 1 <= t < 2**32:
                continue
            p = _p_for_threshold(t)
            y, mask = fastdrop.dropout(x, p, seed=9, offset=offset, keep_bits=True)
            assert_bitwise_equal(y, reference.dropout(x, p, seed=9, offset=offset))
            keep = reference.keep_mask((n,), p, seed=9, offset=offset)
            assert bool(keep[i]) == (t > words[i])
            np.testing.assert_array_equal(mask.bits, reference.pack_bits(keep))
            y, _ = fastdrop.alpha_dropout(x, p, seed=9, offset=offset)
            assert_bitwise_equal(y, reference.alpha_dropout(x, p, seed=9, offset=offset))
            y, _ = fastdrop.bias_dropout_add(x, None, residual, p, seed=9, offset=offset)
            assert_bitwise_equal(y, reference.bias_dropout_add(x, None, residual, p, seed=9, offset=offset))


@pytest.mark.parametrize("p", [1e-12, 1.0 - 1e-12, 1.0])  # thresholds 2**32, 0, 0
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_thresholds_with_specials(p, dtype):
    shape = (2, 2 * CHUNK + 1)
    x = _normal(shape, dtype, 4)
    x[0, :5] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
    residual = _normal(shape, dtype, 5)
    residual[1, :3] = [-0.0, np.nan, 0.0]
    for offset in (1, TOP - x.size):
        y, mask = fastdrop.dropout(x, p, seed=8, offset=offset, keep_bits=True)
        assert_bitwise_equal(y, reference.dropout(x, p, seed=8, offset=offset))
        np.testing.assert_array_equal(
            mask.bits, reference.pack_bits(reference.keep_mask(shape, p, seed=8, offset=offset)))
        assert_bitwise_equal(fastdrop.dropout_backward(x, mask), reference.dropout(x, p, seed=8, offset=offset))
        with np.errstate(invalid="ignore", over="ignore"):  # the reference's inf * 0 at p = 1
            expected = reference.alpha_dropout(x, p, seed=8, offset=offset)
        y, _ = fastdrop.alpha_dropout(x, p, seed=8, offset=offset)
        assert_bitwise_equal(y, expected)
        with np.errstate(invalid="ignore", over="ignore"):
            expected = reference.bias_dropout_add(x, x[0], residual, p, seed=8, offset=offset)
            y, _ = fastdrop.bias_dropout_add(x, x[0], residual, p, seed=8, offset=offset)
        assert_bitwise_equal(y, expected)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_dropout_add_non_contiguous_long(with_bias, dtype):
    """Whole CHUNK tasks crossing rows, with x / residual / out that are strided views (the
    empty prefetch stand-ins) or contiguous (the flat views), in place too."""
    rows, width = 9, 1000  # 9000 elements: two whole tasks crossing rows and a partial one
    bias = _normal(width, dtype, 3) if with_bias else None
    x_base = _normal((rows, 2 * width), dtype, 1)
    r_base = _normal((rows, 2 * width), dtype, 2)
    x, r = x_base[:, ::2], r_base[:, 1::2]  # (rows, width) views, not C-contiguous
    for offset in (2, TOP - rows * width - 3):
        expected = reference.bias_dropout_add(x, bias, r, 0.35, seed=6, offset=offset)
        y, _ = fastdrop.bias_dropout_add(x, bias, r, 0.35, seed=6, offset=offset)
        assert_bitwise_equal(y, expected)
        out = np.zeros((rows, 3 * width), dtype)[:, ::3]
        fastdrop.bias_dropout_add(x, bias, r, 0.35, seed=6, offset=offset, out=out)
        assert_bitwise_equal(out, expected)
        r_contiguous = np.ascontiguousarray(r)
        fastdrop.bias_dropout_add(x, bias, r_contiguous, 0.35, seed=6, offset=offset, out=r_contiguous)
        assert_bitwise_equal(r_contiguous, expected)
        r_strided = r.copy(order="F")  # Fortran order: reshaped by copy, result copied back
        fastdrop.bias_dropout_add(np.asfortranarray(x), bias, r_strided, 0.35, seed=6, offset=offset,
                                  out=r_strided)
        assert_bitwise_equal(r_strided, expected)


@pytest.mark.parametrize("mask_shape", [(1, 2 * CHUNK + 3), (3, 1), (3, 2 * CHUNK + 3)], ids=str)
def test_mask_shapes_bits_and_alpha_long_rows(mask_shape):
    shape = (3, 2 * CHUNK + 3)
    x = _view("negative", shape, np.float64, 11)
    x_host = x.copy()
    for offset in (1, 6):
        keep = reference.keep_mask(mask_shape, 0.6, seed=12, offset=offset)
        y, mask = fastdrop.dropout(x, 0.6, seed=12, offset=offset, mask_shape=mask_shape, keep_bits=True)
        assert_bitwise_equal(y, reference.dropout(x_host, 0.6, seed=12, offset=offset, mask_shape=mask_shape))
        np.testing.assert_array_equal(mask.bits, reference.pack_bits(keep))
        y, _ = fastdrop.alpha_dropout(x, 0.6, seed=12, offset=offset, mask_shape=mask_shape)
        assert_bitwise_equal(y, reference.alpha_dropout(x_host, 0.6, seed=12, offset=offset, mask_shape=mask_shape))
