"""Property-based tests (hypothesis): any shape, view, mask shape, seed, offset and p gives the
reference's answer bit for bit, and backward composes with forward."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastdrop
from fastdrop import reference

from conftest import assert_bitwise_equal

_settings = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def problems(draw):
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=1, max_size=5)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    base = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape).astype(dtype)
    # A random view: per-axis step (negative reverses) and optionally a transpose.
    steps = tuple(draw(st.sampled_from([1, 2, -1, -2])) for _ in shape)
    view = base[tuple(slice(None, None, step) for step in steps)]
    if draw(st.booleans()):
        view = view.transpose(draw(st.permutations(range(view.ndim))))
    mask_shape = tuple(d if draw(st.booleans()) else 1 for d in view.shape)
    mask_shape = mask_shape[draw(st.integers(0, len(mask_shape))):]
    p = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0)))
    seed = draw(st.integers(0, 2**64 - 1))
    offset = draw(st.integers(0, 2**40))
    return view, mask_shape, p, seed, offset


@_settings
@given(problems(), st.booleans())
def test_any_view_matches_reference(problem, keep_bits):
    view, mask_shape, p, seed, offset = problem
    y, mask = fastdrop.dropout(view, p, seed=seed, offset=offset, mask_shape=mask_shape, keep_bits=keep_bits)
    expected = reference.dropout(view, p, seed=seed, offset=offset, mask_shape=mask_shape)
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
