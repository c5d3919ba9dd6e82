"""The CUDA backend: CuPy arrays, kernels from ``kernels/dropout.cu``.

Interface described in ``fastdrop._backend``; imported only when a CuPy array arrives, so that
``import fastdrop`` never imports CuPy. Kernels are compiled once per device with NVRTC (CuPy's
``RawModule``, which also caches the binary on disk) and run on CuPy's current stream.
See ``docs/gpu.md`` for the launch configuration.
"""

from __future__ import annotations

import math
import threading

import cupy
import numpy as np

from fastdrop._contract import philox_key
from fastdrop._kernel_source import assemble_source
from fastdrop._layout import rank3_launches

#: Threads per block; the kernels' __launch_bounds__ assume exactly this.
THREADS_PER_BLOCK = 256
#: Grid cap in blocks per SM: several waves keep every SM busy to the end of a large array.
BLOCKS_PER_SM = 64
#: With offset % 4 != 0 the first tile of each warp costs one extra Philox block, so warps
#: walk at least this many tiles each (see kernels/dropout.cu, contiguous_flags).
MIN_TILES_PER_WARP = 4
#: Rows at least this long that step by one element in x or out take the rows kernels (a warp
#: per 32 elements of a row, coalesced); the others the columns or strided kernels (a thread per
#: 8, see _row_kernel).
LONG_ROW = 32

_KERNEL_SOURCE = "dropout.cu"
_COMPILE_OPTIONS = ("--std=c++17",)
_SUFFIXES = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}
#: The same by dtype object, filled on first sight: ``dtype.name`` costs microseconds a call.
_suffix_of_dtype: dict = {}
#: Elements per lane in the contiguous kernels, by itemsize (one or two 16-byte vectors).
_ELEMENTS_PER_LANE = {2: 8, 4: 4, 8: 4}

_lock = threading.Lock()
_modules: dict[tuple[int, str], cupy.RawModule] = {}  # (device, source file)
_functions: dict[tuple[int, str, str], object] = {}  # (device, source file, kernel)
_sm_counts: dict[int, int] = {}


def suffix_of(dtype) -> str:
    """The kernel name suffix of a dtype the kernels handle ('f32', ...); KeyError otherwise."""
    try:
        return _suffix_of_dtype[dtype]
    except KeyError:
        name = _SUFFIXES[np.dtype(dtype).name]  # KeyError for the others: never cached
        _suffix_of_dtype[dtype] = name
        return name


def check_dtype(dtype, argument: str) -> None:
    """TypeError for dtypes the CUDA kernels do not handle."""
    try:
        suffix_of(dtype)
    except (KeyError, TypeError):
        raise TypeError(
            f"{argument} has dtype {np.dtype(dtype)}; the CUDA backend supports float16, "
            "bfloat16 (ml_dtypes.bfloat16 arrays, CuPy 14+), float32 and float64"
        ) from None


def empty_like(x):
    return cupy.empty_like(x)


def empty(n: int, dtype):
    return cupy.empty(n, dtype=dtype)


def zeros(n: int, dtype):
    return cupy.zeros(n, dtype=dtype)


# --- kernel source and compilation -------------------------------------------------------------


def require_gpu() -> int:
    """The current device id; RuntimeError with the reason when CUDA has no working GPU."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        device = cupy.cuda.runtime.getDevice()
    except cupy.cuda.runtime.CUDARuntimeError as error:
        raise RuntimeError(
            f"fastdrop was given a CuPy array but CUDA has no working GPU here ({error}); "
            "use a NumPy array for the CPU backend"
        ) from error
    if count == 0:
        raise RuntimeError("fastdrop was given a CuPy array but CUDA reports no GPU")
    return device


def _function(name: str, source: str = _KERNEL_SOURCE):
    """Kernel ``name`` of ``kernels/<source>`` compiled for the current device (on first use)."""
    device = cupy.cuda.runtime.getDevice()
    function = _functions.get((device, source, name))
    if function is None:
        with _lock:
            module = _modules.get((device, source))
            if module is None:
                require_gpu()
                module = cupy.RawModule(code=assemble_source(name=source), options=_COMPILE_OPTIONS)
                _modules[(device, source)] = module
            function = module.get_function(name)
            _functions[(device, source, name)] = function
    return function


def _grid_cap() -> int:
    device = cupy.cuda.runtime.getDevice()
    count = _sm_counts.get(device)
    if count is None:
        count = cupy.cuda.Device(device).attributes["MultiProcessorCount"]
        _sm_counts[device] = count
    return count * BLOCKS_PER_SM


def _launch(name: str, work_items: int, args) -> None:
    """Launch a grid-stride kernel with enough threads for ``work_items`` (capped)."""
    blocks = min(-(-work_items // THREADS_PER_BLOCK), _grid_cap())
    _function(name)((max(blocks, 1),), (THREADS_PER_BLOCK,), args)


# --- the backend interface ----------------------------------------------------------------------


def _scale(dtype, scale: float):
    """The scale rounded to the compute dtype (float32 for 16-bit storage)."""
    return np.float64(scale) if np.dtype(dtype).itemsize == 8 else np.float32(scale)


def _key(seed: int):
    key0, key1 = philox_key(seed)
    return np.uint32(key0), np.uint32(key1)


def _contiguous(x, out, mask_shape) -> bool:
    """True when the vectorised kernel applies: full mask, both C-contiguous, 16-byte aligned."""
    return (
        tuple(mask_shape) == x.shape
        and x.flags.c_contiguous
        and out.flags.c_contiguous
        and x.data.ptr % 16 == 0
        and out.data.ptr % 16 == 0
    )


def _contiguous_blocks(n: int, itemsize: int, words_aligned: bool) -> int:
    tiles = -(-n // (32 * _ELEMENTS_PER_LANE[itemsize]))
    warps = tiles if words_aligned else -(-tiles // MIN_TILES_PER_WARP)
    blocks = -(-warps // (THREADS_PER_BLOCK // 32))
    return max(1, min(blocks, _grid_cap()))


def _element_strides(array, strides):
    """Byte strides in elements, or None where one is not a multiple of the itemsize."""
    itemsize = array.dtype.itemsize
    if any(s % itemsize for s in strides):
        return None
    return tuple(s // itemsize for s in strides)


def forward(x, out, *, mask_shape, seed, offset, threshold, scale, bits):
    n = x.size
    if n == 0:
        return
    suffix = suffix_of(x.dtype)
    key0, key1 = _key(seed)
    scale_value = _scale(x.dtype, scale)
    threshold = np.uint64(threshold)
    if _contiguous(x, out, mask_shape):
        words_aligned = offset % 4 == 0
        blocks = _contiguous_blocks(n, x.dtype.itemsize, words_aligned)
        name = f"fastdrop_forward_contiguous_r{offset % 4}_{suffix}"
        _function(name)(
            (blocks,), (THREADS_PER_BLOCK,),
            (x, out, np.int64(n), np.uint64(offset), key0, key1, threshold, scale_value,
             bits if bits is not None else np.uint64(0)),
        )
        return
    if _strided_needs_copy(x, out):
        _through_contiguous(forward, x, out, mask_shape=mask_shape, seed=seed, offset=offset,
                            threshold=int(threshold), scale=scale, bits=bits)
        return
    n_mask = math.prod(mask_shape)
    launches = list(rank3_launches(x.shape, x.strides, out.strides, mask_shape, offset))
    # Fused only for one row whose element index is the mask index. (A mask broadcast over
    # leading axes also has mask strides (0, 0, 1), but then every row would write the same bytes.)
    fused = (
        bits is not None
        and len(launches) == 1
        and launches[0].shape[:2] == (1, 1)
        and launches[0].mask_strides == (0, 0, 1)
        and launches[0].shape[2] == n_mask
    )
    for launch in launches:
        kind, threads, launch = _row_kernel(launch, x.dtype.itemsize)
        _launch(
            f"fastdrop_forward_{kind}_{suffix}", threads,
            _strided_args(x, out, launch)
            + (key0, key1, threshold, scale_value, bits if fused else np.uint64(0)),
        )
    if bits is not None and not fused:
        _launch(
            "fastdrop_pack_keep_bits", -(-n_mask // 8),
            (bits, np.int64(n_mask), np.uint64(offset), key0, key1, threshold),
        )


def apply_bits(dy, out, *, mask_shape, bits, scale):
    n = dy.size
    if n == 0:
        return
    suffix = suffix_of(dy.dtype)
    scale_value = _scale(dy.dtype, scale)
    if _contiguous(dy, out, mask_shape):
        blocks = _contiguous_blocks(n, dy.dtype.itemsize, True)
        _function(f"fastdrop_apply_bits_contiguous_{suffix}")(
            (blocks,), (THREADS_PER_BLOCK,), (dy, out, np.int64(n), bits, scale_value)
        )
        return
    if _strided_needs_copy(dy, out):
        _through_contiguous(apply_bits, dy, out, mask_shape=mask_shape, bits=bits, scale=scale)
        return
    # With word offset 0 a launch's word index is the mask's flat index: the bit to read.
    for launch in rank3_launches(dy.shape, dy.strides, out.strides, mask_shape, 0):
        kind, threads, launch = _row_kernel(launch, dy.dtype.itemsize)
        _launch(
            f"fastdrop_apply_bits_{kind}_{suffix}", threads,
            _strided_args(dy, out, launch) + (bits, scale_value),
        )


def random_bits(out, *, seed, offset):
    n = out.size
    key0, key1 = _key(seed)
    blocks = ((offset + n - 1) >> 2) - (offset >> 2) + 1
    _launch("fastdrop_random_bits", blocks, (out, np.int64(n), np.uint64(offset), key0, key1))


def keep_flags(out, *, seed, offset, threshold):
    n = out.size
    if n == 0:
        return
    key0, key1 = _key(seed)
    blocks = ((offset + n - 1) >> 2) - (offset >> 2) + 1
    _launch(
        "fastdrop_keep_flags", blocks,
        (out, np.int64(n), np.uint64(offset), key0, key1, np.uint64(threshold)),
    )


# --- strided launches ---------------------------------------------------------------------------


def _row_kernel(launch, itemsize: int):
    """The core kernels for a rank-3 launch and their threads, as ``(kind, threads, launch)``.

    'rows' (a warp per 32 elements of a row) where rows are long and step by one element in x or
    out: lanes take consecutive elements. Else a thread per 8 elements of a row: 'columns' where
    an outer axis steps by one element in x or out (a transposed or channels-last view; that axis
    is made axis 1, which changes no element's word), so that lanes take consecutive rows, and
    'strided' for the rest.
    """
    size0, size1, size2 = launch.shape
    threads = size0 * size1 * -(-size2 // 8)
    if size2 >= LONG_ROW and _unit_axis(launch, itemsize, 2):
        return "rows", size0 * size1 * 32 * -(-size2 // 32), launch
    if size1 > 1 and _unit_axis(launch, itemsize, 1):
        return "columns", threads, launch
    if size0 > 1 and _unit_axis(launch, itemsize, 0):
        return "columns", threads, launch.permuted((1, 0, 2))
    return "strided", threads, launch


def _unit_axis(launch, itemsize: int, axis: int) -> bool:
    """Whether the launch's ``axis`` steps by one element (either way) in x or out."""
    return itemsize in (abs(launch.x_strides[axis]), abs(launch.out_strides[axis]))


def _strided_args(x, out, launch):
    """Kernel arguments of one rank-3 launch up to the mask strides, in elements and words."""
    itemsize = x.dtype.itemsize
    x_strides = tuple(s // itemsize for s in launch.x_strides)
    out_strides = tuple(s // itemsize for s in launch.out_strides)
    return (
        (x, np.int64(launch.x_byte_offset // itemsize), out,
         np.int64(launch.out_byte_offset // itemsize))
        + tuple(np.int64(d) for d in launch.shape)
        + tuple(np.int64(s) for s in x_strides + out_strides)
        + (np.uint64(launch.word_offset),)
        + tuple(np.int64(s) for s in launch.mask_strides)
    )


def _strided_needs_copy(x, out) -> bool:
    """Strides that are not whole elements (views of raw bytes) cannot be expressed in elements."""
    return _element_strides(x, x.strides) is None or _element_strides(out, out.strides) is None


def _through_contiguous(operation, x, out, **arguments):
    """Run ``operation`` on C-contiguous copies and copy the result back into ``out``."""
    x_copy = cupy.ascontiguousarray(x)
    result = cupy.empty_like(x_copy)
    operation(x_copy, result, **arguments)
    out[...] = result
