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

from fastdrop import _numba_backend, _numba_stream, reference
from fastdrop._kernel_cache import discard_stale_kernels
from fastdrop._numba_half import as_compute, load, store
from fastdrop._numba_backend import (
    _NO_BITS, _column_views, _kernel_lock, _key, _plain, _repeats_along_rows, _row_views,
    _threshold, compute_scalars,
)
from fastdrop._numba_kernels import (
    _BUFFER_WORDS, _LITTLE_ENDIAN, CHUNK, SERIAL_BELOW, _jit, _serial_twin, column_block,
    column_lanes,
    column_place, column_rows, column_shift, column_tasks, column_words, fill_words, for_size,
    line_head, philox4x32_10, repeated_place, repeated_tasks, select_columns,
    select_repeated_rows, task_place, task_words, unit_rows, word_at,
)
from fastdrop._numba_bits import bits_float64, float64_bits, pick, unit_span, unit_stride
from fastdrop._numba_prefetch import CACHE_LINE
from fastdrop._numba_stream import STAGE, lead, store_fence, stream_lines

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
                store(out, (i0, i1, i2), pick(keep, value, dropped))
        return
    unit = unit_rows(x, out)
    chunks_per_row = (n2 + CHUNK - 1) // CHUNK
    for task in numba.prange(rows * chunks_per_row):
        i0, i1, start, count = task_place(task, chunks_per_row, n1, n2)
        g = word_offset + np.uint64(i0 * mask_stride0 + i1 * mask_stride1 + start)
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        first = task_words(words, g, count, k0, k1, x, None, out, i0, i1, start)
        x_row = x[i0, i1, start : start + count]
        out_row = out[i0, i1, start : start + count]
        row_words = words[first : first + count]  # sliced: see select_rows in _numba_kernels
        if unit:
            _alpha_span(unit_stride(x_row), unit_stride(out_row), row_words, threshold, a, shift, dropped)
        else:
            _alpha_span(x_row, out_row, row_words, threshold, a, shift, dropped)


@numba.njit(inline="always", **_jit)
def _alpha_loop(x_row, out_row, row_words, threshold, a, shift, dropped):
    for j in range(x_row.size):
        value = load(x_row, j) * a + shift
        store(out_row, j, pick(np.uint64(row_words[j]) < threshold, value, dropped))


@numba.njit(inline="always", **_jit)
def _alpha_span(x_row, out_row, row_words, threshold, a, shift, dropped):
    head = line_head(out_row)  # the head apart: see line_head
    _alpha_loop(x_row[:head], out_row[:head], row_words[:head], threshold, a, shift, dropped)
    _alpha_loop(x_row[head:], out_row[head:], row_words[head:], threshold, a, shift, dropped)


#: 2**52 as float64 and as its bits: ``bits_float64(_EXACT_BITS | k) - _EXACT`` is k exactly for
#: 0 <= k < 2**52 (k fills the mantissa of 2**52), a vectorisable integer-to-float conversion.
_EXACT = 4503599627370496.0
_EXACT_BITS = np.uint64(0x4330000000000000)
_EXPONENT_FIELD = np.uint64(0x7FF0000000000000)
_HALF_EXPONENT = np.uint64(1022 << 52)  # the exponent field of numbers in [0.5, 1)


@numba.njit(inline="always", **_jit)
def _exact_float(k):
    """float64(k) for an integer 0 <= k < 2**52, without a conversion instruction."""
    return bits_float64(_EXACT_BITS | np.uint64(k)) - _EXACT


@numba.njit(inline="always", **_jit)
def box_muller_pair(radius_word, angle_word):
    """The two standard normals of a word pair (see ``reference.standard_normals``): the
    cosine one (even element) and the sine one (odd element). The same operations in the same
    order as the reference, so the same bits, written without branches (``pick``, bit fields)
    so that a loop over pairs vectorises."""
    # frexp(word + 1) from the float's bit fields (word + 1 <= 2**32 is exact).
    bits = float64_bits(_exact_float(radius_word) + 1.0)
    exponent_field = (bits & _EXPONENT_FIELD) >> np.uint64(52)
    mantissa = bits_float64((bits & ~_EXPONENT_FIELD) | _HALF_EXPONENT)
    small = mantissa < _SQRT_HALF
    mantissa = pick(small, mantissa * 2.0, mantissa)
    # exponent - 32 with exponent = field - 1022, one less when small: field - small - 1054
    # (field - small >= 1022, so the conversion's operand is a small positive integer).
    exponent = _exact_float(exponent_field - pick(small, np.uint64(1), np.uint64(0))) - 1054.0
    s = (mantissa - 1.0) / (mantissa + 1.0)
    t = s * s
    series = ((((((((((_L10 * t + _L9) * t + _L8) * t + _L7) * t + _L6) * t + _L5) * t + _L4)
                   * t + _L3) * t + _L2) * t + _L1) * t + _L0)
    log_u = exponent * _LN2 + 2.0 * s * series
    radius = np.sqrt(-2.0 * log_u)

    octant = angle_word >> np.uint64(29)
    low = angle_word & _LOW29
    octant_odd = (octant & np.uint64(1)) != 0
    low = pick(octant_odd, _LOW29 - low, low)
    psi = (_exact_float(low) + 0.5) * _TWO_POW_MINUS_29 * _PI_OVER_4
    t = psi * psi
    sin_poly = (((((((_S8 * t + _S7) * t + _S6) * t + _S5) * t + _S4) * t + _S3) * t + _S2) * t + _S1)
    cos_poly = ((((((((_C9 * t + _C8) * t + _C7) * t + _C6) * t + _C5) * t + _C4) * t + _C3) * t
                 + _C2) * t + _C1)
    sin_psi = psi + psi * t * sin_poly
    cos_psi = 1.0 + t * cos_poly
    sin_a = pick(octant_odd, cos_psi, sin_psi)
    cos_a = pick(octant_odd, sin_psi, cos_psi)
    # Turned by quadrant * pi / 2: cos -> (cos_a, -sin_a, -cos_a, sin_a), sin -> (sin_a, cos_a,
    # -sin_a, -cos_a) for quadrants 0 .. 3 (negation is exact).
    quadrant = octant >> np.uint64(1)
    swap = (quadrant & np.uint64(1)) != 0
    cos_theta = pick(swap, sin_a, cos_a)
    sin_theta = pick(swap, cos_a, sin_a)
    cos_theta = pick(((quadrant ^ (quadrant >> np.uint64(1))) & np.uint64(1)) != 0, -cos_theta, cos_theta)
    sin_theta = pick(quadrant >= np.uint64(2), -sin_theta, sin_theta)
    return radius * cos_theta, radius * sin_theta


@numba.njit(**_jit)
def normal_at(g, k0, k1):
    """The standard normal of element g (used where one draw covers a whole row)."""
    q = g >> np.uint64(2)
    r0, r1, r2, r3 = philox4x32_10(q & _MASK32, q >> _SHIFT32, np.uint64(0), np.uint64(0), k0, k1)
    if g & np.uint64(2):
        z_even, z_odd = box_muller_pair(r2, r3)
    else:
        z_even, z_odd = box_muller_pair(r0, r1)
    return z_odd if g & np.uint64(1) else z_even


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
    unit = unit_rows(x, out)
    chunks_per_row = (n2 + CHUNK - 1) // CHUNK
    for task in numba.prange(rows * chunks_per_row):
        i0, i1, start, count = task_place(task, chunks_per_row, n1, n2)
        g = word_offset + np.uint64(i0 * mask_stride0 + i1 * mask_stride1 + start)
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        multipliers = np.empty(_BUFFER_WORDS, dtype=np.float64)
        at = _multipliers(words, multipliers, g, count, k0, k1, sigma)
        x_row = x[i0, i1, start : start + count]
        out_row = out[i0, i1, start : start + count]
        row_multipliers = multipliers[at : at + count]
        if unit:
            _multiply_span(unit_stride(x_row), unit_stride(out_row), row_multipliers)
        else:
            _multiply_span(x_row, out_row, row_multipliers)


@numba.njit(inline="always", **_jit)
def _multipliers(words, multipliers, g, count, k0, k1, sigma):
    """``1 + sigma * z`` of elements g .. g + count - 1 into ``multipliers[at : at + count]``;
    returns ``at``. ``words`` and ``multipliers`` hold at least count + 8 values."""
    # Start the words at an even index so every element finds its pair in the buffer.
    parity = np.int64(g & np.uint64(1))
    first = fill_words(words, g - np.uint64(parity), count + parity, k0, k1)
    # Pair k of the buffer holds the normals of elements 2k - first - parity, +1 of the span.
    pairs = (first + parity + count + 1) // 2
    # Pairs k and k + half side by side, both before any store (a store could alias the next
    # loads, for all LLVM knows): two independent chains of polynomial steps per iteration. A
    # pair's two words are read as one uint64 (no shuffles to split even and odd words).
    # Words and multipliers of a task, one thread, Zen 5: 1.34 -> 1.10 ns per element (two
    # chains alone 1.25; four chains: LLVM no longer vectorised the loop).
    half = pairs // 2
    pair_words = words[: 2 * pairs].view(np.uint64)
    for k in range(half):
        z0, z1 = _box_muller_word_pair(pair_words[k])
        q = k + half
        y0, y1 = _box_muller_word_pair(pair_words[q])
        multipliers[2 * k] = 1.0 + sigma * z0
        multipliers[2 * k + 1] = 1.0 + sigma * z1
        multipliers[2 * q] = 1.0 + sigma * y0
        multipliers[2 * q + 1] = 1.0 + sigma * y1
    if pairs % 2:
        last = pairs - 1
        z0, z1 = _box_muller_word_pair(pair_words[last])
        multipliers[2 * last] = 1.0 + sigma * z0
        multipliers[2 * last + 1] = 1.0 + sigma * z1
    return first + parity


@numba.njit(inline="always", **_jit)
def _box_muller_word_pair(pair):
    """``box_muller_pair`` of words 2k, 2k + 1 read together as one uint64."""
    if _LITTLE_ENDIAN:  # word 2k is the low half of uint64 k; a constant: one branch compiled
        return box_muller_pair(pair & _MASK32, pair >> _SHIFT32)
    return box_muller_pair(pair >> _SHIFT32, pair & _MASK32)


@numba.njit(parallel=True, **_jit)
def gaussian_columns(x, out, mask_stride0, mask_stride1, word_offset, k0, k1, sigma):
    """``gaussian_rows`` for transposed and F-ordered views (the layouts of
    ``_numba_kernels.select_columns``, by its tasks): each row's counter is a Philox lane, its
    words 0, 1 and 2, 3 (two Box-Muller pairs) give the multipliers of four consecutive words,
    and where rows start at different places in their counters the multipliers are shifted
    into column order as the words are there (``column_shift``)."""
    n0, n1, n2 = x.shape
    tasks, task_rows, width, tiles1, tiles2 = column_tasks(n0, n1, n2)
    for task in numba.prange(tasks):
        i0, a, b, rows, cols = column_place(task, task_rows, width, tiles1, tiles2, n1, n2)
        lanes, row_counters, phases, shifted, skip, blocks, counters = column_rows(
            word_offset, i0, a, b, mask_stride0, mask_stride1, task_rows, rows, cols)
        words = np.empty((4, column_lanes(task_rows)), dtype=np.uint32)
        multipliers = np.empty((8, column_lanes(task_rows)), dtype=np.float64)
        for j in range(blocks):
            # column_block with multipliers in place of words.
            if not shifted:
                _column_multipliers(multipliers, 0, words, row_counters, j, k0, k1, sigma, lanes)
                at = 0
            else:
                at = 4 * (j & 1)
                if j == 0:
                    _column_multipliers(multipliers, 0, words, row_counters, 0, k0, k1, sigma, lanes)
                if j + 1 < counters:
                    _column_multipliers(multipliers, 4 - at, words, row_counters, j + 1, k0, k1,
                                        sigma, lanes)
                column_shift(multipliers, at, 4 - at, phases, lanes)
            for t in range(4):
                c = 4 * j + t - skip
                if 0 <= c < cols:
                    _multiply_span(unit_stride(x[i0, a : a + rows, b + c]),
                                   unit_stride(out[i0, a : a + rows, b + c]), multipliers[at + t])


@numba.njit(inline="always", **_jit)
def _column_multipliers(multipliers, at, words, row_counters, k, k0, k1, sigma, lanes):
    """``1 + sigma * z`` of the four words of counters ``row_counters[r] + k`` into
    ``multipliers[at + t, r]`` (``column_words``' layout)."""
    column_words(words, 0, row_counters, k, k0, k1, lanes)
    for r in range(lanes):
        z0, z1 = box_muller_pair(np.uint64(words[0, r]), np.uint64(words[1, r]))
        z2, z3 = box_muller_pair(np.uint64(words[2, r]), np.uint64(words[3, r]))
        multipliers[at, r] = 1.0 + sigma * z0
        multipliers[at + 1, r] = 1.0 + sigma * z1
        multipliers[at + 2, r] = 1.0 + sigma * z2
        multipliers[at + 3, r] = 1.0 + sigma * z3


@numba.njit(parallel=True, **_jit)
def gaussian_repeated_rows(x, out, mask_stride0, word_offset, k0, k1, sigma):
    """``gaussian_rows`` for masks that repeat along axis 1 (mask strides (ms0, 0, 1), as
    ``_numba_kernels.select_repeated_rows``, whose tasks it shares): a task makes one chunk of
    a row's multipliers and multiplies a group of rows with them, so the Box-Muller work is
    done once per group instead of once per element."""
    n0, n1, n2 = x.shape
    tasks, chunks_per_row, groups, per_task, back_to_back = repeated_tasks(x, out)
    unit = unit_rows(x, out)
    for task in numba.prange(tasks):
        i0, start, count, row_first, row_count = repeated_place(task, chunks_per_row, groups, per_task, n1, n2)
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        multipliers = np.empty(_BUFFER_WORDS, dtype=np.float64)
        at = _multipliers(words, multipliers, word_offset + np.uint64(i0 * mask_stride0 + start),
                          count, k0, k1, sigma)
        row_multipliers = multipliers[at : at + count]
        if back_to_back:  # one chunk a row here: count == n2
            repeated = np.empty(row_count * n2, dtype=np.float64)
            for r in range(row_count):
                repeated[r * n2 : (r + 1) * n2] = row_multipliers
            _multiply_span(unit_span(x[i0, row_first, :], row_count * n2),
                           unit_span(out[i0, row_first, :], row_count * n2), repeated)
            continue
        for i1 in range(row_first, row_first + row_count):
            x_row = x[i0, i1, start : start + count]
            out_row = out[i0, i1, start : start + count]
            if unit:
                _multiply_span(unit_stride(x_row), unit_stride(out_row), row_multipliers)
            else:
                _multiply_span(x_row, out_row, row_multipliers)


@numba.njit(inline="always", **_jit)
def _multiply_span(x_row, out_row, multipliers):
    for j in range(x_row.size):
        store(out_row, j, load(x_row, j) * as_compute(x_row, multipliers[j]))


@numba.njit(parallel=True, **_jit)
def bias_dropout_add_rows(x, bias, residual, out, has_bias, word_offset, k0, k1, threshold,
                          scale, zero, flat_x, flat_residual, flat_out, wrapped_bias, stream):
    """out = residual + where(keep, (x + bias) * scale, 0) over (rows, width) views, the mask
    over the flat C-order index row * width + column. Tasks are flat CHUNKs crossing rows.
    ``flat_*`` are (1, 1, n) views of the C-contiguous arrays among x, residual and out (empty
    ones for the others) through which whole tasks prefetch what they will stream.
    ``stream``: x, residual, out and bias are all C-contiguous, and out's whole lines are
    written with streaming stores (see ``_numba_stream.STREAM_PHILOX``); ``wrapped_bias`` is
    then ``bias[(j + width - STAGE) % width]`` for j < 2 * STAGE: the columns of a block that
    runs past a row's end, as one contiguous slice (``_bias_columns``)."""
    rows, width = x.shape
    n = rows * width
    last_kept = np.uint32(threshold - np.uint64(1))  # 32-bit compare, as in select_rows: t >= 1
    # Rows that step by one element are seen as contiguous (``unit_stride``), so loops vectorise.
    unit = (x.strides[1] == x.itemsize and residual.strides[1] == residual.itemsize
            and out.strides[1] == out.itemsize and bias.strides[0] == bias.itemsize)
    for task in numba.prange((n + CHUNK - 1) // CHUNK):
        start = task * CHUNK
        count = min(CHUNK, n - start)
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        if stream:
            # No write hints into out: a hinted line would be read, which streaming stores
            # avoid. They go to the task's own words instead (in its L1, touched by no other
            # thread; an empty view of out would point them all at out's first line).
            first = task_words(words, word_offset + np.uint64(start), count, k0, k1,
                               flat_x, flat_residual, words.reshape((1, 1, words.size)), 0, 0,
                               start)
            span_words = words[first : first + count]
            # has_bias as a constant: a runtime flag in the staged loop cost 2.5x here (LLVM
            # restructures the task's loops around it).
            if has_bias:
                _bias_dropout_add_streamed(flat_x[0, 0], bias, wrapped_bias, flat_residual[0, 0],
                                           flat_out[0, 0], True, start, count, width,
                                           span_words, last_kept, scale, zero)
            else:
                _bias_dropout_add_streamed(flat_x[0, 0], bias, wrapped_bias, flat_residual[0, 0],
                                           flat_out[0, 0], False, start, count, width,
                                           span_words, last_kept, scale, zero)
            continue
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
            bias_row = bias[column : column + segment]
            if unit:
                _bias_dropout_add_span(unit_stride(x_row), unit_stride(bias_row),
                                       unit_stride(residual_row), unit_stride(out_row), has_bias,
                                       row_words, last_kept, scale, zero)
            else:
                _bias_dropout_add_span(x_row, bias_row, residual_row, out_row, has_bias,
                                       row_words, last_kept, scale, zero)
            done += segment
            row += 1
            column = 0


@numba.njit(inline="always", **_jit)
def _bias_dropout_add_streamed(flat_x, bias, wrapped_bias, flat_residual, flat_out, has_bias,
                               start, count, width, span_words, last_kept, scale, zero):
    """One task of ``bias_dropout_add_rows`` over the flat arrays, from flat index ``start``:
    the elements before out's first line boundary with normal stores, then ``STAGE`` at a time
    into a staging buffer and out with streaming stores, the rest normally; a fence at the end
    (see ``_numba_stream``). The head is under one line (the launcher checks that out starts on
    an element boundary), so no block is longer than ``STAGE``."""
    x_task = unit_stride(flat_x[start : start + count])
    residual_task = unit_stride(flat_residual[start : start + count])
    out_task = unit_stride(flat_out[start : start + count])
    staged = np.empty(STAGE, dtype=out_task.dtype)
    column = start % width
    head = min(count, lead(out_task))
    _bias_dropout_add_span(x_task[:head], _bias_columns(bias, wrapped_bias, column, head, width),
                           residual_task[:head], out_task[:head], has_bias, span_words[:head],
                           last_kept, scale, zero)
    done = head
    column = (column + head) % width
    while done + STAGE <= count:
        _bias_dropout_add_span(x_task[done : done + STAGE],
                               _bias_columns(bias, wrapped_bias, column, STAGE, width),
                               residual_task[done : done + STAGE], staged, has_bias,
                               span_words[done : done + STAGE], last_kept, scale, zero)
        stream_lines(out_task, done, staged, STAGE)
        done += STAGE
        column = (column + STAGE) % width
    rest = count - done
    _bias_dropout_add_span(x_task[done:], _bias_columns(bias, wrapped_bias, column, rest, width),
                           residual_task[done:], out_task[done:], has_bias, span_words[done:],
                           last_kept, scale, zero)
    store_fence()


@numba.njit(inline="always", **_jit)
def _bias_columns(bias, wrapped_bias, column, size, width):
    """The bias of columns column, column + 1, ... (size <= STAGE of them, wrapping at width) as
    one contiguous slice: of the bias itself, or of ``wrapped_bias`` where they wrap."""
    if column + size <= width:
        return unit_stride(bias[column : column + size])
    at = column + STAGE - width
    return unit_stride(wrapped_bias[at : at + size])


@numba.njit(parallel=True, **_jit)
def bias_dropout_add_columns(x, bias, residual, out, has_bias, word_offset, k0, k1, threshold,
                             scale, zero):
    """``bias_dropout_add_rows`` for (1, rows, width) views whose x, residual and out step by
    one element down their columns (transposed or F-ordered), by
    ``_numba_kernels.select_columns``' tasks (mask stride ``width`` along the rows): a Philox
    lane per row gives the words of four columns at once, and a memory column shares one bias
    value."""
    n0, n1, n2 = x.shape
    tasks, task_rows, width, tiles1, tiles2 = column_tasks(n0, n1, n2)
    last_kept = np.uint32(threshold - np.uint64(1))  # 32-bit compare, as in select_rows: t >= 1
    for task in numba.prange(tasks):
        i0, a, b, rows, cols = column_place(task, task_rows, width, tiles1, tiles2, n1, n2)
        lanes, row_counters, phases, shifted, skip, blocks, counters = column_rows(
            word_offset, i0, a, b, n1 * n2, n2, task_rows, rows, cols)
        words = np.empty((8, column_lanes(task_rows)), dtype=np.uint32)
        for j in range(blocks):
            at = column_block(words, row_counters, phases, j, shifted, counters, k0, k1, lanes)
            for t in range(4):
                c = 4 * j + t - skip
                if 0 <= c < cols:
                    _bias_dropout_add_column(x, bias, residual, out, has_bias, i0, a, rows, b + c,
                                             words[at + t], last_kept, scale, zero)


@numba.njit(inline="always", **_jit)
def _bias_dropout_add_column(x, bias, residual, out, has_bias, i0, a, rows, c, words, last_kept,
                             scale, zero):
    """Rows a .. a + rows - 1 of column c (unit stride in every array), word j for row a + j."""
    x_column = unit_stride(x[i0, a : a + rows, c])
    residual_column = unit_stride(residual[i0, a : a + rows, c])
    out_column = unit_stride(out[i0, a : a + rows, c])
    if has_bias:
        column_bias = load(bias, c)
        for j in range(rows):
            value = (load(x_column, j) + column_bias) * scale
            store(out_column, j, load(residual_column, j) + pick(words[j] <= last_kept, value, zero))
    else:
        for j in range(rows):
            value = load(x_column, j) * scale
            store(out_column, j, load(residual_column, j) + pick(words[j] <= last_kept, value, zero))


@numba.njit(inline="always", **_jit)
def _bias_dropout_add_span(x_row, bias_row, residual_row, out_row, has_bias, row_words,
                           last_kept, scale, zero):
    # No line_head split here: measured 0.94-0.99x (2^24 two threads, 2^22 one thread).
    if has_bias:
        for j in range(x_row.size):
            keep = row_words[j] <= last_kept
            value = (load(x_row, j) + load(bias_row, j)) * scale
            store(out_row, j, load(residual_row, j) + pick(keep, value, zero))
    else:
        for j in range(x_row.size):
            keep = row_words[j] <= last_kept
            value = load(x_row, j) * scale
            store(out_row, j, load(residual_row, j) + pick(keep, value, zero))


# ------------------------------------------------------------------------------------- launchers

#: Serial twins of the kernels for problems too small to share out (see ``_numba_kernels``).
_SERIAL = {kernel: _serial_twin(kernel)
           for kernel in (alpha_rows, gaussian_rows, gaussian_columns, gaussian_repeated_rows,
                          bias_dropout_add_rows, bias_dropout_add_columns)}
#: Gaussian dropout does about 6x the forward's work per element, so it shares out sooner: from
#: two tasks (CHUNK elements each) on.
GAUSSIAN_SERIAL_BELOW = 2 * CHUNK


def _for_size(kernel, n_elements: int):
    gaussian = (gaussian_rows, gaussian_columns, gaussian_repeated_rows)
    serial_below = GAUSSIAN_SERIAL_BELOW if kernel in gaussian else SERIAL_BELOW
    return _SERIAL[kernel] if n_elements < serial_below else kernel


def alpha_forward(x, out, *, mask_shape, seed, offset, threshold, affine):
    _numba_backend.streams(out)  # uses up a fresh output's mark: these kernels never stream
    k0, k1 = _key(seed)
    # In the compute dtype, as the reference; a float16 store rounds the dropped value from
    # float32, as the reference's astype does.
    a, shift, dropped = compute_scalars(x.dtype, *affine)
    x, out = _plain(x), _plain(out)
    kernel = _for_size(alpha_rows, x.size)
    with _kernel_lock:
        for x_view, out_view, mask_strides, word_offset in _row_views(x, out, mask_shape, offset, True):
            # The select kernels need a threshold of at least 1 (a kept word is <= threshold - 1).
            if threshold and _repeats_along_rows(x_view, mask_strides):
                for_size(select_repeated_rows, x.size)(
                    x_view, out_view, mask_strides[0], np.uint64(word_offset), k0, k1,
                    _threshold(threshold), a, shift, dropped, _NO_BITS, False)
                continue
            columns = _column_views(x_view, out_view, mask_strides) if threshold else None
            if columns is not None:  # transposed: see select_columns
                for_size(select_columns, x.size)(
                    *columns, np.uint64(word_offset), k0, k1, _threshold(threshold), a, shift,
                    dropped)
                continue
            kernel(x_view, out_view, *mask_strides, np.uint64(word_offset), k0, k1,
                   _threshold(threshold), a, shift, dropped)


def gaussian_forward(x, out, *, mask_shape, seed, offset, sigma):
    _numba_backend.streams(out)  # uses up a fresh output's mark: these kernels never stream
    k0, k1 = _key(seed)
    x, out = _plain(x), _plain(out)
    kernel = _for_size(gaussian_rows, x.size)
    with _kernel_lock:
        for x_view, out_view, mask_strides, word_offset in _row_views(x, out, mask_shape, offset, True):
            if _repeats_along_rows(x_view, mask_strides):
                _for_size(gaussian_repeated_rows, x.size)(
                    x_view, out_view, mask_strides[0], np.uint64(word_offset), k0, k1, np.float64(sigma))
                continue
            columns = _column_views(x_view, out_view, mask_strides)
            if columns is not None:
                _for_size(gaussian_columns, x.size)(
                    *columns, np.uint64(word_offset), k0, k1, np.float64(sigma))
                continue
            kernel(x_view, out_view, *mask_strides, np.uint64(word_offset), k0, k1, np.float64(sigma))


def _columns_contiguous(*matrices) -> bool:
    """Whether the (rows, width) matrices step by one element down their columns and not along
    their rows, with at least a cache line of rows: ``bias_dropout_add_columns`` then."""
    rows, width = matrices[0].shape
    item = matrices[0].itemsize
    return (width > 1 and rows * item >= CACHE_LINE
            and all(m.strides[0] == item and m.strides[1] != item for m in matrices))


def bias_dropout_add(x, bias, residual, out, *, seed, offset, threshold, scale):
    # Asked of out as the caller passed it (before _plain), like the core backend's forward, and
    # always, so that a fresh output's mark is used up by its own call.
    may_stream = _numba_backend.streams(out)
    stream = may_stream and _numba_stream.STREAM_PHILOX and out.flags.c_contiguous
    if math.prod(x.shape) == 0:
        return
    if threshold == 0:  # nothing kept: residual + 0 (-0.0 becomes +0.0, as in the reference)
        np.add(residual, out.dtype.type(0), out=out)
        return
    k0, k1 = _key(seed)
    scale_value, zero = compute_scalars(x.dtype, scale, 0.0)
    has_bias = bias is not None
    bias_values = bias if has_bias else np.zeros(1, dtype=x.dtype)
    x, bias_values, residual, out = (_plain(a) for a in (x, bias_values, residual, out))
    if _columns_contiguous(x, residual, out):
        with _kernel_lock:
            _for_size(bias_dropout_add_columns, x.size)(
                x[None], bias_values, residual[None], out[None], has_bias, np.uint64(offset), k0,
                k1, _threshold(threshold), scale_value, zero)
        return
    flat = [a.reshape(1, 1, -1) if a.flags.c_contiguous else np.empty((1, 1, 0), a.dtype)
            for a in (x, residual, out)]
    # Streamed tasks run over flat arrays; out's lines must start on element boundaries.
    stream = (stream and out.ctypes.data % out.itemsize == 0
              and all(a.flags.c_contiguous for a in (x, residual, bias_values)))
    width = x.shape[1]
    # (Without a bias, bias_values is one zero, never read.)
    wrapped_bias = (bias_values[(np.arange(2 * STAGE) + width - STAGE) % bias_values.size]
                    if stream else np.empty(0, bias_values.dtype))
    kernel = _for_size(bias_dropout_add_rows, x.size)
    with _kernel_lock:
        kernel(x, bias_values, residual, out, has_bias, np.uint64(offset), k0, k1,
               _threshold(threshold), scale_value, zero, *flat, wrapped_bias, stream)
