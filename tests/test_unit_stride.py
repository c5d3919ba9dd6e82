"""Arrays that are not contiguous but whose rows are (a column slice, rows in reverse order) reach
the CPU kernels as Numba layout 'A' arrays. The kernels then see each row through
``_numba_bits.unit_stride`` as a contiguous one, so that their loops vectorise; rows that do not
step by one element keep the strided loop. Both paths, every kernel that has them, against the
NumPy reference bit for bit, serial and parallel sizes."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._numba_bits import unit_stride
from fastdrop._numba_kernels import CHUNK, SERIAL_BELOW

from conftest import assert_bitwise_equal

DTYPES = [np.float16, np.float32, np.float64]

#: (base shape from the logical shape, view of the base). All but "strided" and "reversed_columns"
#: have rows that step by one element.
VIEWS = {
    "column_slice": (lambda r, w: (r, w + 5), lambda a: a[:, 2:-3]),
    "reversed_rows": (lambda r, w: (r, w), lambda a: a[::-1]),
    "every_other_row": (lambda r, w: (2 * r, w), lambda a: a[::2]),
    "strided": (lambda r, w: (r, 2 * w), lambda a: a[:, ::2]),
    "reversed_columns": (lambda r, w: (r, w), lambda a: a[:, ::-1]),
}
#: Rows shorter than a CHUNK and rows of a whole and a partial CHUNK, each with fewer elements
#: than SERIAL_BELOW (the serial twins) and with more (the parallel kernels).
SHAPES = [(5, 37), (3, CHUNK + 11), (SERIAL_BELOW // 1000 + 1, 1000),
          (SERIAL_BELOW // CHUNK + 1, CHUNK + 11)]


def _view(view, shape, dtype, seed):
    base_shape, select = VIEWS[view]
    base = np.random.default_rng(seed).standard_normal(base_shape(*shape)).astype(dtype)
    x = select(base)
    assert x.shape == shape
    return x


def _out_like(view, x):
    """A fresh output in the same kind of layout as x (so that both take the same path)."""
    out = _view(view, x.shape, x.dtype, 99)
    out[...] = np.nan
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("view", sorted(VIEWS))
def test_dropout_forward_and_backwards(view, dtype, shape):
    x = _view(view, shape, dtype, 1)
    expected = reference.dropout(np.ascontiguousarray(x), 0.3, seed=17, offset=3)
    out = _out_like(view, x)
    y, mask = fastdrop.dropout(x, 0.3, seed=17, offset=3, out=out, keep_bits=True)
    assert y is out
    assert_bitwise_equal(out, expected)
    for stored in (mask, fastdrop.DropoutMask(mask.p, mask.seed, mask.offset, mask.shape, mask.input_shape)):
        dx = _out_like(view, x)
        fastdrop.dropout_backward(x, stored, out=dx)
        assert_bitwise_equal(dx, expected)
    # Mixed layouts: a unit-stride x into a contiguous out and the reverse.
    assert_bitwise_equal(fastdrop.dropout(x, 0.3, seed=17, offset=3)[0], expected)
    out_mixed = _out_like(view, x)
    fastdrop.dropout(np.ascontiguousarray(x), 0.3, seed=17, offset=3, out=out_mixed)
    assert_bitwise_equal(out_mixed, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("planes", [(3, 5), (40, 30)], ids=str)
def test_channel_masks_on_sliced_feature_maps(dtype, planes):
    """A channel mask (N, C, 1, 1) on a feature map sliced along W: one word per row, the rows
    contiguous, the array not (the small maps run serially, the large ones in parallel)."""
    height, width = planes
    base = np.random.default_rng(6).standard_normal((4, 9, height, width + 2)).astype(dtype)
    for x in (base[..., 1:-1], base[..., ::2]):
        expected = reference.dropout(np.ascontiguousarray(x), 0.5, seed=8, offset=2, mask_shape=(4, 9, 1, 1))
        y, mask = fastdrop.dropout(x, 0.5, seed=8, offset=2, mask_shape=(4, 9, 1, 1))
        assert_bitwise_equal(y, expected)
        assert_bitwise_equal(fastdrop.dropout_backward(x, mask), expected)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("view", sorted(VIEWS))
def test_variants(view, dtype, shape):
    x = _view(view, shape, dtype, 2)
    dense = np.ascontiguousarray(x)
    out = _out_like(view, x)
    fastdrop.alpha_dropout(x, 0.2, seed=5, offset=1, out=out)
    assert_bitwise_equal(out, reference.alpha_dropout(dense, 0.2, seed=5, offset=1))
    out = _out_like(view, x)
    fastdrop.gaussian_dropout(x, 0.2, seed=5, offset=1, out=out)
    assert_bitwise_equal(out, reference.gaussian_dropout(dense, 0.2, seed=5, offset=1))
    residual = _view(view, shape, dtype, 3)
    bias = np.random.default_rng(4).standard_normal(2 * shape[1]).astype(dtype)[::2]
    for b in (bias, np.ascontiguousarray(bias), None):
        out = _out_like(view, x)
        fastdrop.bias_dropout_add(x, b, residual, 0.2, seed=5, offset=1, out=out)
        expected = reference.bias_dropout_add(dense, None if b is None else np.array(b),
                                              np.ascontiguousarray(residual), 0.2, seed=5, offset=1)
        assert_bitwise_equal(out, expected)


def test_unit_stride_view_shares_memory():
    @numba.njit
    def write_through(matrix, row, value):
        view = unit_stride(matrix[row, 1:4])
        view[0] = value
        return view.strides[0], view.size

    matrix = np.zeros((3, 6))
    column_slice = matrix[:, :5]
    assert write_through(column_slice, 2, 7.5) == (8, 3)
    assert matrix[2, 1] == 7.5 and np.count_nonzero(matrix) == 1


# ----------------------------------------------------- transposed and F-ordered arrays (columns)

from fastdrop._numba_kernels import COLUMN_ROWS  # noqa: E402

TOP = 2**64
#: Logical shapes of transposed views for the columns kernels: rows (the unit-stride axis) of
#: one task, of more than one (a partial last task of 3 rows, of 1), widths (the mask stride along
#: the rows) odd, 2 mod 4 and multiples of 4 and 8, two or three columns, and enough elements for
#: the parallel kernels; (2, 63), under a cache line of rows, takes the row kernels (a control).
COLUMN_SHAPES = [(63, 65), (65, 2), (2, 63), (128, 128), (300, 130), (COLUMN_ROWS + 3, 7),
                 (COLUMN_ROWS + 1, 5), (40, 3), (600, 36)]


def _transposed(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape[::-1]).astype(dtype).T


@pytest.mark.parametrize("shape", COLUMN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_transposed_forward_and_backwards(dtype, shape):
    x = _transposed(shape, dtype, 1)
    assert x.shape == shape and x.flags.f_contiguous
    n = x.size
    for offset in (0, 1, 3, TOP - n):
        expected = reference.dropout(np.ascontiguousarray(x), 0.4, seed=23, offset=offset)
        y, mask = fastdrop.dropout(x, 0.4, seed=23, offset=offset, keep_bits=True)
        assert_bitwise_equal(y, expected)
        assert_bitwise_equal(mask.to_array(), reference.keep_mask(shape, 0.4, seed=23, offset=offset))
        assert_bitwise_equal(fastdrop.dropout_backward(x, mask), expected)
        plain = fastdrop.DropoutMask(mask.p, mask.seed, mask.offset, mask.shape, mask.input_shape)
        assert_bitwise_equal(fastdrop.dropout_backward(x, plain), expected)
        # Into a C-ordered out (no columns: out's rows are contiguous, x's are not) and in place.
        out = np.full(shape, np.nan, dtype)
        fastdrop.dropout(x, 0.4, seed=23, offset=offset, out=out)
        assert_bitwise_equal(out, expected)
        inplace = x.copy(order="F")
        fastdrop.dropout(inplace, 0.4, seed=23, offset=offset, out=inplace)
        assert_bitwise_equal(inplace, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_f_ordered_rank3_and_broadcast_masks(dtype):
    """Rank 3 F order (the unit-stride axis is the launch's axis 0, swapped to axis 1), a mask
    broadcast over the leading axis, reversed and sliced transposed views."""
    x = np.asfortranarray(np.random.default_rng(2).standard_normal((30, 7, 70))).astype(dtype)
    for mask_shape in (x.shape, (1, 7, 70), (30, 1, 70)):
        dense = np.ascontiguousarray(x)
        expected = reference.dropout(dense, 0.3, seed=4, offset=9, mask_shape=mask_shape)
        y, mask = fastdrop.dropout(x, 0.3, seed=4, offset=9, mask_shape=mask_shape, keep_bits=True)
        assert_bitwise_equal(y, expected)
        assert_bitwise_equal(fastdrop.dropout_backward(x, mask), expected)
        y, _ = fastdrop.gaussian_dropout(x, 0.3, seed=4, offset=9, mask_shape=mask_shape)
        assert_bitwise_equal(y, reference.gaussian_dropout(dense, 0.3, seed=4, offset=9, mask_shape=mask_shape))
    t = _transposed((150, 90), dtype, 3)
    for view in (t[::-1], t[:, ::-1], t[10:140:3], t[5:, 7:]):
        expected = reference.dropout(np.ascontiguousarray(view), 0.3, seed=4, offset=2)
        y, mask = fastdrop.dropout(view, 0.3, seed=4, offset=2, keep_bits=True)
        assert_bitwise_equal(y, expected)
        assert_bitwise_equal(fastdrop.dropout_backward(view, mask), expected)


#: Widths (the mask stride along a transposed view's unit-stride axis): odd, 2 mod 4, 4 mod 8 and
#: a multiple of 8 all take the columns kernels.
WIDTHS = [101, 102, 100, 104]


@pytest.mark.parametrize("width", WIDTHS)
def test_transposed_launches_take_the_columns(monkeypatch, width):
    """The tests above go through the columns kernels (not the row kernels' strided
    fallback)."""
    forward, from_bits = "select_columns", "select_columns_from_bits"
    from fastdrop import _numba_kernels as kernels

    used = []
    original = kernels.for_size

    def recording(kernel, n):
        used.append(kernel.__name__ if hasattr(kernel, "__name__") else kernel.py_func.__name__)
        return original(kernel, n)

    monkeypatch.setattr(kernels, "for_size", recording)
    x = _transposed((100, width), np.float32, 4)
    _, mask = fastdrop.dropout(x, 0.3, seed=1, keep_bits=True)
    fastdrop.dropout_backward(x, mask)
    assert forward in used and from_bits in used
    used.clear()
    fastdrop.dropout(np.ascontiguousarray(x), 0.3, seed=1)
    assert "select_columns" not in used


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_keep_bits_of_a_columns_launch_with_a_broadcast_mask(dtype):
    """Regression: one launch whose rows share the mask's words (x (40, 1, 8) in F order, mask
    (1, 1, 8)) used to count as a single full row, whose bits the row kernel packs in the same
    pass, but ran through the tile kernel (now the columns kernel), which packs none: the stored
    bits were all zero.
    (Found with x (5, 1, 8) float64, which now takes the row kernel: 5 elements along the
    unit-stride axis are less than a cache line.)"""
    x = np.asfortranarray(np.random.default_rng(7).standard_normal((40, 1, 8))).astype(dtype)
    for p in (0.1, 0.5):
        expected = reference.dropout(np.ascontiguousarray(x), p, seed=49, mask_shape=(1, 1, 8))
        y, mask = fastdrop.dropout(x, p, seed=49, mask_shape=(1, 1, 8), keep_bits=True)
        assert_bitwise_equal(y, expected)
        assert_bitwise_equal(mask.bits, reference.pack_bits(reference.keep_mask((1, 1, 8), p, seed=49)))
        out = np.empty(x.shape, x.dtype, order="F")
        fastdrop.dropout_backward(x, mask, out=out)
        assert_bitwise_equal(out, expected)


@pytest.mark.parametrize("shape", COLUMN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_transposed_alpha_dropout(dtype, shape):
    """Alpha dropout's columns: ``select_columns`` with its affine map; p = 1 and p within 2**-33
    of 1 (threshold 0, which the columns cannot take) go to the row kernel; a feature mask too."""
    x = _transposed(shape, dtype, 5)
    dense = np.ascontiguousarray(x)
    # (a float16 x with p within 2**-33 of 1: the reference's affine constants overflow float16)
    for p in (0.2, 0.9, 1.0) + ((1.0 - 2.0**-40,) if dtype != np.float16 else ()):
        for offset in (0, 3):
            y, _ = fastdrop.alpha_dropout(x, p, seed=31, offset=offset)
            assert_bitwise_equal(y, reference.alpha_dropout(dense, p, seed=31, offset=offset))
    y, _ = fastdrop.alpha_dropout(x, 0.3, seed=31, mask_shape=(1, shape[1]))
    assert_bitwise_equal(y, reference.alpha_dropout(dense, 0.3, seed=31, mask_shape=(1, shape[1])))


def test_dropout_columns_keep_the_sign_of_zero():
    """The columns add -0.0 to x * scale (their affine form): a kept -0.0 must stay -0.0."""
    x = np.zeros((67, 69), dtype=np.float32).T
    x[::2] = -0.0
    y, mask = fastdrop.dropout(x, 0.5, seed=3)
    expected = reference.dropout(np.ascontiguousarray(x), 0.5, seed=3)
    assert_bitwise_equal(y, expected)
    assert np.signbit(y).any()


@pytest.mark.parametrize("width", WIDTHS)
def test_transposed_alpha_takes_the_columns(monkeypatch, width):
    kernel = "select_columns"
    from fastdrop import _numba_kernels, _numba_variants

    used = []
    original = _numba_variants.for_size
    monkeypatch.setattr(_numba_variants, "for_size", lambda kernel, n: used.append(kernel) or original(kernel, n))
    fastdrop.alpha_dropout(_transposed((100, width), np.float32, 4), 0.3, seed=1)
    assert used == [getattr(_numba_kernels, kernel)]


@pytest.mark.parametrize("shape", COLUMN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_transposed_gaussian_dropout(dtype, shape):
    """Gaussian dropout's columns (``gaussian_columns``): task rows starting at odd and even
    words, so that a row's first element pairs with a word before the task, at several offsets."""
    x = _transposed(shape, dtype, 6)
    dense = np.ascontiguousarray(x)
    for offset in (0, 1, 3, TOP - x.size - 2):  # room for the pair words at both ends
        y, _ = fastdrop.gaussian_dropout(x, 0.3, seed=41, offset=offset)
        assert_bitwise_equal(y, reference.gaussian_dropout(dense, 0.3, seed=41, offset=offset))
    inplace = x.copy(order="F")
    fastdrop.gaussian_dropout(inplace, 0.3, seed=41, out=inplace)
    assert_bitwise_equal(inplace, reference.gaussian_dropout(dense, 0.3, seed=41))


@pytest.mark.parametrize("width", WIDTHS)
def test_transposed_gaussian_takes_the_columns(monkeypatch, width):
    kernel = "gaussian_columns"
    from fastdrop import _numba_variants

    used = []
    original = _numba_variants._for_size
    monkeypatch.setattr(_numba_variants, "_for_size",
                        lambda kernel, n: used.append(kernel) or original(kernel, n))
    fastdrop.gaussian_dropout(_transposed((100, width), np.float32, 4), 0.3, seed=1)
    assert getattr(_numba_variants, kernel) in used


@pytest.mark.parametrize("shape", COLUMN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_transposed_bias_dropout_add(dtype, shape):
    """``bias_dropout_add_columns``: x, residual and out transposed; a bias per column (strided,
    contiguous, none); in place into the residual."""
    x = _transposed(shape, dtype, 7)
    residual = _transposed(shape, dtype, 8)
    dense_x, dense_residual = np.ascontiguousarray(x), np.ascontiguousarray(residual)
    bias = np.random.default_rng(9).standard_normal(2 * shape[1]).astype(dtype)[::2]
    for b, offset in ((bias, 5), (np.ascontiguousarray(bias), TOP - x.size), (None, 2)):
        expected = reference.bias_dropout_add(dense_x, None if b is None else np.array(b),
                                              dense_residual, 0.3, seed=19, offset=offset)
        out = np.full(shape[::-1], np.nan, dtype).T
        y, _ = fastdrop.bias_dropout_add(x, b, residual, 0.3, seed=19, offset=offset, out=out)
        assert_bitwise_equal(y, expected)
        inplace = residual.copy(order="F")
        fastdrop.bias_dropout_add(x, b, inplace, 0.3, seed=19, offset=offset, out=inplace)
        assert_bitwise_equal(inplace, expected)


@pytest.mark.parametrize("width", WIDTHS)
def test_transposed_bias_dropout_add_takes_the_columns(monkeypatch, width):
    kernel = "bias_dropout_add_columns"
    from fastdrop import _numba_variants

    used = []
    original = _numba_variants._for_size
    monkeypatch.setattr(_numba_variants, "_for_size",
                        lambda kernel, n: used.append(kernel) or original(kernel, n))
    x = _transposed((100, width), np.float32, 4)
    fastdrop.bias_dropout_add(x, np.ones(width, np.float32), x.copy(order="F"), 0.3, seed=1,
                              out=np.empty((100, width), np.float32, order="F"))
    assert used == [getattr(_numba_variants, kernel)]
