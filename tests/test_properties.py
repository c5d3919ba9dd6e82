"""Property-based tests (hypothesis): any shape, view, mask shape, seed, offset and p gives the
reference's answer bit for bit, and backward composes with forward."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastdrop
from fastdrop import reference

from conftest import _cupy_usable, assert_bitwise_equal

_settings = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def views(draw, dtypes=(np.float32, np.float64), max_side=9):
    """A host array and a function making the same random view of it (or of a device copy):
    the first element of the last axis skipped (the view's start then lies one element into
    the allocation: misaligned for vector loads), per-axis steps (negative ones reverse), a
    transpose."""
    shape = tuple(draw(st.lists(st.integers(0, max_side), min_size=1, max_size=5)))
    dtype = draw(st.sampled_from(dtypes))
    base = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape).astype(dtype)
    steps = tuple(draw(st.sampled_from([1, 2, -1, -2])) for _ in shape)
    skip = draw(st.booleans())
    permutation = draw(st.permutations(range(len(shape)))) if draw(st.booleans()) else None

    def view_of(array):
        view = array[..., 1:] if skip else array
        view = view[tuple(slice(None, None, step) for step in steps)]
        return view.transpose(permutation) if permutation is not None else view

    return base, view_of


@st.composite
def problems(draw, dtypes=(np.float32, np.float64), max_side=9):
    base, view_of = draw(views(dtypes, max_side))
    view = view_of(base)
    mask_shape = tuple(d if draw(st.booleans()) else 1 for d in view.shape)
    mask_shape = mask_shape[draw(st.integers(0, len(mask_shape))):]
    p = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0)))
    seed = draw(st.integers(0, 2**64 - 1))
    offset = draw(st.integers(0, 2**40))
    return base, view_of, mask_shape, p, seed, offset


@_settings
@given(problems(), st.booleans())
def test_any_view_matches_reference(problem, keep_bits):
    base, view_of, mask_shape, p, seed, offset = problem
    _check_view(view_of(base), view_of(base), mask_shape, p, seed, offset, keep_bits)


def _check_view(view, host_view, mask_shape, p, seed, offset, keep_bits):
    """Forward, backward and bits of ``view`` (any backend) against the reference on ``host_view``."""
    y, mask = fastdrop.dropout(view, p, seed=seed, offset=offset, mask_shape=mask_shape, keep_bits=keep_bits)
    expected = reference.dropout(host_view, p, seed=seed, offset=offset, mask_shape=mask_shape)
    assert_bitwise_equal(y, expected)
    assert_bitwise_equal(fastdrop.dropout_backward(view, mask), expected)
    if keep_bits:
        keep = reference.keep_mask(mask.shape, p, seed=seed, offset=offset)
        assert_bitwise_equal(mask.bits, reference.pack_bits(keep))


@_settings
@given(st.integers(0, 5000), st.integers(0, 2**64 - 5001), st.integers(0, 2**64 - 1))
def test_random_bits_any_window(n, offset, seed):
    assert_bitwise_equal(
        fastdrop.random_bits(n, seed=seed, offset=offset), reference.random_bits(n, seed=seed, offset=offset)
    )


@_settings
@given(st.integers(1, 3000), st.integers(0, 3000), st.floats(0.0, 1.0))
def test_windows_compose(n, split, p):
    """The mask of [0, n) is the masks of [0, k) and [k, n) with offset k, side by side."""
    split = min(split, n)
    x = np.ones(n, np.float64)
    whole = fastdrop.dropout(x, p, seed=99)[0]
    left = fastdrop.dropout(x[:split], p, seed=99)[0]
    right = fastdrop.dropout(x[split:], p, seed=99, offset=split)[0]
    assert_bitwise_equal(np.concatenate([left, right]), whole)


# --- the CUDA backend (a GPU, or the CPU emulator of tests/test_cuda_emulated.py) ----------------

def _device_dtypes():
    dtypes = [np.float16, np.float32, np.float64]
    try:
        import ml_dtypes

        dtypes.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    return tuple(dtypes)


def _to_device(cupy, host):
    """Raw bits up, then the dtype (no CuPy conversion of bfloat16 involved)."""
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[host.dtype.itemsize]
    return cupy.asarray(np.ascontiguousarray(host).view(unsigned)).view(host.dtype)


def _cupy():
    if not _cupy_usable():
        pytest.skip("CuPy with a working CUDA GPU is not available here")
    import cupy

    return cupy


@pytest.mark.gpu
@_settings
@given(problems(dtypes=_device_dtypes(), max_side=40), st.booleans())
def test_any_view_matches_reference_on_cuda(problem, keep_bits):
    """Shapes up to 40 a side, so the contiguous kernels' tiles (128-256 elements) and their
    tails come up, besides the strided launches of every view."""
    cupy = _cupy()
    base, view_of, mask_shape, p, seed, offset = problem
    try:
        _to_device(cupy, base[:0].reshape(-1))
    except Exception as error:  # a CuPy without bfloat16 arrays
        pytest.skip(f"this CuPy cannot hold {base.dtype} arrays ({error})")
    _check_view(view_of(_to_device(cupy, base)), view_of(base), mask_shape, p, seed, offset, keep_bits)


@pytest.mark.gpu
@_settings
@given(st.data())
def test_bias_dropout_add_any_layout_on_cuda(data):
    """Each of x, residual and out with a layout of its own (strided, transposed, offset by one
    element), the bias present or not, any offset: the CUDA kernels against the reference."""
    cupy = _cupy()
    rows, width = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 70))
    dtype = data.draw(st.sampled_from([np.float16, np.float32, np.float64]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))

    def operand():
        layout = data.draw(st.sampled_from(["contiguous", "every-other", "transposed", "shifted"]))
        if layout == "every-other":
            host = rng.standard_normal((rows, 2 * width)).astype(dtype)
            return host[:, ::2], _to_device(cupy, host)[:, ::2]
        if layout == "transposed":
            host = rng.standard_normal((width, rows)).astype(dtype)
            return host.T, _to_device(cupy, host).T
        if layout == "shifted":
            host = rng.standard_normal(rows * width + 1).astype(dtype)
            return host[1:].reshape(rows, width), _to_device(cupy, host)[1:].reshape(rows, width)
        host = rng.standard_normal((rows, width)).astype(dtype)
        return host, _to_device(cupy, host)

    (x_host, x), (r_host, r), (_, out) = operand(), operand(), operand()
    bias_host = rng.standard_normal(width).astype(dtype) if data.draw(st.booleans()) else None
    bias = None if bias_host is None else _to_device(cupy, bias_host)
    p = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    offset = data.draw(st.integers(0, 2**40))
    y, _ = fastdrop.bias_dropout_add(x, bias, r, p, seed=3, offset=offset, out=out)
    assert y is out
    assert_bitwise_equal(out, reference.bias_dropout_add(x_host, bias_host, r_host, p, seed=3, offset=offset))
