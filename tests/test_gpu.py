"""The CuPy backend against fastdrop.reference, bit for bit, and the device Philox against cuRAND.

Every test here but the last two is marked ``gpu`` and skipped, with the reason, where CuPy or a
working GPU is missing. tests/test_cuda_emulated.py also runs them with the CPU emulator of
tests/cuda_emulator standing in for CuPy (the two that need a real GPU skip there). Inputs are finite: a kept NaN comes out as a NaN whose payload the GPU
does not preserve, so NaNs get their own test.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop import reference


def _gpu_unavailable_reason():
    try:
        import cupy
    except ImportError as error:
        return f"CuPy is not installed ({error})"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "CUDA reports no GPU"
    except cupy.cuda.runtime.CUDARuntimeError as error:
        return f"no working CUDA GPU ({error})"
    return None


GPU_REASON = _gpu_unavailable_reason()


def gpu_test(function):
    """Mark a test ``gpu`` and skip it, saying why, where CuPy or a working GPU is missing."""
    return pytest.mark.gpu(pytest.mark.skipif(GPU_REASON is not None, reason=str(GPU_REASON))(function))


if GPU_REASON is None:
    import cupy

#: True when ``cupy`` is the CPU emulator of tests/cuda_emulator (tests/test_cuda_emulated.py).
EMULATED = GPU_REASON is None and getattr(cupy, "__fastdrop_emulator__", False)


def real_gpu_only(function):
    """Skip under the CPU emulator: the test needs what only a real GPU has."""
    return pytest.mark.skipif(EMULATED, reason="needs a real GPU, not the CPU emulator")(function)


def _dtype(name):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")
        dtype = np.dtype(ml_dtypes.bfloat16)
        try:
            cupy.zeros(1, dtype=np.uint16).view(dtype)
        except Exception as error:  # CuPy < 14 has no bfloat16 arrays
            pytest.skip(f"this CuPy cannot hold bfloat16 arrays ({error})")
        return dtype
    return np.dtype(name)


_UNSIGNED = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _raw(array):
    """The bits of a float array as unsigned integers, for exact comparison (-0, subnormals)."""
    array = np.ascontiguousarray(array)
    return array.view(_UNSIGNED[array.dtype.itemsize])


def _device_raw(array):
    """The bits of a CuPy float array, copied to the host as unsigned integers.

    Goes through an unsigned view so that no CuPy conversion of the float dtype is involved
    (CuPy's bfloat16 support is young; the kernels only ever see raw bits anyway).
    """
    return cupy.asnumpy(array.view(_UNSIGNED[array.dtype.itemsize]))


def _to_device(host):
    """Upload the raw bits of a C-contiguous host array and view them with its dtype."""
    host = np.ascontiguousarray(host)
    return cupy.asarray(host.view(_UNSIGNED[host.dtype.itemsize])).view(host.dtype)


def _host_and_device(shape, dtype, seed=0):
    host = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    device = _to_device(host)
    # cupy.asarray copies asynchronously on the current stream; tests that switch streams rely
    # on the data being there.
    cupy.cuda.get_current_stream().synchronize()
    return host, device


# Each case: id, base shape, view of the base (applied identically to NumPy and CuPy), mask_shape.
CASES = [
    ("one", (1,), None, None),
    ("odd-1d", (4099,), None, None),
    ("odd-2d", (37, 129), None, None),
    ("odd-3d", (3, 5, 67), None, None),
    ("channels", (4, 6, 5, 7), None, (4, 6, 1, 1)),
    ("rows", (33, 65), None, (33, 1)),
    ("columns", (33, 65), None, (65,)),
    ("single-draw", (9, 10), None, (1,)),
    ("rank-5", (2, 3, 4, 5, 6), None, (2, 1, 4, 1, 6)),
    ("strided", (40, 70), lambda a: a[::2, 1::3], None),
    ("transposed", (33, 65), lambda a: a.T, None),
    ("misaligned", (4100,), lambda a: a[1:], None),
    # 16 bytes or more into the allocation, still 16-byte aligned: the vector path on a view.
    ("aligned-view", (4108,), lambda a: a[8:], None),
    ("aligned-rows", (9, 64), lambda a: a[2:], None),
    ("reversed", (1001,), lambda a: a[::-1], None),
    ("strided-mask", (12, 40), lambda a: a[:, ::3], (12, 1)),
    # Outer axes that step by one element: the columns kernels (lanes across rows).
    ("transposed-reversed", (37, 41), lambda a: a.T[::-1], None),
    ("channels-last", (2, 5, 7, 40), lambda a: a.transpose(0, 3, 1, 2), None),
    ("channels-last-mask", (2, 5, 7, 40), lambda a: a.transpose(0, 3, 1, 2), (2, 40, 1, 1)),
    ("first-axis-unit", (7, 6, 40), lambda a: a.transpose(2, 1, 0), None),
]
OFFSETS = [0, 1, 2, 3, 2**32 - 3, 2**62 + 1]
DTYPES = ["float16", "bfloat16", "float32", "float64"]


def _case_arrays(case, dtype):
    _, base_shape, view, mask_shape = case
    host, device = _host_and_device(base_shape, dtype)
    if view is not None:
        host, device = view(host), view(device)
    return host, device, mask_shape


@gpu_test
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_forward_backward_match_reference(dtype_name, case, offset):
    dtype = _dtype(dtype_name)
    host, device, mask_shape = _case_arrays(case, dtype)
    p = (0.1, 0.5, 0.9)[offset % 3]
    seed = 0x1234_5678_9ABC_DEF0 + offset
    y, mask = fastdrop.dropout(device, p, seed=seed, offset=offset, mask_shape=mask_shape, keep_bits=True)
    expected = reference.dropout(host, p, seed=seed, offset=offset, mask_shape=mask_shape)
    np.testing.assert_array_equal(_device_raw(y), _raw(expected))

    keep = reference.keep_mask(mask.shape, p, seed=seed, offset=offset)
    np.testing.assert_array_equal(cupy.asnumpy(mask.bits), reference.pack_bits(keep))
    np.testing.assert_array_equal(cupy.asnumpy(mask.to_array(like=device)), keep)

    dy_host, dy = _host_and_device(host.shape, dtype, seed=1)
    expected_dx = reference.dropout_backward(dy_host, p, seed=seed, offset=offset, mask_shape=mask_shape)
    from_bits = fastdrop.dropout_backward(dy, mask)
    _, seed_only = fastdrop.dropout(device, p, seed=seed, offset=offset, mask_shape=mask_shape)
    from_seed = fastdrop.dropout_backward(dy, seed_only)
    np.testing.assert_array_equal(cupy.asnumpy(seed_only.to_array(like=device)), keep)  # keep_flags kernel
    np.testing.assert_array_equal(_device_raw(from_bits), _raw(expected_dx))
    np.testing.assert_array_equal(_device_raw(from_seed), _raw(expected_dx))


@gpu_test
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_in_place(dtype_name, layout):
    dtype = _dtype(dtype_name)
    host, device = _host_and_device((301, 17), dtype)
    if layout == "strided":
        host, device = host[:, ::2], device[:, ::2]
    y, _ = fastdrop.dropout(device, 0.3, seed=5, offset=7, out=device)
    assert y is device
    np.testing.assert_array_equal(_device_raw(device), _raw(reference.dropout(host, 0.3, seed=5, offset=7)))


@gpu_test
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("p", [0.0, 1e-6, 1.0])
def test_edge_probabilities(dtype_name, p):
    dtype = _dtype(dtype_name)
    host, device = _host_and_device((1031,), dtype)
    y, mask = fastdrop.dropout(device, p, seed=3, offset=1, keep_bits=True)
    np.testing.assert_array_equal(_device_raw(y), _raw(reference.dropout(host, p, seed=3, offset=1)))
    keep = reference.keep_mask(host.shape, p, seed=3, offset=1)
    np.testing.assert_array_equal(cupy.asnumpy(mask.bits), reference.pack_bits(keep))


@gpu_test
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_dropped_nan_and_inf_give_zero(dtype_name):
    dtype = _dtype(dtype_name)
    values = np.array([np.nan, np.inf, -np.inf] * 300).astype(dtype)
    y, mask = fastdrop.dropout(_to_device(values), 0.5, seed=11, keep_bits=True)
    y = _device_raw(y).view(dtype)
    keep = reference.keep_mask(values.shape, 0.5, seed=11)
    assert np.all(_raw(y)[~keep] == 0)  # +0, whatever was dropped
    kept = y[keep].astype(np.float64)
    np.testing.assert_array_equal(np.isnan(kept), np.isnan(values[keep].astype(np.float64)))
    np.testing.assert_array_equal(kept[~np.isnan(kept)], values[keep].astype(np.float64)[~np.isnan(kept)])


LARGE_N = 3 * 2**20 + 5  # above the one-block-per-SM grid's threads x elements, for any GPU


@functools.lru_cache(maxsize=16)
def _reference_keep(shape, p, seed, offset):
    keep = reference.keep_mask(shape, p, seed=seed, offset=offset)
    keep.flags.writeable = False
    return keep


def _expected(host, keep, p):
    """reference.dropout with a precomputed keep mask (the reference's own select)."""
    return reference._apply(host, keep, p)


def _small_grid(monkeypatch, grid):
    from fastdrop import _cupy_backend

    if grid != "default":  # each warp (contiguous) or thread (others) loops over many items
        monkeypatch.setattr(_cupy_backend, "BLOCKS_PER_SM", 1)
        monkeypatch.setattr(_cupy_backend, "MIN_TILES_PER_WARP", 1)


@gpu_test
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
@pytest.mark.parametrize("grid", ["default", "one-block-per-sm"])
def test_launch_configuration_does_not_change_the_mask(dtype_name, offset, grid, monkeypatch):
    """Large arrays, and a tiny grid so that each warp walks many tiles (the carried block)."""
    _small_grid(monkeypatch, grid)
    dtype = _dtype(dtype_name)
    host, device = _host_and_device((LARGE_N,), dtype)
    keep = _reference_keep((LARGE_N,), 0.25, 99, offset)
    y, mask = fastdrop.dropout(device, 0.25, seed=99, offset=offset, keep_bits=True)
    np.testing.assert_array_equal(_device_raw(y), _raw(_expected(host, keep, 0.25)))
    np.testing.assert_array_equal(cupy.asnumpy(mask.bits), reference.pack_bits(keep))
    dx = fastdrop.dropout_backward(device, mask)  # apply_bits, contiguous
    np.testing.assert_array_equal(_device_raw(dx), _raw(_expected(host, keep, 0.25)))


@gpu_test
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("grid", ["default", "one-block-per-sm"])
def test_launch_configuration_other_kernels(dtype_name, grid, monkeypatch):
    """The grid-stride loops of the strided, bit packing, keep flag and random word kernels."""
    _small_grid(monkeypatch, grid)
    dtype = _dtype(dtype_name)
    base_host, base = _host_and_device((LARGE_N + 1,), dtype)
    host, device = base_host[1:], base[1:]  # misaligned: the strided kernel, bits fused
    keep = _reference_keep((LARGE_N,), 0.25, 99, 3)
    y, mask = fastdrop.dropout(device, 0.25, seed=99, offset=3, keep_bits=True)
    np.testing.assert_array_equal(_device_raw(y), _raw(_expected(host, keep, 0.25)))
    np.testing.assert_array_equal(cupy.asnumpy(mask.bits), reference.pack_bits(keep))
    dx = fastdrop.dropout_backward(device, mask)  # apply_bits, strided
    np.testing.assert_array_equal(_device_raw(dx), _raw(_expected(host, keep, 0.25)))

    _, seed_only = fastdrop.dropout(device, 0.25, seed=99, offset=3)
    np.testing.assert_array_equal(cupy.asnumpy(seed_only.to_array(like=device)), keep)  # keep_flags
    words = fastdrop.random_bits(LARGE_N, seed=99, offset=3, like=device)
    np.testing.assert_array_equal(cupy.asnumpy(words), reference.random_bits(LARGE_N, seed=99, offset=3))

    rows = (LARGE_N - 1) // 2  # a mask broadcast along the last axis: the bit packing kernel
    host2, device2 = base_host[1:LARGE_N].reshape(rows, 2), base[1:LARGE_N].reshape(rows, 2)
    keep2 = _reference_keep((rows, 1), 0.25, 99, 1)
    y2, mask2 = fastdrop.dropout(device2, 0.25, seed=99, offset=1, mask_shape=(rows, 1), keep_bits=True)
    np.testing.assert_array_equal(_device_raw(y2), _raw(_expected(host2, keep2, 0.25)))
    np.testing.assert_array_equal(cupy.asnumpy(mask2.bits), reference.pack_bits(keep2))


@gpu_test
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 2**40 + 2, 2**64 - 5000])
@pytest.mark.parametrize("n", [1, 5, 4097])
def test_random_bits(n, offset):
    words = fastdrop.random_bits(n, seed=2**64 - 5, offset=offset, like=cupy.empty(0))
    assert isinstance(words, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(words), reference.random_bits(n, seed=2**64 - 5, offset=offset))


@gpu_test
def test_zero_size():
    y, mask = fastdrop.dropout(cupy.empty((0, 3), dtype=np.float32), 0.5, seed=1, keep_bits=True)
    assert y.shape == (0, 3) and mask.bits.size == 0


def _curand_include_dir():
    """A folder holding curand_kernel.h: the CUDA toolkit's, or the NVIDIA wheels' (skip if none)."""
    candidates = []
    for variable in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(variable):
            candidates.append(Path(os.environ[variable]) / "include")
    try:
        candidates.append(Path(cupy.cuda.get_cuda_path()) / "include")
    except Exception:
        pass
    candidates.append(Path("/usr/local/cuda/include"))
    for entry in sys.path:
        nvidia = Path(entry) / "nvidia"
        candidates += [nvidia / "cu13" / "include", nvidia / "curand" / "include"]
    for folder in candidates:
        if (folder / "curand_kernel.h").is_file():
            return folder
    pytest.skip("curand_kernel.h not found (no CUDA toolkit include folder)")


CURAND_SOURCE = r"""
#include <curand_kernel.h>
extern "C" __global__ void curand_stream(unsigned long long seed, unsigned int* out, int calls) {
    curandStatePhilox4_32_10_t state;
    curand_init(seed, 0, 0, &state);
    for (int i = 0; i < calls; ++i) {
        const uint4 r = curand4(&state);
        out[4 * i] = r.x;
        out[4 * i + 1] = r.y;
        out[4 * i + 2] = r.z;
        out[4 * i + 3] = r.w;
    }
}
"""


@gpu_test
@real_gpu_only  # cuRAND's header is device code
@pytest.mark.parametrize("seed", [0, 12345, 0x0123_4567_89AB_CDEF, 2**64 - 1])
def test_device_philox_equals_curand(seed):
    include = _curand_include_dir()
    kernel = cupy.RawKernel(CURAND_SOURCE, "curand_stream", options=(f"-I{include}",))
    calls = 257
    out = cupy.zeros(4 * calls, dtype=np.uint32)
    kernel((1,), (1,), (np.uint64(seed), out, np.int32(calls)))
    ours = fastdrop.random_bits(4 * calls, seed=seed, like=out)
    np.testing.assert_array_equal(cupy.asnumpy(out), cupy.asnumpy(ours))
    np.testing.assert_array_equal(cupy.asnumpy(out), reference.random_bits(4 * calls, seed=seed))


@gpu_test
def test_runs_on_the_current_stream():
    host, device = _host_and_device((2**20 + 3,), np.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        y, _ = fastdrop.dropout(device, 0.5, seed=8, offset=2)
        stream.synchronize()
    np.testing.assert_array_equal(_device_raw(y), _raw(reference.dropout(host, 0.5, seed=8, offset=2)))


@gpu_test
@real_gpu_only  # the emulator runs every launch at once and has no graphs
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_kernels_are_captured_on_the_current_stream(layout):
    """Under CUDA graph capture of the current stream, a kernel sent to the legacy default stream
    breaks the capture and one sent to any other stream runs at once (changing `out` before the
    graph is launched): only launches on the current stream pass. (The plain stream test above
    would pass either way.)"""
    host, device = _host_and_device((2**16 + 3,), np.float32)
    if layout == "strided":
        host, device = host[1:], device[1:]
    out = cupy.empty(device.shape, dtype=np.float32)
    fastdrop.dropout(device, 0.5, seed=8, offset=2, out=out)  # compile and cache outside the capture
    out.fill(7.0)
    cupy.cuda.Device().synchronize()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            fastdrop.dropout(device, 0.5, seed=8, offset=2, out=out)
        finally:
            graph = stream.end_capture()
    assert bool((out == 7.0).all()), "a fastdrop kernel ran outside the captured (current) stream"
    graph.launch(stream)
    stream.synchronize()
    np.testing.assert_array_equal(_device_raw(out), _raw(reference.dropout(host, 0.5, seed=8, offset=2)))


@gpu_test
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("which", ["out", "x"])
def test_alignment_of_either_array_picks_a_correct_path(dtype_name, which):
    """x aligned and out misaligned (or the reverse): the vector kernel must not be used."""
    dtype = _dtype(dtype_name)
    host, device = _host_and_device((2051,), dtype)
    unsigned = _UNSIGNED[dtype.itemsize]
    other = cupy.zeros(2052, dtype=unsigned)[1:]  # one element into a fresh allocation
    if which == "x":
        other[...] = device.view(unsigned)
        x, out = other.view(dtype), device
    else:
        x, out = device, other.view(dtype)
    fastdrop.dropout(x, 0.5, seed=21, offset=5, out=out)
    np.testing.assert_array_equal(_device_raw(out), _raw(reference.dropout(host, 0.5, seed=21, offset=5)))


@gpu_test
def test_calls_from_several_threads(monkeypatch):
    """Eight threads at once, from an empty kernel cache (so they race to compile and look up the
    kernels), each with its own seed and layout: every result as the reference's."""
    import threading

    from fastdrop import _cupy_backend

    monkeypatch.setattr(_cupy_backend, "_modules", {})
    monkeypatch.setattr(_cupy_backend, "_functions", {})
    host, device = _host_and_device((3, 20_011), np.float32)
    cupy.cuda.Device().synchronize()
    views = [(lambda a: a), (lambda a: a[:, 1:]), (lambda a: a[:, ::2]), (lambda a: a.T)]
    results, errors = {}, []

    def work(seed):
        try:
            view = views[seed % len(views)]
            for _ in range(3):
                y, mask = fastdrop.dropout(view(device), 0.3, seed=seed, offset=seed, keep_bits=seed % 2 == 0)
                dx = fastdrop.dropout_backward(view(device), mask)
            cupy.cuda.get_current_stream().synchronize()
            results[seed] = (_device_raw(y), _device_raw(dx))
        except Exception as error:  # reported below, not lost in the thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for seed in range(8):
        expected = reference.dropout(views[seed % len(views)](host), 0.3, seed=seed, offset=seed)
        np.testing.assert_array_equal(results[seed][0], _raw(expected))
        np.testing.assert_array_equal(results[seed][1], _raw(expected))


# --- without a GPU ------------------------------------------------------------------------------

def test_clear_error_without_a_gpu():
    pytest.importorskip("cupy", reason="CuPy is not installed")
    if GPU_REASON is None:
        pytest.skip("a GPU is present; this checks the message shown without one")
    from fastdrop import _cupy_backend

    with pytest.raises(RuntimeError, match="no working GPU"):
        _cupy_backend.require_gpu()


def test_import_fastdrop_does_not_import_cupy():
    code = "import sys, fastdrop; sys.exit('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
