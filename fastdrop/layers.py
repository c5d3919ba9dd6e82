"""A dropout layer for hand-written NumPy/CuPy trainers, as in the dropout article."""

from __future__ import annotations

from fastdrop import _validate
from fastdrop._api import dropout, dropout_backward


class Dropout:
    """Inverted dropout: ``forward(x, training=True)`` drops with probability p and scales the rest
    by 1 / (1 - p); in evaluation it returns x unchanged. ``backward(dy)`` regenerates the last
    training forward's mask from its seed (nothing the size of x is stored) unless ``keep_bits``.

    ``seed=None`` draws every forward from fastdrop's module stream (reset by
    ``fastdrop.manual_seed``); an integer seed makes the layer's own stream start at (seed, 0).
    """

    def __init__(self, p: float = 0.5, *, seed: int | None = None, mask_shape=None, keep_bits=False):
        self.p = _validate.probability(p)
        self.seed = None if seed is None else _validate.seed(seed)
        self.mask_shape = mask_shape
        self.keep_bits = bool(keep_bits)
        self.mask = None
        self._next_offset = 0

    def forward(self, x, training: bool = True):
        if not training:
            self.mask = None
            return x
        if self.seed is None:
            y, self.mask = dropout(x, self.p, mask_shape=self.mask_shape, keep_bits=self.keep_bits)
        else:
            y, self.mask = dropout(
                x, self.p, seed=self.seed, offset=self._next_offset,
                mask_shape=self.mask_shape, keep_bits=self.keep_bits,
            )
            self._next_offset += (self.mask.size + 3) // 4 * 4
        return y

    __call__ = forward

    def backward(self, dy):
        if self.mask is None:  # the last forward was in evaluation mode: identity
            return dy
        return dropout_backward(dy, self.mask)

    def __repr__(self):
        return f"Dropout(p={self.p})"
