"""The NumPy oracle: the whole dropout contract in plain, vectorised NumPy.

Every backend (Numba, CuPy, the host-compiled CUDA helpers) is tested against this module
bit for bit. It favours clarity over speed; see ``docs/rng-contract.md`` for the contract itself.

Philox4x32-10 is evaluated in uint64 arithmetic: a 32 x 32 bit product fits in 64 bits, so the
high and low halves are a shift and a mask away.
"""

from __future__ import annotations

import math

import numpy as np

from fastdrop._contract import (
    PHILOX_M0,
    PHILOX_M1,
    PHILOX_ROUNDS,
    PHILOX_W0,
    PHILOX_W1,
    compute_dtype,
    keep_threshold,
    philox_key,
    scale_factor,
)

__all__ = [
    "philox4x32",
    "random_bits",
    "keep_mask",
    "dropout",
    "dropout_backward",
]

_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32(counter, key, rounds: int = PHILOX_ROUNDS) -> np.ndarray:
    """Philox4x32 on an array of counters.

    ``counter`` has shape (..., 4) and ``key`` shape (..., 2) (broadcast against each other),
    words as unsigned 32-bit integers. Returns uint32 of shape (..., 4).
    """
    ctr = np.asarray(counter, dtype=np.uint64)
    k = np.asarray(key, dtype=np.uint64)
    if ctr.shape[-1] != 4 or k.shape[-1] != 2:
        raise ValueError("counter needs 4 words and key 2 words in the last axis")
    c0, c1, c2, c3 = (ctr[..., j] & _MASK32 for j in range(4))
    k0, k1 = k[..., 0] & _MASK32, k[..., 1] & _MASK32
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    w0, w1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
    for r in range(rounds):
        if r:
            k0 = (k0 + w0) & _MASK32
            k1 = (k1 + w1) & _MASK32
        prod0 = m0 * c0
        prod1 = m1 * c2
        c0, c1, c2, c3 = (
            (prod1 >> np.uint64(32)) ^ c1 ^ k0,
            prod1 & _MASK32,
            (prod0 >> np.uint64(32)) ^ c3 ^ k1,
            prod0 & _MASK32,
        )
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def random_bits(n: int, *, seed: int, offset: int = 0) -> np.ndarray:
    """The contract's stream ``r[offset], ..., r[offset + n - 1]`` as uint32."""
    n, offset = int(n), int(offset)
    if n == 0:
        return np.empty(0, dtype=np.uint32)
    q_first = offset >> 2
    q_last = (offset + n - 1) >> 2
    q = np.arange(q_last - q_first + 1, dtype=np.uint64) + np.uint64(q_first)
    counter = np.zeros(q.shape + (4,), dtype=np.uint64)
    counter[:, 0] = q & _MASK32
    counter[:, 1] = q >> np.uint64(32)
    words = philox4x32(counter, np.array(philox_key(seed), dtype=np.uint64)).reshape(-1)
    start = offset - 4 * q_first
    return words[start : start + n].copy()


def keep_mask(shape, p: float, *, seed: int, offset: int = 0) -> np.ndarray:
    """Boolean keep flags of the given logical shape (element i uses word offset + i, C order)."""
    shape = tuple(int(d) for d in shape)
    n = math.prod(shape)
    words = random_bits(n, seed=seed, offset=offset).astype(np.uint64)
    return (words < np.uint64(keep_threshold(p))).reshape(shape)


def _apply(values: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
    compute = compute_dtype(values.dtype)
    scaled = (values.astype(compute) * compute.type(scale_factor(p))).astype(values.dtype)
    keep = np.broadcast_to(keep, values.shape)
    return np.where(keep, scaled, values.dtype.type(0))


def dropout(x, p: float, *, seed: int, offset: int = 0, mask_shape=None) -> np.ndarray:
    """Training-mode dropout of ``x``; the mask is drawn over ``mask_shape`` (default x.shape)."""
    x = np.asarray(x)
    shape = x.shape if mask_shape is None else tuple(mask_shape)
    return _apply(x, keep_mask(shape, p, seed=seed, offset=offset), p)


def dropout_backward(dy, p: float, *, seed: int, offset: int = 0, mask_shape=None) -> np.ndarray:
    """Gradient of :func:`dropout` with respect to x: the same mask and scale applied to dy."""
    return dropout(dy, p, seed=seed, offset=offset, mask_shape=mask_shape)


def pack_bits(keep: np.ndarray) -> np.ndarray:
    """The contract's packed keep flags: ``np.packbits(flat_keep, bitorder="little")``."""
    return np.packbits(np.asarray(keep, dtype=bool).reshape(-1), bitorder="little")
