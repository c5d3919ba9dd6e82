"""Masks that repeat along an axis, and channels-last feature maps, on the CPU kernels.

Cases (float32): ``NCHW channel`` (contiguous (N, C, H, W) maps, mask (N, C, 1, 1): spatial
dropout); ``NHWC channel`` (the same logical maps stored channels last, as PyTorch's
``channels_last``: ``a.transpose(0, 3, 1, 2)`` of an (N, H, W, C) array); ``NHWC element``
(channels last, a full mask); ``NTF sequence`` (contiguous (N, T, F), mask (N, 1, F): variational
dropout's mask shared by every timestep). Ops: the forward into an existing array of the same
layout (``out=``), the backward from stored bits, and alpha and Gaussian dropout with the same mask. Each figure
is G elements/s and its share of ``np.copyto`` between two arrays of that layout (the copy moves
the same bytes). Rounds are interleaved and the median kept, as in ``bench/targets.py``; run it
with ``PYTHONPATH`` pointing at another checkout to compare code.

    .venv/bin/python bench/repeated_masks.py [--rounds 5] [--channels 64] [--batch 32] [--size 56]

``--size`` is H = W of the maps: 7 gives 7 x 7 maps, whose full mask over channels-last memory
has an odd stride (49 words) from one channel to the next (the columns kernels' shifted words).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

import fastdrop
from targets import _best_of, machine_line  # bench/targets.py, beside this script


def _cases(channels: int, n: int = 32, size: int = 56) -> dict:
    h = w = size
    t, f = 512, 256
    return {
        "NCHW channel": ((n, channels, h, w), lambda a: a, (n, channels, 1, 1)),
        "NHWC channel": ((n, h, w, channels), lambda a: a.transpose(0, 3, 1, 2), (n, channels, 1, 1)),
        "NHWC element": ((n, h, w, channels), lambda a: a.transpose(0, 3, 1, 2), None),
        "NTF sequence": ((64, t, f), lambda a: a, (64, 1, f)),
    }


OPS = ("forward", "backward_bits", "alpha", "gaussian")


def _calls(base_shape, view, mask_shape, p):
    rng = np.random.default_rng(0)
    x = view(rng.standard_normal(base_shape, dtype=np.float32))
    out = view(np.empty(base_shape, dtype=np.float32))
    _, bits = fastdrop.dropout(x, p, seed=1, mask_shape=mask_shape, keep_bits=True)
    return {
        "copyto": lambda: np.copyto(out, x),
        "forward": lambda: fastdrop.dropout(x, p, seed=1, mask_shape=mask_shape, out=out),
        "backward_bits": lambda: fastdrop.dropout_backward(x, bits, out=out),
        "alpha": lambda: fastdrop.alpha_dropout(x, p, seed=1, mask_shape=mask_shape, out=out),
        "gaussian": lambda: fastdrop.gaussian_dropout(x, p, seed=1, mask_shape=mask_shape, out=out),
    }, x.size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="N of the feature maps")
    parser.add_argument("--size", type=int, default=56, help="H = W of the feature maps")
    parser.add_argument("--p", type=float, default=0.1)
    args = parser.parse_args(argv)
    cases = {name: _calls(*case, args.p)
             for name, case in _cases(args.channels, args.batch, args.size).items()}
    for calls, _ in cases.values():
        for call in calls.values():
            call()  # compile and warm
    seconds = {(name, op): [] for name in cases for op in ("copyto", *OPS)}
    for _ in range(args.rounds):
        for name, (calls, _) in cases.items():
            for op in ("copyto", *OPS):
                seconds[name, op].append(_best_of(calls[op], 3))
    median = {key: statistics.median(values) for key, values in seconds.items()}
    print(f"command: {' '.join(sys.argv)}")
    print(f"float32, p = {args.p}, {args.batch} x {args.channels} maps of {args.size} x {args.size}, "
          f"median of {args.rounds} rounds of best-of-3; "
          "G elements/s (% of np.copyto between arrays of that layout)\n")
    print(" | ".join(("case", "elements", "copyto", *OPS)))
    print(" | ".join(["---"] * (len(OPS) + 3)))
    for name, (_, size) in cases.items():
        cells = [f"{size / median[name, 'copyto'] / 1e9:.2f}"]
        for op in OPS:
            share = 100 * median[name, "copyto"] / median[name, op]
            cells.append(f"{size / median[name, op] / 1e9:.2f} ({share:.0f}%)")
        print(" | ".join((name, str(size), *cells)), flush=True)
    print("\n" + machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
