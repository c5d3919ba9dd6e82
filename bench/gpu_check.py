"""The one prepared check for a GPU machine: GPU tests, then forward/backward throughput.

    python bench/gpu_check.py [--json PATH] [--sizes 20,24,28] [--repeats 15] [--skip-tests]

Runs ``pytest -m gpu``, then times, for float32, float16 and bfloat16 at 2**20, 2**24 and 2**28
elements: fastdrop's forward and backward (from the seed), torch.nn.functional.dropout's forward
and torch's dropout backward (``aten.native_dropout_backward``), and a device-to-device copy of
the same bytes, all in the same run. Each figure is the median over repeats of CUDA-event time per
call (calls issued back to back after warm-up, so at small sizes it includes the Python call);
GB/s counts the bytes a dropout must move: the input read once and the output written once.
Writes the same numbers as JSON (default $OUT/gpu_check.json when OUT is set).

Needs only the repository copied (it puts the repo root on sys.path) and cupy, torch, numba,
pytest and ml_dtypes installed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

P = 0.1
SEED = 1234


def run_gpu_tests() -> dict:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return {"returncode": result.returncode, "seconds": round(time.perf_counter() - started, 1)}


def _median_ms(run, calls: int, repeats: int, start_event, end_event, synchronize) -> float:
    """Median over repeats of (event time of `calls` back-to-back calls) / calls, in ms."""
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
        times.append(start_event.elapsed_time(end_event) / calls)
    return statistics.median(times)


def measure(dtype_name: str, log2_n: int, repeats: int) -> list[dict]:
    import cupy
    import numpy as np
    import torch

    import fastdrop

    n = 2**log2_n
    if dtype_name == "bfloat16":
        import ml_dtypes

        cupy_dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        cupy_dtype = np.dtype(dtype_name)
    torch_dtype = getattr(torch, dtype_name)
    calls = max(1, 2**24 // n)  # enough back-to-back calls to swamp event resolution
    nbytes = n * cupy_dtype.itemsize
    moved = 2 * nbytes  # read the input once, write the output once

    x = cupy.random.standard_normal(n, dtype=np.float32).astype(cupy_dtype)
    y = cupy.empty_like(x)
    dy = cupy.ones_like(x)
    dx = cupy.empty_like(x)
    _, mask = fastdrop.dropout(x, P, seed=SEED, out=y)

    cupy_events = (cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.Device().synchronize)
    results = {}
    results["copy"] = _median_ms(
        lambda: y.data.copy_from_device_async(x.data, nbytes), calls, repeats, *cupy_events)
    results["fastdrop forward"] = _median_ms(
        lambda: fastdrop.dropout(x, P, seed=SEED, out=y), calls, repeats, *cupy_events)
    results["fastdrop forward, offset 3"] = _median_ms(
        lambda: fastdrop.dropout(x, P, seed=SEED, offset=3, out=y), calls, repeats, *cupy_events)
    results["fastdrop backward"] = _median_ms(
        lambda: fastdrop.dropout_backward(dy, mask, out=dx), calls, repeats, *cupy_events)
    del x, y, dy, dx
    cupy.get_default_memory_pool().free_all_blocks()

    tx = torch.randn(n, device="cuda", dtype=torch.float32).to(torch_dtype)
    tdy = torch.ones_like(tx)
    _, tmask = torch.ops.aten.native_dropout(tx, P, True)
    torch_events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),
                    torch.cuda.synchronize)
    results["torch forward"] = _median_ms(
        lambda: torch.nn.functional.dropout(tx, P, training=True), calls, repeats, *torch_events)
    results["torch backward"] = _median_ms(
        lambda: torch.ops.aten.native_dropout_backward(tdy, tmask, 1.0 / (1.0 - P)),
        calls, repeats, *torch_events)
    del tx, tdy, tmask
    torch.cuda.empty_cache()

    rows = []
    for name, ms in results.items():
        rows.append({
            "dtype": dtype_name, "log2_n": log2_n, "what": name, "ms": ms,
            "GB/s": moved / (ms * 1e-3) / 1e9,
            "of copy": results["copy"] / ms,
            "vs torch": (results["torch backward"] if "backward" in name else results["torch forward"]) / ms,
        })
    return rows


def device_description() -> dict:
    import cupy

    properties = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    return {
        "gpu": properties["name"].decode() if isinstance(properties["name"], bytes) else properties["name"],
        "sm_count": properties["multiProcessorCount"],
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cupy": cupy.__version__,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_json = str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else None
    parser.add_argument("--json", default=default_json, help="where to write the results as JSON")
    parser.add_argument("--sizes", default="20,24,28", help="log2 of the element counts")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--skip-tests", action="store_true", help="only the throughput table")
    args = parser.parse_args(argv)

    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "host": platform.node(), "p": P}
    report["tests"] = None if args.skip_tests else run_gpu_tests()

    import torch

    report["device"] = device_description()
    report["torch"] = torch.__version__
    rows = []
    print(f"\n{report['device']['gpu']}, p = {P}; GB/s = (input + output bytes) / time")
    print(f"{'dtype':<9} {'n':>5} {'what':<28} {'ms':>9} {'GB/s':>8} {'of copy':>8} {'vs torch':>8}")
    for dtype_name in args.dtypes.split(","):
        for log2_n in (int(s) for s in args.sizes.split(",")):
            for row in measure(dtype_name, log2_n, args.repeats):
                rows.append(row)
                print(f"{row['dtype']:<9} 2^{row['log2_n']:<3} {row['what']:<28} {row['ms']:>9.4f} "
                      f"{row['GB/s']:>8.1f} {row['of copy']:>8.3f} {row['vs torch']:>8.3f}")
    report["rows"] = rows
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0 if report["tests"] is None or report["tests"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
