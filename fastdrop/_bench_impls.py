"""The implementations the benchmark puts side by side, and the bytes each operation must move.

Every implementation is prepared for one :class:`Workload` (an op at one size, dtype and device) and
returns a :class:`Prepared`: a no-argument ``run`` that performs the operation once, and the mask
state the implementation keeps per call (what a backward pass would need).

Implementations, by name:

``fastdrop``      the public API, allocating its output as a normal call does.
``fastdrop_out``  the same call writing into a preallocated ``out=`` (what the copy does).
``numpy``         idiomatic NumPy, ``x * (rng.random(x.shape) >= p) / (1 - p)``, holding the boolean
                  keep array that a backward pass would need (``cupy`` is the same code on a GPU).
``reference``     the :mod:`fastdrop.reference` oracle (CPU, small sizes only: it is slow).
``torch``         ``torch.nn.functional.dropout`` (``dropout2d`` for channels) on an input that
                  requires grad, so that it keeps what its backward needs, as in training. It has
                  no packed-bit mask, so it has no ``_bits`` rows.
``copy``          the roofline: a copy of the same array. CPU: a Numba ``prange`` copy on all cores
                  into a preallocated array; GPU: a device-to-device memcpy. ``copy_alloc`` (CPU) is
                  the same copy into a fresh ``np.empty_like`` array, the counterpart of a call that
                  allocates its output: both allocate alike, so above glibc's mmap threshold (at most
                  32 MiB) both pay the kernel's zeroing of new pages on first touch, and below it
                  both may reuse freed memory. ``copyto`` is ``np.copyto`` (one thread).

CuPy and PyTorch are imported here only when an implementation that needs them is prepared.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numba
import numpy as np

#: Operations, in table order. ``copy`` is the roofline and is measured for every (n, dtype).
OPS = ("forward", "backward", "forward_bits", "backward_bits", "spatial", "bias_dropout_add")
DEFAULT_OPS = ("forward", "backward", "forward_bits", "backward_bits", "spatial", "bias_dropout_add")
COPY_OP = "copy"

CPU_IMPLS = ("fastdrop", "fastdrop_out", "numpy", "reference", "torch")
GPU_IMPLS = ("fastdrop", "fastdrop_out", "cupy", "torch")
COPY_IMPLS = {"cpu": ("copy", "copy_alloc", "copyto"), "gpu": ("copy",)}

#: The oracle runs only up to this many elements (it is pure NumPy in uint64, ~100x slower).
REFERENCE_MAX_N = 1 << 16
#: Spatial op: planes of 16 x 16 and up to 64 channels; bias-dropout-add: rows of 1024 (when n allows).
SPATIAL_PLANE = 256
SPATIAL_CHANNELS = 64
HIDDEN = 1024

ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

#: Ops benchmarked with ``out=`` too.
_OUT_OPS = ("forward", "backward", "forward_bits", "backward_bits", "spatial", "bias_dropout_add")


class Unavailable(Exception):
    """This implementation cannot run this workload here; the message says why."""


@dataclass
class Prepared:
    run: Callable[[], Any]
    #: Bytes of mask state the implementation keeps (forward) or reads (backward) per call.
    mask_bytes: int
    note: str = ""
    #: True when preparing already made one full call (so the timer needs no warm-up call).
    warmed: bool = False


def op_geometry(op: str, n: int) -> dict:
    """Shapes used for an op at n elements: the input, the mask and (bias-dropout-add) the bias."""
    if op == "spatial":
        plane = math.gcd(n, SPATIAL_PLANE)
        channels = math.gcd(n // plane, SPATIAL_CHANNELS)
        batch = n // plane // channels
        side = math.isqrt(plane)
        height, width = (side, side) if side * side == plane else (1, plane)
        shape = (batch, channels, height, width)
        return {"shape": shape, "mask_shape": (batch, channels, 1, 1), "bias_shape": None}
    if op == "bias_dropout_add":
        hidden = math.gcd(n, HIDDEN)
        return {"shape": (n // hidden, hidden), "mask_shape": (n // hidden, hidden), "bias_shape": (hidden,)}
    return {"shape": (n,), "mask_shape": (n,), "bias_shape": None}


def bytes_moved(op: str, n: int, itemsize: int, mask_bytes: int) -> int:
    """Bytes the operation must move: its inputs and outputs, plus the mask state it stores/reads."""
    if op == "bias_dropout_add":
        hidden = op_geometry(op, n)["bias_shape"][0]
        return 3 * n * itemsize + hidden * itemsize + mask_bytes
    return 2 * n * itemsize + mask_bytes


@numba.njit(parallel=True, cache=True, nogil=True)
def parallel_copy(source, destination):
    """The CPU roofline: every core copies its share of a 1-D contiguous array."""
    for i in numba.prange(source.size):
        destination[i] = source[i]


@dataclass
class Workload:
    """Input arrays for one (op, n, dtype, device), made once per (n, dtype) and shared by ops."""

    op: str
    n: int
    dtype: str
    device: str
    seed: int = 20261127
    #: Flat arrays by name, shared by the workloads of one (n, dtype, device).
    arrays: dict = field(default_factory=dict, repr=False)

    @property
    def geometry(self) -> dict:
        return op_geometry(self.op, self.n)

    @property
    def xp(self):
        if self.device == "gpu":
            import cupy

            return cupy
        return np

    def array(self, name: str):
        """'x', 'dy' (also the residual) or 'bias', in the device's array library and op's shape."""
        shape = self.geometry["bias_shape"] if name == "bias" else self.geometry["shape"]
        flat = self.arrays.get(name)
        if flat is None:
            flat = self._make(name, math.prod(shape))
            self.arrays[name] = flat
        return flat.reshape(shape)

    def _make(self, name: str, size: int):
        xp = self.xp
        dtype = array_dtype(self.dtype)
        rng = xp.random.default_rng(self.seed + {"x": 0, "dy": 1, "bias": 2}[name])
        values = rng.standard_normal(size, dtype=np.float32)
        return values.astype(dtype)

    def torch_array(self, name: str):
        """A new torch tensor sharing the array's memory (a fresh object each call, so that setting
        requires_grad on it leaves the others alone); made by torch itself on a GPU when CuPy or
        DLPack cannot carry the dtype (bfloat16)."""
        import torch

        if self.device == "cpu":
            return torch.from_numpy(self.array(name))
        try:
            return torch.from_dlpack(self.array(name))
        except (TypeError, ValueError, RuntimeError, BufferError):
            key = "torch:" + name
            shape = self.geometry["bias_shape"] if name == "bias" else self.geometry["shape"]
            if key not in self.arrays:
                generator = torch.Generator(device="cuda").manual_seed(self.seed)
                self.arrays[key] = torch.randn(math.prod(shape), dtype=getattr(torch, self.dtype), device="cuda",
                                               generator=generator)
            return self.arrays[key].view(shape).detach()


def array_dtype(name: str):
    """The NumPy/CuPy dtype for a dtype name; bfloat16 comes from ml_dtypes (TypeError if absent)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as error:
            raise TypeError("bfloat16 arrays need the ml_dtypes package") from error
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def applies(impl: str, op: str, n: int) -> bool:
    """Whether a row is worth measuring at all (rows that apply but cannot run here are skipped
    with a reason instead): ``out=`` only where fastdrop takes it, the oracle only at small sizes,
    and no PyTorch ``_bits`` rows (it has no packed mask; tables compare with its plain rows)."""
    if impl == "fastdrop_out":
        return op in _OUT_OPS
    if impl == "reference":
        return n <= REFERENCE_MAX_N and op in ("forward", "backward", "spatial", "bias_dropout_add")
    if impl == "torch":
        return not op.endswith("_bits")
    return True


def prepare(impl: str, workload: Workload, p: float) -> Prepared:
    """``run`` and mask bytes of one implementation on one workload; Unavailable if it cannot."""
    if workload.op == COPY_OP:
        return _COPIES[impl](workload)
    return _IMPLS[impl](workload, p)


# --- fastdrop ---------------------------------------------------------------------------------


def _fastdrop(workload: Workload, p: float, *, out: bool = False) -> Prepared:
    import fastdrop

    op, seed = workload.op, workload.seed
    if out and op not in _OUT_OPS:
        raise Unavailable(f"out= is benchmarked for {', '.join(_OUT_OPS)} only")
    if op == "bias_dropout_add" and not hasattr(fastdrop, "bias_dropout_add"):
        raise Unavailable("this fastdrop has no bias_dropout_add yet")
    try:
        x = workload.array("x")
        fastdrop.dropout(x[:1], p, seed=seed)  # the backend imports and the dtype is accepted
    except (ImportError, TypeError, ValueError, NotImplementedError) as error:
        raise Unavailable(f"fastdrop cannot run {workload.dtype} on {workload.device}: {error}") from None
    xp = workload.xp
    target = xp.empty_like(x) if out else None

    if op in ("forward", "forward_bits", "spatial"):
        mask_shape = workload.geometry["mask_shape"] if op == "spatial" else None
        keep_bits = op == "forward_bits"

        def run():
            return fastdrop.dropout(x, p, seed=seed, mask_shape=mask_shape, keep_bits=keep_bits, out=target)

        return Prepared(run, (workload.n + 7) // 8 if keep_bits else 0)
    if op in ("backward", "backward_bits"):
        _, mask = fastdrop.dropout(x, p, seed=seed, keep_bits=op == "backward_bits")
        dy = workload.array("dy")
        return Prepared(lambda: fastdrop.dropout_backward(dy, mask, out=target), mask.nbytes)
    bias, residual = workload.array("bias"), workload.array("dy")
    if out and "out" not in inspect.signature(fastdrop.bias_dropout_add).parameters:
        raise Unavailable("this fastdrop.bias_dropout_add takes no out=")
    keywords = {"out": target} if out else {}
    return Prepared(lambda: fastdrop.bias_dropout_add(x, bias, residual, p, seed=seed, **keywords), 0)


# --- idiomatic NumPy (CuPy on a GPU) -----------------------------------------------------------


def _idiomatic(workload: Workload, p: float) -> Prepared:
    xp, op, n = workload.xp, workload.op, workload.n
    try:
        x = workload.array("x")
    except (TypeError, ValueError, NotImplementedError) as error:
        raise Unavailable(f"{xp.__name__} cannot hold {workload.dtype}: {error}") from None
    rng = xp.random.default_rng(workload.seed)
    scale_note = "y = x * keep / (1 - p) with keep = rng.random(shape) >= p, kept for backward"

    if op == "forward":

        def run():
            keep = rng.random(x.shape) >= p
            return x * keep / (1 - p), keep

        return Prepared(run, n, scale_note)
    if op == "forward_bits":

        def run():
            keep = rng.random(x.shape) >= p
            return x * keep / (1 - p), xp.packbits(keep.reshape(-1), bitorder="little")

        return Prepared(run, (n + 7) // 8, "as forward, then packbits(keep, bitorder='little')")
    if op == "spatial":
        mask_shape = workload.geometry["mask_shape"]

        def run():
            keep = rng.random(mask_shape) >= p
            return x * keep / (1 - p), keep

        return Prepared(run, math.prod(mask_shape), "keep drawn over (N, C, 1, 1)")
    dy = workload.array("dy")
    if op == "backward":
        keep = rng.random(x.shape) >= p
        return Prepared(lambda: dy * keep / (1 - p), keep.nbytes, "dy * keep / (1 - p)")
    if op == "backward_bits":
        bits = xp.packbits(rng.random(n) >= p, bitorder="little")

        def run():
            return dy * xp.unpackbits(bits, bitorder="little")[:n].view(bool) / (1 - p)

        return Prepared(run, bits.nbytes, "dy * unpackbits(bits) / (1 - p)")
    bias = workload.array("bias")

    def run():
        keep = rng.random(x.shape) >= p
        return dy + (x + bias) * keep / (1 - p), keep

    return Prepared(run, n, "residual + (x + bias) * keep / (1 - p)")


# --- the oracle --------------------------------------------------------------------------------


def _reference(workload: Workload, p: float) -> Prepared:
    from fastdrop import reference

    op, seed = workload.op, workload.seed
    if workload.device != "cpu":
        raise Unavailable("the reference runs on NumPy arrays only")
    if workload.n > REFERENCE_MAX_N:
        raise Unavailable(f"the reference is only run up to n = 2^{REFERENCE_MAX_N.bit_length() - 1}")
    x = workload.array("x")
    if op == "forward":
        return Prepared(lambda: reference.dropout(x, p, seed=seed), 0)
    if op == "spatial":
        mask_shape = workload.geometry["mask_shape"]
        return Prepared(lambda: reference.dropout(x, p, seed=seed, mask_shape=mask_shape), 0)
    if op == "backward":
        dy = workload.array("dy")
        return Prepared(lambda: reference.dropout_backward(dy, p, seed=seed), 0)
    if op == "bias_dropout_add" and hasattr(reference, "bias_dropout_add"):
        bias, residual = workload.array("bias"), workload.array("dy")
        return Prepared(lambda: reference.bias_dropout_add(x, bias, residual, p, seed=seed), 0)
    raise Unavailable(f"the reference has no {op}")


# --- PyTorch -----------------------------------------------------------------------------------


def _torch(workload: Workload, p: float) -> Prepared:
    try:
        import torch
        import torch.nn.functional as functional
    except ImportError as error:
        raise Unavailable(f"PyTorch is not importable: {error}") from None
    if workload.device == "gpu" and not torch.cuda.is_available():
        raise Unavailable("this PyTorch has no CUDA")
    op = workload.op
    x = workload.torch_array("x").requires_grad_(True)
    note = ""
    if op == "spatial":
        forward = lambda: functional.dropout2d(x, p, training=True)  # noqa: E731
    elif op == "bias_dropout_add":
        bias, residual = workload.torch_array("bias"), workload.torch_array("dy")
        forward = lambda: residual + functional.dropout(x + bias, p, training=True)  # noqa: E731
        note = "residual + dropout(x + bias)"
    else:
        forward = lambda: functional.dropout(x, p, training=True)  # noqa: E731
    y, mask_bytes = _torch_saved_bytes(forward, inputs=(x,))
    if op == "backward":
        dy = workload.torch_array("dy")
        return Prepared(lambda: torch.autograd.grad(y, x, dy, retain_graph=True), mask_bytes, note)
    del y
    return Prepared(forward, mask_bytes, note, warmed=True)


def _torch_saved_bytes(forward, inputs):
    """Run ``forward`` once and measure what autograd saves for backward, inputs excluded: the
    mask state PyTorch keeps (a bool mask from native_dropout, a float noise tensor on the CPU)."""
    import torch

    input_storages = {tensor.untyped_storage().data_ptr() for tensor in inputs}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in input_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y = forward()
    return y, sum(saved.values())


# --- the rooflines -----------------------------------------------------------------------------


def _copy(workload: Workload) -> Prepared:
    if workload.device == "gpu":
        # The same number of bytes, whether or not CuPy can hold the dtype (bfloat16).
        import cupy

        source = cupy.zeros(workload.n * ITEMSIZE[workload.dtype], dtype=np.uint8)
        destination = cupy.empty_like(source)
        nbytes = source.nbytes
        copy = lambda: destination.data.copy_from_device_async(source.data, nbytes)  # noqa: E731
        return Prepared(copy, 0, "device-to-device memcpy")
    source = workload.array("x").reshape(-1)
    destination = np.empty_like(source)
    # The same bytes as unsigned integers: Numba has no float16, and a copy does not care.
    words = np.dtype(f"u{source.itemsize}")
    source, destination = source.view(words), destination.view(words)
    return Prepared(lambda: parallel_copy(source, destination), 0,
                    f"Numba prange copy on {numba.get_num_threads()} threads")


def _copy_alloc(workload: Workload) -> Prepared:
    if workload.device == "gpu":
        raise Unavailable("the allocating copy is a CPU baseline")
    source = workload.array("x").reshape(-1)
    words = np.dtype(f"u{source.itemsize}")
    source = source.view(words)

    def run():
        destination = np.empty_like(source)
        parallel_copy(source, destination)
        return destination

    return Prepared(run, 0, f"np.empty_like, then the Numba prange copy on {numba.get_num_threads()} threads")


def _copyto(workload: Workload) -> Prepared:
    source = workload.array("x").reshape(-1)
    destination = np.empty_like(source)
    return Prepared(lambda: np.copyto(destination, source), 0, "np.copyto: one thread")


_IMPLS = {
    "fastdrop": _fastdrop,
    "fastdrop_out": lambda workload, p: _fastdrop(workload, p, out=True),
    "numpy": _idiomatic,
    "cupy": _idiomatic,
    "reference": _reference,
    "torch": _torch,
}
_COPIES = {"copy": _copy, "copy_alloc": _copy_alloc, "copyto": _copyto}
