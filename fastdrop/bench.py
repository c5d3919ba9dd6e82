"""``fastdrop bench``: throughput of the fused kernels beside NumPy, PyTorch and a copy.

    fastdrop bench                          quick CPU table (< 1 minute on 2 cores)
    fastdrop bench --full --json run.json --plot run.png
    fastdrop bench --device gpu [--full]    the GPU grid (float32, float16, bfloat16)
    fastdrop bench --compare old.json       exit 1 if a ratio got more than 20% worse
    fastdrop bench --load run.json --markdown   re-print a stored run (e.g. for bench/RESULTS.md)

Measuring lives in ``fastdrop._bench_run``, the implementations in ``fastdrop._bench_impls``, the
tables, plot and comparison in ``fastdrop._bench_report``. CuPy and PyTorch are imported only when
their rows are measured. Exit status: 0 done, 1 a regression against ``--compare``, 2 bad usage,
3 some rows raised an error (reported under "skipped", the other rows still measured).
"""

from __future__ import annotations

import argparse
import json
import sys

from fastdrop import _bench_impls as impls
from fastdrop import _bench_report as report
from fastdrop import _bench_run as bench_run


def _sizes(text: str) -> tuple[int, ...]:
    """'2^10,2^20,4096' -> (1024, 1048576, 4096)."""
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        base, power = item.replace("**", "^").partition("^")[::2]
        try:
            size = int(base) ** int(power) if power else int(base)
        except ValueError:
            raise argparse.ArgumentTypeError(f"sizes: {item!r} is not an integer or 2^k") from None
        if size < 1:
            raise argparse.ArgumentTypeError(f"sizes: {item!r} must be at least 1")
        sizes.append(size)
    if not sizes:
        raise argparse.ArgumentTypeError("sizes: give at least one size")
    return tuple(sizes)


def _choices(allowed: tuple, what: str):
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(filter(None, (part.strip() for part in text.split(","))))
        unknown = [name for name in chosen if name not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"{what}: {', '.join(unknown) or 'none given'}; choose from {', '.join(allowed)}")
        return chosen

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastdrop bench", description="Throughput of fastdrop's kernels beside NumPy, PyTorch and a copy.",
        epilog="x NumPy / x torch: speed-up in time over that implementation for the same op; "
               "% of copy: fastdrop's GB/s (bytes its op must move) over a parallel copy's, same run. "
               "Exit status: 0 done, 1 a ratio regressed (--compare), 2 bad usage, 3 some rows failed.",
    )
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--full", action="store_true", help="the whole grid (CPU 2^10..2^26 by 4x, float32 and float64; GPU 2^10..2^28)")
    parser.add_argument("--ops", type=_choices(impls.OPS, "ops"), help=f"comma list from {', '.join(impls.OPS)}")
    parser.add_argument("--sizes", type=_sizes, help="comma list of element counts, e.g. 2^12,2^20,2^24")
    parser.add_argument("--dtypes", type=_choices(tuple(dict.fromkeys(bench_run.CPU_DTYPES + bench_run.GPU_DTYPES)), "dtypes"),
                        help="comma list (default: float32; --full: float32,float64; GPU: float32,float16,bfloat16)")
    parser.add_argument("--impls", type=_choices(tuple(dict.fromkeys(impls.CPU_IMPLS + impls.GPU_IMPLS)), "impls"),
                        help="implementations to run beside the copy (default: all)")
    parser.add_argument("--p", type=float, default=0.1, help="drop probability (default 0.1)")
    parser.add_argument("--seconds-per-case", type=float, help="timing budget per row (default 0.4, --full 1.0)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory call")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="write {machine, settings, results, skipped}")
    parser.add_argument("--plot", metavar="PATH.png", help="log-log GB/s against size per implementation")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for bench/RESULTS.md)")
    parser.add_argument("--compare", metavar="OLD.json", help="flag ratios more than --tolerance worse; exit 1 if any")
    parser.add_argument("--tolerance", type=float, default=0.2, help="for --compare (default 0.2 = 20%%)")
    parser.add_argument("--load", metavar="RUN.json", help="report a stored run instead of measuring")
    return parser


def settings_from(args) -> bench_run.Settings:
    gpu = args.device == "gpu"
    if args.full:
        sizes = bench_run.GPU_FULL_SIZES if gpu else bench_run.CPU_FULL_SIZES
        dtypes = bench_run.GPU_DTYPES if gpu else bench_run.CPU_DTYPES
    else:
        sizes = bench_run.GPU_QUICK_SIZES if gpu else bench_run.CPU_QUICK_SIZES
        dtypes = bench_run.GPU_DTYPES if gpu else ("float32",)
    return bench_run.Settings(
        device=args.device, ops=args.ops or impls.DEFAULT_OPS, sizes=args.sizes or sizes,
        dtypes=args.dtypes or dtypes, impls=args.impls, p=args.p,
        seconds_per_case=args.seconds_per_case or (1.0 if args.full else 0.4),
        measure_memory=not args.no_memory, progress=not args.no_progress,
    )


class _BadFile(Exception):
    pass


def _load(path: str, what: str) -> dict:
    try:
        with open(path) as file:
            document = json.load(file)
        document["results"]  # noqa: B018 - the one key every document has
        return document
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _BadFile(f"fastdrop bench: {what} {path}: not a benchmark JSON ({error})") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.p < 1.0:
        print(f"fastdrop bench: --p must be in [0, 1); got {args.p}", file=sys.stderr)
        return 2
    try:
        old = _load(args.compare, "--compare") if args.compare else None
        document = _load(args.load, "--load") if args.load else None
    except _BadFile as error:
        print(error, file=sys.stderr)
        return 2
    if document is None:
        try:
            document = bench_run.run(settings_from(args))
            document["settings"]["command"] = " ".join(["fastdrop bench", *argv])
        except bench_run.NoDevice as error:
            print(f"fastdrop bench: {error}", file=sys.stderr)
            return 2

    markdown = args.markdown
    print(report.format_machine(document["machine"]))
    if document.get("settings", {}).get("command"):
        print(f"command: {document['settings']['command']}")
    warning = report.busy_warning(document["machine"])
    if warning:
        print(warning)
    print()
    print(report.format_summary(report.summary(document), markdown=markdown))
    print()
    print("mask state and peak extra memory of one call (largest n):")
    print(report.format_memory(document, markdown=markdown))
    skipped = report.format_skipped(document)
    if skipped:
        print()
        print(skipped)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(document, file, indent=1)
        print(f"\nwrote {args.json}")
    if args.plot:
        report.plot(document, args.plot)
        print(f"wrote {args.plot}")
    failed = [entry for entry in document.get("skipped", []) if entry["reason"].startswith("FAILED")]
    if old is not None:
        checked, regressions = report.compare(old, document, tolerance=args.tolerance)
        print()
        if not checked:
            print(f"fastdrop bench: nothing in common with {args.compare} to compare", file=sys.stderr)
            return 2
        print(report.format_comparison(checked, regressions, args.tolerance))
        if regressions:
            return 1
    if failed:
        print(f"fastdrop bench: {len(failed)} kinds of rows failed (see 'skipped' above)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
