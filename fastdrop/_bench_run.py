"""Measuring: the grid, the clocks, peak memory, machine facts, and one run over the grid.

Timing rules: every implementation is called once untimed (JIT compilation, allocator and thread
pool start-up), then timed in samples of ``inner`` back-to-back calls long enough to dwarf the
clock's resolution; the figure is the best sample (``seconds``) with the median beside it. GPU
samples are bracketed by CUDA events and synchronised. The copy roofline is measured in the same
run, at the same (n, dtype), before the implementations, and every result carries its GB/s.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from fastdrop import _bench_impls as impls

CPU_QUICK_SIZES = (1 << 12, 1 << 20, 1 << 24)
CPU_FULL_SIZES = tuple(1 << k for k in range(10, 27, 2))
GPU_QUICK_SIZES = (1 << 20, 1 << 24, 1 << 28)
GPU_FULL_SIZES = tuple(1 << k for k in range(10, 29, 2))
CPU_DTYPES = ("float32", "float64")
GPU_DTYPES = ("float32", "float16", "bfloat16")

#: Shortest timed sample (seconds): small sizes repeat the call inside one sample.
MIN_SAMPLE_SECONDS = {"cpu": 2e-3, "gpu": 1e-3}
MIN_REPEATS = 3
MAX_REPEATS = 30


@dataclass
class Settings:
    device: str = "cpu"
    ops: tuple = impls.DEFAULT_OPS
    sizes: tuple = CPU_QUICK_SIZES
    dtypes: tuple = ("float32",)
    impls: tuple | None = None  # None: every implementation of the device
    p: float = 0.1
    seconds_per_case: float = 0.4  # timing budget of one (op, impl, n, dtype) beyond its minimum
    measure_memory: bool = True
    progress: bool = True

    def implementations(self) -> tuple:
        names = impls.GPU_IMPLS if self.device == "gpu" else impls.CPU_IMPLS
        return names if self.impls is None else tuple(name for name in names if name in self.impls)


@dataclass
class Task:
    op: str
    impl: str
    n: int
    dtype: str


@dataclass
class Outcome:
    results: list = field(default_factory=list)
    skipped: list = field(default_factory=list)


def plan(settings: Settings) -> list[Task]:
    """Per (dtype, n): the copies first, then each op's implementations; PyTorch's calls go last in
    each block, so that its OpenMP threads, which spin after each call, never sit beside another
    library's timed work."""
    tasks = []
    for dtype in settings.dtypes:
        for n in settings.sizes:
            tasks += [Task(impls.COPY_OP, name, n, dtype) for name in impls.COPY_IMPLS[settings.device]]
            block = [Task(op, name, n, dtype) for op in settings.ops for name in settings.implementations()
                     if impls.applies(name, op, n)]
            tasks += sorted(block, key=lambda task: task.impl == "torch")
    return tasks


# --- clocks ------------------------------------------------------------------------------------


class CpuClock:
    def sample(self, run, inner: int) -> float:
        started = time.perf_counter()
        for _ in range(inner):
            run()
        return (time.perf_counter() - started) / inner


class CupyClock:
    """CUDA events on CuPy's current stream (the legacy default stream, which torch shares)."""

    def __init__(self):
        import cupy

        self._cupy = cupy

    def sample(self, run, inner: int) -> float:
        cupy = self._cupy
        cupy.cuda.Device().synchronize()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(inner):
            run()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3 / inner


class TorchClock:
    def __init__(self):
        import torch

        self._torch = torch

    def sample(self, run, inner: int) -> float:
        cuda = self._torch.cuda
        cuda.synchronize()
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner


def clock_for(impl: str, device: str):
    if device == "cpu":
        return CpuClock()
    return TorchClock() if impl == "torch" else CupyClock()


def time_calls(run, clock, *, min_sample: float, budget: float, warmed: bool = False) -> dict:
    """Best and median seconds per call, after one untimed warm-up call (unless ``warmed``). The
    first sample, of one call, sizes the others; it counts when it is already long enough."""
    if not warmed:
        clock.sample(run, 1)  # compilation, first touch of pages, thread pools
    once = max(clock.sample(run, 1), 1e-9)
    inner = max(1, int(min_sample / once))
    samples = [once] if inner == 1 else []
    started = time.perf_counter()
    # Sample until the budget is spent (a count estimated from one call can be far off on a busy
    # machine, where the same call takes 0.1 ms or 10 ms).
    while len(samples) < MAX_REPEATS and (len(samples) < MIN_REPEATS or time.perf_counter() - started < budget):
        samples.append(clock.sample(run, inner))
    return {"seconds": min(samples), "seconds_median": statistics.median(samples),
            "repeats": len(samples), "inner_loops": inner}


# --- peak memory of one call -------------------------------------------------------------------


def peak_extra_bytes(impl: str, device: str, run) -> tuple[int | None, str]:
    """Peak memory one call allocates beyond what existed before it (its output included)."""
    gc.collect()
    if device == "cpu" and impl != "torch":
        return _tracemalloc_peak(run), "tracemalloc"
    if device == "cpu":
        return _torch_profiler_peak(run), "torch.profiler"
    if impl == "torch":
        return _torch_cuda_peak(run), "torch.cuda.max_memory_allocated"
    return _cupy_pool_peak(run), "cupy memory hook"


def _tracemalloc_peak(run) -> int:
    # NumPy reports its data buffers to tracemalloc; Numba's small per-task scratch does not show.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result
    return peak - before


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints start/stop lines straight to file descriptor 2; hide them for one call."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _torch_profiler_peak(run) -> int | None:
    """Peak of PyTorch's own CPU allocation record: allocations are charged to the op that made
    them (at its start), frees come as '[memory]' events; the running sum's maximum is the peak."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = run()
        del result
    changes = sorted(
        (event.time_range.start, event.self_cpu_memory_usage)
        for event in profiler.events()
        if event.self_cpu_memory_usage
    )
    current = peak = 0
    for _, change in changes:
        current += change
        peak = max(peak, current)
    return peak


def _torch_cuda_peak(run) -> int:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del result
    return peak - before


def _cupy_pool_peak(run) -> int:
    from cupy.cuda import memory_hook

    class PeakHook(memory_hook.MemoryHook):
        name = "FastdropBenchPeak"

        def __init__(self):
            self.current = self.peak = 0

        def malloc_postprocess(self, **kwargs):
            self.current += kwargs["mem_size"]
            self.peak = max(self.peak, self.current)

        def free_postprocess(self, **kwargs):
            self.current -= kwargs["mem_size"]

    hook = PeakHook()
    with hook:
        result = run()
        peak = hook.peak
    del result
    return peak


# --- machine facts -----------------------------------------------------------------------------


def _cpu_facts() -> tuple[str, bool]:
    """The CPU's model name and whether it has AVX-512 (the Philox lanes vectorise with it)."""
    model, avx512 = None, False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    avx512 = "avx512f" in line.split()
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), avx512


def _llvm_cpu_name() -> str | None:
    """The CPU Numba compiles for (e.g. 'znver2', 'skylake-avx512')."""
    try:
        import llvmlite.binding

        return llvmlite.binding.get_host_cpu_name()
    except Exception:  # noqa: BLE001 - a fact, not a requirement
        return None


def _version(module_name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module_name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str) -> dict:
    """What the numbers depend on. Call after a parallel Numba kernel ran (threading layer)."""
    import numba

    import fastdrop

    try:
        threading_layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        threading_layer = None
    cpu, avx512 = _cpu_facts()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "avx512": avx512,
        "llvm_cpu": _llvm_cpu_name(),
        "cores": os.cpu_count(),
        # Set on the project's machine; recorded beside every timing because it picks OpenBLAS's
        # kernels (PyTorch's and NumPy's BLAS), and so may move their numbers.
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "numba_threading_layer": threading_layer,
        "numba_threads": numba.get_num_threads(),
        "load_average": [round(value, 2) for value in os.getloadavg()],  # at the end of the run
        "python": platform.python_version(),
        "fastdrop": fastdrop.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": _version("torch"),
        "cupy": next(filter(None, (_version(name) for name in ("cupy", "cupy-cuda12x", "cupy-cuda13x"))), None),
        "env": {name: os.environ.get(name) for name in (
            "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS",
            "OMP_WAIT_POLICY") if os.environ.get(name) is not None},
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    if device == "gpu":
        info["gpu"] = _gpu_info()
    return info


def _gpu_info() -> dict:
    try:
        import cupy

        properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return {"name": properties["name"].decode(), "memory_bytes": properties["totalGlobalMem"],
                "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                "driver": cupy.cuda.runtime.driverGetVersion()}
    except Exception as error:  # noqa: BLE001 - facts only; never fail the run for them
        return {"error": str(error)}


class NoDevice(RuntimeError):
    """The requested device cannot run here."""


def check_device(device: str) -> None:
    """NoDevice with the reason when the GPU grid cannot run here."""
    if device != "gpu":
        return
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # noqa: BLE001 - any failure means: no usable GPU
        raise NoDevice(f"--device gpu needs CuPy and a CUDA GPU: {error}") from None
    if count == 0:
        raise NoDevice("--device gpu: CuPy sees no CUDA device")


# --- one run -----------------------------------------------------------------------------------


def warm_up(settings: Settings) -> None:
    """Compile (or load from cache) every Numba kernel the grid uses, on tiny arrays, untimed."""
    for dtype in settings.dtypes:
        if {"fastdrop", "fastdrop_out"} & set(settings.implementations()):
            for op in settings.ops:
                with contextlib.suppress(impls.Unavailable):
                    impls.prepare("fastdrop", impls.Workload(op, 1 << 10, dtype, settings.device), settings.p).run()
        if settings.device == "cpu":
            impls.prepare("copy", impls.Workload(impls.COPY_OP, 1 << 10, dtype, "cpu"), settings.p).run()


def run(settings: Settings) -> dict:
    """Measure the grid: ``{"machine", "settings", "results", "skipped"}``."""
    check_device(settings.device)
    load_before = [round(value, 2) for value in os.getloadavg()]
    tasks = plan(settings)
    bar = _progress(len(tasks), settings.progress)
    bar.set_description("warm-up (JIT)")
    warm_up(settings)
    # Peak memory scales with n: one call at the largest size each implementation runs says it
    # (and PyTorch's profiler, which measures it, costs a fraction of a second per call).
    largest = {}
    for task in tasks:
        key = (task.op, task.impl, task.dtype)
        largest[key] = max(largest.get(key, 0), task.n)
    outcome, copy_gbps = Outcome(), {}
    arrays_key, arrays = None, {}
    for task in tasks:
        bar.set_description(f"{task.op} {task.impl} 2^{task.n.bit_length() - 1} {task.dtype}")
        if (task.n, task.dtype) != arrays_key:  # tasks come grouped by (dtype, n)
            arrays_key, arrays = (task.n, task.dtype), {}
        with_memory = settings.measure_memory and task.n == largest[(task.op, task.impl, task.dtype)]
        result = _measure(task, settings, arrays, outcome, with_memory)
        if result is not None:
            if task.impl == "copy":
                copy_gbps[(task.n, task.dtype)] = result["gbps"]
            result["copy_gbps"] = copy_gbps.get((task.n, task.dtype))
            result["copy_ratio"] = result["gbps"] / result["copy_gbps"] if result["copy_gbps"] else None
            outcome.results.append(result)
        bar.update()
    bar.close()
    return {
        "machine": {**machine_info(settings.device), "load_average_start": load_before},
        "settings": {"device": settings.device, "p": settings.p, "ops": list(settings.ops),
                     "sizes": list(settings.sizes), "dtypes": list(settings.dtypes)},
        "results": outcome.results,
        "skipped": _unique(outcome.skipped),
    }


def _measure(task: Task, settings: Settings, shared: dict, outcome: Outcome, with_memory: bool) -> dict | None:
    workload = impls.Workload(task.op, task.n, task.dtype, settings.device, arrays=shared)
    try:
        prepared = impls.prepare(task.impl, workload, settings.p)
        timing = time_calls(
            prepared.run, clock_for(task.impl, settings.device), warmed=prepared.warmed,
            min_sample=MIN_SAMPLE_SECONDS[settings.device], budget=settings.seconds_per_case,
        )
        peak, method = (None, None)
        if with_memory and task.op != impls.COPY_OP:
            peak, method = peak_extra_bytes(task.impl, settings.device, prepared.run)
    except impls.Unavailable as reason:
        outcome.skipped.append({"op": task.op, "impl": task.impl, "dtype": task.dtype, "reason": str(reason)})
        return None
    except Exception as error:  # noqa: BLE001 - one failing row is reported; the others still run
        if task.impl == "copy":
            raise  # every ratio needs the roofline
        outcome.skipped.append({"op": task.op, "impl": task.impl, "dtype": task.dtype,
                                "reason": f"FAILED: {type(error).__name__}: {error}"})
        return None
    itemsize = impls.ITEMSIZE[task.dtype]
    moved = impls.bytes_moved(task.op, task.n, itemsize, prepared.mask_bytes)
    return {
        "op": task.op, "impl": task.impl, "n": task.n, "dtype": task.dtype, "device": settings.device,
        "shape": list(workload.geometry["shape"]), **timing,
        "bytes": moved, "gbps": moved / timing["seconds"] / 1e9,
        "mask_bytes": prepared.mask_bytes, "mask_bytes_per_element": prepared.mask_bytes / task.n,
        "peak_extra_bytes": peak, "peak_extra_per_input_byte": None if peak is None else peak / (task.n * itemsize),
        "peak_method": method, "note": prepared.note,
    }


def _unique(skipped: list) -> list:
    seen, unique = set(), []
    for entry in skipped:
        key = (entry["op"], entry["impl"], entry["dtype"], entry["reason"])
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


class _NoBar:
    def set_description(self, text):
        pass

    def update(self):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="case", file=sys.stderr, leave=False, dynamic_ncols=True)
