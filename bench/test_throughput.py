"""Throughput of every op x implementation x size x dtype, beside a copy of the same array.

Each benchmark records in ``extra_info``: the bytes its operation must move (mask bytes included
where the implementation stores one), its GB/s at the best round, the copy's GB/s at the same
(n, dtype) in this session, and the ratio of the two. Grouped by (op, n, dtype), so that
pytest-benchmark's table shows the implementations side by side.
"""

from __future__ import annotations

import pytest

from fastdrop import _bench_impls as impls
from fastdrop import _bench_run as bench_run

P = 0.1
#: A round lasts at least this long (seconds); small sizes repeat the call inside a round.
MIN_ROUND_SECONDS = 2e-3
ROUNDS = 7


def _synchronised(run, device: str):
    """Wall-clock timing of GPU work needs the device to finish each call."""
    if device != "gpu":
        return run
    import cupy

    def run_and_wait():
        run()
        cupy.cuda.Device().synchronize()

    return run_and_wait


def _benchmark(benchmark, prepared, op, n, dtype, device, copy_gbps):
    run = _synchronised(prepared.run, device)
    once = bench_run.time_calls(run, bench_run.CpuClock(), min_sample=0.0, budget=0.0)["seconds"]
    iterations = max(1, int(MIN_ROUND_SECONDS / max(once, 1e-9)))
    benchmark.group = f"{op} 2^{n.bit_length() - 1} {dtype}"
    benchmark.pedantic(run, rounds=ROUNDS, iterations=iterations, warmup_rounds=1)
    seconds = benchmark.stats.stats.min
    itemsize = impls.ITEMSIZE[dtype]
    moved = impls.bytes_moved(op, n, itemsize, prepared.mask_bytes)
    roofline = copy_gbps(n, dtype)
    benchmark.extra_info.update({
        "bytes": moved, "gbps": moved / seconds / 1e9, "copy_gbps": roofline,
        "copy_ratio": moved / seconds / 1e9 / roofline, "mask_bytes_per_element": prepared.mask_bytes / n,
        "device": device, "note": prepared.note,
    })


def test_throughput(benchmark, case, device, warmed_up, arrays, copy_gbps):
    op, impl, n, dtype = case
    try:
        prepared = impls.prepare(impl, arrays.workload(op, n, dtype, device), P)
    except impls.Unavailable as reason:
        pytest.skip(str(reason))
    _benchmark(benchmark, prepared, op, n, dtype, device, copy_gbps)


def test_copy(benchmark, copy_case, device, warmed_up, arrays, copy_gbps):
    impl, n, dtype = copy_case
    prepared = impls.prepare(impl, arrays.workload(impls.COPY_OP, n, dtype, device), P)
    _benchmark(benchmark, prepared, impls.COPY_OP, n, dtype, device, copy_gbps)
