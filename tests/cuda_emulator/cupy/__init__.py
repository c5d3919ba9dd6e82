"""A stand-in for CuPy that runs fastdrop's CUDA kernels on the CPU, for tests without a GPU.

Put ``tests/cuda_emulator`` first on ``PYTHONPATH`` and ``import cupy`` gives this module:
fastdrop's CuPy backend then runs unchanged (its launch arithmetic, layouts and argument
packing), and its kernels, compiled by g++ from the very source it hands to ``RawModule``, run
on the CPU (``emulation.hpp``). tests/test_cuda_emulated.py runs the GPU tests this way.

What it checks beyond the results: every launch argument against the kernel's C++ signature
(count, size, float / integer / pointer; a NumPy array where CuPy would refuse one), pointers
inside their allocation and to memory the emulator allocated, guard bytes around every
allocation intact after each launch, arrays passed as pointers to const unchanged, misaligned
accesses (kernels built with ``-fsanitize=alignment``) and the warp rules of the shuffles
(``emulation_runtime.hpp``). Allocations are 256-byte aligned, like CuPy's pool; copies NumPy
makes inside a method (``reshape`` of a transposed array, fancy indexing) move to such an
allocation too.

What it cannot tell: anything about speed, memory coalescing, the device-only arithmetic (the
kernels' PTX branches; their host twins are what runs, as in tests/test_cuda_host.py), streams
and graphs (launches run at once, synchronously), reads outside an allocation, or races
between threads (lanes run one at a time). Arrays are a NumPy subclass; CuPy's refusals of
implicit conversion are imitated where code can be seen making one: ``numpy.asarray``,
``numpy.array``, ``numpy.asanyarray``, ``numpy.ascontiguousarray`` and ``numpy.asfortranarray``
called through the ``numpy`` module (as ``np.asarray(...)``) refuse these arrays (the emulator
replaces those five attributes of NumPy while imported), and NumPy functions and ufuncs given
one of these arrays and a NumPy array with dimensions refuse them. NumPy's own internals and
the buffer protocol still convert them silently.
"""

from __future__ import annotations

import ctypes
import math
import weakref

import numpy as np

from cupy import _trace, cuda
from cupy._compiler import CompileError, build

__version__ = "0.0.0+fastdrop.emulator"
__fastdrop_emulator__ = True

#: Allocations start this aligned (CuPy's pool gives 512 bytes; 256 is what matters to kernels).
ALIGNMENT = 256
#: Guard bytes on each side of every allocation, checked after each launch.
GUARD = 64
_GUARD_BYTE = 0xA5
#: Fresh allocations are filled with this byte (CuPy's are uninitialised; a fixed fill makes an
#: element a kernel forgot to write differ from the reference in every dtype, repeatably).
_FRESH_BYTE = 0xCD

# id(root buffer) -> (weak reference to it, start of the data, data bytes)
_guarded: dict[int, tuple[weakref.ref, int, int]] = {}


class _MemoryPointer:
    def __init__(self, ptr: int):
        self.ptr = ptr

    def copy_from_device_async(self, src, size, stream=None):
        ctypes.memmove(self.ptr, src.ptr, size)

    copy_from_device = copy_from_device_async


def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _forget(key: int) -> None:
    entry = _guarded.pop(key, None)
    if entry is not None:
        cuda._run_hooks("free_postprocess", device_id=0, mem_size=_pool_size(entry[2]), mem_ptr=key, pmem_id=key)


def _pool_size(nbytes: int) -> int:
    return -(-max(nbytes, 1) // 512) * 512  # CuPy's pool rounds requests up to 512 bytes


def _allocate(shape, dtype, order: str = "C") -> "ndarray":
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + 2 * GUARD + ALIGNMENT, dtype=np.uint8)
    start = GUARD + (-(raw.ctypes.data + GUARD)) % ALIGNMENT
    raw[:start] = _GUARD_BYTE
    raw[start:start + nbytes] = _FRESH_BYTE
    raw[start + nbytes:] = _GUARD_BYTE
    key = id(raw)
    _guarded[key] = (weakref.ref(raw, lambda _, key=key: _forget(key)), start, nbytes)
    cuda._run_hooks("malloc_postprocess", device_id=0, size=nbytes, mem_size=_pool_size(nbytes),
                    mem_ptr=key, pmem_id=key)
    return np.ndarray.__new__(ndarray, shape, dtype, buffer=raw, offset=start, order=order)


def _allocation(root: np.ndarray):
    """(start, bytes) of the data inside a guarded buffer, or None for memory not allocated here."""
    entry = _guarded.get(id(root))
    return None if entry is None or entry[0]() is not root else entry[1:]


def _guards_intact(root: np.ndarray) -> bool:
    start, nbytes = _allocation(root)
    raw = root.reshape(-1).view(np.uint8)
    return bool((raw[:start] == _GUARD_BYTE).all() and (raw[start + nbytes:] == _GUARD_BYTE).all())


def _is_host_array(value) -> bool:
    return isinstance(value, np.ndarray) and not isinstance(value, ndarray) and value.ndim > 0


def _check_no_host_arrays(values, where: str) -> None:
    for value in values:
        if isinstance(value, (list, tuple)):
            _check_no_host_arrays(value, where)
        elif _is_host_array(value):
            raise TypeError(f"{where}: a numpy.ndarray mixed with cupy arrays (CuPy refuses this)")


def _unwrap(value):
    if isinstance(value, ndarray):
        return value.view(np.ndarray)
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _roots_of(values, found: set[int]) -> set[int]:
    for value in values:
        if isinstance(value, np.ndarray):
            found.add(id(_root(value)))
        elif isinstance(value, (list, tuple)):
            _roots_of(value, found)
        elif isinstance(value, dict):
            _roots_of(value.values(), found)
    return found


def _wrap(result, input_roots: set[int]):
    """Results as device arrays: views of inputs stay views, new arrays move to a guarded one."""
    if isinstance(result, tuple):
        return tuple(_wrap(r, input_roots) for r in result)
    if isinstance(result, list):
        return [_wrap(r, input_roots) for r in result]
    if isinstance(result, np.generic):
        result = np.asarray(result)
    if not isinstance(result, np.ndarray):
        return result
    if id(_root(result)) in input_roots:
        return result.view(ndarray)
    copy = _allocate(result.shape, result.dtype)
    np.copyto(copy.view(np.ndarray), result.view(np.ndarray))
    return copy


def _refuse_implicit_conversion(function):
    """``function`` (a NumPy converter) refusing device arrays, as CuPy's ``__array__`` does."""

    def converter(a, *args, **kwargs):
        if isinstance(a, ndarray):
            raise TypeError(
                f"numpy.{function.__name__} of a cupy array: implicit conversion to a NumPy array "
                "is not allowed (CuPy refuses it; use .get() or cupy.asnumpy)"
            )
        return function(a, *args, **kwargs)

    converter.__name__ = function.__name__
    converter.__wrapped__ = function
    return converter


for _name in ("asarray", "array", "asanyarray", "ascontiguousarray", "asfortranarray"):
    if not hasattr(getattr(np, _name), "__wrapped__"):
        setattr(np, _name, _refuse_implicit_conversion(getattr(np, _name)))


class ndarray(np.ndarray):
    """A device array: NumPy memory, CuPy's ``.data.ptr``, ``.get()``, and its refusals."""

    @property
    def data(self):
        pointer = self.__dict__.get("_pointer")  # an array's address never changes
        if pointer is None:
            pointer = self.__dict__["_pointer"] = _MemoryPointer(self.__array_interface__["data"][0])
        return pointer

    def get(self, stream=None, order="C", out=None):
        host = np.array(self.view(np.ndarray), order=order, copy=True)
        if out is not None:
            out[...] = host
            return out
        return host

    def _device(self, result):
        """A result of a NumPy method: a view of self stays one, a copy NumPy made moves to a
        guarded allocation (aligned, checked) like every device array."""
        if isinstance(result, np.ndarray) and id(_root(result)) != id(_root(self)):
            return _wrap(result, set())
        return result

    def reshape(self, *shape, order="C"):
        return self._device(super().reshape(*shape, order=order))

    def ravel(self, order="C"):
        return self._device(super().ravel(order))

    def flatten(self, order="C"):
        return self._device(super().flatten(order))

    def __getitem__(self, key):
        return self._device(super().__getitem__(key))

    def copy(self, order="C"):
        result = _allocate(self.shape, self.dtype, order="F" if order == "F" else "C")
        np.copyto(result.view(np.ndarray), self.view(np.ndarray))
        return result

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        result = empty_like(self, dtype=dtype)
        np.copyto(result.view(np.ndarray), self.view(np.ndarray), casting=casting)
        return result

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _check_no_host_arrays(inputs + (out or ()), f"numpy.{ufunc.__name__}")
        roots = _roots_of(inputs, set())
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        result = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result, roots)

    def __array_function__(self, func, types, args, kwargs):
        _check_no_host_arrays(list(args) + list(kwargs.values()), f"numpy.{func.__name__}")
        roots = _roots_of(list(args) + list(kwargs.values()), set())
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)), roots)


# --- creation and transfer ----------------------------------------------------------------------


def empty(shape, dtype=float, order="C"):
    return _allocate(shape, dtype, order)


def zeros(shape, dtype=float, order="C"):
    result = _allocate(shape, dtype, order)
    result.view(np.ndarray).fill(0)
    return result


def ones(shape, dtype=float, order="C"):
    return full(shape, 1, dtype, order)


def full(shape, fill_value, dtype=None, order="C"):
    dtype = np.asarray(fill_value).dtype if dtype is None else dtype
    result = _allocate(shape, dtype, order)
    result.view(np.ndarray).fill(fill_value)
    return result


def empty_like(a, dtype=None, order="K", shape=None):
    """Like CuPy: order 'K' keeps the memory order of ``a``'s axes (by stride size)."""
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    shape = a.shape if shape is None else ((shape,) if isinstance(shape, int) else tuple(shape))
    if order in ("C", "F") or shape != a.shape or a.ndim < 2:
        return _allocate(shape, dtype, "F" if order == "F" else "C")
    if order == "A":
        return _allocate(shape, dtype, "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C")
    axes = sorted(range(a.ndim), key=lambda i: -abs(a.strides[i]))
    buffer = _allocate([shape[i] for i in axes], dtype)
    return buffer.transpose(np.argsort(axes))


def zeros_like(a, dtype=None, order="K", shape=None):
    result = empty_like(a, dtype, order, shape)
    result.view(np.ndarray).fill(0)
    return result


def ones_like(a, dtype=None, order="K", shape=None):
    result = empty_like(a, dtype, order, shape)
    result.view(np.ndarray).fill(1)
    return result


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """CuPy's: no copy of a device array that already fits, unless ``copy=True``."""
    if isinstance(a, ndarray) and not copy and (dtype is None or np.dtype(dtype) == a.dtype):
        if order in (None, "K", "A") or (order == "C" and a.flags.c_contiguous) or (
            order == "F" and a.flags.f_contiguous
        ):
            return a
    if copy is False:
        raise ValueError("cupy.asarray(copy=False) would need a copy here")
    host = np.asarray(a.view(np.ndarray) if isinstance(a, ndarray) else a, dtype=dtype)
    result = _allocate(host.shape, host.dtype, "F" if order == "F" else "C")
    np.copyto(result.view(np.ndarray), host)
    return result


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    result = asarray(obj, dtype=dtype, order=None if order == "K" else order, copy=copy)
    return result.reshape((1,) * (ndmin - result.ndim) + result.shape) if result.ndim < ndmin else result


def ascontiguousarray(a, dtype=None):
    return asarray(a, dtype=dtype, order="C")


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    host = np.asarray(a, order=order)
    if out is not None:
        out[...] = host
        return out
    return host


def get_array_module(*args):
    import sys

    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


def get_default_memory_pool():
    return _MemoryPool()


class _MemoryPool:
    def used_bytes(self):
        return sum(entry[2] for entry in _guarded.values() if entry[0]() is not None)

    def free_all_blocks(self):
        pass


class _Random:
    """``cupy.random``: NumPy's generators with their arrays moved to the device."""

    def default_rng(self, seed=None):
        return _Generator(np.random.default_rng(seed))

    def __getattr__(self, name):
        function = getattr(np.random, name)

        def sample(*args, dtype=None, **kwargs):  # CuPy's samplers take a dtype, NumPy's legacy ones not
            values = function(*args, **kwargs)
            return _wrap(values if dtype is None else np.asarray(values).astype(dtype), set())

        return sample


class _Generator:
    def __init__(self, generator):
        self._generator = generator

    def __getattr__(self, name):
        function = getattr(self._generator, name)
        return lambda *args, **kwargs: _wrap(function(*_unwrap(args), **_unwrap(kwargs)), set())


random = _Random()


# --- kernels ------------------------------------------------------------------------------------


class RawModule:
    """``cupy.RawModule(code=...)``: the source built by g++ for the emulator (NVRTC options are
    ignored)."""

    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 name_expressions=None, jitify=False):
        if code is None:
            raise NotImplementedError("the CUDA emulator builds kernels from source code only")
        self._code = code
        self._library = build(code)

    def get_function(self, name):
        kernel = self._library.kernels.get(name)
        if kernel is None:
            raise RuntimeError(f"no kernel named {name!r} in the module (emulated: cuModuleGetFunction failed)")
        return _Function(kernel, self._code)


def RawKernel(code, name, options=(), backend="nvrtc", translate_cucomplex=False, *, jitify=False):
    return RawModule(code=code, options=options).get_function(name)


def _dims(value, what: str) -> tuple[int, int, int]:
    value = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(value) <= 3 or any(int(v) < 1 for v in value):
        raise ValueError(f"{what} must be 1 to 3 positive sizes; got {value}")
    value = tuple(int(v) for v in value) + (1,) * (3 - len(value))
    return value


def trace_memory(capacity: int = 1 << 22):
    """Emulator only: ``with cupy.trace_memory() as trace:`` records the memory accesses of every
    launch made in the block on this thread (at most ``capacity`` per launch), for
    ``trace.launches[i].sectors()`` (see ``_trace``)."""
    return _trace.Trace(capacity)


class _Function:
    def __init__(self, kernel, code):
        self._kernel = kernel
        self._code = code

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        trace = _trace.active()
        kernel = self._kernel if trace is None else build(self._code, trace=True).kernels[self._kernel.name]
        name = kernel.name
        args = tuple(args)
        if len(args) != len(kernel.kinds):
            raise TypeError(f"{name} takes {len(kernel.kinds)} arguments; the launch passed {len(args)}")
        buffers, writable, const = [], {}, {}
        for i, (arg, kind, size) in enumerate(zip(args, kernel.kinds, kernel.sizes)):
            where = f"{name} argument {i}"
            if isinstance(arg, ndarray):
                if kind not in "pc":
                    raise TypeError(f"{where}: an array for a parameter of kind {kind!r}")
                root = _root(arg)
                allocation = _allocation(root)
                if allocation is None:
                    raise RuntimeError(f"{where}: an array whose memory the emulator did not allocate "
                                       "(made by NumPy behind its back: extend the emulator)")
                address = arg.__array_interface__["data"][0]
                start = root.__array_interface__["data"][0] + allocation[0]
                if arg.size and not start <= address < start + allocation[1]:
                    raise RuntimeError(f"{where}: pointer outside its allocation")
                (writable if kind == "p" else const)[id(root)] = (i, root)
                buffers.append(ctypes.c_uint64(address))
            elif isinstance(arg, np.ndarray):
                raise TypeError(f"{where}: a numpy.ndarray (CuPy refuses host arrays as kernel arguments)")
            elif isinstance(arg, np.generic):
                if arg.dtype.itemsize != size:
                    raise TypeError(f"{where}: {arg.dtype} ({arg.dtype.itemsize} bytes) for a {size}-byte parameter")
                if kind == "f" and arg.dtype.kind != "f":
                    raise TypeError(f"{where}: {arg.dtype} for a floating-point parameter")
                if kind in "iu" and arg.dtype.kind not in "iu":
                    raise TypeError(f"{where}: {arg.dtype} for an integer parameter")
                if kind in "pc" and (arg.dtype.kind not in "iu" or int(arg) != 0):
                    raise TypeError(f"{where}: {arg!r} for a pointer parameter (only a null pointer, 0)")
                buffers.append(ctypes.create_string_buffer(arg.tobytes(), size))
            else:
                raise TypeError(f"{where}: {type(arg).__name__} (pass NumPy scalars or arrays, sized like the parameter)")
        for key in writable:
            const.pop(key, None)  # in place: the same memory is also the output
        before = {key: (i, root, root.view(np.uint8).reshape(-1).copy() if root.flags.c_contiguous else None)
                  for key, (i, root) in const.items()}
        params = (ctypes.c_void_p * max(len(buffers), 1))(*[ctypes.addressof(b) for b in buffers])
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        if trace is None:
            kernel.launch(grid, block, params)
        else:
            self._traced_launch(trace, kernel, grid, block, params, {**const, **writable})
        for key, (i, root) in {**writable, **const}.items():
            if not _guards_intact(root):
                raise RuntimeError(f"{name} wrote outside the allocation of argument {i}")
        for i, root, copy in before.values():
            if copy is not None and not np.array_equal(copy, root.view(np.uint8).reshape(-1)):
                raise RuntimeError(f"{name} changed argument {i}, a pointer to const")

    @staticmethod
    def _traced_launch(trace, kernel, grid, block, params, arrays) -> None:
        arguments = {}
        for i, root in arrays.values():
            start = root.__array_interface__["data"][0] + _allocation(root)[0]
            arguments[i] = (start, start + _allocation(root)[1])
        ranges = np.array([bound for i in sorted(arguments) for bound in arguments[i]], dtype=np.uint64)
        records = np.zeros(trace.capacity, dtype=_trace.RECORD)
        count = kernel.launch(grid, block, params, trace=(ranges, records))
        if count > trace.capacity:
            raise RuntimeError(f"{kernel.name}: more than {trace.capacity} accesses; trace a smaller launch")
        trace.launches.append(_trace.Launch(kernel.name, grid, block, arguments, records[:count].copy()))


__all__ = [
    "ALIGNMENT", "CompileError", "RawKernel", "RawModule", "array", "asarray", "ascontiguousarray",
    "asnumpy", "cuda", "empty", "empty_like", "full", "get_array_module", "ndarray", "ones",
    "ones_like", "random", "trace_memory", "zeros", "zeros_like",
]


def __getattr__(name):
    """Everything else from NumPy: dtypes as they are, functions moving their results to the device."""
    value = getattr(np, name)
    if isinstance(value, type) or not callable(value):
        return value

    def function(*args, **kwargs):
        _check_no_host_arrays(list(args) + list(kwargs.values()), f"cupy.{name}")
        roots = _roots_of(list(args) + list(kwargs.values()), set())
        return _wrap(value(*_unwrap(args), **_unwrap(kwargs)), roots)

    function.__name__ = name
    return function
