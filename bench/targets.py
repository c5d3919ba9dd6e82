"""The CPU speed targets of issues 2 and 3, measured in interleaved rounds.

``fastdrop bench`` times each implementation once per size, one after the other, and divides by
a copy timed earlier. On a shared machine the memory bandwidth drifts by 10-20% from one second to
the next, and so do those ratios. Here every round times the copies (into a preallocated array and
into a fresh one), fastdrop (allocating and with ``out=``), NumPy and PyTorch back to back on the
same arrays, the ratios are taken within the round, and the table gives their median and range
over the rounds. ``backward_bits`` is the backward from packed bits (``keep_bits=True``): its
NumPy row unpacks the bits, and PyTorch, which has no packed mask, is its plain backward.

    .venv/bin/python bench/targets.py [--rounds 7] [--n 2^24] [--json out/targets.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from fastdrop import _bench_impls as impls
from fastdrop._bench_run import machine_info

OPS = ("forward", "backward", "backward_bits", "bias_dropout_add")
IMPLS = ("copy", "copy_alloc", "fastdrop", "fastdrop_out", "numpy", "torch")


def _best_of(run, calls: int) -> float:
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def machine_line() -> str:
    """The machine, library versions, load and date, as one line under a table."""
    info = machine_info("cpu")
    return (f"{info['cpu']}, {info['cores']} cores, numba {info['numba']} ({info['numba_threading_layer']}, "
            f"{info['numba_threads']} threads), numpy {info['numpy']}, torch {info['torch']}, "
            f"OPENBLAS_CORETYPE={info['openblas_coretype']}, load average {info['load_average']}, {info['date']}")


def measure(op: str, n: int, rounds: int, p: float) -> dict:
    prepared = {}
    for impl in IMPLS:
        # PyTorch has no packed-bit mask: a _bits op compares with its plain op.
        workload_op = (impls.COPY_OP if impl.startswith("copy")
                       else op.removesuffix("_bits") if impl == "torch" else op)
        workload = impls.Workload(workload_op, n, "float32", "cpu")
        prepared[impl] = impls.prepare(impl, workload, p)
        prepared[impl].run()  # compile, warm
    # The bytes of the data, not of the mask: a _bits op's 1/8 byte per element is left out.
    moved = impls.bytes_moved(op, n, 4, 0)
    copy_moved = impls.bytes_moved(impls.COPY_OP, n, 4, 0)
    ratios = {key: [] for key in ("copy", "copy_out", "alloc_copy", "numpy", "torch")}
    for _ in range(rounds):
        seconds = {impl: _best_of(prepared[impl].run, 1 if impl in ("numpy", "torch") else 3)
                   for impl in IMPLS}
        copy_gbps = copy_moved / seconds["copy"]
        ratios["copy"].append(moved / seconds["fastdrop"] / copy_gbps)
        ratios["copy_out"].append(moved / seconds["fastdrop_out"] / copy_gbps)
        ratios["alloc_copy"].append(seconds["copy_alloc"] / seconds["fastdrop"] * moved / copy_moved)
        ratios["numpy"].append(seconds["numpy"] / seconds["fastdrop"])
        ratios["torch"].append(seconds["torch"] / seconds["fastdrop"])
    return {key: {"median": statistics.median(values), "min": min(values), "max": max(values)}
            for key, values in ratios.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", default="2^24", help="elements, e.g. 2^24 or 16777216")
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    base, _, power = args.n.partition("^")
    n = int(base) ** int(power) if power else int(base)
    print(f"command: {' '.join(sys.argv)}")
    print(f"{args.rounds} interleaved rounds, n = {n}, float32, p = {args.p}; median [min, max]\n")
    header = ("op", "% of copy", "out= % of copy", "% of alloc. copy", "x NumPy", "x torch")
    print(" | ".join(header))
    results = {}
    for op in OPS:
        r = results[op] = measure(op, n, args.rounds, args.p)
        cells = [f"{100 * r[k]['median']:.0f}% [{100 * r[k]['min']:.0f}, {100 * r[k]['max']:.0f}]"
                 for k in ("copy", "copy_out", "alloc_copy")]
        cells += [f"{r[k]['median']:.1f}x [{r[k]['min']:.1f}, {r[k]['max']:.1f}]" for k in ("numpy", "torch")]
        print(" | ".join([op, *cells]), flush=True)
    print("\n" + machine_line())
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine_info("cpu"), "n": n, "p": args.p, "rounds": args.rounds, "results": results},
                      handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
