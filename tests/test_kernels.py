"""Every backend against the NumPy reference, bit for bit (the CuPy leg needs a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._numba_kernels import CHUNK

from conftest import assert_bitwise_equal, to_numpy

# 1e-12 and 1 - 1e-12 round to the extreme thresholds 2**32 (keep all, scale != 1) and 0.
PROBABILITIES = [0.0, 1e-12, 1e-6, 0.1, 0.5, 0.9, 1.0 - 1e-12, 1.0]
SHAPES = [(0,), (1,), (7,), (4099,), (3, 5), (2, 3, 5, 7), (65, 67), (2, 1, 9, 1, 3)]


def _float_dtypes(xp):
    return [np.float32, np.float64, np.float16]


def _input(xp, shape, dtype, seed=0):
    values = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return xp.array(values, copy=True), values


@pytest.mark.parametrize("p", PROBABILITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_match_reference(xp, shape, p):
    for dtype in _float_dtypes(xp):
        x, x_host = _input(xp, shape, dtype)
        y, mask = fastdrop.dropout(x, p, seed=1234567, offset=13)
        expected = reference.dropout(x_host, p, seed=1234567, offset=13)
        assert_bitwise_equal(y, expected)
        dx = fastdrop.dropout_backward(x, mask)
        assert_bitwise_equal(dx, reference.dropout_backward(x_host, p, seed=1234567, offset=13))


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 5, 4095, 4097, (1 << 34) - 3])
@pytest.mark.parametrize("seed", [0, 1, 0xFFFFFFFF, 1 << 32, 2**64 - 1])
def test_seeds_and_offsets(xp, seed, offset):
    x, x_host = _input(xp, (5003,), np.float32, seed=3)
    y, mask = fastdrop.dropout(x, 0.25, seed=seed, offset=offset, keep_bits=True)
    assert_bitwise_equal(y, reference.dropout(x_host, 0.25, seed=seed, offset=offset))
    keep = reference.keep_mask(x_host.shape, 0.25, seed=seed, offset=offset)
    assert_bitwise_equal(mask.bits, reference.pack_bits(keep))
    np.testing.assert_array_equal(to_numpy(mask.to_array()), keep)


LAYOUTS = {
    "c": lambda a: a,
    "fortran": lambda a: a.T.copy().T,
    "reversed": lambda a: a[::-1, ::-2],
    "transposed": lambda a: a.transpose(1, 0, 3, 2),
    "sliced": lambda a: a[1:, :, 2:5],
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "mask_shape", [None, (6, 9, 1, 1), (1, 9, 1, 5), (5,), (6, 1, 4, 1), (1,)], ids=str
)
def test_layouts_and_mask_shapes(xp, layout, mask_shape):
    base_host = np.random.default_rng(7).standard_normal((6, 9, 4, 5))
    view_host = LAYOUTS[layout](base_host)
    view = LAYOUTS[layout](xp.asarray(base_host))
    try:
        fastdrop._validate.mask_shape(mask_shape, view_host.shape)
    except ValueError:
        pytest.skip("this mask shape does not broadcast to this view")
    for keep_bits in (False, True):
        y, mask = fastdrop.dropout(view, 0.4, seed=99, offset=3, mask_shape=mask_shape, keep_bits=keep_bits)
        expected = reference.dropout(view_host, 0.4, seed=99, offset=3, mask_shape=mask_shape)
        assert_bitwise_equal(y, expected)
        assert_bitwise_equal(fastdrop.dropout_backward(view, mask), expected)
        if keep_bits:
            keep = reference.keep_mask(mask.shape, 0.4, seed=99, offset=3)
            assert_bitwise_equal(mask.bits, reference.pack_bits(keep))


@pytest.mark.parametrize("offset", [0, 2, 2**64 - 3 * 8203])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("view", ["contiguous", "negative_stride", "every_third"])
def test_rows_of_several_tasks(xp, view, dtype, offset):
    """Rows long enough for whole-task (prefetching) and partial tasks, through strided views
    and unaligned word offsets up to the end of the counter space."""
    base_host = np.random.default_rng(5).standard_normal((3, 3 * 8203)).astype(dtype)
    pick = {"contiguous": lambda a: a[:, :8203], "negative_stride": lambda a: a[:, ::-3],
            "every_third": lambda a: a[:, 1::3]}[view]
    view_host = pick(base_host)
    x = pick(xp.asarray(base_host))
    y, mask = fastdrop.dropout(x, 0.3, seed=21, offset=offset)
    expected = reference.dropout(view_host, 0.3, seed=21, offset=offset)
    assert_bitwise_equal(y, expected)
    assert_bitwise_equal(fastdrop.dropout_backward(x, mask), expected)


# Views and masks whose words repeat along an axis or whose fast axis is not the last: the CPU
# backend walks channels-last maps channels innermost (_numba_backend._unit_axis_last) and makes
# repeated words once for several rows (select_repeated_rows; gaussian_repeated_rows for the
# Gaussian multipliers). (base shape, view, mask shape)
REPEATED = {
    "channels-last-channel-mask": ((3, 5, 7, 64), lambda a: a.transpose(0, 3, 1, 2), (3, 64, 1, 1)),
    "channels-last-16-channels": ((2, 9, 11, 16), lambda a: a.transpose(0, 3, 1, 2), (2, 16, 1, 1)),
    "channels-last-pixel-mask": ((3, 5, 7, 64), lambda a: a.transpose(0, 3, 1, 2), (3, 1, 5, 7)),
    "channels-last-full-mask": ((2, 5, 7, 64), lambda a: a.transpose(0, 3, 1, 2), None),
    "channels-last-large": ((8, 28, 28, 64), lambda a: a.transpose(0, 3, 1, 2), (8, 64, 1, 1)),
    "sequence-mask": ((3, 301, 37), lambda a: a, (3, 1, 37)),
    "sequence-mask-long-rows": ((2, 6, 2500), lambda a: a, (2, 1, 2500)),
    "sequence-mask-three-chunks": ((2, 5, 9000), lambda a: a, (2, 1, 9000)),
    "sequence-mask-rows-apart": ((3, 41, 80), lambda a: a[:, :, 5:69], (3, 1, 64)),
    "sequence-mask-reversed": ((3, 41, 80), lambda a: a[:, ::-1, :], (3, 1, 80)),
    "sequence-mask-strided-rows": ((3, 41, 160), lambda a: a[:, :, ::2], (3, 1, 80)),
    "first-axis-fastest": ((9, 6, 64), lambda a: a.transpose(2, 1, 0), (64, 1, 1)),
}


@pytest.mark.parametrize("offset", [0, 3, (1 << 34) - 5])
@pytest.mark.parametrize("case", REPEATED)
def test_repeated_words_and_channels_last(xp, case, offset):
    base_shape, view, mask_shape = REPEATED[case]
    for dtype in _float_dtypes(xp):
        base, base_host = _input(xp, base_shape, dtype, seed=4)
        x, x_host = view(base), view(base_host)
        y, mask = fastdrop.dropout(x, 0.3, seed=77, offset=offset, mask_shape=mask_shape, keep_bits=True)
        expected = reference.dropout(x_host, 0.3, seed=77, offset=offset, mask_shape=mask_shape)
        assert_bitwise_equal(y, expected)
        keep = reference.keep_mask(mask.shape, 0.3, seed=77, offset=offset)
        assert_bitwise_equal(mask.bits, reference.pack_bits(keep))
        dy, dy_host = _input(xp, x_host.shape, dtype, seed=5)
        expected_dx = reference.dropout_backward(dy_host, 0.3, seed=77, offset=offset, mask_shape=mask_shape)
        assert_bitwise_equal(fastdrop.dropout_backward(dy, mask), expected_dx)  # from the bits
        _, seed_only = fastdrop.dropout(x, 0.3, seed=77, offset=offset, mask_shape=mask_shape, out=xp.empty_like(x))
        assert_bitwise_equal(fastdrop.dropout_backward(dy, seed_only), expected_dx)  # from the seed
        out = xp.empty_like(x)  # same layout as x
        assert fastdrop.dropout(x, 0.3, seed=77, offset=offset, mask_shape=mask_shape, out=out)[0] is out
        assert_bitwise_equal(out, expected)
        # The variants with the same masks (select_repeated_rows's affine map, gaussian_repeated_rows).
        y, _ = fastdrop.alpha_dropout(x, 0.3, seed=77, offset=offset, mask_shape=mask_shape)
        assert_bitwise_equal(y, reference.alpha_dropout(x_host, 0.3, seed=77, offset=offset, mask_shape=mask_shape))
        y, _ = fastdrop.gaussian_dropout(x, 0.3, seed=77, offset=offset, mask_shape=mask_shape)
        assert_bitwise_equal(y, reference.gaussian_dropout(x_host, 0.3, seed=77, offset=offset, mask_shape=mask_shape))
        for p in (1.0, 1e-12):  # thresholds 0 (alpha_rows drops all) and 2**32 (all kept)
            y, _ = fastdrop.alpha_dropout(x, p, seed=77, offset=offset, mask_shape=mask_shape)
            assert_bitwise_equal(y, reference.alpha_dropout(x_host, p, seed=77, offset=offset, mask_shape=mask_shape))


# Full masks over views whose unit-stride axis is not the last: the CPU backend's columns kernels
# (select_columns, gaussian_columns, bias_dropout_add_columns, select_columns_from_bits), where a
# Philox lane per row gives the words of four columns. With a mask stride along that axis that is
# a multiple of 4 every row's words sit at the same place in their counters; other strides (odd,
# 2 mod 4) shift each row's words into place; the backward from bits reads two bytes per row at
# any stride (4 mod 8 and multiples of 8 below too). Rows above COLUMN_ROWS (1024) and columns
# past a task's width; 20 channels leave lanes past the rows; 45 channels of 7 x 7 maps and an
# odd F-ordered rank-3 array give each i0 its own first place (the latter through the launch's
# swap of axes 0 and 1). (base shape, view)
COLUMNS = {
    "transposed-tall": ((40, 2100), lambda a: a.T),
    "transposed-wide": ((2100, 36), lambda a: a.T),
    "channels-last-full-mask": ((2, 4, 6, 64), lambda a: a.transpose(0, 3, 1, 2)),
    "channels-last-20-channels": ((3, 4, 5, 20), lambda a: a.transpose(0, 3, 1, 2)),
    "first-axis-unit": ((7, 8, 40), lambda a: a.transpose(2, 1, 0)),
    "transposed-small": ((36, 16), lambda a: a.T),  # serial twins
    "channels-last-1100-channels": ((2, 4, 4, 1100), lambda a: a.transpose(0, 3, 1, 2)),
    "transposed-odd-width": ((37, 2050), lambda a: a.T),
    "transposed-width-2-mod-4": ((38, 1100), lambda a: a.T),
    "transposed-width-4-mod-8": ((20, 300), lambda a: a.T),
    "transposed-small-odd-width": ((35, 16), lambda a: a.T),  # serial twins
    "channels-last-7x7-maps": ((2, 7, 7, 48), lambda a: a.transpose(0, 3, 1, 2)),
    "channels-last-3x5-maps-wide": ((1, 3, 5, 2100), lambda a: a.transpose(0, 3, 1, 2)),
    "channels-last-7x7-45-channels": ((3, 7, 7, 45), lambda a: a.transpose(0, 3, 1, 2)),
    "f-ordered-rank3-odd": ((30, 7, 71), lambda a: a.T.copy().T),  # F order
}


@pytest.mark.parametrize("offset", [0, 1, 2, 3, (1 << 34) - 5])
@pytest.mark.parametrize("case", COLUMNS)
def test_columns_of_counters(xp, case, offset):
    base_shape, view = COLUMNS[case]
    for dtype in _float_dtypes(xp):
        base, base_host = _input(xp, base_shape, dtype, seed=6)
        x, x_host = view(base), view(base_host)
        y, mask = fastdrop.dropout(x, 0.3, seed=78, offset=offset, keep_bits=True)
        assert_bitwise_equal(y, reference.dropout(x_host, 0.3, seed=78, offset=offset))
        dy_base, dy_base_host = _input(xp, base_shape, dtype, seed=7)
        dy, dy_host = view(dy_base), view(dy_base_host)  # x's layout
        expected_dx = reference.dropout_backward(dy_host, 0.3, seed=78, offset=offset)
        # From the bits (select_columns_from_bits), then from the seed alone (the forward's
        # kernel).
        assert_bitwise_equal(fastdrop.dropout_backward(dy, mask), expected_dx)
        seed_only = fastdrop.DropoutMask(mask.p, mask.seed, mask.offset, mask.shape, mask.input_shape)
        assert_bitwise_equal(fastdrop.dropout_backward(dy, seed_only), expected_dx)
        for p in (0.3, 1.0, 1e-12):  # thresholds 0 (columns need one: alpha_rows) and 2**32
            y, _ = fastdrop.alpha_dropout(x, p, seed=78, offset=offset)
            assert_bitwise_equal(y, reference.alpha_dropout(x_host, p, seed=78, offset=offset))
        y, _ = fastdrop.gaussian_dropout(x, 0.3, seed=78, offset=offset)
        assert_bitwise_equal(y, reference.gaussian_dropout(x_host, 0.3, seed=78, offset=offset))
        if x.ndim == 2:  # bias-dropout-add with x, residual and out all in this layout
            for bias_host in (dy_host[0].copy(), None):
                bias = None if bias_host is None else xp.asarray(bias_host)
                out = view(xp.empty(base_shape, dtype=dtype))
                expected = reference.bias_dropout_add(x_host, bias_host, dy_host, 0.3, seed=78, offset=offset)
                y, _ = fastdrop.bias_dropout_add(x, bias, dy, 0.3, seed=78, offset=offset, out=out)
                assert y is out
                assert_bitwise_equal(out, expected)


@pytest.mark.parametrize("mask_shape", [None, (3, 1)], ids=str)
def test_in_place(xp, mask_shape):
    x, x_host = _input(xp, (3, 1001), np.float64)
    y, mask = fastdrop.dropout(x, 0.5, seed=8, out=x, mask_shape=mask_shape)
    assert y is x
    assert_bitwise_equal(x, reference.dropout(x_host, 0.5, seed=8, mask_shape=mask_shape))
    dy, dy_host = _input(xp, (3, 1001), np.float64, seed=1)
    dx = fastdrop.dropout_backward(dy, mask, out=dy)
    assert dx is dy
    assert_bitwise_equal(dy, reference.dropout(dy_host, 0.5, seed=8, mask_shape=mask_shape))


def test_into_separate_out(xp):
    x, x_host = _input(xp, (4097,), np.float32)
    out = xp.full(x.shape, 7.0, dtype=x.dtype)
    y, _ = fastdrop.dropout(x, 0.3, seed=1, out=out)
    assert y is out
    assert_bitwise_equal(out, reference.dropout(x_host, 0.3, seed=1))
    assert_bitwise_equal(x, x_host)  # the input is untouched


def test_slice_invariance(xp):
    """dropout(x[a:b], offset=a) is dropout(x)[a:b]: masks can be drawn shard by shard."""
    x, _ = _input(xp, (20011,), np.float32)
    full, _ = fastdrop.dropout(x, 0.3, seed=77)
    for a, b in [(0, 1), (1, 4), (3, 4100), (4096, 20011), (12345, 12350)]:
        part, _ = fastdrop.dropout(x[a:b], 0.3, seed=77, offset=a)
        assert_bitwise_equal(part, to_numpy(full)[a:b])


def test_non_finite_inputs_select(xp):
    values = np.array([np.nan, np.inf, -np.inf, -0.0, 1.5] * 401, dtype=np.float32)
    y, mask = fastdrop.dropout(xp.asarray(values), 0.5, seed=3)
    keep = to_numpy(mask.to_array())
    y = to_numpy(y)
    assert np.all(y[~keep] == 0.0) and not np.any(np.signbit(y[~keep]))
    assert_bitwise_equal(y, reference.dropout(values, 0.5, seed=3))


def test_p_zero_is_bitwise_identity_and_p_one_is_zero(xp):
    values = np.array([np.nan, 1.0, -0.0, np.inf, 3.25] * 3, dtype=np.float64)
    x = xp.asarray(values)
    y, mask = fastdrop.dropout(x, 0.0, seed=1, keep_bits=True)
    assert_bitwise_equal(y, values)
    assert to_numpy(mask.to_array()).all() and int(mask.bits[-1]) == 0b1111111
    z, mask = fastdrop.dropout(x, 1.0, seed=1)
    assert_bitwise_equal(z, np.zeros_like(values))
    dx = fastdrop.dropout_backward(xp.ones_like(x), mask)
    assert_bitwise_equal(dx, np.zeros_like(values))


def test_zero_size(xp):
    x = xp.empty((0, 3), dtype=np.float32)
    y, mask = fastdrop.dropout(x, 0.5, seed=1, keep_bits=True)
    assert y.shape == (0, 3) and mask.bits.size == 0 and mask.to_array().shape == (0, 3)
    assert fastdrop.dropout_backward(x, mask).shape == (0, 3)


def test_results_do_not_depend_on_call_history(xp):
    x, _ = _input(xp, (9999,), np.float32)
    first, _ = fastdrop.dropout(x, 0.5, seed=5, offset=10)
    for seed in range(3):
        fastdrop.dropout(x, 0.2, seed=seed)
    again, _ = fastdrop.dropout(x, 0.5, seed=5, offset=10)
    assert_bitwise_equal(again, to_numpy(first))


def test_read_only_input_and_zero_dimensional(xp):
    values = np.random.default_rng(5).standard_normal(5000).astype(np.float32)
    x = xp.array(values)
    if xp is np:
        x.flags.writeable = False
    y, mask = fastdrop.dropout(x, 0.5, seed=4)
    assert_bitwise_equal(y, reference.dropout(values, 0.5, seed=4))
    assert_bitwise_equal(fastdrop.dropout_backward(x, mask), reference.dropout(values, 0.5, seed=4))
    scalar = xp.array(np.float64(2.5))
    for offset in range(4):
        y0, _ = fastdrop.dropout(scalar, 0.5, seed=1, offset=offset)
        assert_bitwise_equal(y0, reference.dropout(np.array(2.5), 0.5, seed=1, offset=offset))


def test_bit_packing_multiplier_is_exact():
    """The packing multiply of _numba_kernels._pack_chunk, over all 256 flag patterns."""
    from fastdrop._numba_kernels import _PACK_MAGIC

    for pattern in range(256):
        flags = np.array([(pattern >> k) & 1 for k in range(8)], dtype=np.uint8)
        word = int(flags.view("<u8")[0])
        assert ((word * int(_PACK_MAGIC)) % 2**64) >> 56 == pattern


@pytest.mark.parametrize("n", [1, 7, 8, 9, CHUNK - 1, CHUNK, CHUNK + 4, 3 * CHUNK + 5, 40000])
@pytest.mark.parametrize("offset", [0, 3])
def test_packed_bits_all_lengths(n, offset):
    """Fused (one row) and separate packing passes, whole and partial bytes and chunks."""
    x = np.ones(n, dtype=np.float32)
    _, mask = fastdrop.dropout(x, 0.4, seed=5, offset=offset, keep_bits=True)
    keep = reference.keep_mask((n,), 0.4, seed=5, offset=offset)
    np.testing.assert_array_equal(mask.bits, reference.pack_bits(keep))
    column = np.ones((n, 2), dtype=np.float32)[:, :1]  # strided rows: packed in a second pass
    _, mask = fastdrop.dropout(column, 0.4, seed=5, offset=offset, keep_bits=True)
    np.testing.assert_array_equal(mask.bits, reference.pack_bits(keep.reshape(n, 1)))
