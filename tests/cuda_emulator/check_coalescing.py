"""How the CUDA kernels' warps would touch memory: 32-byte sectors per request, from traces.

Run by tests/test_cuda_emulated.py where ``cupy`` is the emulator; ``python
tests/cuda_emulator/check_coalescing.py`` (with that PYTHONPATH) prints the table for every
kernel and layout. A request is one warp-level memory instruction: the k-th access of each of
a warp's 32 lanes to one array (``cupy._trace``). Efficiency is the bytes the lanes asked for
over the bytes of the sectors the request touches: 1.0 when the lanes' accesses are consecutive,
as in a copy; 0.125 when each float32 lane sits in a sector of its own. (A sector touched twice
by different requests is counted twice: L1 may serve the second, but the instruction count and
the L1 traffic are what they are.) The kernels the issue's throughput targets rest on, the
contiguous forward and backward and the vector bias-dropout-add, must stay at 1.0.
"""

from __future__ import annotations

import cupy
import numpy as np
import pytest

import fastdrop
from fastdrop import _cupy_backend

pytestmark = pytest.mark.gpu

N = 1 << 13


def _dtype(name):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _device(shape, dtype, seed=0):
    host = np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(dtype)
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[dtype.itemsize]
    return cupy.asarray(host.view(unsigned)).view(dtype)


def traced(run):
    """The launches of ``run()``, made with the memory-tracing build of every kernel."""
    _cupy_backend._modules.clear()  # so that the traced build is used from the first launch
    _cupy_backend._functions.clear()
    with cupy.trace_memory() as trace:
        run()
    return trace.launches


def _data_efficiency(launches, arguments):
    """{(kernel, argument, load/store): efficiency} of the given argument indices."""
    found = {}
    for launch in launches:
        for (index, kind), traffic in launch.sectors().items():
            if index in arguments:
                found[(launch.name, index, kind)] = traffic.efficiency
    return found


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_contiguous_forward_and_backward_are_coalesced(dtype_name, offset):
    dtype = _dtype(dtype_name)
    x, dy = _device(N, dtype), _device(N, dtype, seed=1)
    out, dx = cupy.empty_like(x), cupy.empty_like(x)

    def run():
        _, mask = fastdrop.dropout(x, 0.1, seed=3, offset=offset, out=out, keep_bits=True)
        fastdrop.dropout_backward(dy, mask, out=dx)

    launches = traced(run)
    names = [launch.name for launch in launches]
    suffix = _cupy_backend.suffix_of(dtype)
    assert names == [f"fastdrop_forward_contiguous_r{offset}_{suffix}", f"fastdrop_apply_bits_contiguous_{suffix}"]
    efficiency = _data_efficiency(launches, {0, 1})  # x (or dy) and y (or dx) in both kernels
    assert len(efficiency) == 4 and all(value == 1.0 for value in efficiency.values()), efficiency


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32", "float64"])
def test_vector_bias_dropout_add_is_coalesced(dtype_name):
    dtype = _dtype(dtype_name)
    rows, width = 16, 512
    x, residual = _device((rows, width), dtype), _device((rows, width), dtype, seed=1)
    bias, out = _device(width, dtype, seed=2), cupy.empty((rows, width), dtype=dtype)
    launches = traced(lambda: fastdrop.bias_dropout_add(x, bias, residual, 0.1, seed=3, out=out))
    assert [launch.name for launch in launches] == [f"fastdrop_bias_dropout_add_bias_vector_{_cupy_backend.suffix_of(dtype)}"]
    efficiency = _data_efficiency(launches, {0, 3, 4, 7})  # x, bias, residual, y
    assert len(efficiency) == 4 and all(value == 1.0 for value in efficiency.values()), efficiency


@pytest.mark.parametrize("dtype_name", ["float16", "float32", "float64"])
def test_long_rows_are_coalesced(dtype_name):
    """The rows kernels (rows of 32 elements and more): a warp's lanes take consecutive
    elements, so a row that steps by one element is read and written as by a copy, one that
    steps by two touches twice its bytes, one element in (misaligned) at most one sector more
    per request; a channel mask broadcast along its rows costs nothing in coalescing."""
    dtype = _dtype(dtype_name)
    flat = _device(2 * N + 1, dtype)
    rows = _device((64, 256), dtype)
    cases = [
        (lambda: fastdrop.dropout(flat[:N][::-1], 0.1, seed=3), 1.0, 1.0),  # reversed: not contiguous
        (lambda: fastdrop.dropout(rows, 0.1, seed=3, mask_shape=(64, 1)), 1.0, 1.0),
        (lambda: fastdrop.dropout(flat[: 2 * N : 2], 0.1, seed=3), 0.5, 0.5),
        (lambda: fastdrop.dropout(flat[1 : N + 1], 0.1, seed=3), 0.6, 1.0),
    ]
    for run, low, high in cases:
        launches = traced(run)
        assert [launch.name for launch in launches] == [f"fastdrop_forward_rows_{_cupy_backend.suffix_of(dtype)}"]
        efficiency = _data_efficiency(launches, {0, 2})  # x, and y (a fresh, contiguous output)
        name = launches[0].name
        assert low <= efficiency[(name, 0, "load")] <= high, efficiency
        assert efficiency[(name, 2, "store")] == 1.0, efficiency


@pytest.mark.parametrize("dtype_name", ["float16", "float32", "float64"])
def test_views_whose_fast_axis_is_an_outer_one_are_coalesced(dtype_name):
    """The columns kernels (a thread per 8 elements of a row, a warp's lanes on consecutive rows):
    a transposed matrix and channels-last feature maps, element or channel mask, are read and
    written as by a copy, where the strided kernels' lanes each touched a sector of their own."""
    dtype = _dtype(dtype_name)
    matrix = _device((64, 256), dtype)
    maps = _device((2, 6, 6, 64), dtype).transpose(0, 3, 1, 2)  # (N, C, H, W), C fastest
    alpha = fastdrop.alpha_dropout
    runs = [
        (lambda: fastdrop.dropout(matrix.T, 0.1, seed=3), "fastdrop_forward_columns"),
        (lambda: fastdrop.dropout(maps, 0.1, seed=3), "fastdrop_forward_columns"),
        (lambda: fastdrop.dropout(maps, 0.1, seed=3, mask_shape=(2, 64, 1, 1)), "fastdrop_forward_columns"),
        (lambda: alpha(maps, 0.1, seed=3, mask_shape=(2, 64, 1, 1)), "fastdrop_alpha_columns"),
    ]
    for run, kernel in runs:
        launches = traced(run)
        name = f"{kernel}_{_cupy_backend.suffix_of(dtype)}"
        assert [launch.name for launch in launches] == [name]
        efficiency = _data_efficiency(launches, {0, 2})  # x, and y (empty_like keeps the layout)
        assert efficiency == {(name, 0, "load"): 1.0, (name, 2, "store"): 1.0}, efficiency


def test_short_rows_are_seen_as_uncoalesced():
    """The measure itself: rows of 16 float32 take the strided kernel, a thread per 8 elements,
    so each lane's access sits in a sector of its own."""
    x = _device((256, 16), np.dtype(np.float32))
    launches = traced(lambda: fastdrop.dropout(x, 0.1, seed=3, mask_shape=(256, 1)))
    efficiency = _data_efficiency(launches, {0})
    assert list(efficiency) == [("fastdrop_forward_strided_f32", 0, "load")]
    assert efficiency[("fastdrop_forward_strided_f32", 0, "load")] <= 0.125


def report() -> None:
    """Every kernel family on a few layouts, float32 and float64 / float16 where they differ."""
    cases = []
    for name in ("float16", "float32", "float64"):
        dtype = np.dtype(name)
        x = _device(N, dtype)
        m = _device((64, N // 64), dtype)
        bias = _device(N // 64, dtype, seed=2)
        cases += [
            (f"dropout, contiguous, {name}", lambda x=x: fastdrop.dropout(x, 0.1, seed=1, keep_bits=True)),
            (f"dropout, offset 3, {name}", lambda x=x: fastdrop.dropout(x, 0.1, seed=1, offset=3)),
            (f"dropout, one element in, {name}", lambda x=x: fastdrop.dropout(x[1:], 0.1, seed=1)),
            (f"dropout, transposed, {name}", lambda m=m: fastdrop.dropout(m.T, 0.1, seed=1)),
            (f"dropout, channels last, {name}", lambda m=m: fastdrop.dropout(m.reshape(2, 8, 8, -1).transpose(0, 3, 1, 2), 0.1, seed=1)),
            (f"dropout, channel mask, {name}", lambda m=m: fastdrop.dropout(m, 0.1, seed=1, mask_shape=(64, 1))),
            (f"bias-dropout-add, {name}", lambda m=m, b=bias: fastdrop.bias_dropout_add(m, b, m.copy(), 0.1, seed=1)),
            (f"alpha dropout, {name}", lambda m=m: fastdrop.alpha_dropout(m, 0.1, seed=1)),
            (f"Gaussian dropout, {name}", lambda m=m: fastdrop.gaussian_dropout(m, 0.1, seed=1)),
        ]
    cases.append(("random_bits", lambda: fastdrop.random_bits(N, seed=1, like=cupy.empty(0))))
    print("case | kernel | argument: efficiency (sectors per request)")
    print("--- | --- | ---")
    for label, run in cases:
        for launch in traced(run):
            parts = ", ".join(
                f"{index} {kind}: {traffic.efficiency:.3g} ({traffic.sectors / traffic.requests:.3g})"
                for (index, kind), traffic in sorted(launch.sectors().items())
            )
            print(f"{label} | {launch.name} | {parts}")


if __name__ == "__main__":
    report()
