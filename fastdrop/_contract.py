"""Constants and scalar rules of the dropout contract, shared by every backend.

See ``docs/rng-contract.md``. Nothing here touches arrays bigger than a scalar.
"""

from __future__ import annotations

import functools

import numpy as np

# Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC'11).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # golden ratio
PHILOX_W1 = 0xBB67AE85  # sqrt(3) - 1
PHILOX_ROUNDS = 10

#: A threshold of 2**32 keeps every element (no 32-bit word is >= 2**32).
KEEP_ALL = 1 << 32
#: Largest word index any call may touch: counters are 64-bit, four words each.
MAX_WORD_INDEX = (1 << 64) - 1

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def philox_key(seed: int) -> tuple[int, int]:
    """The Philox key of a 64-bit seed: (low word, high word)."""
    seed = int(seed)
    return seed & 0xFFFFFFFF, seed >> 32


def keep_threshold(p: float) -> int:
    """Exact integer t: an element with word r is kept iff r < t; P(keep) = t / 2**32."""
    return int(round((1.0 - float(p)) * 4294967296.0))


def scale_factor(p: float) -> float:
    """1 / (1 - p) in float64; 0 for p = 1 (nothing is kept, so nothing is scaled)."""
    p = float(p)
    if p >= 1.0:
        return 0.0
    return 1.0 / (1.0 - p)


def compute_dtype(dtype) -> np.dtype:
    """The dtype the scale multiply runs in: float16 (and bfloat16) compute in float32."""
    dtype = np.dtype(dtype)
    if dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


def is_identity(p: float) -> bool:
    """True when dropout with this p keeps everything and scales by exactly 1: y = x."""
    return select_constants(p)[2]


@functools.lru_cache(maxsize=256)  # by value: a p usually repeats from call to call
def select_constants(p: float) -> tuple[int, float, bool]:
    """``(keep_threshold(p), scale_factor(p), is_identity(p))``, each worked out once."""
    threshold, scale = keep_threshold(p), scale_factor(p)
    return threshold, scale, threshold == KEEP_ALL and scale == 1.0
