"""Versions of the CPU kernels side by side in one process, in alternating rounds.

On the shared VMs this project runs on, the same code measures 20-50% apart from one run to the
next (bench/RESULTS.md, sixth session), so an old/new comparison made of two runs mostly
measures the drift. This script loads each given version of ``fastdrop/_numba_kernels.py`` (a
git revision, or a path to a file) as a module of its own, checks that every version writes the
same output bits, then times their forward kernels (``select_rows``: float32, ``out=``, p = 0.1,
a contiguous array) round by round: version 1, version 2, ..., ``np.copyto``, and again. Only
that one file varies; everything it imports comes from the working tree's ``fastdrop``, so the
versions must share its helpers' signatures (true from the fifth session's 04a400a on). Each
version compiles its kernel once (about 20 s).

    .venv/bin/python bench/ab_kernels.py 04a400a HEAD [--n 2^24] [--rounds 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from targets import _best_of, machine_line  # bench/targets.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
KERNELS = "fastdrop/_numba_kernels.py"
P = 0.1


def _source(version: str) -> str:
    path = Path(version)
    if path.is_file():
        return path.read_text()
    return subprocess.run(["git", "show", f"{version}:{KERNELS}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def load(versions: list[str], folder: Path) -> list:
    modules = []
    for i, version in enumerate(versions):
        path = folder / f"ab_kernels_{i}.py"
        path.write_text(_source(version))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def _parse_size(text: str) -> int:
    return 2 ** int(text[2:]) if text.startswith("2^") else int(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", help="git revisions or paths of _numba_kernels.py")
    parser.add_argument("--n", type=_parse_size, default=2**24, help="elements (2^k accepted)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=5, help="best of this many calls per round")
    parser.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        numba.set_num_threads(args.threads)
    x = np.random.default_rng(0).standard_normal(args.n).astype(np.float32).reshape(1, 1, args.n)
    out, copy = np.empty_like(x), np.empty_like(x)
    seed = 0x9E3779B97F4A7C15
    kernel_args = (np.int64(0), np.int64(0), np.int64(1), np.uint64(0),
                   np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32),
                   np.uint64(round((1 - P) * 2**32)), np.float32(1 / (1 - P)), np.float32(0.0),
                   np.empty(0, np.uint8), False, False)
    with tempfile.TemporaryDirectory() as folder:
        modules = load(args.versions, Path(folder))
        first = None
        for version, module in zip(args.versions, modules):
            module.select_rows(x, out, *kernel_args)  # compiles
            if first is None:
                first = out.copy()
            elif not np.array_equal(first.view(np.uint32), out.view(np.uint32)):
                print(f"{version} writes other bits than {args.versions[0]}", file=sys.stderr)
                return 1
        seconds = {version: [] for version in args.versions}
        copy_seconds = []
        for _ in range(args.rounds):
            for version, module in zip(args.versions, modules):
                seconds[version].append(_best_of(lambda: module.select_rows(x, out, *kernel_args), args.calls))
            copy_seconds.append(_best_of(lambda: np.copyto(copy, x), args.calls))
    print("command: " + " ".join(["bench/ab_kernels.py", *(argv if argv is not None else sys.argv[1:])]))
    print(f"forward kernel, n = {args.n}, float32, out=, p = {P}, {numba.get_num_threads()} threads; "
          f"median [min, max] of {args.rounds} rounds of best-of-{args.calls}, G elements/s\n")
    print("version | G elements/s | x first version")
    print("--- | --- | ---")
    base = statistics.median(seconds[args.versions[0]])
    for version in args.versions:
        rates = [args.n / s / 1e9 for s in seconds[version]]
        print(f"{version} | {statistics.median(rates):.2f} [{min(rates):.2f}, {max(rates):.2f}] | "
              f"{base / statistics.median(seconds[version]):.2f}")
    copy_rates = [args.n / s / 1e9 for s in copy_seconds]
    print(f"np.copyto (one thread) | {statistics.median(copy_rates):.2f} "
          f"[{min(copy_rates):.2f}, {max(copy_rates):.2f}] |")
    print("\n" + machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
