"""Dropout variants: bit-for-bit equality with the reference on every backend, statistics with
stated false-failure rates, gradients against finite differences, and bad input."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._kernel_source import assemble_source
from fastdrop._contract import compute_dtype, keep_threshold, scale_factor

from conftest import assert_bitwise_equal, to_numpy

#: Two-sided z bound for the statistical tests: P(|N(0, 1)| > 5) = 5.7e-7 per check, so with the
#: few dozen checks below a false failure is rarer than one in 10**4 runs (the seeds are fixed, so
#: a given build either passes or fails every time).
Z = 5.0
PROBABILITIES = [0.0, 1e-6, 0.1, 0.5, 0.9, 1.0]


def _bfloat16_on(xp):
    """ml_dtypes' bfloat16 where the CUDA backend can take it (CuPy 14+), else None."""
    if xp is np:
        return None  # the CPU backend has no bfloat16 kernels
    try:
        import ml_dtypes

        xp.zeros(1, dtype=np.uint16).view(ml_dtypes.bfloat16)
    except Exception:  # no ml_dtypes, or a CuPy without bfloat16 arrays
        return None
    return np.dtype(ml_dtypes.bfloat16)


def _float_dtypes(xp):
    bfloat16 = _bfloat16_on(xp)
    return [np.float32, np.float64, np.float16] + ([bfloat16] if bfloat16 is not None else [])


def _upload(xp, values):
    """A copy of host ``values`` in ``xp``; raw bits up, then the dtype, so that no conversion of
    bfloat16 by CuPy is involved."""
    if xp is np:
        return values.copy()
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[values.dtype.itemsize]
    return xp.array(values.view(unsigned), copy=True).view(values.dtype)


def _input(xp, shape, dtype=np.float64, seed=0):
    values = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return _upload(xp, values), values


# ------------------------------------------------------------------------ equality with reference

@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("shape", [(2, 3, 7), (3, 5, 4, 3), (2, 3, 2, 3, 5)], ids=str)
def test_spatial_matches_reference(xp, shape, channel_axis):
    for dtype in _float_dtypes(xp):
        x, x_host = _input(xp, shape, dtype)
        y, mask = fastdrop.spatial_dropout(x, 0.4, seed=11, offset=5, channel_axis=channel_axis)
        expected = reference.spatial_dropout(x_host, 0.4, seed=11, offset=5, channel_axis=channel_axis)
        assert_bitwise_equal(y, expected)
        assert_bitwise_equal(fastdrop.dropout_backward(x, mask), expected)


@pytest.mark.parametrize("time_axis", [0, 1, -1])
def test_variational_matches_reference(xp, time_axis):
    for dtype in _float_dtypes(xp):
        x, x_host = _input(xp, (4, 9, 6), dtype)
        y, mask = fastdrop.variational_dropout(x, 0.3, seed=3, offset=2, time_axis=time_axis)
        expected = reference.variational_dropout(x_host, 0.3, seed=3, offset=2, time_axis=time_axis)
        assert_bitwise_equal(y, expected)
        assert_bitwise_equal(fastdrop.dropout_backward(x, mask), expected)


def test_recurrent_mask_is_the_variational_mask_at_every_step(xp):
    x, x_host = _input(xp, (4, 9, 6))  # (N, T, F)
    y, _ = fastdrop.variational_dropout(x, 0.5, seed=21, offset=8)
    step_mask = fastdrop.RecurrentMask((4, 6), 0.5, seed=21, offset=8)
    for t in range(9):
        assert_bitwise_equal(step_mask(x[:, t]), to_numpy(y)[:, t])
        assert_bitwise_equal(step_mask.backward(x[:, t]), to_numpy(y)[:, t])
    assert step_mask.mask.nbytes == 0


def test_recurrent_mask_from_the_stream_reserves_its_words():
    first = fastdrop.RecurrentMask((3, 5), 0.5)
    second = fastdrop.RecurrentMask((3, 5), 0.5)
    assert second.mask.offset == first.mask.offset + 16  # 15 words, rounded up to whole counters


@pytest.mark.parametrize("p", PROBABILITIES)
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_alpha_matches_reference(xp, p, offset):
    for dtype in _float_dtypes(xp):
        x, x_host = _input(xp, (3, 4101), dtype)
        for mask_shape in (None, (3, 1)):
            y, mask = fastdrop.alpha_dropout(x, p, seed=9, offset=offset, mask_shape=mask_shape)
            assert_bitwise_equal(y, reference.alpha_dropout(x_host, p, seed=9, offset=offset, mask_shape=mask_shape))
            assert_bitwise_equal(
                fastdrop.alpha_dropout_backward(x, mask),
                reference.alpha_dropout_backward(x_host, p, seed=9, offset=offset, mask_shape=mask_shape),
            )


def test_feature_alpha_is_alpha_with_a_channel_mask(xp):
    x, x_host = _input(xp, (5, 7, 3, 4))
    y, mask = fastdrop.feature_alpha_dropout(x, 0.3, seed=4)
    assert mask.shape == (5, 7, 1, 1)
    assert_bitwise_equal(y, reference.alpha_dropout(x_host, 0.3, seed=4, mask_shape=(5, 7, 1, 1)))
    y, mask = fastdrop.feature_alpha_dropout(x, 0.3, seed=4, channel_axis=-1)
    assert_bitwise_equal(y, reference.alpha_dropout(x_host, 0.3, seed=4, mask_shape=(5, 1, 1, 4)))


@pytest.mark.parametrize("p", [0.0, 1e-6, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4097])
def test_gaussian_matches_reference(xp, p, offset):
    for dtype in _float_dtypes(xp):
        x, x_host = _input(xp, (2, 4099), dtype)
        for mask_shape in (None, (2, 1), (1, 4099)):
            y, noise = fastdrop.gaussian_dropout(x, p, seed=5, offset=offset, mask_shape=mask_shape)
            expected = reference.gaussian_dropout(x_host, p, seed=5, offset=offset, mask_shape=mask_shape)
            assert_bitwise_equal(y, expected)
            assert_bitwise_equal(fastdrop.gaussian_dropout_backward(x, noise), expected)


# Views whose fast axis is an outer one (the CUDA columns kernels), a reversed one, a strided one.
VARIANT_LAYOUTS = [
    ("transposed", (37, 41), lambda a: a.T, None),
    ("transposed-reversed", (37, 41), lambda a: a.T[::-1], (41, 1)),
    ("channels-last", (2, 5, 3, 40), lambda a: a.transpose(0, 3, 1, 2), None),
    ("channels-last-mask", (2, 5, 3, 40), lambda a: a.transpose(0, 3, 1, 2), (2, 40, 1, 1)),
    ("first-axis-unit", (7, 6, 40), lambda a: a.transpose(2, 1, 0), None),
    ("strided", (9, 70), lambda a: a[::2, 1::3], None),
]


@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("layout", VARIANT_LAYOUTS, ids=[case[0] for case in VARIANT_LAYOUTS])
def test_alpha_and_gaussian_layouts(xp, layout, offset):
    _, base_shape, view, mask_shape = layout
    for dtype in _float_dtypes(xp):
        base, base_host = _input(xp, base_shape, dtype)
        x, x_host = view(base), view(base_host)
        y, mask = fastdrop.alpha_dropout(x, 0.3, seed=2, offset=offset, mask_shape=mask_shape)
        assert_bitwise_equal(y, reference.alpha_dropout(x_host, 0.3, seed=2, offset=offset, mask_shape=mask_shape))
        y, _ = fastdrop.gaussian_dropout(x, 0.3, seed=2, offset=offset, mask_shape=mask_shape)
        assert_bitwise_equal(y, reference.gaussian_dropout(x_host, 0.3, seed=2, offset=offset, mask_shape=mask_shape))


def test_gaussian_noise_to_array_is_the_reference_multiplier(xp):
    like = xp.empty(0)
    _, noise = fastdrop.gaussian_dropout(xp.ones((3, 1001)), 0.2, seed=6, offset=1)
    expected = reference.gaussian_multiplier((3, 1001), 0.2, np.float64, seed=6, offset=1)
    assert_bitwise_equal(noise.to_array(like), expected)


def test_normal_stream_is_slice_invariant():
    full = reference.standard_normals(64, seed=8)
    for a, b in [(0, 1), (1, 2), (3, 10), (5, 64)]:
        np.testing.assert_array_equal(reference.standard_normals(b - a, seed=8, offset=a), full[a:b])


@pytest.mark.parametrize("bias_shape", [None, (1023,), (5, 1023), (1,)], ids=str)
@pytest.mark.parametrize("p", PROBABILITIES + [1e-12, 1.0 - 1e-12])  # thresholds 2**32 and 0
def test_bias_dropout_add_matches_reference(xp, p, bias_shape):
    for dtype in _float_dtypes(xp):
        shape = (3, 5, 1023) if bias_shape != (1,) else (3, 5, 1)
        x, x_host = _input(xp, shape, dtype)
        residual_host = np.random.default_rng(1).standard_normal(shape).astype(dtype)
        residual_host[0, 0, 0] = -0.0  # a dropped element gives residual + 0: +0.0 here
        residual = _upload(xp, residual_host)
        bias, bias_host = (None, None) if bias_shape is None else _input(xp, bias_shape, dtype, seed=2)
        y, mask = fastdrop.bias_dropout_add(x, bias, residual, p, seed=12, offset=7)
        assert_bitwise_equal(y, reference.bias_dropout_add(x_host, bias_host, residual_host, p, seed=12, offset=7))
        dx, d_bias, d_residual = fastdrop.bias_dropout_add_backward(x, mask)
        ref_dx, ref_bias, _ = reference.bias_dropout_add_backward(
            x_host, p, seed=12, offset=7, bias_ndim=0 if bias is None else len(bias_shape)
        )
        assert_bitwise_equal(dx, ref_dx)
        assert d_residual is x
        if bias is None:
            assert d_bias is None
        else:
            tolerance = {"float16": 1e-3, "bfloat16": 1e-2, "float32": 1e-6, "float64": 1e-14}[np.dtype(dtype).name]
            np.testing.assert_allclose(to_numpy(d_bias).astype(np.float64), ref_bias.astype(np.float64),
                                       rtol=tolerance, atol=tolerance * 16)


def test_bias_dropout_add_layouts_and_in_place(xp):
    base, base_host = _input(xp, (6, 10, 130))
    residual, residual_host = _input(xp, (6, 10, 130), seed=1)
    bias, bias_host = _input(xp, (65,), seed=2)
    x, x_host = base[:, ::2, ::2], base_host[:, ::2, ::2]  # strided: reshaped by copy
    r, r_host = residual[:, 1::2, 1::2], residual_host[:, 1::2, 1::2]
    expected = reference.bias_dropout_add(x_host, bias_host, r_host, 0.3, seed=1)
    y, _ = fastdrop.bias_dropout_add(x, bias, r, 0.3, seed=1)
    assert_bitwise_equal(y, expected)
    y, _ = fastdrop.bias_dropout_add(x, bias, r, 0.3, seed=1, out=r)  # in place into a strided view
    assert y is r
    assert_bitwise_equal(r, expected)
    x, x_host = _input(xp, (4, 65))
    r_t, r_t_host = _input(xp, (65, 4), seed=4)
    r, r_host = r_t.T, r_t_host.T  # each of the three arrays with strides of its own
    out = xp.zeros((4, 130), dtype=x.dtype)[:, ::2]
    expected = reference.bias_dropout_add(x_host, bias_host, r_host, 0.4, seed=5, offset=3)
    assert fastdrop.bias_dropout_add(x, bias, r, 0.4, seed=5, offset=3, out=out)[0] is out
    assert_bitwise_equal(out, expected)
    r, r_host = _input(xp, (4, 65), seed=3)
    expected = reference.bias_dropout_add(x_host, bias_host, r_host, 0.5, seed=2)
    assert fastdrop.bias_dropout_add(x, bias, r, 0.5, seed=2, out=x)[0] is x
    assert_bitwise_equal(x, expected)


def test_zero_size_variants(xp):
    x = xp.empty((0, 3, 4))
    assert fastdrop.spatial_dropout(x, 0.5, seed=1)[0].shape == (0, 3, 4)
    assert fastdrop.alpha_dropout(x, 0.5, seed=1)[0].shape == (0, 3, 4)
    assert fastdrop.gaussian_dropout(x, 0.5, seed=1)[0].shape == (0, 3, 4)
    y, mask = fastdrop.bias_dropout_add(x, xp.ones(4), x, 0.5, seed=1)
    dx, d_bias, _ = fastdrop.bias_dropout_add_backward(y, mask)
    assert dx.shape == (0, 3, 4) and to_numpy(d_bias).tolist() == [0.0] * 4


def test_dropconnect_matches_reference(xp):
    x, x_host = _input(xp, (2, 5, 33))
    W, W_host = _input(xp, (17, 33), seed=1)
    b, b_host = _input(xp, (17,), seed=2)
    dy, dy_host = _input(xp, (2, 5, 17), seed=3)
    y, mask = fastdrop.dropconnect_linear(x, W, b, 0.3, seed=4, offset=1)
    assert mask.shape == (17, 33)
    np.testing.assert_allclose(to_numpy(y), reference.dropconnect_linear(x_host, W_host, b_host, 0.3, seed=4, offset=1),
                               rtol=1e-12, atol=1e-12)
    for got, expected in zip(fastdrop.dropconnect_linear_backward(dy, x, W, mask),
                             reference.dropconnect_linear_backward(dy_host, x_host, W_host, 0.3, seed=4, offset=1)):
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-12, atol=1e-12)
    y, _ = fastdrop.dropconnect_linear(x, W, None, 0.3, seed=4, offset=1)
    np.testing.assert_allclose(to_numpy(y), reference.dropconnect_linear(x_host, W_host, None, 0.3, seed=4, offset=1),
                               rtol=1e-12, atol=1e-12)


def test_masks_are_bound_to_their_backward():
    x = np.ones((4, 8))
    _, alpha_mask = fastdrop.alpha_dropout(x, 0.5, seed=1)
    _, noise = fastdrop.gaussian_dropout(x, 0.5, seed=1)
    _, plain = fastdrop.dropout(x, 0.5, seed=1)
    with pytest.raises(TypeError, match="mask must be a fastdrop.AlphaDropoutMask"):
        fastdrop.alpha_dropout_backward(x, plain)
    with pytest.raises(TypeError, match="noise must be a fastdrop.GaussianNoise"):
        fastdrop.gaussian_dropout_backward(x, alpha_mask)
    with pytest.raises(TypeError, match="mask must be a fastdrop.DropoutMask"):
        fastdrop.dropout_backward(x, noise)
    with pytest.raises(AttributeError, match="immutable"):
        alpha_mask.p = 0.1


# ----------------------------------------------------------------------------------- statistics

def test_spatial_channels_constant_inside_and_independent_across():
    n, c = 400, 250
    x = np.ones((n, c, 3, 5), dtype=np.float32)
    y, mask = fastdrop.spatial_dropout(x, 0.5, seed=2026)
    keep = mask.to_array().reshape(n, c)
    assert mask.shape == (n, c, 1, 1)
    assert np.all((y == 2.0) == keep[:, :, None, None]) and np.all((y == 0.0) == ~keep[:, :, None, None])
    # Keep rate: binomial over n * c channels, |z| < Z.
    rate = keep.mean()
    assert abs(rate - 0.5) < Z * math.sqrt(0.25 / keep.size)
    # Independence: the correlation of neighbouring channels' flags, and of the same channel in
    # neighbouring samples, is N(0, 1 / m) for m independent pairs.
    flags = keep.astype(np.float64)
    for a, b in [(flags[:, :-1], flags[:, 1:]), (flags[:-1], flags[1:])]:
        r = np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1]
        assert abs(r) < Z / math.sqrt(a.size)


def _moment_bounds(y):
    """Z-bounds on the sample mean and variance of i.i.d. y: sd(mean) = sigma / sqrt(n),
    sd(variance) = sqrt((mu4 - sigma^4) / n), moments estimated from the sample."""
    n = y.size
    centred = y - y.mean()
    var = centred.var()
    mu4 = np.mean(centred**4)
    return Z * math.sqrt(var / n), Z * math.sqrt((mu4 - var**2) / n)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_alpha_dropout_keeps_mean_zero_variance_one(p):
    x = np.random.default_rng(31).standard_normal(1 << 20)
    y, _ = fastdrop.alpha_dropout(x, p, seed=77)
    mean_bound, var_bound = _moment_bounds(y)
    assert abs(y.mean()) < mean_bound
    assert abs(y.var() - 1.0) < var_bound
    # Whole channels: one element per (sample, channel) of (N, C, L) input is i.i.d. over (N, C).
    x = np.random.default_rng(32).standard_normal((512, 512, 4))
    y, _ = fastdrop.feature_alpha_dropout(x, p, seed=78)
    mean_bound, var_bound = _moment_bounds(y[..., 0].reshape(-1))
    assert abs(y[..., 0].mean()) < mean_bound
    assert abs(y[..., 0].var() - 1.0) < var_bound


def test_alpha_affine_constants():
    a, shift, dropped = reference.alpha_dropout_affine(0.1)
    assert a == pytest.approx(1.0 / math.sqrt((1.7580993408473766**2 * 0.1 + 1.0) * 0.9), rel=1e-15)
    assert shift == pytest.approx(1.7580993408473766 * a * 0.1, rel=1e-15)
    assert dropped == pytest.approx(-1.7580993408473766 * a * 0.9, rel=1e-15)


def test_standard_normals_are_normal():
    scipy_stats = pytest.importorskip("scipy.stats")
    z = reference.standard_normals(1 << 20, seed=2024, offset=1)
    # N(0, 1): sd(mean) = 1 / sqrt(n), sd(variance) = sqrt(2 / n).
    assert abs(z.mean()) < Z / math.sqrt(z.size)
    assert abs(z.var() - 1.0) < Z * math.sqrt(2.0 / z.size)
    # Kolmogorov-Smirnov against N(0, 1): false-failure rate 1e-6.
    assert scipy_stats.kstest(z, "norm").pvalue > 1e-6
    # The cosine and sine of one pair are independent, and so are neighbouring pairs.
    for a, b in [(z[0::2], z[1::2]), (z[0:-2:2], z[2::2])]:
        r = np.corrcoef(a, b)[0, 1]
        assert abs(r) < Z / math.sqrt(a.size)
    # Our log / sin / cos series agree with libm to about 1e-15.
    words = reference.random_bits(2048, seed=2024)
    u = (words[0::2].astype(np.float64) + 1.0) / 2.0**32
    theta = 2.0 * np.pi * (words[1::2].astype(np.float64) + 0.5) / 2.0**32
    radius = np.sqrt(-2.0 * np.log(u))
    libm = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=-1).reshape(-1)
    np.testing.assert_allclose(reference.standard_normals(2048, seed=2024), libm, rtol=0, atol=1e-13)


def test_gaussian_multiplier_moments():
    p = 0.3
    x = np.ones(1 << 20)
    y, noise = fastdrop.gaussian_dropout(x, p, seed=55)
    mean_bound, var_bound = _moment_bounds(y)
    assert abs(y.mean() - 1.0) < mean_bound
    assert abs(y.var() - p / (1 - p)) < var_bound


# ----------------------------------------------------------------------------------- gradients

def _finite_difference_check(forward, arrays, cotangent, gradients, step=1e-6):
    """Central differences of L = sum(forward(*arrays) * cotangent) against the analytic gradients.
    Each forward draws the same mask (fixed seed), so L is linear in every input near the point."""
    for array, gradient in zip(arrays, gradients):
        flat = array.reshape(-1)
        numeric = np.empty(flat.size)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + step
            upper = np.sum(forward(*arrays) * cotangent)
            flat[i] = saved - step
            lower = np.sum(forward(*arrays) * cotangent)
            flat[i] = saved
            numeric[i] = (upper - lower) / (2 * step)
        np.testing.assert_allclose(np.asarray(gradient).reshape(-1), numeric, rtol=1e-6, atol=1e-8)


def test_gradients_against_finite_differences():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4))
    g = rng.standard_normal((2, 3, 4))

    y, mask = fastdrop.spatial_dropout(x, 0.4, seed=1)
    _finite_difference_check(lambda v: fastdrop.spatial_dropout(v, 0.4, seed=1)[0], [x], g,
                             [fastdrop.dropout_backward(g, mask)])
    y, mask = fastdrop.variational_dropout(x, 0.4, seed=1)
    _finite_difference_check(lambda v: fastdrop.variational_dropout(v, 0.4, seed=1)[0], [x], g,
                             [fastdrop.dropout_backward(g, mask)])
    y, mask = fastdrop.alpha_dropout(x, 0.4, seed=1)
    _finite_difference_check(lambda v: fastdrop.alpha_dropout(v, 0.4, seed=1)[0], [x], g,
                             [fastdrop.alpha_dropout_backward(g, mask)])
    y, noise = fastdrop.gaussian_dropout(x, 0.4, seed=1)
    _finite_difference_check(lambda v: fastdrop.gaussian_dropout(v, 0.4, seed=1)[0], [x], g,
                             [fastdrop.gaussian_dropout_backward(g, noise)])

    bias, residual = rng.standard_normal(4), rng.standard_normal((2, 3, 4))
    y, mask = fastdrop.bias_dropout_add(x, bias, residual, 0.4, seed=1)
    _finite_difference_check(lambda v, b, r: fastdrop.bias_dropout_add(v, b, r, 0.4, seed=1)[0],
                             [x, bias, residual], g, fastdrop.bias_dropout_add_backward(g, mask))

    W, b = rng.standard_normal((5, 4)), rng.standard_normal(5)
    g = rng.standard_normal((2, 3, 5))
    y, mask = fastdrop.dropconnect_linear(x, W, b, 0.4, seed=1)
    _finite_difference_check(lambda v, w, c: fastdrop.dropconnect_linear(v, w, c, 0.4, seed=1)[0],
                             [x, W, b], g, fastdrop.dropconnect_linear_backward(g, x, W, mask))


# ----------------------------------------------------------------------------------- bad input

def _rejects(call, error, match, *untouched):
    """``call`` raises ``error`` matching ``match``; the arrays in ``untouched`` and fastdrop's
    stream are as they were (nothing was written before the check)."""
    copies = [np.array(to_numpy(a), copy=True) for a in untouched]
    stream = fastdrop.stream_state()
    with pytest.raises(error, match=match):
        call()
    assert fastdrop.stream_state() == stream
    for array, copy in zip(untouched, copies):
        assert_bitwise_equal(array, copy)


def test_bad_axes_and_ranks(xp):
    x = xp.ones((2, 3, 4, 5))
    out = xp.full((2, 3, 4, 5), 7.0)
    _rejects(lambda: fastdrop.spatial_dropout(x, 0.5, channel_axis=0, out=out), ValueError, "channel_axis must not be 0", out)
    _rejects(lambda: fastdrop.spatial_dropout(x, 0.5, channel_axis=4, out=out), ValueError, "channel_axis=4 is out of range", out)
    _rejects(lambda: fastdrop.spatial_dropout(x, 0.5, channel_axis=1.0, out=out), TypeError, "channel_axis must be an integer", out)
    _rejects(lambda: fastdrop.spatial_dropout(x, 0.5, spatial_dims=3, out=out), ValueError, r"spatial_dims=3 needs batched input of rank 5", out)
    _rejects(lambda: fastdrop.spatial_dropout(xp.ones((3, 4)), 0.5), ValueError, "rank 3, 4 or 5")
    _rejects(lambda: fastdrop.spatial_dropout(xp.ones((1,) * 6), 0.5), ValueError, "rank 3, 4 or 5")
    _rejects(lambda: fastdrop.spatial_dropout(x, 0.5, spatial_dims=4), ValueError, "spatial_dims must be 1, 2 or 3")
    _rejects(lambda: fastdrop.variational_dropout(x, 0.5, time_axis=-5), ValueError, "time_axis=-5 is out of range")
    _rejects(lambda: fastdrop.variational_dropout(xp.ones(5), 0.5), ValueError, "rank >= 2")
    _rejects(lambda: fastdrop.feature_alpha_dropout(x, 0.5, channel_axis=0), ValueError, "channel_axis must not be 0")
    _rejects(lambda: fastdrop.spatial_dropout(x, 1.5), ValueError, r"p must be in \[0, 1\]")
    _rejects(lambda: fastdrop.spatial_dropout(xp.ones((2, 3, 4), dtype=np.int32), 0.5), TypeError, "x must be a floating-point array")


def test_bad_bias_residual_and_out(xp):
    x, residual, out = xp.ones((4, 6)), xp.ones((4, 6)), xp.full((4, 6), 7.0)
    call = fastdrop.bias_dropout_add
    _rejects(lambda: call(x, xp.ones(4), residual, 0.5, out=out), ValueError, r"bias has shape \(4,\); it must match x's trailing axes", out, residual)
    _rejects(lambda: call(x, xp.ones((2, 6)), residual, 0.5, out=out), ValueError, "bias has shape", out)
    _rejects(lambda: call(x, xp.ones(6, dtype=np.float32), residual, 0.5, out=out), TypeError, "bias has dtype float32", out)
    _rejects(lambda: call(x, xp.ones(6), xp.ones((4, 5)), 0.5, out=out), ValueError, r"residual has shape \(4, 5\); x has shape \(4, 6\)", out)
    _rejects(lambda: call(x, xp.ones(6), xp.ones((4, 6), dtype=np.float32), 0.5, out=out), TypeError, "residual has dtype", out)
    _rejects(lambda: call(x, xp.ones(6), np.ones((4, 6)) if xp is not np else [1.0], 0.5, out=out), TypeError, "residual must be", out)
    _rejects(lambda: call(x, xp.ones(6), residual, 0.5, out=xp.ones((4, 5))), ValueError, "out has shape")
    _rejects(lambda: call(x, None, x[:, :3], 0.5), ValueError, "residual has shape")
    overlapping = xp.ones((5, 6))
    _rejects(lambda: call(overlapping[:4], None, residual, 0.5, out=overlapping[1:]), ValueError, "out partly overlaps x", overlapping)


def test_bad_dropconnect_and_gaussian(xp):
    x, W, b = xp.ones((3, 4)), xp.ones((5, 4)), xp.ones(5)
    _rejects(lambda: fastdrop.dropconnect_linear(x, xp.ones((4, 5)), b, 0.5), ValueError, "last axis must be W's in_features = 5")
    _rejects(lambda: fastdrop.dropconnect_linear(x, xp.ones(4), b, 0.5), ValueError, "W must be 2-D")
    _rejects(lambda: fastdrop.dropconnect_linear(x, W, xp.ones(4), 0.5), ValueError, r"b has shape \(4,\); expected \(5,\)")
    _, mask = fastdrop.dropconnect_linear(x, W, b, 0.5, seed=1)
    _rejects(lambda: fastdrop.dropconnect_linear_backward(xp.ones((3, 4)), x, W, mask), ValueError, "dy has shape")
    _rejects(lambda: fastdrop.dropconnect_linear_backward(xp.ones((3, 5)), xp.ones((3, 6)), xp.ones((5, 6)), mask),
             ValueError, "the mask was drawn for")
    out = xp.full((3, 4), 7.0)
    _rejects(lambda: fastdrop.gaussian_dropout(x, 1.0, out=out), ValueError, "p must be < 1 for gaussian_dropout", out)
    _rejects(lambda: fastdrop.gaussian_dropout(x, 0.5, mask_shape=(2, 1), out=out), ValueError, "mask_shape", out)
    _, noise = fastdrop.gaussian_dropout(x, 0.5, seed=1)
    _rejects(lambda: fastdrop.gaussian_dropout_backward(xp.ones((4, 3)), noise), ValueError, "dy has shape")
    _rejects(lambda: fastdrop.RecurrentMask((3, 4), 0.5, seed=1)(xp.ones((3, 5))), ValueError, "h has shape")
    _rejects(lambda: fastdrop.RecurrentMask((3, -4), 0.5), ValueError, "shape must not have negative")


# ------------------------------------------------------------ CUDA sources, checked without a GPU

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
NVCC = shutil.which("nvcc")
GXX = shutil.which("g++")

# One command a line on stdin, one line of hex bit patterns out:
#   normals seed offset n | alpha dtype seed offset threshold a shift dropped n x...
#   gaussian dtype seed offset sigma n x... | bda dtype seed offset threshold scale n (x b r)...
HARNESS = r"""
#include <cstdio>
#include <cstring>
#include "variants.cu"
using namespace fastdrop;

template <class T> typename Compute<T>::type scalar(unsigned long long bits) {
    typedef typename Compute<T>::type C;
    return sizeof(C) == 4 ? (C)float_from_bits((u32)bits) : (C)double_from_bits(bits);
}

template <class T> void run(const char* command, u64 seed, u64 offset) {
    typedef typename T::raw raw;
    unsigned long long threshold = 0, p0 = 0, p1 = 0, p2 = 0, n, x, b, r;
    const u32 k0 = (u32)seed, k1 = (u32)(seed >> 32);
    if (!std::strcmp(command, "alpha")) std::scanf("%llx %llx %llx %llx", &threshold, &p0, &p1, &p2);
    else if (!std::strcmp(command, "gaussian")) std::scanf("%llx", &p0);
    else std::scanf("%llx %llx", &threshold, &p0);
    std::scanf("%llx", &n);
    for (unsigned long long i = 0; i < n; ++i) {
        const u64 g = offset + i;
        const PhiloxBlock block = philox_block(g >> 2, k0, k1);
        const bool keep = keeps(block_word(block, (u32)(g & 3)), threshold);
        std::scanf("%llx", &x);
        raw y;
        if (!std::strcmp(command, "alpha")) {
            y = alpha_select<T>((raw)x, keep, scalar<T>(p0), scalar<T>(p1), scalar<T>(p2));
        } else if (!std::strcmp(command, "gaussian")) {
            const typename Compute<T>::type m = gaussian_multiplier<T>(double_from_bits(p0), normal_of(block, g));
            y = Compute<T>::store(Compute<T>::multiply(Compute<T>::load((raw)x), m));
        } else {
            std::scanf("%llx %llx", &b, &r);
            y = bias_dropout_add_element<T, true>((raw)x, (raw)b, (raw)r, keep, scalar<T>(p0));
        }
        std::printf("%llx ", (unsigned long long)y);
    }
    std::printf("\n");
}

int main() {
    char command[16], dtype[8];
    while (std::scanf("%15s", command) == 1) {
        unsigned long long seed, offset, n;
        if (!std::strcmp(command, "normals")) {
            std::scanf("%llx %llx %llx", &seed, &offset, &n);
            for (unsigned long long i = 0; i < n; ++i) {
                const u64 g = offset + i;
                const double z = normal_of(philox_block(g >> 2, (u32)seed, (u32)(seed >> 32)), g);
                std::printf("%llx ", (unsigned long long)bits_from_double(z));
            }
            std::printf("\n");
            continue;
        }
        std::scanf("%7s %llx %llx", dtype, &seed, &offset);
        if (!std::strcmp(dtype, "f16")) run<Float16>(command, seed, offset);
        else if (!std::strcmp(dtype, "f32")) run<Float32>(command, seed, offset);
        else run<Float64>(command, seed, offset);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def variants_harness(tmp_path_factory):
    """Send commands to kernels/variants.cu's arithmetic built for the host by g++."""
    if GXX is None:
        pytest.skip("g++ not found on PATH")
    directory = tmp_path_factory.mktemp("variants-harness")
    (directory / "harness.cpp").write_text(HARNESS)
    binary = directory / "harness"
    built = subprocess.run([GXX, "-O2", "-ffp-contract=off", f"-I{KERNELS}", "-o", str(binary),
                            str(directory / "harness.cpp")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr

    def run(lines):
        result = subprocess.run([str(binary)], input="\n".join(lines) + "\n", capture_output=True,
                                text=True, timeout=60, check=True)
        return [[int(v, 16) for v in line.split()] for line in result.stdout.splitlines()]

    return run


def _bits(values, dtype):
    view = {2: np.uint16, 4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]
    return [int(v) for v in np.asarray(values, dtype=dtype).reshape(-1).view(view)]


def _hex(values):
    return " ".join(f"{v:x}" for v in values)


def _special_values(dtype, n, seed):
    values = np.random.default_rng(seed).standard_normal(n) * 3
    values[:6] = [0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(dtype).tiny / 4]
    return values.astype(dtype)


@pytest.mark.parametrize("seed, offset", [(0, 0), (1, 1), (2**64 - 1, (1 << 34) - 3), (0xDEADBEEF, 4097)])
def test_cuda_normals_match_reference(variants_harness, seed, offset):
    (line,) = variants_harness([f"normals {seed:x} {offset:x} {2000:x}"])
    assert line == _bits(reference.standard_normals(2000, seed=seed, offset=offset), np.float64)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("p", [1e-6, 0.1, 0.5, 0.9])
def test_cuda_element_operations_match_reference(variants_harness, dtype, p):
    n, seed, offset = 1500, 77, 5
    compute = compute_dtype(dtype)
    x, b, r = (_special_values(dtype, n, s) for s in (1, 2, 3))
    affine = [_bits([c], compute)[0] for c in reference.alpha_dropout_affine(p)]
    name = {np.float16: "f16", np.float32: "f32", np.float64: "f64"}[dtype]
    triples = [v for xi, bi, ri in zip(_bits(x, dtype), _bits(b, dtype), _bits(r, dtype)) for v in (xi, bi, ri)]
    alpha, gaussian, bda = variants_harness([
        f"alpha {name} {seed:x} {offset:x} {keep_threshold(p):x} {_hex(affine)} {n:x} {_hex(_bits(x, dtype))}",
        f"gaussian {name} {seed:x} {offset:x} {_bits([reference.gaussian_sigma(p)], np.float64)[0]:x} "
        f"{n:x} {_hex(_bits(x, dtype))}",
        f"bda {name} {seed:x} {offset:x} {keep_threshold(p):x} {_bits([scale_factor(p)], compute)[0]:x} "
        f"{n:x} {_hex(triples)}",
    ])
    assert alpha == _bits(reference.alpha_dropout(x, p, seed=seed, offset=offset), dtype)
    assert gaussian == _bits(reference.gaussian_dropout(x, p, seed=seed, offset=offset), dtype)
    assert bda == _bits(reference.bias_dropout_add(x, b, r, p, seed=seed, offset=offset), dtype)


@pytest.mark.nvcc
@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not found on PATH")
@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90"])
def test_variant_kernels_compile_without_spills(arch, tmp_path):
    """kernels/variants.cu, as NVRTC gets it (headers inlined), compiles with CuPy's -ftz=true,
    every kernel present and none spilling."""
    source = tmp_path / "variants.cu"
    source.write_text(assemble_source(name="variants.cu"))
    result = subprocess.run([NVCC, f"-arch={arch}", "-cubin", "-ftz=true", "-std=c++17", "-Xptxas", "-v",
                             "-o", str(tmp_path / "v.cubin"), str(source)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    names = set(re.findall(r"Compiling entry function '(\w+)'", result.stderr))
    for suffix in ("f16", "bf16", "f32", "f64"):
        for kind in ("alpha_strided", "gaussian_strided", "alpha_rows", "gaussian_rows", "bias_dropout_add_bias_vector",
                     "bias_dropout_add_vector", "bias_dropout_add_bias_strided", "bias_dropout_add_strided"):
            assert f"fastdrop_{kind}_{suffix}" in names
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr)
    assert spills and all(stores == "0" and loads == "0" for stores, loads in spills)


def test_results_do_not_depend_on_thread_count():
    """The variant kernels with one Numba thread give the bits they give with all threads."""
    script = (
        "import hashlib, numpy as np, fastdrop\n"
        "x = np.random.default_rng(0).standard_normal((3, 9001)).astype(np.float32)\n"
        "parts = [fastdrop.alpha_dropout(x, 0.3, seed=1, offset=3)[0],\n"
        "         fastdrop.gaussian_dropout(x, 0.3, seed=1, offset=3)[0],\n"
        "         fastdrop.bias_dropout_add(x, x[0], x[::-1].copy(), 0.3, seed=1, offset=3)[0]]\n"
        # Transposed, odd width: the columns kernels (alpha shares select_columns).
        "t = np.random.default_rng(1).standard_normal((37, 2050)).astype(np.float32).T\n"
        "parts += [fastdrop.alpha_dropout(t, 0.3, seed=1, offset=3)[0],\n"
        "          fastdrop.gaussian_dropout(t, 0.3, seed=1, offset=3)[0],\n"
        "          fastdrop.bias_dropout_add(t, t[0], t.copy(order='F'), 0.3, seed=1, offset=3)[0]]\n"
        "print(hashlib.sha256(b''.join(p.tobytes() for p in parts)).hexdigest())\n"
    )
    digests = set()
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                env=env, timeout=300, check=True)
        digests.add(result.stdout.strip())
    assert len(digests) == 1
