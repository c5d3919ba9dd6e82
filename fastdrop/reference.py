"""The NumPy oracle: the whole dropout contract in plain, vectorised NumPy.

Every backend (Numba, CuPy, the host-compiled CUDA helpers) is tested against this module
bit for bit. It favours clarity over speed; see ``docs/rng-contract.md`` for the contract itself.

Philox4x32-10 is evaluated in uint64 arithmetic: a 32 x 32 bit product fits in 64 bits, so the
high and low halves are a shift and a mask away.
"""

from __future__ import annotations

import math

import numpy as np

from fastdrop._contract import (
    PHILOX_M0,
    PHILOX_M1,
    PHILOX_ROUNDS,
    PHILOX_W0,
    PHILOX_W1,
    compute_dtype,
    is_identity,
    keep_threshold,
    philox_key,
    scale_factor,
)

__all__ = [
    "philox4x32",
    "random_bits",
    "keep_mask",
    "dropout",
    "dropout_backward",
]

_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32(counter, key, rounds: int = PHILOX_ROUNDS) -> np.ndarray:
    """Philox4x32 on an array of counters.

    ``counter`` has shape (..., 4) and ``key`` shape (..., 2) (broadcast against each other),
    words as unsigned 32-bit integers. Returns uint32 of shape (..., 4).
    """
    ctr = np.asarray(counter, dtype=np.uint64)
    k = np.asarray(key, dtype=np.uint64)
    if ctr.shape[-1] != 4 or k.shape[-1] != 2:
        raise ValueError("counter needs 4 words and key 2 words in the last axis")
    c0, c1, c2, c3 = (ctr[..., j] & _MASK32 for j in range(4))
    k0, k1 = k[..., 0] & _MASK32, k[..., 1] & _MASK32
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    w0, w1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
    for r in range(rounds):
        if r:
            k0 = (k0 + w0) & _MASK32
            k1 = (k1 + w1) & _MASK32
        prod0 = m0 * c0
        prod1 = m1 * c2
        c0, c1, c2, c3 = (
            (prod1 >> np.uint64(32)) ^ c1 ^ k0,
            prod1 & _MASK32,
            (prod0 >> np.uint64(32)) ^ c3 ^ k1,
            prod0 & _MASK32,
        )
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def random_bits(n: int, *, seed: int, offset: int = 0) -> np.ndarray:
    """The contract's stream ``r[offset], ..., r[offset + n - 1]`` as uint32."""
    n, offset = int(n), int(offset)
    if n == 0:
        return np.empty(0, dtype=np.uint32)
    q_first = offset >> 2
    q_last = (offset + n - 1) >> 2
    q = np.arange(q_last - q_first + 1, dtype=np.uint64) + np.uint64(q_first)
    counter = np.zeros(q.shape + (4,), dtype=np.uint64)
    counter[:, 0] = q & _MASK32
    counter[:, 1] = q >> np.uint64(32)
    words = philox4x32(counter, np.array(philox_key(seed), dtype=np.uint64)).reshape(-1)
    start = offset - 4 * q_first
    return words[start : start + n].copy()


def keep_mask(shape, p: float, *, seed: int, offset: int = 0) -> np.ndarray:
    """Boolean keep flags of the given logical shape (element i uses word offset + i, C order)."""
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    words = random_bits(n, seed=seed, offset=offset).astype(np.uint64)
    return (words < np.uint64(keep_threshold(p))).reshape(shape)


def _apply(values: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
    if is_identity(p):  # the contract: y is x bit for bit (no multiply to quiet a NaN)
        return values.copy()
    compute = compute_dtype(values.dtype)
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 at p = 1 is discarded by the select
        scaled = (values.astype(compute) * compute.type(scale_factor(p))).astype(values.dtype)
    keep = np.broadcast_to(keep, values.shape)
    return np.where(keep, scaled, values.dtype.type(0))


def dropout(x, p: float, *, seed: int, offset: int = 0, mask_shape=None) -> np.ndarray:
    """Training-mode dropout of ``x``; the mask is drawn over ``mask_shape`` (default x.shape)."""
    x = np.asarray(x)
    shape = x.shape if mask_shape is None else tuple(mask_shape)
    return _apply(x, keep_mask(shape, p, seed=seed, offset=offset), p)


def dropout_backward(dy, p: float, *, seed: int, offset: int = 0, mask_shape=None) -> np.ndarray:
    """Gradient of :func:`dropout` with respect to x: the same mask and scale applied to dy."""
    return dropout(dy, p, seed=seed, offset=offset, mask_shape=mask_shape)


def pack_bits(keep: np.ndarray) -> np.ndarray:
    """The contract's packed keep flags: ``np.packbits(flat_keep, bitorder="little")``."""
    return np.packbits(np.asarray(keep, dtype=bool).reshape(-1), bitorder="little")


# ---------------------------------------------------------------------------------------------
# Dropout variants (docs/variants.md). Scalar rules used by every backend live here too, so the
# oracle and the kernels share one definition of each constant.
# ---------------------------------------------------------------------------------------------

#: SELU's negative saturation value -lambda * alpha (Klambauer et al. 2017), alpha' in the paper.
SELU_ALPHA_PRIME = -1.7580993408473766


def spatial_mask_shape(shape, channel_axis: int) -> tuple[int, ...]:
    """(N, 1, .., C, .., 1): one draw per (sample, channel); axis 0 is the batch axis."""
    return tuple(d if axis in (0, channel_axis) else 1 for axis, d in enumerate(shape))


def variational_mask_shape(shape, time_axis: int) -> tuple[int, ...]:
    """x.shape with the time axis set to 1: one mask per sequence, shared by every step."""
    return tuple(1 if axis == time_axis else d for axis, d in enumerate(shape))


def spatial_dropout(x, p: float, *, seed: int, offset: int = 0, channel_axis: int = 1):
    x = np.asarray(x)
    return dropout(x, p, seed=seed, offset=offset,
                   mask_shape=spatial_mask_shape(x.shape, channel_axis % x.ndim))


def variational_dropout(x, p: float, *, seed: int, offset: int = 0, time_axis: int = 1):
    x = np.asarray(x)
    return dropout(x, p, seed=seed, offset=offset,
                   mask_shape=variational_mask_shape(x.shape, time_axis % x.ndim))


def alpha_dropout_affine(p: float) -> tuple[float, float, float]:
    """(a, kept_shift, dropped_value) in float64: kept y = a * x + kept_shift, dropped y =
    dropped_value, with q = 1 - p, a = (q + alpha'^2 q p)^(-1/2), b = -a p alpha' (the paper's
    affine correction), kept_shift = b and dropped_value = a * alpha' + b. p = 1 gives (0, 0, 0)."""
    p = float(p)
    if p >= 1.0:
        return 0.0, 0.0, 0.0
    q = 1.0 - p
    a = 1.0 / math.sqrt(q + SELU_ALPHA_PRIME * SELU_ALPHA_PRIME * q * p)
    b = -a * p * SELU_ALPHA_PRIME
    return a, b, a * SELU_ALPHA_PRIME + b


def alpha_dropout(x, p: float, *, seed: int, offset: int = 0, mask_shape=None) -> np.ndarray:
    """``where(keep, a * x + b, a * alpha' + b)`` in the compute dtype, keep drawn as in dropout;
    p = 0 returns x unchanged."""
    x = np.asarray(x)
    if p == 0:
        return x.copy()
    shape = x.shape if mask_shape is None else tuple(mask_shape)
    keep = np.broadcast_to(keep_mask(shape, p, seed=seed, offset=offset), x.shape)
    compute = compute_dtype(x.dtype)
    a, shift, dropped = (compute.type(c) for c in alpha_dropout_affine(p))
    kept = (x.astype(compute) * a + shift).astype(x.dtype)
    return np.where(keep, kept, np.asarray(dropped).astype(x.dtype))


def alpha_dropout_backward(dy, p: float, *, seed: int, offset: int = 0, mask_shape=None) -> np.ndarray:
    """``dx = where(keep, a * dy, 0)``."""
    dy = np.asarray(dy)
    shape = dy.shape if mask_shape is None else tuple(mask_shape)
    keep = np.broadcast_to(keep_mask(shape, p, seed=seed, offset=offset), dy.shape)
    compute = compute_dtype(dy.dtype)
    a = compute.type(alpha_dropout_affine(p)[0])
    return np.where(keep, (dy.astype(compute) * a).astype(dy.dtype), dy.dtype.type(0))


def bias_dropout_add(x, bias, residual, p: float, *, seed: int, offset: int = 0) -> np.ndarray:
    """``residual + where(keep, (x + bias) * s, 0)``, each step rounded in the compute dtype;
    ``bias`` (or None) broadcasts over x's trailing axes; the mask is drawn over x.shape."""
    x, residual = np.asarray(x), np.asarray(residual)
    compute = compute_dtype(x.dtype)
    biased = x.astype(compute)
    if bias is not None:
        biased = biased + np.asarray(bias).astype(compute)
    keep = keep_mask(x.shape, p, seed=seed, offset=offset)
    dropped = np.where(keep, biased * compute.type(scale_factor(p)), compute.type(0))
    return (residual.astype(compute) + dropped).astype(x.dtype)


def bias_dropout_add_backward(dy, p: float, *, seed: int, offset: int = 0, bias_ndim: int = 1):
    """(d_x, d_bias, d_residual): d_x is dropout's backward, d_bias sums d_x over the leading
    axes (in float64, then rounded), d_residual is dy."""
    dy = np.asarray(dy)
    dx = dropout_backward(dy, p, seed=seed, offset=offset)
    lead = tuple(range(dy.ndim - bias_ndim))
    dbias = dx.astype(np.float64).sum(axis=lead).astype(dy.dtype) if bias_ndim else None
    return dx, dbias, dy


def dropconnect_linear(x, W, b, p: float, *, seed: int, offset: int = 0) -> np.ndarray:
    """``x @ (W * keep * s).T + b`` with one mask over W's shape (out_features, in_features)."""
    y = np.asarray(x) @ dropout(W, p, seed=seed, offset=offset).T
    return y if b is None else y + np.asarray(b)


def dropconnect_linear_backward(dy, x, W, p: float, *, seed: int, offset: int = 0):
    """(dx, dW, db) of :func:`dropconnect_linear`: dx = dy @ W_masked, dW = mask applied to
    dy^T x (over the flattened leading axes), db = dy summed over the leading axes."""
    dy, x = np.asarray(dy), np.asarray(x)
    masked = dropout(W, p, seed=seed, offset=offset)
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    dW = dropout_backward(dy2.T @ x2, p, seed=seed, offset=offset)
    return dy @ masked, dW, dy2.sum(axis=0)


# Gaussian dropout: Box-Muller in float64 built from +, -, *, /, sqrt and frexp only (each exact or
# correctly rounded in IEEE 754), so every backend can produce the same bits. ln(u) is an atanh
# series after reducing the mantissa to [sqrt(1/2), sqrt(2)); sin and cos are Taylor polynomials
# on [0, pi/4] after splitting the angle into octants with the word's top three bits.
LN2 = 0.6931471805599453
SQRT_HALF = 0.7071067811865476
PI_OVER_4 = 0.7853981633974483
#: 1 / (2k + 1) for k = 0 .. 10: ln(m) = 2 s * sum_k s^(2k) / (2k + 1), s = (m - 1) / (m + 1).
LOG_SERIES = tuple(1.0 / (2 * k + 1) for k in range(11))
#: (-1)^k / (2k + 1)! for k = 1 .. 8: sin(t) = t + t^3 * sum_k SIN_SERIES[k-1] t^(2k-2).
SIN_SERIES = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(1, 9))
#: (-1)^k / (2k)! for k = 1 .. 9: cos(t) = 1 + t^2 * sum_k COS_SERIES[k-1] t^(2k-2).
COS_SERIES = tuple((-1) ** k / math.factorial(2 * k) for k in range(1, 10))


def _horner(coefficients, t):
    total = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        total = total * t + c
    return total


def standard_normals(n: int, *, seed: int, offset: int = 0) -> np.ndarray:
    """The normal stream z[offset], ..., z[offset + n - 1] (float64).

    Element g uses the word pair (r[2k], r[2k + 1]) with k = g >> 1, both from counter g >> 2:
    radius sqrt(-2 ln u) with u = (r[2k] + 1) / 2**32 in (0, 1], angle 2 pi (r[2k + 1] + 1/2) / 2**32;
    even g takes the cosine, odd g the sine.
    """
    n, offset = int(n), int(offset)
    if n == 0:
        return np.empty(0, dtype=np.float64)
    first = offset & ~1
    words = random_bits(2 * (((offset + n - 1) >> 1) - (first >> 1) + 1), seed=seed, offset=first)
    radius_word = words[0::2].astype(np.float64) + 1.0
    angle_word = words[1::2].astype(np.uint64)

    mantissa, exponent = np.frexp(radius_word)
    small = mantissa < SQRT_HALF
    mantissa = np.where(small, mantissa * 2.0, mantissa)
    exponent = np.where(small, exponent - 1, exponent) - 32
    s = (mantissa - 1.0) / (mantissa + 1.0)
    log_u = exponent.astype(np.float64) * LN2 + 2.0 * s * _horner(LOG_SERIES, s * s)
    radius = np.sqrt(-2.0 * log_u)

    octant = angle_word >> np.uint64(29)
    low = angle_word & np.uint64((1 << 29) - 1)
    odd = (octant & np.uint64(1)).astype(bool)
    low = np.where(odd, np.uint64((1 << 29) - 1) - low, low)
    psi = (low.astype(np.float64) + 0.5) * 2.0**-29 * PI_OVER_4
    t = psi * psi
    sin_psi = psi + psi * t * _horner(SIN_SERIES, t)
    cos_psi = 1.0 + t * _horner(COS_SERIES, t)
    sin_a, cos_a = np.where(odd, cos_psi, sin_psi), np.where(odd, sin_psi, cos_psi)
    quadrant = (octant >> np.uint64(1)).astype(np.int64)
    cos_theta = np.choose(quadrant, [cos_a, -sin_a, -cos_a, sin_a])
    sin_theta = np.choose(quadrant, [sin_a, cos_a, -sin_a, -cos_a])
    normals = np.stack([radius * cos_theta, radius * sin_theta], axis=-1).reshape(-1)
    return normals[offset - first : offset - first + n].copy()


def gaussian_sigma(p: float) -> float:
    """Standard deviation of the multiplicative noise: sqrt(p / (1 - p)) (p < 1)."""
    p = float(p)
    return math.sqrt(p / (1.0 - p))


def gaussian_multiplier(shape, p: float, dtype, *, seed: int, offset: int = 0) -> np.ndarray:
    """``1 + sigma * z`` in float64, rounded once to the compute dtype of ``dtype``."""
    shape = tuple(int(d) for d in shape)
    z = standard_normals(math.prod(shape), seed=seed, offset=offset).reshape(shape)
    return (1.0 + gaussian_sigma(p) * z).astype(compute_dtype(dtype))


def gaussian_dropout(x, p: float, *, seed: int, offset: int = 0, mask_shape=None) -> np.ndarray:
    """``x * (1 + sigma z)``, z ~ N(0, 1) from :func:`standard_normals`; p = 0 returns x."""
    x = np.asarray(x)
    if p == 0:
        return x.copy()
    shape = x.shape if mask_shape is None else tuple(mask_shape)
    m = gaussian_multiplier(shape, p, x.dtype, seed=seed, offset=offset)
    return (x.astype(m.dtype) * m).astype(x.dtype)


def gaussian_dropout_backward(dy, p: float, *, seed: int, offset: int = 0, mask_shape=None):
    """``dx = dy * (1 + sigma z)`` with the forward's noise."""
    return gaussian_dropout(dy, p, seed=seed, offset=offset, mask_shape=mask_shape)
