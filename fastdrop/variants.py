"""Dropout variants: spatial, variational (recurrent), alpha, Gaussian, DropConnect, bias-dropout-add.

Every function validates its arguments here, once, then runs fused kernels of the array's backend
(``_numba_variants`` for NumPy, ``_cupy_variants`` for CuPy) or the core ``dropout`` itself. Every
mask follows the RNG contract (docs/rng-contract.md) over its own logical shape, so NumPy and CuPy
give the same bits; formulas and counter use are in docs/variants.md.

Each forward returns ``(y, mask)``. Spatial and variational dropout and DropConnect return the
core :class:`fastdrop.DropoutMask`; the others return a mask type of their own that only their
own backward accepts, so a mask cannot be fed to the wrong backward by accident.
"""

from __future__ import annotations

import importlib
import math

from fastdrop import _backend, _validate
from fastdrop import _validate_variants as _check
from fastdrop import reference
from fastdrop._api import _check_float, _resolve_seed, dropout, dropout_backward
from fastdrop._contract import keep_threshold, scale_factor
from fastdrop._mask import DropoutMask

_VARIANT_MODULES = {"numpy": "fastdrop._numba_variants", "cupy": "fastdrop._cupy_variants"}


def _variant_backend(array):
    return importlib.import_module(_VARIANT_MODULES[_backend.array_library(array)])


def _float_input(x, name: str = "x"):
    """The core backend of x after checking x is a float array it supports."""
    backend = _backend.backend_for(x)
    _check_float(x, name, backend)
    return backend


# ------------------------------------------------------------------------------ spatial, variational

def spatial_dropout(x, p, *, seed=None, offset=0, channel_axis=1, spatial_dims=None,
                    keep_bits=False, out=None):
    """Drop whole channels of batched 1-D, 2-D or 3-D feature maps (PyTorch's Dropout1d/2d/3d,
    Keras' SpatialDropout): one draw per (sample, channel), i.e. :func:`fastdrop.dropout` with
    ``mask_shape`` (N, C, 1, ...).

    x : (N, C, *spatial) with 1 to 3 spatial axes, or channels last with ``channel_axis=-1``.
    spatial_dims : 1, 2 or 3 to insist on that rank (e.g. 2 for (N, C, H, W)); an unbatched
        (C, H, W) sample is rejected rather than silently treated as a batch.

    Returns ``(y, mask)``; the backward is :func:`fastdrop.dropout_backward`.
    """
    _float_input(x)
    axis = _check.spatial_channel_axis(tuple(x.shape), channel_axis, spatial_dims)
    mask_shape = reference.spatial_mask_shape(tuple(x.shape), axis)
    return dropout(x, p, seed=seed, offset=offset, mask_shape=mask_shape, keep_bits=keep_bits, out=out)


def variational_dropout(x, p, *, seed=None, offset=0, time_axis=1, keep_bits=False, out=None):
    """One dropout mask per sequence, shared by every timestep (Gal and Ghahramani 2016): the mask
    is drawn over x.shape with the time axis set to 1 (batch-first (N, T, F) by default; use
    ``time_axis=0`` for time-major input).

    Returns ``(y, mask)``; the backward is :func:`fastdrop.dropout_backward`. For a recurrent state
    updated step by step in a Python loop use :class:`RecurrentMask`.
    """
    _float_input(x)
    axis = _check.time_axis(tuple(x.shape), time_axis)
    mask_shape = reference.variational_mask_shape(tuple(x.shape), axis)
    return dropout(x, p, seed=seed, offset=offset, mask_shape=mask_shape, keep_bits=keep_bits, out=out)


class RecurrentMask:
    """The same dropout mask for a recurrent state at every step of a loop.

    ``RecurrentMask(shape, p, seed=..., offset=...)`` reserves one draw over ``shape`` (e.g.
    (batch, hidden)); ``mask(h)`` / ``mask.apply(h)`` drops ``h`` with it and ``mask.backward(dh)``
    gives the gradient. The mask is regenerated from the seed at every call: it costs no memory.
    Its keep flags equal those of ``variational_dropout`` over (N, T, F) with the same seed and
    offset (the flat index of (n, 0, f) in (N, 1, F) is that of (n, f) in (N, F)).
    """

    __slots__ = ("mask",)

    def __init__(self, shape, p, *, seed=None, offset=0):
        shape = _check.shape_tuple(shape, "shape")
        p = _validate.probability(p)
        seed, offset = _resolve_seed(seed, offset, math.prod(shape))
        self.mask = DropoutMask(p, seed, offset, shape, shape)

    def apply(self, h, *, out=None):
        _check.gradient(h, self.mask.input_shape, "h")
        return dropout(h, self.mask.p, seed=self.mask.seed, offset=self.mask.offset, out=out)[0]

    __call__ = apply

    def backward(self, dh, *, out=None):
        return dropout_backward(dh, self.mask, out=out)

    def __repr__(self):
        m = self.mask
        return f"RecurrentMask(shape={m.shape}, p={m.p}, seed={m.seed}, offset={m.offset})"


# ----------------------------------------------------------------------------- masks of variants

class _Draw:
    """An immutable record of one variant's draw: what its backward needs instead of a mask."""

    __slots__ = ("_p", "_seed", "_offset", "_shape", "_input_shape")

    def __init__(self, p, seed, offset, shape, input_shape):
        for name, value in (("_p", float(p)), ("_seed", int(seed)), ("_offset", int(offset)),
                            ("_shape", tuple(int(d) for d in shape)),
                            ("_input_shape", tuple(int(d) for d in input_shape))):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")

    p = property(lambda self: self._p, doc="drop probability")
    seed = property(lambda self: self._seed, doc="64-bit Philox seed")
    offset = property(lambda self: self._offset, doc="word index of the mask's first element")
    shape = property(lambda self: self._shape, doc="logical shape of the mask")
    input_shape = property(lambda self: self._input_shape, doc="shape of the forward's input")
    nbytes = property(lambda self: 0, doc="bytes of mask state held: none, it is regenerated")

    @property
    def size(self) -> int:
        return math.prod(self._shape)

    @property
    def dropout_mask(self) -> DropoutMask:
        """The core mask with the same keep flags (words offset .. offset + size - 1)."""
        return DropoutMask(self._p, self._seed, self._offset, self._shape, self._input_shape)

    def to_array(self, like=None):
        """Boolean keep flags of ``.shape`` (NumPy, or ``like``'s array library)."""
        return self.dropout_mask.to_array(like)

    def _key(self):
        return (type(self), self._p, self._seed, self._offset, self._shape, self._input_shape)

    def __eq__(self, other):
        return self._key() == other._key() if isinstance(other, _Draw) else NotImplemented

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (f"{type(self).__name__}(p={self._p}, seed={self._seed}, offset={self._offset}, "
                f"shape={self._shape}, input_shape={self._input_shape})")


class AlphaDropoutMask(_Draw):
    """The draw of an :func:`alpha_dropout` call, for :func:`alpha_dropout_backward`."""

    __slots__ = ()


class GaussianNoise(_Draw):
    """The draw of a :func:`gaussian_dropout` call, for :func:`gaussian_dropout_backward`."""

    __slots__ = ()

    def to_array(self, like=None):
        """The float64 multipliers ``1 + sigma * z`` of ``.shape`` (NumPy, or ``like``'s library)."""
        import numpy as np

        ones = np.ones(self._shape) if like is None else _backend.backend_for(like).empty(self.size, np.float64)
        ones = ones.reshape(self._shape)
        ones[...] = 1.0
        if self._p == 0 or ones.size == 0:
            return ones
        _variant_backend(ones).gaussian_forward(
            ones, ones, mask_shape=self._shape, seed=self._seed, offset=self._offset,
            sigma=reference.gaussian_sigma(self._p),
        )
        return ones


class BiasDropoutAddMask(_Draw):
    """The draw of a :func:`bias_dropout_add` call (over x's shape) and the bias shape, for
    :func:`bias_dropout_add_backward`."""

    __slots__ = ("_bias_shape",)

    def __init__(self, p, seed, offset, shape, bias_shape):
        super().__init__(p, seed, offset, shape, shape)
        object.__setattr__(self, "_bias_shape", None if bias_shape is None else tuple(bias_shape))

    bias_shape = property(lambda self: self._bias_shape, doc="shape of the bias, or None")

    def _key(self):
        return super()._key() + (self._bias_shape,)


# ----------------------------------------------------------------------------------- alpha dropout

def alpha_dropout(x, p, *, seed=None, offset=0, mask_shape=None, out=None):
    """Alpha dropout for SELU networks (Klambauer et al. 2017): dropped units are set to SELU's
    saturation value alpha' = -1.7580993408473766, then an affine map ``a * v + b`` restores mean 0
    and variance 1 for standard normal input: ``y = where(keep, a x + b, a alpha' + b)`` with
    q = 1 - p, ``a = (q + alpha'^2 q p)^(-1/2)``, ``b = -a p alpha'``. p = 0 returns x; p = 1 zeros.

    Returns ``(y, AlphaDropoutMask)``; backward: :func:`alpha_dropout_backward`.
    """
    backend = _float_input(x)
    p = _validate.probability(p)
    shape = _validate.mask_shape(mask_shape, tuple(x.shape))
    in_place = out is not None and _validate.output(out, x)
    seed, offset = _resolve_seed(seed, offset, math.prod(shape))
    y = backend.empty_like(x) if out is None else out
    if p == 0:
        if not in_place:
            y[...] = x
    elif math.prod(x.shape):
        _variant_backend(x).alpha_forward(
            x, y, mask_shape=shape, seed=seed, offset=offset, threshold=keep_threshold(p),
            affine=reference.alpha_dropout_affine(p),
        )
    return y, AlphaDropoutMask(p, seed, offset, shape, x.shape)


def feature_alpha_dropout(x, p, *, seed=None, offset=0, channel_axis=1, out=None):
    """Alpha dropout of whole channels (PyTorch's FeatureAlphaDropout): one draw per (sample,
    channel) of (N, C, ...) input, as :func:`alpha_dropout` with ``mask_shape`` (N, C, 1, ...)."""
    _float_input(x)
    axis = _check.feature_channel_axis(tuple(x.shape), channel_axis)
    mask_shape = reference.spatial_mask_shape(tuple(x.shape), axis)
    return alpha_dropout(x, p, seed=seed, offset=offset, mask_shape=mask_shape, out=out)


def alpha_dropout_backward(dy, mask, *, out=None):
    """``dx = where(keep, a * dy, 0)`` with the forward's mask regenerated from its seed."""
    if not isinstance(mask, AlphaDropoutMask):
        raise TypeError(f"mask must be a fastdrop.AlphaDropoutMask; got {type(mask).__name__}")
    backend = _float_input(dy, "dy")
    _check.gradient(dy, mask.input_shape)
    in_place = out is not None and _validate.output(out, dy, "dy")
    dx = backend.empty_like(dy) if out is None else out
    if mask.p == 0:
        if not in_place:
            dx[...] = dy
    elif dy.size:
        backend.forward(
            dy, dx, mask_shape=mask.shape, seed=mask.seed, offset=mask.offset,
            threshold=keep_threshold(mask.p), scale=reference.alpha_dropout_affine(mask.p)[0], bits=None,
        )
    return dx


# -------------------------------------------------------------------------------- Gaussian dropout

def gaussian_dropout(x, p, *, seed=None, offset=0, mask_shape=None, out=None):
    """Multiplicative Gaussian noise (Srivastava et al. 2014): ``y = x * (1 + sigma z)`` with
    z ~ N(0, 1) and sigma^2 = p / (1 - p), the variance of inverted dropout's multiplier. z comes
    from Box-Muller on the same Philox stream (element i uses the word pair of ``offset + i``; see
    docs/variants.md). p must be < 1; p = 0 returns x.

    Returns ``(y, GaussianNoise)``; backward: :func:`gaussian_dropout_backward`.
    """
    backend = _float_input(x)
    p = _validate.probability(p)
    if p == 1.0:
        raise ValueError("p must be < 1 for gaussian_dropout: the noise variance p / (1 - p) is infinite at p = 1")
    shape = _validate.mask_shape(mask_shape, tuple(x.shape))
    in_place = out is not None and _validate.output(out, x)
    n = math.prod(shape)
    if seed is not None:
        _validate.offset(offset, n + 1)  # the last element's pair may reach one word further
    seed, offset = _resolve_seed(seed, offset, n)
    y = backend.empty_like(x) if out is None else out
    _gaussian_apply(x, y, p, seed, offset, shape, in_place)
    return y, GaussianNoise(p, seed, offset, shape, x.shape)


def _gaussian_apply(x, y, p, seed, offset, shape, in_place):
    if p == 0:
        if not in_place:
            y[...] = x
    elif math.prod(x.shape):
        _variant_backend(x).gaussian_forward(
            x, y, mask_shape=shape, seed=seed, offset=offset, sigma=reference.gaussian_sigma(p)
        )


def gaussian_dropout_backward(dy, noise, *, out=None):
    """``dx = dy * (1 + sigma z)`` with the forward's noise regenerated from its seed."""
    if not isinstance(noise, GaussianNoise):
        raise TypeError(f"noise must be a fastdrop.GaussianNoise; got {type(noise).__name__}")
    backend = _float_input(dy, "dy")
    _check.gradient(dy, noise.input_shape)
    in_place = out is not None and _validate.output(out, dy, "dy")
    dx = backend.empty_like(dy) if out is None else out
    _gaussian_apply(dy, dx, noise.p, noise.seed, noise.offset, noise.shape, in_place)
    return dx


# ---------------------------------------------------------------------------- bias-dropout-add

def _as_rows(array, rows: int, width: int):
    """A (rows, width) view of array (a copy when its strides do not allow one)."""
    return array.reshape(rows, width)


def bias_dropout_add(x, bias, residual, p, *, seed=None, offset=0, out=None):
    """The transformer pattern ``y = residual + dropout(x + bias)`` in one pass (reads x, bias and
    residual, writes y): ``y = residual + where(keep, (x + bias) * s, 0)``, mask over x.shape.

    bias : None, or an array over x's trailing axes (``bias.shape == x.shape[-bias.ndim:]``).
    residual : x's shape and dtype.
    out : y's array; ``out=residual`` (or ``out=x``) works in place.

    Returns ``(y, BiasDropoutAddMask)``; backward: :func:`bias_dropout_add_backward`.
    """
    backend = _float_input(x)
    _check.residual(residual, x)
    _check.bias(bias, x)
    p = _validate.probability(p)
    if out is not None:
        _check.output(out, x, (residual, "residual"))
    n = math.prod(x.shape)
    seed, offset = _resolve_seed(seed, offset, n)
    y = backend.empty_like(x) if out is None else out
    mask = BiasDropoutAddMask(p, seed, offset, x.shape, None if bias is None else bias.shape)
    if n == 0:
        return y, mask
    width = bias.size if bias is not None else (x.shape[-1] if x.ndim else 1)
    rows = n // width
    target = _as_rows(y, rows, width)
    direct = _validate.overlaps(target, y)  # False when reshaping needed a copy
    result = target if direct else backend.empty_like(target)
    _variant_backend(x).bias_dropout_add(
        _as_rows(x, rows, width), None if bias is None else bias.reshape(width),
        _as_rows(residual, rows, width), result, seed=seed, offset=offset,
        threshold=keep_threshold(p), scale=scale_factor(p),
    )
    if not direct:
        y[...] = result.reshape(y.shape)
    return y, mask


def bias_dropout_add_backward(dy, mask):
    """``(d_x, d_bias, d_residual)``: d_x = dropout's backward of dy (the mask regenerated);
    d_bias = d_x summed over the leading axes (accumulated in float64, rounded to dy's dtype),
    None when the forward had no bias; d_residual = dy itself (the same array, not a copy)."""
    if not isinstance(mask, BiasDropoutAddMask):
        raise TypeError(f"mask must be a fastdrop.BiasDropoutAddMask; got {type(mask).__name__}")
    _float_input(dy, "dy")
    _check.gradient(dy, mask.input_shape)
    dx = dropout_backward(dy, mask.dropout_mask)
    if mask.bias_shape is None:
        return dx, None, dy
    width = math.prod(mask.bias_shape)
    rows = dx.size // width if width else 0
    d_bias = dx.reshape(rows, width).sum(axis=0, dtype="float64").astype(dy.dtype)
    return dx, d_bias.reshape(mask.bias_shape), dy


# ---------------------------------------------------------------------------------- DropConnect

def dropconnect_linear(x, W, b, p, *, seed=None, offset=0):
    """DropConnect (Wan et al. 2013): drop weights, not activations.
    ``y = x @ (W * keep * s).T + b`` with W (out_features, in_features) like torch's Linear, x
    (..., in_features), b None or (out_features,). The masked, scaled weight is made in one fused
    pass (the core dropout kernel over W's shape), then one matmul. One mask per call, shared by
    every sample of the batch (docs/variants.md says why there is no per-sample mode).

    Returns ``(y, mask)``: a :class:`fastdrop.DropoutMask` over W's shape;
    backward: :func:`dropconnect_linear_backward`.
    """
    _float_input(x)
    _check.linear(x, W, b)
    masked, mask = dropout(W, p, seed=seed, offset=offset)
    y = x @ masked.T
    if b is not None:
        y += b
    return y, mask


def dropconnect_linear_backward(dy, x, W, mask):
    """``(dx, dW, db)`` of :func:`dropconnect_linear` for the forward's x and W: the masked weight
    is regenerated from the mask's seed; ``dW = keep * s * (dy^T x)`` over the flattened leading
    axes, made in place by the fused dropout kernel; ``db = dy`` summed over the leading axes."""
    if not isinstance(mask, DropoutMask):
        raise TypeError(f"mask must be the fastdrop.DropoutMask dropconnect_linear returned; got {type(mask).__name__}")
    _float_input(x)
    _check.linear(x, W, None)
    if tuple(W.shape) != mask.input_shape:
        raise ValueError(f"W has shape {tuple(W.shape)}; the mask was drawn for {mask.input_shape}")
    _check.companion(dy, x, "dy", shape=tuple(x.shape[:-1]) + (W.shape[0],))
    masked = dropout(W, mask.p, seed=mask.seed, offset=mask.offset)[0]
    dy_rows = dy.reshape(-1, W.shape[0])
    dW = dy_rows.T @ x.reshape(-1, W.shape[1])
    dropout_backward(dW, mask, out=dW)
    return dy @ masked, dW, dy_rows.sum(axis=0)
