"""The one prepared check for a GPU machine: GPU tests, then forward/backward throughput.

    python bench/gpu_check.py [--json PATH] [--sizes 20,24,28] [--repeats 15] [--skip-tests]

(With ``PYTHONPATH=tests/cuda_emulator`` it runs on the CPU emulator instead of CuPy: a dry run of
this script, tests included, whose timings mean nothing; tests/test_cuda_emulated.py does that.)

Runs ``pytest -m gpu`` (in a subprocess, with a time limit, its log written next to the JSON), then
times, for float32, float16 and bfloat16 at 2**20, 2**24 and 2**28 elements: a device-to-device
copy of the same bytes, torch.nn.functional.dropout's forward and torch's dropout backward
(``aten.native_dropout_backward``), and fastdrop's forward and backward (from the seed), all in the
same run. Each figure is the median over repeats of CUDA-event time per call (calls issued back
to back after warm-up, so at small sizes it includes the Python call); GB/s counts the bytes a
dropout must move: the input read once and the output written once (bias-dropout-add: x and the
residual read, y written, and its bias row), and "of copy" is GB/s over the copy's GB/s. Besides
the forward (offsets 0 and 3) and backward: a channel mask (rows of 256 share a draw) and a view
one element into its allocation (the rows kernels), feature maps stored channels last (64
channels, the columns kernels), and bias-dropout-add (rows of 1024). Writes
the same numbers as JSON (default $OUT/gpu_check.json when OUT is set, else
out/gpu_check.json), rewritten after
every row, so a crash or a time-out still leaves everything measured until then. A failing test
or measurement is recorded and the rest still runs.

Needs only the repository copied (it puts the repo root on sys.path) and cupy, torch, numba and
pytest installed; bfloat16 also needs ml_dtypes (skipped, and said so, without it).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

P = 0.1
SEED = 1234
#: Test modules that need a package a bare GPU machine may lack; they hold no GPU tests.
OPTIONAL_TEST_MODULES = {"hypothesis": "tests/test_properties.py", "scipy": "tests/test_statistics.py"}


def run_gpu_tests(log_path: Path, timeout_s: float) -> dict:
    """``pytest -m gpu`` in a subprocess; the full log goes to ``log_path``, a summary back."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "--tb=short",
               "-p", "no:cacheprovider", "--continue-on-collection-errors",
               # CuPy warns at import when it cannot find the CUDA toolkit; the ini turns warnings
               # into errors, which would fail the collection of every GPU test module.
               "-W", "ignore::UserWarning:cupy._environment"]
    for module, path in OPTIONAL_TEST_MODULES.items():
        if importlib.util.find_spec(module) is None:
            command.append(f"--ignore={path}")
    command.append("tests")
    started = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    timed_out = False
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        try:
            returncode = subprocess.run(
                command, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(
                    [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])},
                stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
            ).returncode
        except subprocess.TimeoutExpired:
            returncode, timed_out = None, True
    text = log_path.read_text(errors="replace")
    lines = text.splitlines()
    summary = next((line.strip("= ") for line in reversed(lines)
                    if re.search(r"\d+ (passed|failed|error|skipped|deselected)", line)), None)
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    print("\n".join(lines[-40:]) if returncode != 0 else (summary or ""))
    if timed_out:
        print(f"GPU tests stopped after {timeout_s:.0f} s (see {log_path})")
    return {"returncode": returncode, "timed_out": timed_out, "summary": summary,
            "failed": failed[:300], "failed_count": len(failed),
            "seconds": round(time.perf_counter() - started, 1), "log": str(log_path)}


def _median_ms(run, calls: int, repeats: int, start_event, end_event, synchronize, elapsed) -> float:
    """Median over repeats of (event time of `calls` back-to-back calls) / calls, in ms.

    ``elapsed(start, end)`` is the library's milliseconds between two recorded events: CuPy's
    events have no method for it (``cupy.cuda.get_elapsed_time``), torch's do."""
    for _ in range(3):
        run()
    synchronize()
    times = []
    for _ in range(repeats):
        start_event.record()
        for _ in range(calls):
            run()
        end_event.record()
        end_event.synchronize()
        times.append(elapsed(start_event, end_event) / calls)
    return statistics.median(times)


def _cupy_input(cupy, np, dtype, n: int):
    """Standard normal values of ``dtype`` and ones, made from raw bits for bfloat16 so that no
    CuPy bfloat16 arithmetic is needed."""
    x32 = cupy.random.standard_normal(n, dtype=np.float32)
    if dtype.name == "bfloat16":
        x = (x32.view(np.uint32) >> 16).astype(np.uint16).view(dtype)  # truncation: fine for timing
        ones = cupy.full(n, 0x3F80, dtype=np.uint16).view(dtype)
    else:
        x = x32.astype(dtype)
        ones = cupy.ones(n, dtype=dtype)
    del x32
    return x, ones


def measure(dtype_name: str, log2_n: int, repeats: int, calls: int | None = None) -> tuple[list[dict], list[str]]:
    """Rows of the table for one dtype and size, and the errors met (each timing on its own)."""
    import cupy
    import numpy as np

    import fastdrop

    n = 2**log2_n
    if dtype_name == "bfloat16":
        import ml_dtypes

        cupy_dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        cupy_dtype = np.dtype(dtype_name)
    if calls is None:
        calls = max(1, 2**24 // n)  # enough back-to-back calls to swamp event resolution
    nbytes = n * cupy_dtype.itemsize
    moved = 2 * nbytes  # read the input once, write the output once
    results: dict[str, float] = {}
    moved_by: dict[str, int] = {}  # bytes a row moves where not `moved`
    errors: list[str] = []

    def timed(name, run, events):
        try:
            results[name] = _median_ms(run, calls, repeats, *events)
        except Exception as error:  # recorded; the next timing still runs
            errors.append(f"{dtype_name} 2^{log2_n} {name}: {type(error).__name__}: {error}")
            traceback.print_exc()

    # torch first: its numbers stay valid even if a fastdrop kernel later breaks the context.
    try:
        import torch

        torch_dtype = getattr(torch, dtype_name)
        tx = torch.randn(n, device="cuda", dtype=torch.float32).to(torch_dtype)
        tdy = torch.ones_like(tx)
        _, tmask = torch.ops.aten.native_dropout(tx, P, True)
        torch_events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),
                        torch.cuda.synchronize, lambda start, end: start.elapsed_time(end))
        timed("torch forward", lambda: torch.nn.functional.dropout(tx, P, training=True), torch_events)
        timed("torch backward",
              lambda: torch.ops.aten.native_dropout_backward(tdy, tmask, 1.0 / (1.0 - P)), torch_events)
        del tx, tdy, tmask
        torch.cuda.empty_cache()
    except Exception as error:
        errors.append(f"{dtype_name} 2^{log2_n} torch: {type(error).__name__}: {error}")
        traceback.print_exc()

    try:
        x, dy = _cupy_input(cupy, np, cupy_dtype, n)
        y = cupy.empty_like(x)
        dx = cupy.empty_like(x)
        cupy_events = (cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.Device().synchronize,
                       cupy.cuda.get_elapsed_time)
        timed("copy", lambda: y.data.copy_from_device_async(x.data, nbytes), cupy_events)
        _, mask = fastdrop.dropout(x, P, seed=SEED, out=y)
        timed("fastdrop forward", lambda: fastdrop.dropout(x, P, seed=SEED, out=y), cupy_events)
        timed("fastdrop forward, offset 3",
              lambda: fastdrop.dropout(x, P, seed=SEED, offset=3, out=y), cupy_events)
        timed("fastdrop backward", lambda: fastdrop.dropout_backward(dy, mask, out=dx), cupy_events)
        # The rows kernels: a channel mask (rows of 256 share a draw), and a view one element
        # into its allocation (too misaligned for the contiguous kernels).
        row = min(n, 256)
        rows, rows_out = x.reshape(-1, row), y.reshape(-1, row)
        timed("fastdrop channel mask", lambda: fastdrop.dropout(
            rows, P, seed=SEED, mask_shape=(rows.shape[0], 1), out=rows_out), cupy_events)
        shifted = cupy.empty(n + 1, dtype=cupy_dtype)
        unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[cupy_dtype.itemsize]
        shifted.view(unsigned)[1:] = x.view(unsigned)  # raw bits: no CuPy bfloat16 arithmetic
        timed("fastdrop forward, one element in",
              lambda: fastdrop.dropout(shifted[1:], P, seed=SEED, out=y), cupy_events)
        del shifted
        # The columns kernels: feature maps (N, C, H*W) stored channels last, C = 64 fastest.
        channels = min(n, 64)
        spatial = min(n // channels, 256)
        maps = x.reshape(-1, spatial, channels).transpose(0, 2, 1)
        maps_out = y.reshape(-1, spatial, channels).transpose(0, 2, 1)
        timed("fastdrop forward, channels last",
              lambda: fastdrop.dropout(maps, P, seed=SEED, out=maps_out), cupy_events)
        del maps, maps_out
        # Bias-dropout-add (issue 3): reads x and the residual, writes y (and a row of bias).
        width = min(n, 1024)
        matrix, residual, out = x.reshape(-1, width), dy.reshape(-1, width), y.reshape(-1, width)
        bias = dy[:width]
        timed("fastdrop bias-dropout-add", lambda: fastdrop.bias_dropout_add(
            matrix, bias, residual, P, seed=SEED, out=out), cupy_events)
        moved_by["fastdrop bias-dropout-add"] = 3 * nbytes + width * cupy_dtype.itemsize
        del x, y, dy, dx, rows, rows_out, matrix, residual, out, bias
        cupy.get_default_memory_pool().free_all_blocks()
    except Exception as error:
        errors.append(f"{dtype_name} 2^{log2_n} cupy: {type(error).__name__}: {error}")
        traceback.print_exc()

    rows = []
    copy = results.get("copy")
    copy_gbps = moved / (copy * 1e-3) / 1e9 if copy else None
    for name, ms in results.items():
        baseline = {"fastdrop forward": "torch forward", "fastdrop forward, offset 3": "torch forward",
                    "fastdrop backward": "torch backward"}.get(name)
        baseline = results.get(baseline) if baseline else None
        gbps = moved_by.get(name, moved) / (ms * 1e-3) / 1e9
        rows.append({
            "dtype": dtype_name, "log2_n": log2_n, "what": name, "ms": ms, "GB/s": gbps,
            "of copy": gbps / copy_gbps if copy_gbps else None,  # byte rates: a roofline share
            "vs torch": baseline / ms if baseline else None,
        })
    return rows, errors


def device_description() -> dict:
    import cupy

    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return {
        "gpu": properties["name"].decode() if isinstance(properties["name"], bytes) else properties["name"],
        "sm_count": properties["multiProcessorCount"],
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cupy": cupy.__version__,
    }


def _ratio(value) -> str:
    return f"{value:>8.3f}" if value is not None else f"{'-':>8}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "out"  # /out/ is git-ignored
    parser.add_argument("--json", default=str(out_dir / "gpu_check.json"),
                        help="where to write the results as JSON (the test log goes beside it)")
    parser.add_argument("--sizes", default="20,24,28", help="log2 of the element counts")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=None,
                        help="back-to-back calls per timing (default 2**24 / n, at least 1)")
    parser.add_argument("--skip-tests", action="store_true", help="only the throughput table")
    parser.add_argument("--test-timeout", type=float, default=200.0,
                        help="seconds the GPU tests may take before they are stopped")
    args = parser.parse_args(argv)
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)

    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "p": P, "tests": None, "device": None, "rows": [],
              "errors": [], "skipped": []}

    def save():
        json_path.write_text(json.dumps(report, indent=2))

    save()
    if not args.skip_tests:
        report["tests"] = run_gpu_tests(json_path.with_name("gpu_tests.log"), args.test_timeout)
        save()

    try:
        report["device"] = device_description()
    except Exception as error:
        report["errors"].append(f"device: {type(error).__name__}: {error}")
        report["device"] = {"gpu": "unknown"}
    try:
        import torch

        report["torch"] = torch.__version__
    except Exception as error:
        report["errors"].append(f"torch: {type(error).__name__}: {error}")
    save()

    print(f"\n{report['device']['gpu']}, p = {P}; GB/s = bytes moved / time (input + output; "
          "bias-dropout-add: x, residual, bias row and output)")
    print(f"{'dtype':<9} {'n':>5} {'what':<32} {'ms':>9} {'GB/s':>8} {'of copy':>8} {'vs torch':>8}")
    for dtype_name in args.dtypes.split(","):
        if dtype_name == "bfloat16" and importlib.util.find_spec("ml_dtypes") is None:
            report["skipped"].append("bfloat16: ml_dtypes is not installed (CuPy needs it for bfloat16)")
            print(report["skipped"][-1])
            continue
        for log2_n in (int(s) for s in args.sizes.split(",")):
            try:
                rows, errors = measure(dtype_name, log2_n, args.repeats, args.calls)
            except Exception as error:
                rows, errors = [], [f"{dtype_name} 2^{log2_n}: {type(error).__name__}: {error}"]
                traceback.print_exc()
            for row in rows:
                report["rows"].append(row)
                print(f"{row['dtype']:<9} 2^{row['log2_n']:<3} {row['what']:<32} {row['ms']:>9.4f} "
                      f"{row['GB/s']:>8.1f} {_ratio(row['of copy'])} {_ratio(row['vs torch'])}")
            for error in errors:
                print(f"ERROR {error}")
            report["errors"] += errors
            save()
    print(f"wrote {json_path}")
    if report["tests"] is not None:
        print(f"GPU tests: {report['tests']['summary']} (log: {report['tests']['log']})")
    failed = report["errors"] or (report["tests"] is not None and report["tests"]["returncode"] != 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
