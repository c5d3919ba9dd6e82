"""Argument checks of the dropout variants (``fastdrop.variants``), on top of ``_validate``.
Each raises before anything is written, naming the argument, its value and what is allowed."""

from __future__ import annotations

import operator

from fastdrop import _backend, _validate


def axis(value, ndim: int, name: str) -> int:
    """An axis of an ndim-array, negative values counted from the end; returned in [0, ndim)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer axis; got {value!r}")
    try:
        index = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer axis; got {value!r} of type {type(value).__name__}") from None
    if not -ndim <= index < ndim:
        raise ValueError(f"{name}={index} is out of range for an input of rank {ndim}")
    return index % ndim


def spatial_channel_axis(shape, channel_axis, spatial_dims) -> int:
    """Input must be batched feature maps (N, C, *spatial) or (N, *spatial, C) with 1 to 3 spatial
    axes (or exactly ``spatial_dims``); returns the channel axis in [1, ndim)."""
    ndim = len(shape)
    if spatial_dims is not None:
        if isinstance(spatial_dims, bool) or spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3; got {spatial_dims!r}")
        if ndim != spatial_dims + 2:
            raise ValueError(
                f"spatial_dropout with spatial_dims={spatial_dims} needs batched input of rank "
                f"{spatial_dims + 2} (N, C, {spatial_dims} spatial axes); got rank {ndim}, shape "
                f"{tuple(shape)} (for one unbatched sample add a batch axis: x[None])"
            )
    elif not 3 <= ndim <= 5:
        raise ValueError(
            f"spatial_dropout needs batched feature maps of rank 3, 4 or 5 (N, C, 1 to 3 spatial "
            f"axes); got rank {ndim}, shape {tuple(shape)} (for one unbatched sample add a batch "
            "axis: x[None]; for (N, C) input use dropout)"
        )
    index = axis(channel_axis, ndim, "channel_axis")
    if index == 0:
        raise ValueError("channel_axis must not be 0: axis 0 is the batch axis (one draw per sample and channel)")
    return index


def feature_channel_axis(shape, channel_axis) -> int:
    """(N, C, ...) input of rank >= 2 for feature-wise masks; returns the channel axis in [1, ndim)."""
    if len(shape) < 2:
        raise ValueError(f"x must have a batch axis and a channel axis (rank >= 2); got shape {tuple(shape)}")
    index = axis(channel_axis, len(shape), "channel_axis")
    if index == 0:
        raise ValueError("channel_axis must not be 0: axis 0 is the batch axis (one draw per sample and channel)")
    return index


def time_axis(shape, value) -> int:
    if len(shape) < 2:
        raise ValueError(
            f"variational_dropout needs a time axis and at least one other axis (rank >= 2); got "
            f"shape {tuple(shape)}"
        )
    return axis(value, len(shape), "time_axis")


def shape_tuple(value, name: str) -> tuple[int, ...]:
    try:
        dims = tuple(operator.index(d) for d in value)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of integers; got {value!r}") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"{name} must not have negative extents; got {dims}")
    return dims


def companion(array, x, name: str, *, shape=None) -> None:
    """``array`` must live in x's library, have x's dtype and (unless None) the given shape."""
    if _backend.array_library(array) != _backend.array_library(x) or not hasattr(array, "dtype"):
        raise TypeError(f"{name} must be a {type(x).__name__} like x; got {type(array).__name__}")
    if array.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {array.dtype}; x has dtype {x.dtype}")
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}; expected {tuple(shape)}")


def bias(value, x) -> None:
    """None, or an array broadcast over x's trailing axes: bias.shape == x.shape[-bias.ndim:]."""
    if value is None:
        return
    companion(value, x, "bias")
    shape, x_shape = tuple(value.shape), tuple(x.shape)
    if not 1 <= len(shape) <= len(x_shape) or x_shape[len(x_shape) - len(shape):] != shape:
        raise ValueError(
            f"bias has shape {shape}; it must match x's trailing axes, e.g. ({x_shape[-1] if x_shape else 1},) "
            f"for x of shape {x_shape}"
        )


def residual(value, x) -> None:
    if not hasattr(value, "shape"):
        raise TypeError(f"residual must be an array like x; got {type(value).__name__}")
    companion(value, x, "residual")
    if tuple(value.shape) != tuple(x.shape):
        raise ValueError(f"residual has shape {tuple(value.shape)}; x has shape {tuple(x.shape)} (they must match)")


def linear(x, weight, bias_value) -> None:
    """x (..., in_features), W (out_features, in_features), b None or (out_features,)."""
    companion(weight, x, "W")
    if weight.ndim != 2:
        raise ValueError(f"W must be 2-D (out_features, in_features); got shape {tuple(weight.shape)}")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x has shape {tuple(x.shape)}; its last axis must be W's in_features = {weight.shape[1]}"
        )
    if bias_value is not None:
        companion(bias_value, x, "b", shape=(weight.shape[0],))


def gradient(dy, expected_shape, name: str = "dy") -> None:
    if not hasattr(dy, "shape"):
        raise TypeError(f"{name} must be an array; got {type(dy).__name__}")
    if tuple(dy.shape) != tuple(expected_shape):
        raise ValueError(f"{name} has shape {tuple(dy.shape)}; the forward's output had shape {tuple(expected_shape)}")


def output(out, x, *others) -> bool:
    """``_validate.output`` against x and each (array, name) in ``others``: out may be exactly one
    of them (in place) or disjoint from all. Returns True when out is x itself."""
    in_place = _validate.output(out, x)
    for array, name in others:
        _validate.output(out, array, name)
    return in_place
