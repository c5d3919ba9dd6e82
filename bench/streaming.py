"""Normal against streaming (non-temporal) stores in the kernels that may stream.

The CPU backend streams an output when it is at least ``STREAM_ABOVE`` bytes (the last-level
cache) and not fresh pages it allocated for the call (``fastdrop._numba_backend.streams``). This script
flips that threshold in one process, alternating rounds between "never" and "always", and prints
G elements/s for each case: the backward from packed bits (into an existing array, and
allocating), channel masks of three row lengths, and the Philox forward, which never streams
(the control: both columns run the same code). Best of ``--calls`` per round, median of rounds.

    .venv/bin/python bench/streaming.py [--n 2^24] [--rounds 4] [--rows 256,1024,16384]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

import fastdrop
from fastdrop import _numba_backend, _numba_stream
from targets import _best_of, machine_line  # bench/targets.py, beside this script

NEVER = 1 << 62


def _without_fresh_outputs(call):
    """``call()`` with the backend's allocations not marked fresh (so that they stream too)."""
    saved = _numba_backend.empty_like
    _numba_backend.empty_like = np.empty_like
    try:
        return call()
    finally:
        _numba_backend.empty_like = saved


def _cases(n: int, dtype, rows=(256, 1024, 16384)) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float64).astype(dtype)
    out = np.empty_like(x)
    _, mask = fastdrop.dropout(x, 0.1, seed=1, keep_bits=True)
    cases = {
        "backward from bits, out=": lambda: fastdrop.dropout_backward(x, mask, out=out),
        "backward from bits, allocating (fresh pages: normal stores in both)":
            lambda: fastdrop.dropout_backward(x, mask),
        "backward from bits, allocating, streamed anyway": lambda: _without_fresh_outputs(
            lambda: fastdrop.dropout_backward(x, mask)),
        "forward (never streams)": lambda: fastdrop.dropout(x, 0.1, seed=1, out=out),
    }
    for row in rows:
        maps = x.reshape(-1, row)
        maps_out = out.reshape(-1, row)
        cases[f"channel mask, rows of {row}"] = (
            lambda maps=maps, maps_out=maps_out: fastdrop.dropout(
                maps, 0.3, seed=1, mask_shape=(maps.shape[0], 1), out=maps_out))
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="2^24", help="elements, e.g. 2^24 or 16777216")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rows", default="256,1024,16384",
                        help="row lengths of the channel-mask cases (each must divide n)")
    args = parser.parse_args(argv)
    n = 2 ** int(args.n[2:]) if args.n.startswith("2^") else int(args.n)
    cases = _cases(n, np.dtype(args.dtype), tuple(int(row) for row in args.rows.split(",")))
    saved = _numba_stream.STREAM_ABOVE
    rates = {(name, mode): [] for name in cases for mode in ("normal", "streaming")}
    try:
        for _ in range(args.rounds):
            for mode, threshold in (("normal", NEVER), ("streaming", 0)):
                _numba_stream.STREAM_ABOVE = threshold
                for name, call in cases.items():
                    call()
                    rates[name, mode].append(n / _best_of(call, args.calls) / 1e9)
    finally:
        _numba_stream.STREAM_ABOVE = saved
    print(f"command: {' '.join(sys.argv)}")
    print(f"n = {n}, {args.dtype}; G elements/s, median of {args.rounds} rounds of best-of-{args.calls}"
          f" (this machine streams outputs of at least {saved / 2**20:g} MiB)\n")
    print("case | normal stores | streaming stores | ratio")
    print("--- | --- | --- | ---")
    for name in cases:
        normal = statistics.median(rates[name, "normal"])
        streaming = statistics.median(rates[name, "streaming"])
        print(f"{name} | {normal:.2f} | {streaming:.2f} | {streaming / normal:.2f}")
    print("\n" + machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
