"""The emulator's own checks: it runs kernels as CUDA would, and refuses what CUDA would not do.

Run by tests/test_cuda_emulated.py in a process where ``cupy`` is the emulator (this file's name
keeps the main test run from collecting it there, where ``cupy`` is the real one or absent).
"""

from __future__ import annotations

import threading

import cupy
import numpy as np
import pytest

pytestmark = pytest.mark.gpu

SOURCE = r"""
extern "C" __global__ void ids(long long* out, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (long long)blockIdx.x * 1000000 + (long long)gridDim.x * 1000
                        + (long long)blockDim.x * 0 + threadIdx.x;
}

extern "C" __global__ void shuffles(unsigned* out, int delta) {
    const unsigned lane = threadIdx.x & 31;
    const unsigned value = 100u * blockIdx.x + threadIdx.x;
    const unsigned base = 4u * (blockIdx.x * blockDim.x + threadIdx.x);
    out[base] = __shfl_up_sync(0xFFFFFFFFu, value, delta);
    out[base + 1] = __shfl_down_sync(0xFFFFFFFFu, value, delta);
    out[base + 2] = __shfl_sync(0xFFFFFFFFu, value, (int)(31 - lane));
    out[base + 3] = __shfl_sync(0xFFFFFFFFu, value * 2u, 5);
}

extern "C" __global__ void early_return(unsigned* out) {
    if (threadIdx.x == 3) return;
    out[threadIdx.x] = __shfl_down_sync(0xFFFFFFFFu, threadIdx.x, 1);
}

extern "C" __global__ void mixed_kinds(unsigned* out) {
    if (threadIdx.x & 1) out[threadIdx.x] = __shfl_up_sync(0xFFFFFFFFu, threadIdx.x, 1);
    else out[threadIdx.x] = __shfl_down_sync(0xFFFFFFFFu, threadIdx.x, 1);
}

extern "C" __global__ void half_mask(unsigned* out) {
    out[threadIdx.x] = __shfl_sync(0x0000FFFFu, threadIdx.x, 0);
}

extern "C" __global__ void write_one_past(float* out, long long n) {
    if (threadIdx.x == 0) out[n] = 1.0f;
}

extern "C" __global__ void write_const(const float* x, float* y) {
    y[threadIdx.x] = x[threadIdx.x];
    if (threadIdx.x == 0) const_cast<float*>(x)[0] = 2.0f;
}

extern "C" __global__ void vector_copy(const float* x, float* y) {
    reinterpret_cast<uint4*>(y)[threadIdx.x] = reinterpret_cast<const uint4*>(x)[threadIdx.x];
}

extern "C" __global__ void spin(unsigned* out, int rounds) {
    unsigned value = threadIdx.x;
    for (int r = 0; r < rounds; ++r) value = value * 3u + __shfl_down_sync(0xFFFFFFFFu, value, 1);
    out[blockIdx.x * blockDim.x + threadIdx.x] = value;
}

extern "C" __global__ void scaled(const double* x, double* y, double s, unsigned long long n) {
    for (unsigned long long i = threadIdx.x; i < n; i += blockDim.x) y[i] = x[i] * s;
}
"""


@pytest.fixture(scope="module")
def module():
    return cupy.RawModule(code=SOURCE)


def test_this_is_the_emulator():
    assert cupy.__fastdrop_emulator__ is True


def test_thread_and_block_indices(module):
    n = 3 * 256 + 17
    out = cupy.zeros(n, dtype=np.int64)
    module.get_function("ids")((4,), (256,), (out, np.int64(n)))
    i = np.arange(n)
    assert (cupy.asnumpy(out) == (i // 256) * 1000000 + 4 * 1000 + i % 256).all()


@pytest.mark.parametrize("delta", [1, 2, 31])
def test_shuffles_read_the_right_lanes(module, delta):
    blocks, threads = 2, 64
    out = cupy.zeros(4 * blocks * threads, dtype=np.uint32)
    module.get_function("shuffles")((blocks,), (threads,), (out, np.int32(delta)))
    got = cupy.asnumpy(out).reshape(blocks * threads, 4)
    for t in range(blocks * threads):
        block, thread = divmod(t, threads)
        lane, warp_start = thread % 32, thread - thread % 32
        value = lambda source_lane: 100 * block + warp_start + source_lane  # noqa: E731
        assert got[t, 0] == value(lane - delta if lane >= delta else lane)
        assert got[t, 1] == value(lane + delta if lane + delta < 32 else lane)
        assert got[t, 2] == value(31 - lane)
        assert got[t, 3] == 2 * value(5)


@pytest.mark.parametrize("kernel, message", [
    ("early_return", "only some lanes"),
    ("mixed_kinds", "different kinds of shuffle"),
    ("half_mask", "partial mask"),
])
def test_warp_rules_are_enforced(module, kernel, message):
    out = cupy.zeros(32, dtype=np.uint32)
    with pytest.raises(RuntimeError, match=message):
        module.get_function(kernel)((1,), (32,), (out,))


def test_a_write_past_the_end_is_caught(module):
    out = cupy.zeros(10, dtype=np.float32)
    with pytest.raises(RuntimeError, match="wrote outside the allocation of argument 0"):
        module.get_function("write_one_past")((1,), (32,), (out, np.int64(10)))


def test_a_misaligned_vector_access_is_caught(module):
    """A GPU faults on a 16-byte load from an address that is not a multiple of 16."""
    kernel = module.get_function("vector_copy")
    x, y = cupy.arange(129, dtype=np.float32), cupy.zeros(128, dtype=np.float32)
    kernel((1,), (32,), (x[:128], y))
    assert (cupy.asnumpy(y) == np.arange(128)).all()
    with pytest.raises(RuntimeError, match="misaligned access at .*16-byte alignment"):
        kernel((1,), (32,), (x[1:], y))
    kernel((1,), (32,), (x[:128], y))  # the thread's next launch runs normally


def test_memory_numpy_allocated_is_refused(module):
    x = np.ones(32, dtype=np.float32).view(cupy.ndarray)  # not through the emulator's allocator
    with pytest.raises(RuntimeError, match="did not allocate"):
        module.get_function("vector_copy")((1,), (8,), (x, cupy.zeros(32, dtype=np.float32)))
    flat = cupy.ones((4, 8), dtype=np.float32).T.reshape(-1)  # NumPy copies; the emulator re-homes it
    assert flat.data.ptr % cupy.ALIGNMENT == 0


def test_launches_from_several_threads_at_once(module):
    def expected(blocks, rounds):
        out = np.zeros(blocks * 64, dtype=np.uint64)
        for warp in range(blocks * 2):
            values = np.arange(32, dtype=np.uint64) + 32 * (warp % 2)
            for _ in range(rounds):
                values = (values * 3 + np.concatenate([values[1:], values[-1:]])) & 0xFFFFFFFF
            out[32 * warp:32 * warp + 32] = values
        return out.astype(np.uint32)

    want = expected(3, 40)
    results = []

    def worker():
        for _ in range(10):
            out = cupy.zeros(3 * 64, dtype=np.uint32)
            module.get_function("spin")((3,), (64,), (out, np.int32(40)))
            results.append(bool((cupy.asnumpy(out) == want).all()))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 40


def test_a_write_through_a_const_pointer_is_caught(module):
    x, y = cupy.ones(32, dtype=np.float32), cupy.zeros(32, dtype=np.float32)
    with pytest.raises(RuntimeError, match="changed argument 0, a pointer to const"):
        module.get_function("write_const")((1,), (32,), (x, y))
    # The same memory as input and output (in place) is allowed to change.
    module.get_function("write_const")((1,), (32,), (x, x))


def test_arguments_are_checked_against_the_signature(module):
    kernel = module.get_function("scaled")
    x, y = cupy.ones(8), cupy.zeros(8)
    kernel((1,), (32,), (x, y, np.float64(3.0), np.uint64(8)))
    assert (cupy.asnumpy(y) == 3.0).all()
    bad = [
        ((x, y, np.float64(3.0)), "takes 4 arguments"),
        ((x, y, np.float32(3.0), np.uint64(8)), "for a 8-byte parameter"),
        ((x, y, np.int64(3), np.uint64(8)), "for a floating-point parameter"),
        ((x, y, np.float64(3.0), np.float64(8)), "for an integer parameter"),
        ((x, y, np.float64(3.0), 8), "pass NumPy scalars"),
        ((x, np.zeros(8), np.float64(3.0), np.uint64(8)), "numpy.ndarray"),
        ((x, np.uint64(1234), np.float64(3.0), np.uint64(8)), "only a null pointer"),
        ((x, y, y, np.uint64(8)), "an array for a parameter"),
    ]
    for args, message in bad:
        with pytest.raises(TypeError, match=message):
            kernel((1,), (32,), args)


def test_allocations_are_aligned():
    for n in (0, 1, 7, 1000):
        a = cupy.empty(n, dtype=np.float32)
        assert a.data.ptr % cupy.ALIGNMENT == 0
    assert cupy.empty_like(cupy.empty((3, 5)).T).strides == (8, 40)  # order K keeps the layout


def test_device_and_host_arrays_do_not_mix():
    with pytest.raises(TypeError, match="numpy.ndarray mixed with cupy arrays"):
        cupy.ones(3) + np.ones(3)
    assert isinstance(cupy.ones(3) + 1.0, cupy.ndarray)
    assert isinstance(cupy.asnumpy(cupy.ones(3)), np.ndarray)
    assert not isinstance(cupy.asnumpy(cupy.ones(3)), cupy.ndarray)


@pytest.mark.parametrize("converter", ["asarray", "array", "asanyarray", "ascontiguousarray", "asfortranarray"])
def test_implicit_conversion_to_numpy_is_refused(converter):
    device = cupy.ones((2, 3))
    with pytest.raises(TypeError, match="implicit conversion"):
        getattr(np, converter)(device)
    assert getattr(np, converter)([1.0, 2.0]).shape == (2,)  # host values convert as before
    assert np.array_equal(cupy.asnumpy(device), np.ones((2, 3)))


def test_compile_errors_are_reported():
    with pytest.raises(cupy.CompileError, match="error"):
        cupy.RawModule(code='extern "C" __global__ void broken() { this is not C++; }')
