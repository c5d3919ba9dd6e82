"""CPU speed of alpha dropout and Gaussian dropout against NumPy, PyTorch and a copy, interleaved.

Each round times, back to back on the same arrays: a parallel copy into a preallocated array (the
roofline), fastdrop with ``out=``, fastdrop allocating, idiomatic NumPy and PyTorch; ratios are
taken within the round and the table gives their median and range (see bench/targets.py for why).

    NumPy alpha:      a * where(rng.random(shape) >= p, x, alpha') + b
    PyTorch alpha:    torch.nn.functional.alpha_dropout(x, p, training=True)
    NumPy Gaussian:   x * rng.normal(1, sigma, shape)
    PyTorch Gaussian: x * (1 + sigma * torch.randn_like(x))   (PyTorch has no Gaussian dropout)

    .venv/bin/python bench/variants_speed.py [--rounds 5] [--sizes 2^12,2^16,2^20,2^24]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np

import fastdrop
from fastdrop import _bench_impls as impls
from fastdrop import reference
from fastdrop._bench_run import machine_info

ALPHA_PRIME = -1.7580993408473766


def _size(text: str) -> int:
    base, _, power = text.partition("^")
    return int(base) ** int(power) if power else int(base)


def _best_of(run, seconds: float = 0.05, at_most: int = 200) -> float:
    run()
    best, spent, calls = float("inf"), 0.0, 0
    while calls < 3 or (spent < seconds and calls < at_most):
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
    return best


def contenders(op: str, x: np.ndarray, p: float) -> dict:
    import torch
    import torch.nn.functional as functional

    rng = np.random.default_rng(0)
    out = np.empty_like(x)
    words = x.view(np.uint32)
    copy_out = np.empty_like(words)
    tensor = torch.from_numpy(x)
    runs = {"copy": lambda: impls.parallel_copy(words, copy_out)}
    if op == "alpha":
        a, b, _ = reference.alpha_dropout_affine(p)
        runs["fastdrop_out"] = lambda: fastdrop.alpha_dropout(x, p, seed=1, out=out)
        runs["fastdrop"] = lambda: fastdrop.alpha_dropout(x, p, seed=1)
        runs["numpy"] = lambda: a * np.where(rng.random(x.shape) >= p, x, ALPHA_PRIME) + b
        runs["torch"] = lambda: functional.alpha_dropout(tensor, p, training=True)
    else:
        sigma = math.sqrt(p / (1 - p))
        runs["fastdrop_out"] = lambda: fastdrop.gaussian_dropout(x, p, seed=1, out=out)
        runs["fastdrop"] = lambda: fastdrop.gaussian_dropout(x, p, seed=1)
        runs["numpy"] = lambda: x * rng.normal(1.0, sigma, x.shape)
        runs["torch"] = lambda: tensor * (1 + sigma * torch.randn_like(tensor))
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="2^12,2^16,2^20,2^24")
    parser.add_argument("--p", type=float, default=0.1)
    args = parser.parse_args(argv)
    print(f"command: {' '.join(sys.argv)}")
    print(f"{args.rounds} interleaved rounds, float32, p = {args.p}; median [min, max]\n")
    print("op | n | fastdrop out= ns/element | out= % of copy | x NumPy | x torch")
    print("(x NumPy and x torch: time ratios of allocating calls)")
    for op in ("alpha", "gaussian"):
        for text in args.sizes.split(","):
            n = _size(text)
            x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
            runs = contenders(op, x, args.p)
            seen = {key: [] for key in ("ns", "copy", "numpy", "torch")}
            for _ in range(args.rounds):
                seconds = {name: _best_of(run) for name, run in runs.items()}
                seen["ns"].append(seconds["fastdrop_out"] / n * 1e9)
                seen["copy"].append(100 * seconds["copy"] / seconds["fastdrop_out"])
                seen["numpy"].append(seconds["numpy"] / seconds["fastdrop"])
                seen["torch"].append(seconds["torch"] / seconds["fastdrop"])
            cells = [f"{statistics.median(v):.2f} [{min(v):.2f}, {max(v):.2f}]" for v in (seen["ns"],)]
            cells += [f"{statistics.median(seen['copy']):.0f}% [{min(seen['copy']):.0f}, {max(seen['copy']):.0f}]"]
            cells += [f"{statistics.median(v):.1f}x [{min(v):.1f}, {max(v):.1f}]" for v in (seen["numpy"], seen["torch"])]
            print(" | ".join([op, text, *cells]), flush=True)
    info = machine_info("cpu")
    print(f"\n{info['cpu']}, {info['cores']} cores, numba {info['numba']} ({info['numba_threads']} threads), "
          f"numpy {info['numpy']}, torch {info['torch']}, OPENBLAS_CORETYPE={info['openblas_coretype']}, "
          f"load average {info['load_average']}, {info['date']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
