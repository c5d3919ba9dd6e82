"""``fastdrop validate``: check fastdrop against PyTorch's dropout on this machine.

Runs the checks of :mod:`fastdrop._validation_checks` (CPU, and CUDA when torch, CuPy and a GPU
are there), prints one table row per check and exits non-zero if any fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastdrop validate",
        description="Check fastdrop.torch against PyTorch's dropout: element-wise with PyTorch's "
        "own masks, statistically (scipy.stats two-sample tests), and semantically.",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--seed", type=int, default=0,
                        help="base seed of every check's inputs and masks (default 0: reproducible)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the CUDA checks even with a GPU")
    return parser


def _cells(row) -> tuple[str, ...]:
    """A row as table cells: p-values as ``p=...``, counts of mismatches or violations as ``N bad``."""
    if row.rule.startswith("p-value"):
        statistic, threshold = f"p={row.statistic:.3g}", f">= {row.threshold:g}"
    else:
        statistic, threshold = f"{row.statistic:.0f} bad", f"<= {row.threshold:.0f}"
    return (row.check, row.backend, row.dtype, statistic, threshold, "pass" if row.passed else "FAIL")


def _table(rows) -> str:
    header = ("check", "backend", "dtype", "statistic", "threshold", "result")
    lines = [header] + [_cells(row) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(*lines)]
    lines.insert(1, tuple("-" * width for width in widths))
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        import torch
        from scipy import stats  # noqa: F401
    except ImportError as error:
        print(f"fastdrop validate needs torch and scipy: {error}", file=sys.stderr)
        return 2
    from fastdrop import _validation_checks as checks

    start = time.perf_counter()
    rows, notes = checks.run_all(seed=args.seed, include_cuda=not args.cpu_only)
    elapsed = time.perf_counter() - start
    failed = [row for row in rows if not row.passed]
    statistical = sum(row.rule.startswith("p-value") for row in rows)

    print(_table(rows))
    print()
    for note in notes:
        print(note)
    print(f"statistical rows: {statistical}, each at level {checks.ALPHA:g} "
          f"(false-failure rate of the run at most {statistical * checks.ALPHA:.2g})")
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed in {elapsed:.1f} s "
          f"(torch {torch.__version__}, {platform.machine()})")
    if args.json:
        document = {
            "rows": [row.as_dict() for row in rows],
            "notes": notes,
            "seed": args.seed,
            "alpha": checks.ALPHA,
            "torch": torch.__version__,
            "passed": not failed,
            "seconds": round(elapsed, 2),
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
