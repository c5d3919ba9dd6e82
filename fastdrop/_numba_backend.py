"""The CPU backend: NumPy arrays, Numba kernels. Interface described in ``fastdrop._backend``."""

from __future__ import annotations

import math
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from fastdrop import _numba_kernels as kernels
from fastdrop._contract import compute_dtype, philox_key
from fastdrop._layout import rank3_launches

# Numba's default 'workqueue' threading layer must not be entered from two Python threads at once
# (it aborts the process); the parallel kernels already use every core, so calls take turns.
_kernel_lock = threading.Lock()

_NUMBA_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(dtype, argument: str) -> None:
    """TypeError for float dtypes this backend cannot compute in."""
    if np.dtype(dtype) not in _NUMBA_DTYPES:
        raise TypeError(
            f"{argument} has dtype {np.dtype(dtype)}; the CPU (Numba) backend supports float32 "
            "and float64 (Numba has no float16 arithmetic on the CPU): convert with "
            ".astype(np.float32) or use a CuPy array"
        )


def empty_like(x):
    return np.empty_like(x)


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


def _scalars(dtype, scale: float):
    compute = compute_dtype(dtype).type
    return compute(scale), compute(0)


def forward(x, out, *, mask_shape, seed, offset, threshold, scale, bits):
    k0, k1 = (np.uint64(word) for word in philox_key(seed))
    threshold = np.uint64(threshold)
    scale_value, zero = _scalars(x.dtype, scale)
    n_mask = math.prod(mask_shape)
    launches = list(rank3_launches(x.shape, x.strides, out.strides, mask_shape, offset))
    fused_bits = (
        bits is not None
        and len(launches) == 1
        and launches[0].mask_strides == (0, 0, 1)
        and launches[0].shape[2] == n_mask
    )
    no_bits = np.empty(0, dtype=np.uint8)
    with _kernel_lock:
        for launch in launches:
            x_view, out_view = _views(x, out, launch)
            kernels.select_rows(
                x_view, out_view, *launch.mask_strides, np.uint64(launch.word_offset), k0, k1,
                threshold, scale_value, zero, bits if fused_bits else no_bits, fused_bits,
            )
        if bits is not None and not fused_bits and n_mask:
            kernels.pack_keep_bits(n_mask, np.uint64(offset), k0, k1, threshold, bits)


def apply_bits(dy, out, *, mask_shape, bits, scale):
    scale_value, zero = _scalars(dy.dtype, scale)
    with _kernel_lock:
        # With word offset 0, a launch's word offset is the mask's flat index of its first element.
        for launch in rank3_launches(dy.shape, dy.strides, out.strides, mask_shape, 0):
            dy_view, out_view = _views(dy, out, launch)
            kernels.select_rows_from_bits(
                dy_view, out_view, launch.word_offset, *launch.mask_strides, bits, scale_value, zero
            )


def random_bits(out, *, seed, offset):
    k0, k1 = (np.uint64(word) for word in philox_key(seed))
    with _kernel_lock:
        kernels.fill_random_bits(out, np.uint64(offset), k0, k1)


def keep_flags(out, *, seed, offset, threshold):
    k0, k1 = (np.uint64(word) for word in philox_key(seed))
    with _kernel_lock:
        kernels.fill_keep_flags(out, np.uint64(offset), k0, k1, np.uint64(threshold))
