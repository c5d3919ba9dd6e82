"""Reduce any (shape, strides, mask_shape) problem to rank-3 kernel launches.

An element at multi-index ``i`` reads ``x`` at ``dot(i, x_strides)``, writes ``out`` at
``dot(i, out_strides)`` and uses the word ``offset + dot(i, mask_strides)``, where mask strides are
the mask's C-order element strides with 0 on broadcast axes. All three are linear in ``i``, so
axes of size 1 can be dropped and neighbouring axes merged wherever all three stride sets allow,
exactly as NumPy's iterator coalesces. What remains is almost always rank 1 to 3 (a contiguous
array with a full mask becomes one row); anything of higher rank loops over its leading axes in
Python. Backends then only need a rank-3 kernel. Works on shapes and strides alone, so it serves
NumPy and CuPy alike.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple


class Launch(NamedTuple):
    """One rank-3 kernel launch: where it starts and how it steps (strides in bytes for the
    arrays, in words for the mask)."""

    shape: tuple[int, int, int]
    x_byte_offset: int
    x_strides: tuple[int, int, int]
    out_byte_offset: int
    out_strides: tuple[int, int, int]
    word_offset: int
    mask_strides: tuple[int, int, int]

    def permuted(self, order) -> "Launch":
        """The same elements walked with axes in ``order`` (shape and every stride set alike):
        an element's addresses and word do not depend on the order of the walk."""

        def pick(values):
            return tuple(values[axis] for axis in order)

        return self._replace(shape=pick(self.shape), x_strides=pick(self.x_strides),
                             out_strides=pick(self.out_strides), mask_strides=pick(self.mask_strides))


def padded_mask_shape(mask_shape, ndim: int) -> tuple[int, ...]:
    """mask_shape with leading 1s up to ndim (the caller checked it broadcasts)."""
    mask_shape = tuple(mask_shape)
    return (1,) * (ndim - len(mask_shape)) + mask_shape


def mask_strides(mask_shape, shape) -> tuple[int, ...]:
    """C-order element strides of the mask over ``shape``'s axes; 0 where the mask broadcasts."""
    mask_shape = padded_mask_shape(mask_shape, len(shape))
    strides = []
    step = 1
    for extent in reversed(mask_shape):
        strides.append(step if extent != 1 else 0)
        step *= extent
    return tuple(reversed(strides))


def _coalesce(shape, stride_sets):
    """Drop size-1 axes, then merge axis d into d+1 where every stride set allows it."""
    axes = [d for d, extent in enumerate(shape) if extent != 1]
    shape = [shape[d] for d in axes]
    stride_sets = [[strides[d] for d in axes] for strides in stride_sets]
    d = len(shape) - 2
    while d >= 0:
        if all(s[d] == s[d + 1] * shape[d + 1] for s in stride_sets):
            shape[d + 1] *= shape[d]
            del shape[d]
            for s in stride_sets:
                del s[d]
        d -= 1
    return shape, stride_sets


def rank3_launches(shape, x_strides, out_strides, mask_shape, word_offset: int):
    """Yield the Launch list covering every element of ``shape`` (none for zero-size shapes)."""
    if math.prod(shape) == 0:
        return
    shape, (xs, os, ms) = _coalesce(
        list(shape), [list(x_strides), list(out_strides), list(mask_strides(mask_shape, shape))]
    )
    pad = max(0, 3 - len(shape))
    shape = [1] * pad + shape
    xs, os, ms = ([0] * pad + s for s in (xs, os, ms))
    lead = len(shape) - 3
    for index in itertools.product(*(range(extent) for extent in shape[:lead])):
        yield Launch(
            shape=tuple(shape[lead:]),
            x_byte_offset=sum(i * s for i, s in zip(index, xs)),
            x_strides=tuple(xs[lead:]),
            out_byte_offset=sum(i * s for i, s in zip(index, os)),
            out_strides=tuple(os[lead:]),
            word_offset=word_offset + sum(i * s for i, s in zip(index, ms)),
            mask_strides=tuple(ms[lead:]),
        )
