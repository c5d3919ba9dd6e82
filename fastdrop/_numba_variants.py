"""Numba CPU kernels of the dropout variants, and their launchers (the variants' backend interface).

The kernels reuse the core pieces of ``_numba_kernels``: the same fixed ``CHUNK`` tasks
(``task_place``), their words (``task_words``: Philox counters generated as vectorisable lanes,
with prefetch hints for whole tasks; ``fill_words``), ``word_at``, so no result depends on the
thread count; and ``_numba_half`` for float16, which the kernels see as uint16 bits. Launch
decisions sit at the bottom of the module, in the functions ``fastdrop.variants`` calls (the CuPy
module ``_cupy_variants`` has the same ones):

``alpha_forward(x, out, *, mask_shape, seed, offset, threshold, affine)``
    ``out = where(keep, x * a + shift, dropped)`` with ``affine = (a, shift, dropped)`` floats.
``gaussian_forward(x, out, *, mask_shape, seed, offset, sigma)``
    ``out = x * (1 + sigma * z)``, the multiplier made in float64 and rounded to x's dtype.
``bias_dropout_add(x, bias, residual, out, *, seed, offset, threshold, scale)``
    2-D (rows, bias size) views; ``out = residual + where(keep, (x + bias) * scale, 0)``.

Dropout-shaped passes (spatial, variational, DropConnect's masked weight, every backward that is a
scaled select) use the core backend's ``forward`` directly.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from fastdrop import reference
from fastdrop._contract import compute_dtype, philox_key
from fastdrop._kernel_cache import discard_stale_kernels
from fastdrop._layout import rank3_launches
from fastdrop._numba_half import as_compute, kernel_view, load, store
from fastdrop._numba_backend import _kernel_lock, _views
from fastdrop._numba_kernels import (
    _BUFFER_WORDS, CHUNK, _jit, fill_words, philox4x32_10, task_place, task_words, word_at,
)

discard_stale_kernels()  # before any cached kernel loads: see _kernel_cache

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_LOW29 = np.uint64((1 << 29) - 1)

_LN2 = reference.LN2
_SQRT_HALF = reference.SQRT_HALF
_PI_OVER_4 = reference.PI_OVER_4
_TWO_POW_MINUS_29 = 2.0**-29
# Unrolled Horner coefficients (Numba folds module-level floats into constants).
_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7, _L8, _L9, _L10 = reference.LOG_SERIES
_S1, _S2, _S3, _S4, _S5, _S6, _S7, _S8 = reference.SIN_SERIES
_C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9 = reference.COS_SERIES


# --------------------------------------------------------------------------------------- kernels

@numba.njit(parallel=True, **_jit)
def alpha_rows(x, out, mask_stride0, mask_stride1, mask_stride2, word_offset, k0, k1,
               threshold, a, shift, dropped):
    """out = where(keep, x * a + shift, dropped) over a rank-3 view (mask strides as in
    ``_numba_kernels.select_rows``)."""
    n0, n1, n2 = x.shape
    rows = n0 * n1
    if mask_stride2 == 0:
        for row in numba.prange(rows):
            i0 = row // n1
            i1 = row - i0 * n1
            keep = word_at(word_offset + np.uint64(i0 * mask_stride0 + i1 * mask_stride1), k0, k1) < threshold
            for i2 in range(n2):
                value = load(x, (i0, i1, i2)) * a + shift
                store(out, (i0, i1, i2), value if keep else dropped)
        return
    chunks_per_row = (n2 + CHUNK - 1) // CHUNK
    for task in numba.prange(rows * chunks_per_row):
        i0, i1, start, count = task_place(task, chunks_per_row, n1, n2)
        g = word_offset + np.uint64(i0 * mask_stride0 + i1 * mask_stride1 + start)
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        first = task_words(words, g, count, k0, k1, x, None, out, i0, i1, start)
        x_row = x[i0, i1, start : start + count]
        out_row = out[i0, i1, start : start + count]
        row_words = words[first : first + count]  # sliced: see select_rows in _numba_kernels
        for j in range(count):
            value = load(x_row, j) * a + shift
            store(out_row, j, value if np.uint64(row_words[j]) < threshold else dropped)


@numba.njit(inline="always", **_jit)
def _frexp_word_plus_one(word):
    """frexp(word + 1) for a 32-bit word, exactly (a branch-free bit length, then a division by a
    power of two), because Numba has no np.frexp and math.frexp is a scalar library call."""
    n = word + np.uint64(1)
    top = np.uint64(32) if (n >> np.uint64(32)) != 0 else np.uint64(0)
    for shift in (16, 8, 4, 2, 1):
        if (n >> (top + np.uint64(shift))) != 0:
            top += np.uint64(shift)
    exponent = np.int64(top) + 1
    return np.float64(n) / np.float64(np.uint64(1) << np.uint64(exponent)), exponent


@numba.njit(inline="always", **_jit)
def box_muller(radius_word, angle_word, odd):
    """One standard normal from a word pair (see ``reference.standard_normals``): the cosine
    branch for even elements, the sine branch for odd ones. Same operations in the same order
    as the reference, so the same bits."""
    mantissa, exponent = _frexp_word_plus_one(radius_word)
    if mantissa < _SQRT_HALF:
        mantissa = mantissa * 2.0
        exponent -= 1
    s = (mantissa - 1.0) / (mantissa + 1.0)
    t = s * s
    series = ((((((((((_L10 * t + _L9) * t + _L8) * t + _L7) * t + _L6) * t + _L5) * t + _L4)
                   * t + _L3) * t + _L2) * t + _L1) * t + _L0)
    log_u = np.float64(exponent - 32) * _LN2 + 2.0 * s * series
    radius = np.sqrt(-2.0 * log_u)

    octant = angle_word >> np.uint64(29)
    low = angle_word & _LOW29
    octant_odd = (octant & np.uint64(1)) != 0
    if octant_odd:
        low = _LOW29 - low
    psi = (np.float64(low) + 0.5) * _TWO_POW_MINUS_29 * _PI_OVER_4
    t = psi * psi
    sin_poly = (((((((_S8 * t + _S7) * t + _S6) * t + _S5) * t + _S4) * t + _S3) * t + _S2) * t + _S1)
    cos_poly = ((((((((_C9 * t + _C8) * t + _C7) * t + _C6) * t + _C5) * t + _C4) * t + _C3) * t
                 + _C2) * t + _C1)
    sin_psi = psi + psi * t * sin_poly
    cos_psi = 1.0 + t * cos_poly
    sin_a = cos_psi if octant_odd else sin_psi
    cos_a = sin_psi if octant_odd else cos_psi
    quadrant = octant >> np.uint64(1)
    # The element's branch turned by quadrant * pi / 2: cosine for even g, sine for odd g.
    if odd:
        if quadrant == 0:
            value = sin_a
        elif quadrant == 1:
            value = cos_a
        elif quadrant == 2:
            value = -sin_a
        else:
            value = -cos_a
    else:
        if quadrant == 0:
            value = cos_a
        elif quadrant == 1:
            value = -sin_a
        elif quadrant == 2:
            value = -cos_a
        else:
            value = sin_a
    return radius * value


@numba.njit(**_jit)
def normal_at(g, k0, k1):
    """The standard normal of element g (used where one draw covers a whole row)."""
    q = g >> np.uint64(2)
    r0, r1, r2, r3 = philox4x32_10(q & _MASK32, q >> _SHIFT32, np.uint64(0), np.uint64(0), k0, k1)
    if g & np.uint64(2):
        return box_muller(r2, r3, (g & np.uint64(1)) != 0)
    return box_muller(r0, r1, (g & np.uint64(1)) != 0)


@numba.njit(parallel=True, **_jit)
def gaussian_rows(x, out, mask_stride0, mask_stride1, mask_stride2, word_offset, k0, k1, sigma):
    """out = x * round(1 + sigma * z) over a rank-3 view; z in float64, rounded to x's dtype."""
    n0, n1, n2 = x.shape
    rows = n0 * n1
    if mask_stride2 == 0:
        for row in numba.prange(rows):
            i0 = row // n1
            i1 = row - i0 * n1
            z = normal_at(word_offset + np.uint64(i0 * mask_stride0 + i1 * mask_stride1), k0, k1)
            multiplier = as_compute(x, 1.0 + sigma * z)
            for i2 in range(n2):
                store(out, (i0, i1, i2), load(x, (i0, i1, i2)) * multiplier)
        return
    chunks_per_row = (n2 + CHUNK - 1) // CHUNK
    for task in numba.prange(rows * chunks_per_row):
        i0, i1, start, count = task_place(task, chunks_per_row, n1, n2)
        g = word_offset + np.uint64(i0 * mask_stride0 + i1 * mask_stride1 + start)
        # Start the words at an even index so every element finds its pair in the buffer.
        parity = np.int64(g & np.uint64(1))
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        first = fill_words(words, g - np.uint64(parity), count + parity, k0, k1) + parity
        multipliers = np.empty(CHUNK, dtype=np.float64)
        for j in range(count):
            local = first + j
            pair = local - (local & 1)
            z = box_muller(np.uint64(words[pair]), np.uint64(words[pair + 1]), (local & 1) != 0)
            multipliers[j] = 1.0 + sigma * z
        x_row = x[i0, i1, start : start + count]
        out_row = out[i0, i1, start : start + count]
        for j in range(count):
            store(out_row, j, load(x_row, j) * as_compute(x, multipliers[j]))


@numba.njit(parallel=True, **_jit)
def bias_dropout_add_rows(x, bias, residual, out, has_bias, word_offset, k0, k1, threshold,
                          scale, zero, flat_x, flat_residual, flat_out):
    """out = residual + where(keep, (x + bias) * scale, 0) over (rows, width) views, the mask
    over the flat C-order index row * width + column. Tasks are flat CHUNKs crossing rows.
    ``flat_*`` are (1, 1, n) views of the C-contiguous arrays among x, residual and out (empty
    ones for the others) through which whole tasks prefetch what they will stream."""
    rows, width = x.shape
    n = rows * width
    last_kept = np.uint32(threshold - np.uint64(1))  # 32-bit compare, as in select_rows: t >= 1
    for task in numba.prange((n + CHUNK - 1) // CHUNK):
        start = task * CHUNK
        count = min(CHUNK, n - start)
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        first = task_words(words, word_offset + np.uint64(start), count, k0, k1,
                           flat_x, flat_residual, flat_out, 0, 0, start)
        row = start // width
        column = start - row * width
        done = 0
        while done < count:
            segment = min(count - done, width - column)
            row_words = words[first + done : first + done + segment]
            x_row = x[row, column : column + segment]
            residual_row = residual[row, column : column + segment]
            out_row = out[row, column : column + segment]
            if has_bias:
                bias_row = bias[column : column + segment]
                for j in range(segment):
                    keep = row_words[j] <= last_kept
                    value = (load(x_row, j) + load(bias_row, j)) * scale
                    store(out_row, j, load(residual_row, j) + (value if keep else zero))
            else:
                for j in range(segment):
                    keep = row_words[j] <= last_kept
                    value = load(x_row, j) * scale
                    store(out_row, j, load(residual_row, j) + (value if keep else zero))
            done += segment
            row += 1
            column = 0


# ------------------------------------------------------------------------------------- launchers

def _key(seed):
    return tuple(np.uint64(word) for word in philox_key(seed))


def alpha_forward(x, out, *, mask_shape, seed, offset, threshold, affine):
    k0, k1 = _key(seed)
    # In the compute dtype, as the reference; a float16 store rounds the dropped value from
    # float32, as the reference's astype does.
    a, shift, dropped = (compute_dtype(x.dtype).type(c) for c in affine)
    with _kernel_lock:
        for launch in rank3_launches(x.shape, x.strides, out.strides, mask_shape, offset):
            x_view, out_view = (kernel_view(view) for view in _views(x, out, launch))
            alpha_rows(x_view, out_view, *launch.mask_strides, np.uint64(launch.word_offset),
                       k0, k1, np.uint64(threshold), a, shift, dropped)


def gaussian_forward(x, out, *, mask_shape, seed, offset, sigma):
    k0, k1 = _key(seed)
    with _kernel_lock:
        for launch in rank3_launches(x.shape, x.strides, out.strides, mask_shape, offset):
            x_view, out_view = (kernel_view(view) for view in _views(x, out, launch))
            gaussian_rows(x_view, out_view, *launch.mask_strides, np.uint64(launch.word_offset),
                          k0, k1, np.float64(sigma))


def bias_dropout_add(x, bias, residual, out, *, seed, offset, threshold, scale):
    k0, k1 = _key(seed)
    compute = compute_dtype(x.dtype).type
    has_bias = bias is not None
    bias_values = bias if has_bias else np.zeros(1, dtype=x.dtype)
    if math.prod(x.shape) == 0:
        return
    if threshold == 0:  # nothing kept: residual + 0 (-0.0 becomes +0.0, as in the reference)
        np.add(residual, out.dtype.type(0), out=out)
        return
    x, bias_values, residual, out = (kernel_view(a) for a in (x, bias_values, residual, out))
    flat = [a.reshape(1, 1, -1) if a.flags.c_contiguous else np.empty((1, 1, 0), a.dtype)
            for a in (x, residual, out)]
    with _kernel_lock:
        bias_dropout_add_rows(x, bias_values, residual, out, has_bias, np.uint64(offset), k0, k1,
                              np.uint64(threshold), compute(scale), compute(0), *flat)
