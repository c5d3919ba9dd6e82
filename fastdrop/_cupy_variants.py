"""The CUDA launchers of the dropout variants: CuPy arrays, kernels from ``kernels/variants.cu``.

Same functions as ``_numba_variants`` (see its docstring). Imported only when a CuPy array reaches
a variant. Source assembly (``#include`` inlining with ``#line``), GPU checks, the grid cap and
the rank-3 launch arguments and the per-device module cache are the core backend's
(``_cupy_backend``).
"""

from __future__ import annotations

import cupy
import numpy as np

from fastdrop import _cupy_backend as core
from fastdrop._layout import rank3_launches

_SOURCE = "variants.cu"

def _launch(name: str, work_items: int, args) -> None:
    blocks = min(-(-work_items // core.THREADS_PER_BLOCK), core._grid_cap())
    core._function(name, _SOURCE)((max(blocks, 1),), (core.THREADS_PER_BLOCK,), args)


def _rows(kernel: str, x, out, mask_shape, offset, extra) -> None:
    """One launch of a rank-3 row kernel (alpha, gaussian) per layout launch."""
    if core._strided_needs_copy(x, out):
        x_copy = cupy.ascontiguousarray(x)
        result = cupy.empty_like(x_copy)
        _rows(kernel, x_copy, result, mask_shape, offset, extra)
        out[...] = result
        return
    suffix = core.suffix_of(x.dtype)
    for launch in rank3_launches(x.shape, x.strides, out.strides, mask_shape, offset):
        kind, threads, launch = core._row_kernel(launch, x.dtype.itemsize)  # as dropout's
        _launch(f"fastdrop_{kernel}_{kind}_{suffix}", threads, core._strided_args(x, out, launch) + extra)


def alpha_forward(x, out, *, mask_shape, seed, offset, threshold, affine):
    a, shift, dropped = (core._scale(x.dtype, value) for value in affine)
    extra = core._key(seed) + (np.uint64(threshold), a, shift, dropped, np.float64(0.0))
    _rows("alpha", x, out, mask_shape, offset, extra)


def gaussian_forward(x, out, *, mask_shape, seed, offset, sigma):
    unused = core._scale(x.dtype, 0.0)
    extra = core._key(seed) + (np.uint64(0), unused, unused, unused, np.float64(sigma))
    _rows("gaussian", x, out, mask_shape, offset, extra)


def _aligned(array, elements: int) -> bool:
    return array.data.ptr % (elements * array.dtype.itemsize) == 0


def bias_dropout_add(x, bias, residual, out, *, seed, offset, threshold, scale):
    rows, width = x.shape
    n = rows * width
    if n == 0:
        return
    if core._strided_needs_copy(x, x) or core._strided_needs_copy(residual, residual):
        x, residual = cupy.ascontiguousarray(x), cupy.ascontiguousarray(residual)
    if core._strided_needs_copy(out, out):
        result = cupy.empty_like(x)
        bias_dropout_add(x, bias, residual, result, seed=seed, offset=offset, threshold=threshold, scale=scale)
        out[...] = result
        return
    if bias is not None:
        bias = cupy.ascontiguousarray(bias)
    vector = (
        offset % 4 == 0
        and width % 4 == 0
        and all(a.flags.c_contiguous and _aligned(a, 4) for a in (x, residual, out))
        and (bias is None or _aligned(bias, 4))
    )
    itemsize = x.dtype.itemsize
    strides = [np.int64(s // itemsize) for a in (x, residual, out) for s in a.strides]
    x0, x1, r0, r1, y0, y1 = strides
    kind = ("bias_" if bias is not None else "") + ("vector" if vector else "strided")
    blocks = ((offset + n - 1) >> 2) - (offset >> 2) + 1
    _launch(
        f"fastdrop_bias_dropout_add_{kind}_{core.suffix_of(x.dtype)}", blocks,
        (x, x0, x1, bias if bias is not None else np.uint64(0), residual, r0, r1, out, y0, y1,
         np.int64(rows), np.int64(width), np.uint64(offset)) + core._key(seed)
        + (np.uint64(threshold), core._scale(x.dtype, scale)),
    )
