"""What a non-contiguous input costs: fastdrop's CPU kernels on views of the same logical shape.

Each layout is a (rows, cols) float32 view: ``contiguous``; ``column_slice`` (``a[:, :cols]`` of a
wider array: rows contiguous, the array not); ``row_step_2`` (``a[::2]``: every other row);
``col_step_2`` (``a[:, ::2]``: every element strided); ``transposed`` (``a.T``: logical rows run
down memory columns). For each op the table gives the best-of time as G elements/s and as a
percentage of a copy of the same view (``np.copyto`` between two views of that layout, as a
layout-aware reference, single-threaded), and the ratio to the contiguous case. Rounds are
interleaved and the median is kept, as in ``bench/targets.py``.

    .venv/bin/python bench/layouts.py [--rows 4096] [--cols 4096] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

import fastdrop
from targets import _best_of, machine_line  # bench/targets.py, beside this script

LAYOUTS = {
    "contiguous": (lambda r, c: (r, c), lambda a, r, c: a),
    "column_slice": (lambda r, c: (r, c + 16), lambda a, r, c: a[:, :c]),
    "row_step_2": (lambda r, c: (2 * r, c), lambda a, r, c: a[::2]),
    "col_step_2": (lambda r, c: (r, 2 * c), lambda a, r, c: a[:, ::2]),
    "transposed": (lambda r, c: (c, r), lambda a, r, c: a.T),
}
OPS = ("copyto", "forward", "backward", "backward_bits", "bias_dropout_add", "alpha", "gaussian")


def _view(layout, rows, cols, rng):
    base_shape, select = LAYOUTS[layout]
    view = select(rng.standard_normal(base_shape(rows, cols), dtype=np.float32), rows, cols)
    assert view.shape == (rows, cols)
    return view


def _calls(layout, rows, cols, p):
    rng = np.random.default_rng(0)
    x, out, residual = (_view(layout, rows, cols, rng) for _ in range(3))
    bias = rng.standard_normal(cols, dtype=np.float32)
    _, mask = fastdrop.dropout(x, p, seed=1)
    _, bits = fastdrop.dropout(x, p, seed=1, keep_bits=True)
    return {
        "copyto": lambda: np.copyto(out, x),
        "forward": lambda: fastdrop.dropout(x, p, seed=1, out=out),
        "backward": lambda: fastdrop.dropout_backward(x, mask, out=out),
        "backward_bits": lambda: fastdrop.dropout_backward(x, bits, out=out),
        "bias_dropout_add": lambda: fastdrop.bias_dropout_add(x, bias, residual, p, seed=1, out=out),
        "alpha": lambda: fastdrop.alpha_dropout(x, p, seed=1, out=out),
        "gaussian": lambda: fastdrop.gaussian_dropout(x, p, seed=1, out=out),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--p", type=float, default=0.1)
    args = parser.parse_args(argv)
    n = args.rows * args.cols
    calls = {layout: _calls(layout, args.rows, args.cols, args.p) for layout in LAYOUTS}
    for layout_calls in calls.values():
        for call in layout_calls.values():
            call()  # compile (each layout has its own kernel types) and warm
    seconds = {(layout, op): [] for layout in LAYOUTS for op in OPS}
    for _ in range(args.rounds):
        for layout, layout_calls in calls.items():
            for op in OPS:
                seconds[layout, op].append(_best_of(layout_calls[op], 3))
    median = {key: statistics.median(values) for key, values in seconds.items()}
    print(f"command: {' '.join(sys.argv)}")
    print(f"({args.rows}, {args.cols}) float32 views, p = {args.p}, median of {args.rounds} rounds of "
          "best-of-3; G elements/s (% of np.copyto of the same view; x the contiguous case)\n")
    print(" | ".join(("layout", *OPS)))
    print(" | ".join(["---"] * (len(OPS) + 1)))
    for layout in LAYOUTS:
        cells = [f"{n / median[layout, 'copyto'] / 1e9:.2f}"]
        for op in OPS[1:]:
            rate = n / median[layout, op] / 1e9
            of_copy = 100 * median[layout, "copyto"] / median[layout, op]
            vs_contiguous = median["contiguous", op] / median[layout, op]
            cells.append(f"{rate:.2f} ({of_copy:.0f}%; x{vs_contiguous:.2f})")
        print(" | ".join((layout, *cells)), flush=True)
    print("\n" + machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
