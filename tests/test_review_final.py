"""Final review tests: float16 on the CPU, the channel-style fast path, validation and caches,
each checked bit for bit against fastdrop.reference."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastdrop as fd
from fastdrop import reference as R
from fastdrop import variants as V

SPECIAL_HALF_BITS = np.array(
    [0x7E00, 0xFE00, 0x7E01, 0xFE33, 0x7C01, 0x7C00, 0xFC00, 0x8000, 0x0000, 0x0001, 0x8001,
     0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00],
    dtype=np.uint16,
)


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def _half_input(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(np.float16)
    flat = x.reshape(-1)
    n = min(flat.size, SPECIAL_HALF_BITS.size)
    flat[:n] = SPECIAL_HALF_BITS[:n].view(np.float16)
    return x


# ---------------------------------------------------------------------------------- failing now

# For this p, float16(float64(dropped)) differs from float16(float32(dropped)): a double-rounding
# case. The reference rounds the dropped value to the compute dtype (float32) first, then to x's
# dtype; _numba_variants.alpha_forward rounds the float64 value straight to float16.
DOUBLE_ROUNDING_PS = (0.7633037445043855, 0.7872678732989907, 0.5844462975238152, 0.43574602281373076)


@pytest.mark.parametrize("p", DOUBLE_ROUNDING_PS)
def test_alpha_dropout_float16_dropped_value_matches_reference(p):
    x = _half_input((8, 64), seed=3)
    y, _ = V.alpha_dropout(x, p, seed=17, offset=2)
    with np.errstate(all="ignore"):
        expected = R.alpha_dropout(x, p, seed=17, offset=2)
    assert _bits_equal(y, expected)


def test_feature_alpha_dropout_float16_matches_reference():
    p = DOUBLE_ROUNDING_PS[0]
    x = _half_input((4, 3, 5, 6), seed=4)
    y, _ = V.feature_alpha_dropout(x, p, seed=5)
    with np.errstate(all="ignore"):
        expected = R.alpha_dropout(x, p, seed=5, mask_shape=(4, 3, 1, 1))
    assert _bits_equal(y, expected)


# ------------------------------------------------------------------------- passing regressions

@pytest.mark.parametrize("p", [1e-12, 0.3, 1 - 1e-12, 1.0, 0.0])
@pytest.mark.parametrize("shape, mask_shape", [
    ((4, 3, 5, 6), (4, 3, 1, 1)),   # channel fast path
    ((4, 3, 5, 6), (4, 1, 1, 1)),
    ((4, 3, 5, 6), (4, 3, 5, 1)),
    ((4, 3, 5, 6), (3, 1, 6)),      # padded, general path
    ((4, 3, 1, 1), None),
    ((3, 5000), (3, 1)),            # rows longer than a CHUNK
    ((4, 0, 2, 2), (4, 0, 1, 1)),   # zero size
])
@pytest.mark.parametrize("layout", ["c", "f", "neg", "strided"])
def test_float16_dropout_forward_backward_inplace(p, shape, mask_shape, layout):
    base = _half_input(shape, seed=1)
    if layout == "c":
        x = base
    elif layout == "f":
        x = np.asfortranarray(base)
    elif layout == "neg":
        x = base[::-1]
    else:
        big = _half_input(tuple(2 * d for d in shape), seed=2)
        x = big[tuple(slice(None, None, 2) for _ in shape)]
    expected = R.dropout(x, p, seed=99, offset=6, mask_shape=mask_shape)
    y, mask = fd.dropout(x, p, seed=99, offset=6, mask_shape=mask_shape, keep_bits=True)
    assert _bits_equal(y, expected)
    keep = R.keep_mask(mask.shape, p, seed=99, offset=6)
    if p != 0.0:
        assert np.array_equal(mask.bits, R.pack_bits(keep))
    dy = _half_input(shape, seed=7)
    dexpected = R.dropout_backward(dy, p, seed=99, offset=6, mask_shape=mask_shape)
    assert _bits_equal(fd.dropout_backward(dy, mask), dexpected)
    _, plain = fd.dropout(x, p, seed=99, offset=6, mask_shape=mask_shape)
    assert _bits_equal(fd.dropout_backward(dy, plain), dexpected)
    inplace = x.copy(order="K")
    fd.dropout(inplace, p, seed=99, offset=6, mask_shape=mask_shape, out=inplace)
    assert _bits_equal(inplace, expected)


@pytest.mark.parametrize("p", [1e-12, 0.3, 1 - 1e-12, 1.0])
def test_float16_variants_match_reference(p):
    x = _half_input((6, 5000), seed=8)
    residual = _half_input((6, 5000), seed=9)
    bias = _half_input((5000,), seed=10)
    with np.errstate(all="ignore"):
        for b in (bias, None):
            y, _ = V.bias_dropout_add(x, b, residual, p, seed=3, offset=1)
            assert _bits_equal(y, R.bias_dropout_add(x, b, residual, p, seed=3, offset=1))
        x4 = _half_input((3, 4, 5, 6), seed=11)
        for axis in (1, -1):
            y, _ = V.spatial_dropout(x4, p, seed=1, channel_axis=axis)
            assert _bits_equal(y, R.spatial_dropout(x4, p, seed=1, channel_axis=axis))
        y, _ = V.variational_dropout(x4, p, seed=1)
        assert _bits_equal(y, R.variational_dropout(x4, p, seed=1))
        if p < 1:
            y, _ = V.gaussian_dropout(x4, p, seed=2, mask_shape=(3, 4, 1, 1))
            assert _bits_equal(y, R.gaussian_dropout(x4, p, seed=2, mask_shape=(3, 4, 1, 1)))


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_matrix_and_memmap_channel_path(tmp_path):
    rng = np.random.default_rng(12)
    m = np.matrix(rng.standard_normal((4, 6)).astype(np.float16))
    y, _ = fd.dropout(m, 0.4, seed=5, mask_shape=(4, 1))
    assert type(y) is np.matrix
    assert _bits_equal(np.asarray(y), R.dropout(np.asarray(m), 0.4, seed=5, mask_shape=(4, 1)))
    mm = np.memmap(tmp_path / "x.bin", dtype=np.float16, mode="w+", shape=(4, 3, 2, 2))
    mm[:] = rng.standard_normal((4, 3, 2, 2))
    expected = R.dropout(np.array(mm), 0.5, seed=9, mask_shape=(4, 3, 1, 1))
    fd.dropout(mm, 0.5, seed=9, mask_shape=(4, 3, 1, 1), out=mm)
    assert _bits_equal(np.asarray(mm), expected)


def test_failed_calls_write_nothing_and_keep_the_stream():
    fd.manual_seed(11)
    x = _half_input((4, 4), seed=13)
    before = x.copy()
    out = np.full((4, 4), 7, np.float16)
    bad = [
        (dict(out=np.ones((4, 4), np.float32)), TypeError, "dtype"),
        (dict(out=x[::-1]), ValueError, "overlaps x"),
        (dict(mask_shape=(3, 1), out=out), ValueError, "mask_shape"),
        (dict(keep_bits=1, out=out), TypeError, "keep_bits"),
    ]
    for kwargs, error, word in bad:
        with pytest.raises(error, match=word):
            fd.dropout(x, 0.5, **kwargs)
    with pytest.raises(ValueError, match="p must"):
        fd.dropout(x, float("nan"), out=out)
    assert _bits_equal(x, before)
    assert (out == 7).all()
    _, mask = fd.dropout(x, 0.5)
    assert (mask.seed, mask.offset) == (11, 0)


def test_threads_float16_channel_path_match_reference():
    x = _half_input((8, 16, 4, 4), seed=14)
    expected = {s: R.dropout(x, 0.3, seed=s, mask_shape=(8, 16, 1, 1)) for s in range(8)}
    errors = []

    def work(s):
        for _ in range(5):
            y, _ = fd.dropout(x, 0.3, seed=s, mask_shape=(8, 16, 1, 1))
            if not _bits_equal(y, expected[s]):
                errors.append(s)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
