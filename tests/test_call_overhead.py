"""The per-call fast paths (type-keyed backend lookup, value-keyed scalar caches, overlap-first
out= check, single-row bit reading) must not change any result or any refusal. No timings here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastdrop
from fastdrop import _backend, _validate, reference


def _values(n, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.tobytes() == b.tobytes()


def test_many_distinct_seeds_and_probabilities_outrun_the_scalar_caches():
    """More (seed, p) pairs than the caches hold, then the first ones again: every result exact."""
    x = _values(37)
    pairs = [(seed * 7919 + (seed << 40), (seed % 97) / 100) for seed in range(300)]
    for seed, p in pairs + pairs[:20]:
        y, mask = fastdrop.dropout(x, p, seed=seed, offset=seed % 5)
        _bits_equal(y, reference.dropout(x, p, seed=seed, offset=seed % 5))
        _bits_equal(fastdrop.dropout_backward(x, mask), y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_p_zero_and_minus_zero_and_one_share_no_cached_state(dtype):
    x = _values(9, dtype)
    for p in (0.0, -0.0, 0, 1, 1.0, 0.5, np.float64(0.5), np.float32(0.25)):
        y, mask = fastdrop.dropout(x, p, seed=3)
        _bits_equal(y, reference.dropout(x, float(p), seed=3))
        assert type(mask.p) is float


def test_backend_lookup_still_refuses_other_types_after_numpy_was_seen():
    fastdrop.dropout(_values(4), 0.5, seed=1)
    for bad in ([1.0, 2.0], 3.0, "x"):
        with pytest.raises(TypeError, match=r"^x must be a numpy.ndarray or cupy.ndarray"):
            fastdrop.dropout(bad, 0.5, seed=1)
    with pytest.raises(TypeError, match=r"^dy must be"):
        fastdrop.dropout_backward([1.0], fastdrop.dropout(_values(1), 0.5, seed=1)[1])


def test_subclasses_share_the_numpy_backend_and_keep_their_type():
    class Local(np.ndarray):
        pass

    x = _values(12).reshape(3, 4)
    expected = reference.dropout(x, 0.3, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        matrix = np.asmatrix(x)
    for array in (matrix, x.view(Local), x.copy()):
        assert _backend.array_library(array) == "numpy"
        y, _ = fastdrop.dropout(array, 0.3, seed=5)
        assert type(y) is type(array)
        _bits_equal(np.asarray(y), expected)
        out = np.empty_like(array)
        y, _ = fastdrop.dropout(array, 0.3, seed=5, out=out)
        assert y is out
        _bits_equal(np.asarray(out), expected)


def test_memmap_in_place(tmp_path):
    x = _values(64)
    expected = reference.dropout(x, 0.5, seed=2)
    mapped = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="w+", shape=(64,))
    mapped[...] = x
    y, _ = fastdrop.dropout(mapped, 0.5, seed=2, out=mapped)
    assert y is mapped
    _bits_equal(np.asarray(mapped), expected)


def test_out_check_cases():
    base = _values(24)
    x = base[:12]
    # the same object, another view of exactly the same elements, a disjoint array: allowed
    assert _validate.output(x, x) is True
    assert _validate.output(base[:12].reshape(12), x) is True
    assert _validate.output(np.empty_like(x), x) is False
    assert _validate.output(base[12:], x) is False  # adjacent, not overlapping
    # interleaved views of one buffer share bounds but no element: disjoint
    assert _validate.output(base[1::2], base[0::2]) is False
    with pytest.raises(ValueError, match="out partly overlaps x"):
        _validate.output(base[6:18], x)
    with pytest.raises(ValueError, match="out partly overlaps dy"):
        _validate.output(base[::-1][12:], base[:12], "dy")
    # zero-size arrays overlap nothing; the same (empty) memory still counts as in place
    empty = base[:0]
    assert _validate.output(base[:0], empty) is True
    assert _validate.output(np.empty(0, np.float32), empty) is False


def test_refused_out_writes_nothing_and_spends_no_stream():
    fastdrop.manual_seed(11)
    base = np.full(32, 3.0, np.float32)
    state = fastdrop.stream_state()
    with pytest.raises(ValueError, match="overlaps"):
        fastdrop.dropout(base[:16], 0.5, out=base[8:24])
    with pytest.raises(ValueError, match="read-only"):
        read_only = np.zeros(16, np.float32)
        read_only.flags.writeable = False
        fastdrop.dropout(base[:16], 0.5, out=read_only)
    _bits_equal(base, np.full(32, 3.0, np.float32))
    assert fastdrop.stream_state() == state


@pytest.mark.parametrize(
    "shape, mask_shape, layout",
    [
        ((4096,), None, "c"),
        ((8, 33), None, "c"),
        ((8, 33), None, "f"),
        ((8, 33), None, "strided"),
        ((6, 5, 7), (6, 1, 7), "c"),
        ((6, 5, 7), (1, 5, 1), "c"),
        ((0, 5), None, "c"),
    ],
)
def test_backward_from_bits_equals_backward_from_seed(shape, mask_shape, layout):
    x = _values(int(np.prod(shape)) * 2, seed=4)[: int(np.prod(shape))].reshape(shape)
    if layout == "f":
        x = np.asfortranarray(x)
    elif layout == "strided":
        x = _values(int(np.prod(shape)) * 2, seed=4).reshape(shape[0], -1)[:, ::2]
    _, with_bits = fastdrop.dropout(x, 0.4, seed=9, offset=4, mask_shape=mask_shape, keep_bits=True)
    _, without = fastdrop.dropout(x, 0.4, seed=9, offset=4, mask_shape=mask_shape)
    dy = _values(x.size, seed=5).reshape(shape)
    from_seed = fastdrop.dropout_backward(dy, without)
    _bits_equal(fastdrop.dropout_backward(dy, with_bits), from_seed)
    out = np.full_like(dy, np.nan)
    fastdrop.dropout_backward(dy, with_bits, out=out)
    _bits_equal(out, from_seed)


def test_importing_fastdrop_caches_no_optional_backend():
    assert "cupy" not in _backend._backend_modules
    assert set(_backend._library_of_type.values()) <= {"numpy", "cupy"}
