"""PyTorch adapter: drop-in ``Dropout`` modules and functionals that run fastdrop's kernels.

Tensors reach the kernels without a copy through DLPack (``numpy.from_dlpack`` on the CPU,
``cupy.from_dlpack`` on CUDA, with the kernels launched on torch's current stream). Training-mode
calls go through a ``torch.autograd.Function`` that keeps the mask's (seed, offset), never a mask
tensor: backward regenerates the mask. See ``docs/torch.md`` for the behaviour in full (the RNG
stream, half precision, ``torch.compile``). Importing this module imports torch; ``import fastdrop``
does not.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import warnings

import numpy as np
import torch

import fastdrop
from fastdrop import _stream, _validate, reference
from fastdrop._mask import DropoutMask

__all__ = [
    "AlphaDropout",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "FeatureAlphaDropout",
    "alpha_dropout",
    "apply_keep_mask",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "feature_alpha_dropout",
    "seed_from_torch",
]

#: Dtypes each device's fastdrop backend computes in directly; the other float dtype (bfloat16:
#: NumPy has none) makes a float32 round trip, which is exactly the contract's "compute in
#: float32, round once" rule. On CUDA bfloat16 is direct too where CuPy holds ml_dtypes'
#: bfloat16 arrays (CuPy 14+ with ml_dtypes; see _cupy_holds_bfloat16).
_NATIVE_DTYPES = {
    "cpu": (torch.float16, torch.float32, torch.float64),
    "cuda": (torch.float16, torch.float32, torch.float64),
}
#: Whether this process's CuPy gave a bfloat16 view of a CUDA tensor (None: not tried yet).
_cupy_bfloat16: list = [None]
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: SELU's lambda * alpha (Klambauer et al. 2017): alpha dropout's alpha' is minus this.
SELU_NEGATIVE_SATURATION = 1.7580993408473766


# --- argument checks -------------------------------------------------------------------------


def _probability(p) -> float:
    """torch's check and message (ValueError), also rejecting NaN, which torch lets through."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"dropout probability must be a real number; got {p!r} of type {type(p).__name__}")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return float(p)


def _check_input(input, name: str = "input") -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(input).__name__}")
    if input.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor; got layout {input.layout}")
    if input.dtype not in _FLOAT_DTYPES:
        allowed = ", ".join(str(d) for d in _FLOAT_DTYPES)
        raise TypeError(f"{name} must have a floating dtype ({allowed}); got {input.dtype}")
    if input.device.type not in _NATIVE_DTYPES:
        raise TypeError(f"fastdrop runs on CPU and CUDA tensors; {name} is on {input.device}")


def _check_writable_in_place(input) -> None:
    """Like torch: no in-place write to a tensor whose elements share memory (e.g. expand())."""
    if any(stride == 0 and extent > 1 for stride, extent in zip(input.stride(), input.shape)):
        raise RuntimeError(
            "unsupported operation: more than one element of the written-to tensor refers to a "
            "single memory location. Please clone() the tensor before performing the operation."
        )


def _check_seed(seed, offset, generator) -> None:
    """Reject bad draws before anything happens, even in evaluation mode."""
    if generator is None:
        if seed is not None:
            _validate.seed(seed)
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    if seed is not None:
        raise ValueError("pass either seed or generator, not both")
    if offset != 0:
        raise ValueError("offset needs an explicit seed; a generator draws a fresh seed with offset 0")


def _resolve_seed(seed, offset, generator):
    """(seed, offset) for a call that draws: explicit, from a torch generator, or (None, offset)
    for fastdrop's stream. Only called when a mask is drawn, so evaluation leaves generators alone."""
    if generator is None:
        return seed, offset
    return seed_from_torch(generator), 0


def seed_from_torch(generator: torch.Generator | None = None) -> int:
    """A 64-bit fastdrop seed drawn from a torch generator (default: torch's global CPU generator).

    This ties fastdrop to ``torch.manual_seed``: ``dropout(x, seed=seed_from_torch())`` is
    reproducible after ``torch.manual_seed(s)``. Passing ``generator=`` to the modules and
    functionals does the same per call. A CUDA generator draws on its device, which synchronises.
    """
    if generator is None:
        generator = torch.default_generator
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    words = torch.randint(0, 1 << 32, (2,), dtype=torch.int64, generator=generator, device=generator.device)
    low, high = (int(word) for word in words.tolist())
    return low | high << 32


# --- zero-copy exchange with the kernels ---------------------------------------------------------


@contextlib.contextmanager
def _kernel_context(tensor):
    """On CUDA: the tensor's device and torch's current stream become CuPy's, so the kernels
    queue behind torch's work and torch's later work queues behind them, with no sync."""
    if tensor.device.type != "cuda":
        yield
        return
    try:
        import cupy
    except ImportError as error:
        raise ImportError(
            "fastdrop runs CUDA tensors through CuPy, which is not installed: "
            "pip install 'fastdrop[cuda12]' (or [cuda13])"
        ) from error

    index = tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream.cuda_stream, index):
        yield


def _as_array(tensor):
    """A NumPy (CPU) or CuPy (CUDA) array sharing the tensor's memory (call inside _kernel_context).
    A CUDA bfloat16 tensor travels as int16 (DLPack's bfloat16 code needs a recent CuPy) and
    becomes an ``ml_dtypes.bfloat16`` view; only where _cupy_holds_bfloat16 said yes."""
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return np.from_dlpack(tensor)
    import cupy

    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return cupy.from_dlpack(tensor.view(torch.int16)).view(ml_dtypes.bfloat16)
    return cupy.from_dlpack(tensor)


def _cupy_holds_bfloat16(tensor) -> bool:
    """Whether the CUDA kernels can take bfloat16 ``tensor`` as it is: CuPy gives a bfloat16 view
    of it (CuPy 14+ with ml_dtypes installed; older CuPy or no ml_dtypes: the float32 round
    trip). Tried once per process, on the first CUDA bfloat16 tensor (call inside
    _kernel_context)."""
    if _cupy_bfloat16[0] is None:
        try:
            array = _as_array(tensor)
            _cupy_bfloat16[0] = array.dtype.name == "bfloat16" and array.data.ptr == tensor.data_ptr()
        except (ImportError, TypeError, ValueError, NotImplementedError, AttributeError, BufferError):
            _cupy_bfloat16[0] = False
    return _cupy_bfloat16[0]


def _native(tensor) -> bool:
    """Whether the device's backend computes in the tensor's dtype directly."""
    if tensor.dtype in _NATIVE_DTYPES[tensor.device.type]:
        return True
    if tensor.dtype != torch.bfloat16 or tensor.device.type != "cuda":
        return False
    if _cupy_bfloat16[0] is None:  # the first CUDA bfloat16 tensor: try CuPy once
        with _kernel_context(tensor):
            _cupy_holds_bfloat16(tensor)
    return _cupy_bfloat16[0]


def _run_kernel(kernel, input, out, fresh=False):
    """Run ``kernel(x_array, out_array)`` on tensors; ``out`` may be ``input`` (in place).
    ``fresh``: the caller has just allocated ``out`` (``torch.empty_like``), which the CPU
    backend then writes as it writes its own new outputs (``_numba_backend.mark_fresh``).

    Dtypes the device's backend lacks compute through a float32 copy and round once on the way
    back, which is the contract's rule for half precision, so the result is the same."""
    if input.is_neg():  # a lazily negated view (torch._neg_view): DLPack needs real values
        resolved = input.resolve_neg()
        result = _run_kernel(kernel, resolved, resolved if out is input else out, fresh)
        if out is input:
            input.copy_(resolved)
        return result
    if not _native(input):
        input32 = input.float()
        out32 = input32 if out is input else torch.empty_like(input32)
        result = _run_kernel(kernel, input32, out32, fresh=out is not input)
        out.copy_(out32)
        return result
    with _kernel_context(input):
        x_array = _as_array(input)
        out_array = x_array if out is input else _as_array(out)
        if fresh and out is not input and isinstance(out_array, np.ndarray):
            from fastdrop import _numba_backend

            _numba_backend.mark_fresh(out_array)
        return kernel(x_array, out_array)


def _forward(input, p, seed, offset, mask_shape, inplace):
    """fastdrop's fused forward on a tensor; returns (output, DropoutMask)."""
    out = input if inplace else torch.empty_like(input)

    def kernel(x, y):
        return fastdrop.dropout(x, p, seed=seed, offset=offset, mask_shape=mask_shape, out=y)[1]

    return out, _run_kernel(kernel, input, out, fresh=not inplace)


def _backward(grad, mask):
    """``where(keep, grad / (1 - p), 0)`` with the mask regenerated from its seed."""
    out = torch.empty_like(grad)
    _run_kernel(lambda dy, dx: fastdrop.dropout_backward(dy, mask, out=dx), grad, out, fresh=True)
    return out


def _keep_tensor(mask, like):
    """The mask's boolean keep flags as a tensor on ``like``'s device (shape ``mask.shape``)."""
    if like.device.type == "cpu":
        return torch.from_numpy(mask.to_array())
    with _kernel_context(like):
        import cupy

        flags = mask.to_array(like=cupy.empty(0, dtype=cupy.uint8))
        return torch.from_dlpack(flags.view(cupy.uint8)).bool()


# --- autograd ---------------------------------------------------------------------------------


class _MaskedScale(torch.autograd.Function):
    """``dx = where(keep, dy * scale, 0)`` with ``keep`` regenerated from a DropoutMask.

    The backward of every fastdrop dropout here. It is linear and self-adjoint, so its own
    backward is itself: double backward works and still saves no mask. ``scale`` is
    ``"dropout"`` (the contract's 1 / (1 - p)) or ``"alpha"`` (alpha dropout's factor a).
    """

    @staticmethod
    def forward(ctx, grad, mask, scale):
        ctx.mask, ctx.scale = mask, scale
        return _backward(grad, mask) if scale == "dropout" else _alpha_backward(grad, mask)

    @staticmethod
    def backward(ctx, grad_grad):
        return _MaskedScale.apply(grad_grad, ctx.mask, ctx.scale), None, None


class _DropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, p, seed, offset, mask_shape, inplace):
        out, mask = _forward(input, p, seed, offset, mask_shape, inplace)
        ctx.mask = mask  # (p, seed, offset, shape): a few integers, no tensor
        if inplace:
            ctx.mark_dirty(input)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        return _MaskedScale.apply(grad_output, ctx.mask, "dropout"), None, None, None, None, None


class _AlphaDropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, p, seed, offset, mask_shape, inplace):
        out, mask = _alpha_forward(input, p, seed, offset, mask_shape, inplace)
        ctx.mask = mask
        if inplace:
            ctx.mark_dirty(input)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        return _MaskedScale.apply(grad_output, ctx.mask, "alpha"), None, None, None, None, None


# --- the functionals --------------------------------------------------------------------------

_outside_graph_cache: dict = {}


def _outside_graph(function):
    """``function`` wrapped in ``torch.compiler.disable``, made on first use under torch.compile
    (dynamo is loaded by then; importing it eagerly would add a second to ``import fastdrop.torch``)."""
    wrapped = _outside_graph_cache.get(function)
    if wrapped is None:
        wrapped = torch.compiler.disable(function, reason="fastdrop kernels run outside the graph")
        _outside_graph_cache[function] = wrapped
    return wrapped


def _full_mask(input):
    return tuple(input.shape)


def _dropout(input, p, training, inplace, seed, offset, generator, mask_shape_of):
    _check_input(input)
    p = _probability(p)
    _check_seed(seed, offset, generator)
    if not training or p == 0.0 or input.numel() == 0:
        return input  # as torch does: the input itself
    if inplace:
        _check_writable_in_place(input)
    seed, offset = _resolve_seed(seed, offset, generator)
    mask_shape = mask_shape_of(input)
    if torch.is_grad_enabled() and input.requires_grad:
        return _DropoutFunction.apply(input, p, seed, offset, mask_shape, inplace)
    out, _ = _forward(input, p, seed, offset, mask_shape, inplace)
    if inplace:
        torch.autograd.graph.increment_version(input)  # the kernel wrote behind autograd's back
    return out


def _call(function, *args):
    if torch.compiler.is_compiling():
        return _outside_graph(function)(*args)
    return function(*args)


def dropout(input, p=0.5, training=True, inplace=False, *, seed=None, offset=0, generator=None):
    """``torch.nn.functional.dropout`` on fastdrop's fused kernels.

    ``seed``/``offset`` pick the Philox draw (element i uses word ``offset + i``); ``seed=None``
    takes the next draw from fastdrop's stream (:func:`fastdrop.manual_seed`, not touched by
    ``torch.manual_seed``); ``generator=`` draws the seed from a torch generator instead.
    """
    return _call(_dropout, input, p, training, inplace, seed, offset, generator, _full_mask)


def _channel_mask(input, batched: bool):
    """One draw per (sample, channel): mask shape (N, C, 1, ...), or (C, 1, ...) unbatched."""
    lead = 2 if batched else 1
    return tuple(input.shape[:lead]) + (1,) * (input.dim() - lead)


def _rank_error(name: str, ranks: tuple[int, int], spatial: int, got: int) -> RuntimeError:
    return RuntimeError(
        f"{name}: expected a {ranks[0]}D or {ranks[1]}D input ({spatial} spatial dimension"
        f"{'s' if spatial > 1 else ''}, a channel dimension and an optional batch dimension), "
        f"but received a {got}D input; use fastdrop.torch.dropout for element-wise dropout"
    )


def _spatial_dropout(input, p, training, inplace, seed, offset, generator, spatial: int):
    if isinstance(input, torch.Tensor):
        rank = input.dim()
        if rank not in (spatial + 1, spatial + 2):
            raise _rank_error(f"dropout{spatial}d", (spatial + 1, spatial + 2), spatial, rank)
        batched = rank == spatial + 2
        if spatial == 2 and not batched:
            # torch's historical behaviour, kept for drop-in compatibility (pytorch issue 77081)
            warnings.warn(
                "dropout2d: received a 3D input; like torch.nn.functional.dropout2d, it is taken as "
                "(N, C, L) and whole (sample, channel) rows are dropped. Use dropout1d for that.",
                UserWarning,
                stacklevel=3,
            )
            batched = True
    else:
        batched = True  # _dropout raises the TypeError

    def mask_shape_of(tensor):
        return _channel_mask(tensor, batched)

    return _call(_dropout, input, p, training, inplace, seed, offset, generator, mask_shape_of)


def dropout1d(input, p=0.5, training=True, inplace=False, *, seed=None, offset=0, generator=None):
    """Drop whole channels of (N, C, L) or (C, L) input: one draw per (sample, channel)."""
    return _spatial_dropout(input, p, training, inplace, seed, offset, generator, 1)


def dropout2d(input, p=0.5, training=True, inplace=False, *, seed=None, offset=0, generator=None):
    """Drop whole channels of (N, C, H, W) input (3D input: see the warning, as in torch)."""
    return _spatial_dropout(input, p, training, inplace, seed, offset, generator, 2)


def dropout3d(input, p=0.5, training=True, inplace=False, *, seed=None, offset=0, generator=None):
    """Drop whole channels of (N, C, D, H, W) or (C, D, H, W) input."""
    return _spatial_dropout(input, p, training, inplace, seed, offset, generator, 3)


# --- alpha dropout ----------------------------------------------------------------------------


def _alpha_constants(p: float):
    """(a, kept shift, dropped value): kept ``a * x + shift``, dropped the constant, with
    ``a = ((1 - p) (1 + alpha'^2 p))^(-1/2)`` and alpha' SELU's negative saturation, so unit-normal
    input keeps mean 0 and variance 1. p = 1 drops everything to 0, as torch does (gradient 0)."""
    affine = getattr(reference, "alpha_dropout_affine", None)
    if affine is not None:  # fastdrop's own constants, so both paths round alike
        return affine(p)
    if p >= 1.0:
        return 0.0, 0.0, 0.0
    alpha_prime = -SELU_NEGATIVE_SATURATION
    a = 1.0 / math.sqrt((1.0 - p) * (1.0 + alpha_prime * alpha_prime * p))
    shift = -a * p * alpha_prime
    return a, shift, a * alpha_prime + shift


def _fastdrop_alpha():
    """fastdrop's alpha dropout kernels (forward, backward, mask class) when this fastdrop has them
    with the expected keywords; None makes the adapter compose it from torch ops and the keep mask."""
    names = ("alpha_dropout", "alpha_dropout_backward", "AlphaDropoutMask")
    functions = [getattr(fastdrop, name, None) for name in names]
    if any(function is None for function in functions):
        return None
    try:
        parameters = inspect.signature(functions[0]).parameters
    except (TypeError, ValueError):
        return None
    if not all(name in parameters for name in ("seed", "offset", "mask_shape", "out")):
        return None
    return functions


def _alpha_forward(input, p, seed, offset, mask_shape, inplace):
    mask = DropoutMask(p, seed, offset, mask_shape, input.shape)
    out = input if inplace else torch.empty_like(input)
    if p == 1.0:
        return out.zero_(), mask  # as torch: everything dropped
    kernels = _fastdrop_alpha()
    if kernels is not None:

        def run(x, y):
            kernels[0](x, p, seed=seed, offset=offset, mask_shape=mask_shape, out=y)

        _run_kernel(run, input, out, fresh=not inplace)
        return out, mask
    a, shift, dropped_value = _alpha_constants(p)
    keep = _keep_tensor(mask, input)
    torch.mul(input, a, out=out)
    out.add_(shift).masked_fill_(~keep, dropped_value)
    return out, mask


def _alpha_backward(grad, mask):
    """``where(keep, a * grad, 0)``: fastdrop's alpha backward kernel, or torch ops on the keep mask."""
    a = _alpha_constants(mask.p)[0]
    kernels = _fastdrop_alpha()
    if kernels is None or mask.p == 1.0:
        keep = _keep_tensor(mask, grad)
        return grad.mul(a).masked_fill_(~keep, 0.0)
    draw = kernels[2](mask.p, mask.seed, mask.offset, mask.shape, mask.input_shape)
    out = torch.empty_like(grad)
    _run_kernel(lambda dy, dx: kernels[1](dy, draw, out=dx), grad, out, fresh=True)
    return out


def _alpha_dropout(input, p, training, inplace, seed, offset, generator, mask_shape_of):
    _check_input(input)
    p = _probability(p)
    _check_seed(seed, offset, generator)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if inplace:
        _check_writable_in_place(input)
    seed, offset = _resolve_seed(seed, offset, generator)
    mask_shape = mask_shape_of(input)
    n_words = math.prod(mask_shape)
    if seed is None:
        if offset != 0:
            raise ValueError("offset needs an explicit seed; with seed=None fastdrop's stream picks both")
        seed, offset = _stream.take(n_words)
    else:
        offset = _validate.offset(offset, n_words)
    if torch.is_grad_enabled() and input.requires_grad:
        return _AlphaDropoutFunction.apply(input, p, seed, offset, mask_shape, inplace)
    out, _ = _alpha_forward(input, p, seed, offset, mask_shape, inplace)
    if inplace:
        torch.autograd.graph.increment_version(input)
    return out


def alpha_dropout(input, p=0.5, training=False, inplace=False, *, seed=None, offset=0, generator=None):
    """``torch.nn.functional.alpha_dropout`` (note torch's default ``training=False``) with
    fastdrop's mask: kept units ``a * x + b``, dropped ones SELU's saturation value, mapped the same way."""
    return _call(_alpha_dropout, input, p, training, inplace, seed, offset, generator, _full_mask)


def feature_alpha_dropout(input, p=0.5, training=False, inplace=False, *, seed=None, offset=0, generator=None):
    """Alpha dropout of whole channels: one draw per (sample, channel) of (N, C, ...) input."""
    if isinstance(input, torch.Tensor) and input.dim() < 2:
        raise RuntimeError(f"feature_alpha_dropout: expected a (N, C, ...) input; got {input.dim()}D")

    def mask_shape_of(tensor):
        return _channel_mask(tensor, True)

    return _call(_alpha_dropout, input, p, training, inplace, seed, offset, generator, mask_shape_of)


# --- modules ------------------------------------------------------------------------------------


class _FastdropModule:
    """What every module here adds to its torch base class: strict p, an optional generator."""

    def _setup(self, p, generator):
        _probability(p)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        self.generator = generator


class Dropout(_FastdropModule, torch.nn.Dropout):
    """``torch.nn.Dropout`` on fastdrop's kernels (an ``isinstance`` of it, same repr and state).

    ``generator``: draw each call's seed from this torch generator instead of fastdrop's stream.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, *, generator=None):
        super().__init__(p, inplace)
        self._setup(p, generator)

    def forward(self, input):
        return dropout(input, self.p, self.training, self.inplace, generator=self.generator)


class Dropout1d(_FastdropModule, torch.nn.Dropout1d):
    """``torch.nn.Dropout1d``: whole channels of (N, C, L) or (C, L) input."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, generator=None):
        super().__init__(p, inplace)
        self._setup(p, generator)

    def forward(self, input):
        return dropout1d(input, self.p, self.training, self.inplace, generator=self.generator)


class Dropout2d(_FastdropModule, torch.nn.Dropout2d):
    """``torch.nn.Dropout2d``: whole channels of (N, C, H, W) input."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, generator=None):
        super().__init__(p, inplace)
        self._setup(p, generator)

    def forward(self, input):
        return dropout2d(input, self.p, self.training, self.inplace, generator=self.generator)


class Dropout3d(_FastdropModule, torch.nn.Dropout3d):
    """``torch.nn.Dropout3d``: whole channels of (N, C, D, H, W) or (C, D, H, W) input."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, generator=None):
        super().__init__(p, inplace)
        self._setup(p, generator)

    def forward(self, input):
        return dropout3d(input, self.p, self.training, self.inplace, generator=self.generator)


class AlphaDropout(_FastdropModule, torch.nn.AlphaDropout):
    """``torch.nn.AlphaDropout`` for SELU networks, with fastdrop's mask."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, generator=None):
        super().__init__(p, inplace)
        self._setup(p, generator)

    def forward(self, input):
        return alpha_dropout(input, self.p, self.training, self.inplace, generator=self.generator)


class FeatureAlphaDropout(_FastdropModule, torch.nn.FeatureAlphaDropout):
    """``torch.nn.FeatureAlphaDropout``: alpha dropout of whole channels."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, generator=None):
        super().__init__(p, inplace)
        self._setup(p, generator)

    def forward(self, input):
        return feature_alpha_dropout(input, self.p, self.training, self.inplace, generator=self.generator)


# --- validation against PyTorch's own masks -----------------------------------------------------


def apply_keep_mask(input, keep, p):
    """fastdrop's scale-and-select with an external keep mask: ``where(keep, input * s, 0)``.

    ``keep`` is a bool tensor that broadcasts to ``input`` (e.g. the mask from
    ``torch.ops.aten.native_dropout``); ``s`` is the contract's 1 / (1 - p). The flags are packed
    the contract's way and run through fastdrop's packed-bits kernel (the path of
    ``dropout_backward`` with stored bits), so for finite input the result equals PyTorch's
    output for that mask (see docs/torch.md for non-finite input and half precision on the CPU).
    """
    _check_input(input)
    p = _probability(p)
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
        raise TypeError(f"keep must be a bool tensor; got {getattr(keep, 'dtype', type(keep).__name__)}")
    if keep.device != input.device:
        raise ValueError(f"keep is on {keep.device}; input is on {input.device}")
    mask_shape = _validate.mask_shape(tuple(keep.shape), tuple(input.shape))
    flat = keep.reshape(mask_shape).contiguous().reshape(-1)
    out = torch.empty_like(input)
    if input.numel() == 0:
        return out
    with _kernel_context(input):
        if input.device.type == "cpu":
            bits = np.packbits(np.from_dlpack(flat), bitorder="little")
        else:
            import cupy

            bits = cupy.packbits(cupy.from_dlpack(flat.view(torch.uint8)), bitorder="little")
    mask = DropoutMask(p, 0, 0, mask_shape, tuple(input.shape), bits)
    _run_kernel(lambda x, y: fastdrop.dropout_backward(x, mask, out=y), input, out, fresh=True)
    return out
