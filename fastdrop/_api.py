"""The public functions: validation once at the edge, then dispatch to the array's backend."""

from __future__ import annotations

import math

import numpy as np

from fastdrop import _backend, _stream, _validate
from fastdrop._contract import KEEP_ALL, select_constants
from fastdrop._mask import DropoutMask


def _check_float(array, name: str, backend) -> None:
    dtype = getattr(array, "dtype", None)
    if dtype is None or getattr(dtype, "kind", None) != "f" and str(dtype) != "bfloat16":
        kind = "no dtype" if dtype is None else f"dtype {dtype}"
        raise TypeError(f"{name} must be a floating-point array; got {kind}")
    backend.check_dtype(dtype, name)


def _resolve_seed(seed, offset, n_words: int) -> tuple[int, int]:
    if seed is None:
        if _validate.offset(offset, n_words) != 0:
            raise ValueError("offset needs an explicit seed; with seed=None fastdrop's stream picks both")
        return _stream.take(n_words)
    return _validate.seed(seed), _validate.offset(offset, n_words)


def dropout(x, p, *, seed=None, offset=0, mask_shape=None, keep_bits=False, out=None):
    """Training-mode dropout in one fused pass: ``y = where(keep, x / (1 - p), 0)``.

    Parameters
    ----------
    x : numpy.ndarray or cupy.ndarray of floats
    p : float in [0, 1], the drop probability.
    seed, offset : the Philox draw: element i of the mask uses word ``offset + i`` of ``seed``'s
        stream. ``seed=None`` takes the next unused (seed, offset) from fastdrop's module stream
        (see :func:`fastdrop.manual_seed`).
    mask_shape : shape that broadcasts to ``x.shape``; the mask is drawn over it (e.g. (N, C, 1, 1)
        drops whole channels). Default ``x.shape``.
    keep_bits : also store the keep flags, packed 8 per byte, in ``mask.bits``.
    out : array like ``x`` to write to; ``out=x`` works in place.

    Returns
    -------
    (y, mask) : the output and a :class:`DropoutMask` for :func:`dropout_backward`.
    """
    backend = _backend.backend_for(x)
    _check_float(x, "x", backend)
    p = _validate.probability(p)
    input_shape = tuple(x.shape)
    shape = _validate.mask_shape(mask_shape, input_shape)
    n_mask = math.prod(shape)
    keep_bits = _validate.flag(keep_bits, "keep_bits")
    in_place = out is not None and _validate.output(out, x)
    y = backend.empty_like(x) if out is None else out
    bits = backend.zeros((n_mask + 7) // 8, np.uint8) if keep_bits else None
    # Last of all, so that a call refused above has not spent any of the module stream.
    seed, offset = _resolve_seed(seed, offset, n_mask)
    threshold, scale, identity = select_constants(p)
    if identity:
        if not in_place:
            y[...] = x
        if bits is not None:
            _set_all_kept(bits, n_mask)
    else:
        backend.forward(
            x, y, mask_shape=shape, seed=seed, offset=offset, threshold=threshold, scale=scale, bits=bits,
        )
    return y, DropoutMask._validated(p, seed, offset, shape, input_shape, bits)


def _set_all_kept(bits, n: int) -> None:
    """Packed flags of n kept elements: whole bytes of ones, then the low n % 8 bits."""
    bits[: n // 8] = 0xFF
    if n % 8:
        bits[n // 8] = (1 << (n % 8)) - 1


def dropout_backward(dy, mask, *, out=None):
    """Gradient of :func:`dropout`: ``dx = where(keep, dy / (1 - p), 0)`` with the forward's mask,
    regenerated from its seed (or read from ``mask.bits`` when they were stored)."""
    if not isinstance(mask, DropoutMask):
        raise TypeError(f"mask must be a fastdrop.DropoutMask; got {type(mask).__name__}")
    backend = _backend.backend_for(dy, "dy")
    _check_float(dy, "dy", backend)
    if tuple(dy.shape) != mask.input_shape:
        raise ValueError(f"dy has shape {tuple(dy.shape)}; the mask was made for input shape {mask.input_shape}")
    bits = mask.bits
    if bits is not None and _backend.array_library(bits) != _backend.array_library(dy):
        raise TypeError(
            f"dy is a {_backend.array_library(dy)} array but mask.bits live in "
            f"{_backend.array_library(bits)}"
        )
    in_place = out is not None and _validate.output(out, dy, "dy")
    dx = backend.empty_like(dy) if out is None else out
    threshold, scale, identity = select_constants(mask.p)
    if identity:
        if not in_place:
            dx[...] = dy
    elif bits is not None:
        backend.apply_bits(dy, dx, mask_shape=mask.shape, bits=bits, scale=scale)
    else:
        backend.forward(
            dy, dx, mask_shape=mask.shape, seed=mask.seed, offset=mask.offset,
            threshold=threshold, scale=scale, bits=None,
        )
    return dx


def random_bits(n, *, seed, offset=0, like=None):
    """The contract's uint32 words ``offset, ..., offset + n - 1`` of ``seed``'s Philox stream.

    ``like``: an array whose library (NumPy by default, or CuPy) holds the result.
    """
    n = _validate.count(n, "n")
    seed = _validate.seed(seed)
    offset = _validate.offset(offset, n)
    backend = _backend.backend_for(np.empty(0) if like is None else like, "like")
    words = backend.empty(n, np.uint32)
    if n:
        backend.random_bits(words, seed=seed, offset=offset)
    return words


def manual_seed(seed) -> None:
    """Reset fastdrop's module stream used by calls with ``seed=None`` (torch's is not touched)."""
    _stream.manual_seed(seed)


__all__ = ["dropout", "dropout_backward", "random_bits", "manual_seed", "KEEP_ALL"]
