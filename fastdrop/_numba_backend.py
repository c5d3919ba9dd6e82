"""The CPU backend: NumPy arrays, Numba kernels. Interface described in ``fastdrop._backend``."""

from __future__ import annotations

import functools
import itertools
import math
import os
import threading
import weakref

import numpy as np
from numpy.lib.stride_tricks import as_strided

# OpenMP threads that spin between parallel regions make a short kernel 10-100x slower as soon
# as anything else wants the cores (measured here: a 32K-element dropout took 20 ms instead of
# 0.17 ms next to one other busy process). Numba loads OpenMP lazily, so asking for passive
# waiting now still takes effect, unless the user chose a policy or already ran parallel code.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fastdrop import _numba_kernels as kernels  # noqa: E402
from fastdrop._contract import compute_dtype, philox_key
from fastdrop._layout import rank3_launches
from fastdrop._numba_half import kernel_view
from fastdrop._numba_prefetch import CACHE_LINE as _CACHE_LINE
from fastdrop import _numba_stream

# Numba's default 'workqueue' threading layer must not be entered from two Python threads at once
# (it aborts the process); the parallel kernels already use every core, so calls take turns.
_kernel_lock = threading.Lock()

#: float16 arrays reach the kernels as their uint16 bits (``_numba_half``: Numba has no CPU
#: float16), are widened to float32, computed there and rounded once, as the contract says.
_NUMBA_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
#: The kernels' ``bits`` argument when no bits are packed: zero-size, so never written.
_NO_BITS = np.empty(0, dtype=np.uint8)


def check_dtype(dtype, argument: str) -> None:
    """TypeError for float dtypes this backend cannot compute in."""
    if dtype not in _NUMBA_DTYPES and np.dtype(dtype) not in _NUMBA_DTYPES:  # the first: no conversion
        raise TypeError(
            f"{argument} has dtype {np.dtype(dtype)}; the CPU (Numba) backend supports float16, "
            "float32 and float64: convert with .astype(np.float32), or use a CuPy array"
        )


def empty_like(x):
    out = np.empty_like(x)
    mark_fresh(out)
    return out


def mark_fresh(out) -> None:
    """Note that ``out`` was just allocated for the coming call (here, or by the PyTorch adapter's
    ``torch.empty_like``): if it is fresh pages, the call writes it with normal stores (see
    ``streams``)."""
    if out.nbytes >= max(_numba_stream.STREAM_ABOVE, _numba_stream.ALWAYS_FRESH_BYTES):
        _fresh_outputs[id(out)] = out


def empty(n: int, dtype):
    return np.empty(n, dtype=dtype)


def zeros(n: int, dtype):
    return np.zeros(n, dtype=dtype)


def _views(x, out, launch):
    """Rank-3 views of x and out for one launch (sharing their memory)."""
    x_view = as_strided(_shift(x, launch.x_byte_offset), launch.shape, launch.x_strides)
    out_view = as_strided(_shift(out, launch.out_byte_offset), launch.shape, launch.out_strides)
    return x_view, out_view


def _shift(array, byte_offset: int):
    """A 1-element view of ``array``'s memory ``byte_offset`` bytes after its first element:
    element 1 of a length-2 view whose stride is the offset."""
    if byte_offset == 0:
        return array
    return as_strided(array, (2,), (byte_offset,))[1:]


# The kernels take NumPy scalars (uint64 words, compute-dtype floats). Building one costs about
# 0.2-0.5 us, several per call, so those made from values that repeat from call to call (a seed,
# a p) are cached by value; NumPy scalars are immutable, so every thread can share them.
_SCALAR_CACHE_SIZE = 256


def compute_scalars(dtype, *values):
    """``values`` as scalars of ``dtype``'s compute dtype, cached. The key holds each value's
    sign too (``copysign(1, v)``), so -0.0 and 0.0, equal and with equal hashes, stay apart."""
    return _compute_scalars(dtype, values, tuple(map(math.copysign, itertools.repeat(1.0), values)))


@functools.lru_cache(maxsize=_SCALAR_CACHE_SIZE)
def _scale_and_zero(dtype, scale: float):
    """The core kernels' scale (never a zero: 1 / (1 - p) or alpha dropout's a) and +0.0, as
    scalars of the compute dtype; a cheaper key than ``compute_scalars``, for every call."""
    compute = compute_dtype(dtype).type
    return compute(scale), compute(0.0)


@functools.lru_cache(maxsize=_SCALAR_CACHE_SIZE)
def _compute_scalars(dtype, values: tuple, signs: tuple):
    compute = compute_dtype(dtype).type
    return tuple(compute(value) for value in values)


@functools.lru_cache(maxsize=_SCALAR_CACHE_SIZE)
def _key(seed: int):
    """The Philox key words of ``seed`` as the kernels' uint64 scalars."""
    k0, k1 = philox_key(seed)
    return np.uint64(k0), np.uint64(k1)


@functools.lru_cache(maxsize=_SCALAR_CACHE_SIZE)
def _threshold(threshold: int):
    """The keep threshold as the kernels' uint64 scalar."""
    return np.uint64(threshold)


def _plain(array):
    """What the kernels take: a plain ndarray view (of subclasses such as np.matrix), float16
    as its uint16 bits (see ``_numba_half``); plain float32/float64 ndarrays as they are."""
    if type(array) is not np.ndarray:
        array = array.view(np.ndarray)
    return kernel_view(array)


def _row_views(x, out, mask_shape, offset, repeated_rows=False):
    """(x view, out view, mask strides, word offset) per rank-3 launch. C-contiguous x and out
    skip the layout analysis in the two common cases: a full mask (one row, a word per element)
    and a channel-style mask, x's leading axes then ones (one row per mask element, one word
    each: spatial dropout's (N, C, 1, 1)). ``repeated_rows``: the caller runs launches whose
    words repeat along axis 1 with ``select_repeated_rows`` or ``gaussian_repeated_rows`` (see
    ``_unit_axis_last``)."""
    mask_shape = tuple(mask_shape)
    if x.flags.c_contiguous and out.flags.c_contiguous:
        if mask_shape == x.shape:
            return [(x.reshape(1, 1, -1), out.reshape(1, 1, -1), (0, 0, 1), offset)]
        lead = len(mask_shape)
        while lead and mask_shape[lead - 1] == 1:
            lead -= 1
        if 0 < lead < x.ndim == len(mask_shape) and x.size and mask_shape[:lead] == x.shape[:lead]:
            rows = math.prod(mask_shape)
            return [(x.reshape(1, rows, -1), out.reshape(1, rows, -1), (0, 1, 0), offset)]
    return [
        (*_views(x, out, launch), launch.mask_strides, launch.word_offset)
        for launch in rank3_launches(x.shape, x.strides, out.strides, mask_shape, offset)
        for launch in [_unit_axis_last(launch, x.itemsize, repeated_rows)]
    ]


#: Rows walked unit axis innermost (``_unit_axis_last``) hold at least this many bytes, except
#: where their kernel handles short rows well: one word per row, or words repeated along axis 1
#: for the repeated-rows kernels. Below it the per-row tasks of the other kernels (the backward
#: from bits; alpha dropout's before it had a repeated-rows path) cost more than the strided walk
#: (channels-last maps of 16 float32 channels: alpha dropout's rows 33% of a copy walked along W,
#: 4% along C).
SHORT_ROW_BYTES = 256


def _unit_axis_last(launch, itemsize: int, repeated_rows: bool):
    """The launch walked with its unit axis innermost: where the last axis does not step by one
    element in x and out but axis 1 or 0 does (channels-last maps, whose channel axis is fastest
    in memory), that axis becomes the last, if its mask stride is 0 or 1 (the row kernels' word
    patterns) and its rows are long enough (``SHORT_ROW_BYTES``, or a cache line where the rows
    have one word each or, with ``repeated_rows``, words repeated along axis 1). An element's
    word does not depend on the order of the walk. Other launches (a full mask over a transposed
    array: ``_column_views``) as they are."""

    def unit(axis):
        return launch.x_strides[axis] == itemsize and launch.out_strides[axis] == itemsize

    if unit(2):
        return launch
    for axis in (1, 0):
        if not unit(axis) or launch.mask_strides[axis] not in (0, 1):
            continue
        walked = launch.permuted([a for a in range(3) if a != axis] + [axis])
        short_rows_fine = walked.mask_strides[2] == 0 or (repeated_rows and walked.mask_strides[1] == 0)
        if walked.shape[2] * itemsize >= (_CACHE_LINE if short_rows_fine else SHORT_ROW_BYTES):
            return walked
    return launch


def _column_views(x_view, out_view, mask_strides):
    """(x, out, mask stride 0, mask stride 1) for ``select_columns`` when a launch's words run
    across memory: mask stride 1 along the last axis, which does not step by one element in x
    or out, while axis 1 (or axis 0, then swapped with axis 1: only the task order changes)
    does in both and holds at least a cache line. None for every other launch."""
    if mask_strides[2] != 1 or x_view.shape[2] < 2:
        return None
    item = x_view.itemsize
    if x_view.strides[2] == item and out_view.strides[2] == item:
        return None
    for axis in (1, 0):
        # Below a cache line of elements along that axis the row walk, whose stride is then
        # under a line, already uses every line it touches; columns would only add overhead.
        if (x_view.shape[axis] * item >= _CACHE_LINE and x_view.strides[axis] == item
                and out_view.strides[axis] == item):
            if axis == 0:
                x_view, out_view = x_view.swapaxes(0, 1), out_view.swapaxes(0, 1)
                mask_strides = (mask_strides[1], mask_strides[0], 1)
            return x_view, out_view, mask_strides[0], mask_strides[1]
    return None


_NO_KEY = np.uint64(0)
_ONE = np.uint64(1)  # the keep threshold select_repeated_rows takes with bits


def _repeats_along_rows(x_view, mask_strides) -> bool:
    """Whether a launch's words repeat along axis 1, so ``select_repeated_rows`` can make them
    once for several rows: mask strides (ms0, 0, 1) over more than one row."""
    return mask_strides[1] == 0 and mask_strides[2] == 1 and x_view.shape[1] > 1


#: Outputs this backend allocated for a call, until the call's kernel asks ``streams``: those of
#: at least ``ALWAYS_FRESH_BYTES``, which are fresh pages that the OS zeroes on first touch and
#: leaves in the cache, so normal stores there cost no read and streaming ones only evict them
#: (``bench/streaming.py``: backward from bits into a new 2^24 float32 array). Smaller outputs may
#: be reused heap memory, no longer cached, and stream like any other.
_fresh_outputs: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def streams(out) -> bool:
    """Whether kernels write ``out`` (as the caller passed it, before ``_plain``) with streaming
    stores (see ``_numba_stream``): at least ``STREAM_ABOVE`` bytes, and neither fresh pages that
    this backend's ``empty_like`` made for the call nor a view of them (bias-dropout-add writes
    its output through a (rows, width) view)."""
    if not _numba_stream.STREAMING or out.nbytes < _numba_stream.STREAM_ABOVE:  # small calls stop here
        return False
    array = out
    for _ in range(_BASE_HOPS):
        if array is None:
            break
        if _fresh_outputs.pop(id(array), None) is array:
            return False
        array = getattr(array, "base", None)
    return True


#: How far ``streams`` follows ``.base`` (NumPy collapses a view's base to the array that owns the
#: memory, so one or two hops reach it; the bound keeps a cyclic exporter from looping).
_BASE_HOPS = 8


def forward(x, out, *, mask_shape, seed, offset, threshold, scale, bits):
    scale_value, zero = _scale_and_zero(x.dtype, scale)  # from x's own dtype, before _plain
    stream = streams(out)
    x, out = _plain(x), _plain(out)
    if threshold == 0:  # nothing kept (p = 1, or within 2**-33 of it): zeros, no words needed
        out[...] = 0
        if bits is not None:
            bits[...] = 0
        return
    k0, k1 = _key(seed)
    threshold = _threshold(threshold)
    rows = [(*row, _column_views(*row[:3])) for row in _row_views(x, out, mask_shape, offset, True)]
    fused_bits = False
    if bits is not None:
        # Bits are packed in the same pass when a single row (not a columns launch) covers the
        # whole mask in order (its chunks then start on byte boundaries); otherwise in a second
        # pass over the mask's words.
        n_mask = math.prod(mask_shape)
        fused_bits = (len(rows) == 1 and rows[0][2] == (0, 0, 1) and rows[0][0].shape[2] == n_mask
                      and rows[0][4] is None)
    row_bits = bits if fused_bits else _NO_BITS
    select_rows = kernels.for_size(kernels.select_rows, x.size)
    with _kernel_lock:
        for x_view, out_view, mask_strides, word_offset, columns in rows:
            if columns is not None:
                kernels.for_size(kernels.select_columns, x.size)(
                    *columns, np.uint64(word_offset), k0, k1, threshold, scale_value, -zero, zero)
                continue
            if _repeats_along_rows(x_view, mask_strides) and row_bits is _NO_BITS:
                kernels.for_size(kernels.select_repeated_rows, x.size)(
                    x_view, out_view, mask_strides[0], np.uint64(word_offset), k0, k1, threshold,
                    scale_value, -zero, zero, _NO_BITS, False)
                continue
            select_rows(
                x_view, out_view, *mask_strides, np.uint64(word_offset), k0, k1,
                threshold, scale_value, zero, row_bits, fused_bits, stream,
            )
        if bits is not None and not fused_bits and n_mask:
            kernels.for_size(kernels.pack_keep_bits, n_mask)(n_mask, np.uint64(offset), k0, k1, threshold, bits)


def apply_bits(dy, out, *, mask_shape, bits, scale):
    scale_value, zero = _scale_and_zero(dy.dtype, scale)  # from dy's own dtype, before _plain
    stream = streams(out)
    dy, out = _plain(dy), _plain(out)
    select_rows_from_bits = kernels.for_size(kernels.select_rows_from_bits, dy.size)
    # With word offset 0, a row's word offset is the mask's flat index of its first element.
    rows = _row_views(dy, out, mask_shape, 0, True)
    with _kernel_lock:
        for dy_view, out_view, mask_strides, mask_base in rows:
            if _repeats_along_rows(dy_view, mask_strides):
                kernels.for_size(kernels.select_repeated_rows, dy.size)(
                    dy_view, out_view, mask_strides[0], np.uint64(mask_base), _NO_KEY, _NO_KEY,
                    _ONE, scale_value, -zero, zero, bits, True)
                continue
            columns = _column_views(dy_view, out_view, mask_strides)
            if columns is not None:
                kernels.for_size(kernels.select_columns_from_bits, dy.size)(
                    *columns[:2], mask_base, *columns[2:], bits, scale_value, zero)
                continue
            select_rows_from_bits(dy_view, out_view, mask_base, *mask_strides, bits, scale_value, zero,
                                  stream)


def random_bits(out, *, seed, offset):
    k0, k1 = _key(seed)
    with _kernel_lock:
        kernels.for_size(kernels.fill_random_bits, out.size)(out, np.uint64(offset), k0, k1)


def keep_flags(out, *, seed, offset, threshold):
    k0, k1 = _key(seed)
    with _kernel_lock:
        kernels.for_size(kernels.fill_keep_flags, out.size)(out, np.uint64(offset), k0, k1, _threshold(threshold))
