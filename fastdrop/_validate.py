"""Argument checks at the public edge. Each raises before anything is written, naming the argument,
the value and what is allowed. Code below the edge trusts its inputs."""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

from fastdrop._backend import array_library
from fastdrop._contract import MAX_WORD_INDEX

#: Work limit for np.shares_memory's exact overlap search (beyond it: assume they overlap).
_OVERLAP_MAX_WORK = 1 << 20


def probability(p) -> float:
    if type(p) is float:  # the common case, checked exactly as below without the conversions
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise ValueError(f"p must be in [0, 1]; got {p!r}")
        return p
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be a real number in [0, 1]; got {p!r} of type {type(p).__name__}")
    try:
        value = float(p)
    except OverflowError:  # an integer too large for a float is far outside [0, 1]
        raise ValueError(f"p must be in [0, 1]; got an integer of {p.bit_length()} bits") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"p must be in [0, 1]; got {p!r}")
    return value


def _integer(value, name: str) -> int:
    if type(value) is int:  # the common case (bool is a subclass, not int itself)
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer; got {value!r} of type {type(value).__name__}") from None


def seed(value) -> int:
    value = _integer(value, "seed")
    if not 0 <= value < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64); got {value}")
    return value


def offset(value, n_words: int) -> int:
    value = _integer(value, "offset")
    if value < 0:
        raise ValueError(f"offset must be >= 0; got {value}")
    if value + max(n_words, 1) - 1 > MAX_WORD_INDEX:
        raise ValueError(
            f"offset {value} + {n_words} words runs past the last word index 2**64 - 1"
        )
    return value


def count(value, name: str) -> int:
    value = _integer(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    return value


def flag(value, name: str) -> bool:
    if value is False or value is True:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def mask_shape(value, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The mask shape padded to len(shape); it must broadcast to ``shape`` without growing it."""
    if value is None:
        return tuple(shape)
    try:
        dims = tuple(operator.index(d) for d in value)
    except TypeError:
        raise TypeError(f"mask_shape must be a tuple of integers; got {value!r}") from None
    if len(dims) > len(shape) or any(d < 0 for d in dims):
        raise ValueError(f"mask_shape {dims} does not broadcast to the input shape {tuple(shape)}")
    padded = (1,) * (len(shape) - len(dims)) + dims
    if any(m not in (1, s) for m, s in zip(padded, shape)):
        raise ValueError(f"mask_shape {dims} does not broadcast to the input shape {tuple(shape)}")
    return padded


def output(out, x, name_x: str = "x"):
    """Check ``out`` for writing the result of ``x``: same type, shape, dtype; writeable; either
    exactly ``x``'s memory (in place) or disjoint from it. Returns True for in place."""
    library = array_library(x)
    if array_library(out) != library or not hasattr(out, "shape"):
        raise TypeError(
            f"out must be a {library} array like {name_x}; got "
            f"{type(out).__module__}.{type(out).__qualname__}"
        )
    if out.shape != x.shape:
        raise ValueError(f"out has shape {out.shape}; {name_x} has shape {x.shape}")
    if out.dtype != x.dtype:
        raise TypeError(f"out has dtype {out.dtype}; {name_x} has dtype {x.dtype}")
    flags = getattr(out, "flags", None)
    if flags is not None and hasattr(flags, "writeable") and not flags.writeable:
        raise ValueError("out is read-only")
    if out is x:
        return True
    # Overlap first: a disjoint out (the usual case) is then settled by NumPy's bounds check
    # alone, without reading addresses. Sharing the same memory implies overlapping, except
    # for zero-size arrays, which overlap nothing (and have nothing to write).
    if overlaps(out, x):
        if same_memory(out, x):
            return True
        raise ValueError(f"out partly overlaps {name_x}; pass out={name_x} for in place, or a separate array")
    return math.prod(out.shape) == 0 and same_memory(out, x)


def _data_pointer(array) -> int:
    if array_library(array) == "cupy":
        return array.data.ptr  # a fraction of the microseconds __cuda_array_interface__ costs
    interface = getattr(array, "__array_interface__", None) or array.__cuda_array_interface__
    return interface["data"][0]


def same_memory(a, b) -> bool:
    """Every element of a at the same address as the same element of b (strides of size-1 axes
    never move, so they do not count)."""
    if a.shape != b.shape or _data_pointer(a) != _data_pointer(b):
        return False
    return all(extent == 1 or sa == sb for extent, sa, sb in zip(a.shape, a.strides, b.strides))


def overlaps(a, b) -> bool:
    if math.prod(a.shape) == 0 or math.prod(b.shape) == 0:
        return False
    if array_library(a) == "numpy":  # NumPy's exact test (subclasses of other libraries excluded)
        try:
            return bool(np.shares_memory(a, b, _OVERLAP_MAX_WORK))  # keyword costs 0.3 us more
        except np.exceptions.TooHardError:
            return True
    # Other array libraries: compare the byte ranges the arrays span.
    (a_start, a_end), (b_start, b_end) = _span(a), _span(b)
    return a_start < b_end and b_start < a_end


def _span(array) -> tuple[int, int]:
    start = end = _data_pointer(array)
    for extent, stride in zip(array.shape, array.strides):
        if stride < 0:
            start += (extent - 1) * stride
        else:
            end += (extent - 1) * stride
    return start, end + array.itemsize
