"""Bad input: a clear exception naming the argument, raised before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

import fastdrop


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)


def _untouched(*arrays):
    """Snapshot arrays; calling the result asserts none of them changed."""
    copies = [a.copy() for a in arrays]

    def check():
        for before, after in zip(copies, arrays):
            np.testing.assert_array_equal(before.view(np.uint8), after.view(np.uint8))

    return check


@pytest.mark.parametrize(
    "p, error, match",
    [
        (-0.1, ValueError, "p must be in"),
        (1.5, ValueError, "p must be in"),
        (float("nan"), ValueError, "p must be in"),
        (float("inf"), ValueError, "p must be in"),
        ("0.5", TypeError, "p must be a real number"),
        (True, TypeError, "p must be a real number"),
        (None, TypeError, "p must be a real number"),
    ],
)
def test_bad_p(x, p, error, match):
    out = np.full_like(x, 3.0)
    check = _untouched(x, out)
    with pytest.raises(error, match=match):
        fastdrop.dropout(x, p, seed=1, out=out)
    check()
    with pytest.raises(error, match=match):
        fastdrop.Dropout(p)


@pytest.mark.parametrize(
    "seed, error, match",
    [(-1, ValueError, "seed must be in"), (2**64, ValueError, "seed must be in"),
     (1.0, TypeError, "seed must be an integer"), ("7", TypeError, "seed must be an integer"),
     (False, TypeError, "seed must be an integer")],
)
def test_bad_seed(x, seed, error, match):
    with pytest.raises(error, match=match):
        fastdrop.dropout(x, 0.5, seed=seed)
    with pytest.raises(error, match=match):
        fastdrop.random_bits(4, seed=seed)
    with pytest.raises(error, match=match):
        fastdrop.manual_seed(seed)


def test_bad_offset(x):
    with pytest.raises(ValueError, match="offset must be >= 0"):
        fastdrop.dropout(x, 0.5, seed=1, offset=-1)
    with pytest.raises(TypeError, match="offset must be an integer"):
        fastdrop.dropout(x, 0.5, seed=1, offset=1.5)
    with pytest.raises(ValueError, match="runs past the last word"):
        fastdrop.dropout(x, 0.5, seed=1, offset=2**64 - 5)
    with pytest.raises(ValueError, match="offset needs an explicit seed"):
        fastdrop.dropout(x, 0.5, offset=4)
    with pytest.raises(ValueError, match="n must be >= 0"):
        fastdrop.random_bits(-1, seed=1)


def test_largest_offset_is_usable():
    words = fastdrop.random_bits(3, seed=1, offset=2**64 - 3)
    np.testing.assert_array_equal(words, fastdrop.reference.random_bits(3, seed=1, offset=2**64 - 3))


@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.uint8, np.uint16, np.bool_, np.complex64, np.complex128, object]
)
def test_bad_dtypes(dtype):
    x = np.zeros(8, dtype=dtype)
    with pytest.raises(TypeError, match=r"^x (must be a floating-point array|has dtype)"):
        fastdrop.dropout(x, 0.5, seed=1)


def test_unsupported_float_error_says_what_to_do(monkeypatch):
    """A float dtype the CPU backend cannot compute in (none among NumPy's own today: float16
    goes through its bits) gets a TypeError that names the supported ones and the way out."""
    from fastdrop import _numba_backend

    monkeypatch.setattr(_numba_backend, "_NUMBA_DTYPES", (np.dtype(np.float32), np.dtype(np.float64)))
    with pytest.raises(TypeError, match="x has dtype float16; .*float32 and float64.*astype"):
        fastdrop.dropout(np.zeros(4, np.float16), 0.5, seed=1)


def test_not_an_array():
    with pytest.raises(TypeError, match="x must be a numpy.ndarray or cupy.ndarray"):
        fastdrop.dropout([1.0, 2.0], 0.5, seed=1)


@pytest.mark.parametrize("mask_shape", [(5, 6), (4, 6, 1), (2, 1), (6, 4), (-4, 6), (4, 6.0), "46"])
def test_bad_mask_shape(x, mask_shape):
    with pytest.raises((ValueError, TypeError), match="mask_shape"):
        fastdrop.dropout(x, 0.5, seed=1, mask_shape=mask_shape)


def test_bad_out(x):
    check = _untouched(x)
    with pytest.raises(ValueError, match="out has shape"):
        fastdrop.dropout(x, 0.5, seed=1, out=np.empty((6, 4), np.float32))
    with pytest.raises(TypeError, match="out has dtype"):
        fastdrop.dropout(x, 0.5, seed=1, out=np.empty((4, 6), np.float64))
    with pytest.raises(TypeError, match="out must be a numpy array like x"):
        fastdrop.dropout(x, 0.5, seed=1, out=[[0.0] * 6] * 4)
    readonly = np.empty_like(x)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fastdrop.dropout(x, 0.5, seed=1, out=readonly)
    check()


def test_partly_overlapping_out_is_rejected():
    base = np.arange(20, dtype=np.float64)
    check = _untouched(base)
    with pytest.raises(ValueError, match="out partly overlaps x"):
        fastdrop.dropout(base[:10], 0.5, seed=1, out=base[5:15])
    with pytest.raises(ValueError, match="out partly overlaps x"):
        fastdrop.dropout(base[:10], 0.5, seed=1, out=base[9::-1])  # same memory, other order
    check()
    # Disjoint interleaved views share a buffer but no element: allowed.
    y, _ = fastdrop.dropout(base[0::2], 0.5, seed=1, out=base[1::2])
    assert y.base is not None


def test_bad_dy(x):
    _, mask = fastdrop.dropout(x, 0.5, seed=1)
    with pytest.raises(ValueError, match="dy has shape"):
        fastdrop.dropout_backward(np.ones((6, 4), np.float32), mask)
    with pytest.raises(TypeError, match="dy must be a floating-point array"):
        fastdrop.dropout_backward(np.ones((4, 6), np.int32), mask)
    with pytest.raises(TypeError, match="mask must be a fastdrop.DropoutMask"):
        fastdrop.dropout_backward(np.ones((4, 6), np.float32), np.ones((4, 6), bool))
    dy = np.ones_like(x)
    with pytest.raises(ValueError, match="out has shape"):
        fastdrop.dropout_backward(dy, mask, out=np.empty(24, np.float32))


def test_failed_call_leaves_stream_untouched(x):
    before = fastdrop.stream_state()
    with pytest.raises(ValueError):
        fastdrop.dropout(x, 0.5, mask_shape=(3, 3))
    with pytest.raises(ValueError):
        fastdrop.dropout(x, 0.5, out=np.empty((1, 1), np.float32))
    assert fastdrop.stream_state() == before
