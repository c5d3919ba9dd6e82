"""Find the backend module for an array without importing optional libraries.

Every backend module has the same functions, all trusting already validated arguments:

``forward(x, out, *, mask_shape, seed, offset, threshold, scale, bits)``
    ``out[...] = where(keep, x * scale, 0)`` with ``keep`` drawn over ``mask_shape`` (a tuple
    already padded to ``x.ndim`` and broadcastable to ``x.shape``), words ``offset + i``.
    ``out`` is either ``x`` itself (in place) or an array not overlapping it. ``scale`` is a
    Python float (1 / (1 - p) in float64), rounded by the backend to the compute dtype.
    ``bits`` is None or a zeroed uint8 array of ``ceil(prod(mask_shape) / 8)`` bytes to receive
    ``packbits(flat_keep, bitorder="little")``.
``apply_bits(dy, out, *, mask_shape, bits, scale)``
    The same select, with keep flags read from packed ``bits`` instead of regenerated.
``random_bits(out, *, seed, offset)``
    Fill the 1-D uint32 array ``out`` with the words ``offset ... offset + out.size - 1``.
``keep_flags(out, *, seed, offset, threshold)``
    Fill the 1-D bool array ``out`` with ``word(offset + i) < threshold``.
``empty_like(x)``, ``empty(n, dtype)``, ``zeros(n, dtype)``: allocation in the backend's memory.
    (The CPU backend remembers the large outputs of its ``empty_like`` as fresh pages, which its
    kernels then write without streaming stores: ``_numba_backend.streams``.)
"""

from __future__ import annotations

import importlib
from types import ModuleType

_BACKEND_MODULES = {
    "numpy": "fastdrop._numba_backend",
    "cupy": "fastdrop._cupy_backend",
}

# Per-call lookups are cached, keyed on types and library names only (never on arrays): the
# library of every array type seen that belongs to a backend, and each backend module once
# imported. Entries never change once set, so concurrent threads at worst compute one twice.
_library_of_type: dict[type, str] = {}
_backend_modules: dict[str, ModuleType] = {}


def array_library(array) -> str:
    """The top-level module of the array library behind ``array``'s type ('numpy', 'cupy', ...),
    found along its class hierarchy so that subclasses defined elsewhere count; imports nothing."""
    array_type = type(array)
    library = _library_of_type.get(array_type)
    if library is not None:
        return library
    for cls in array_type.__mro__:
        library = cls.__module__.partition(".")[0]
        if library in _BACKEND_MODULES:
            _library_of_type[array_type] = library
            return library
    return array_type.__module__.partition(".")[0]


def backend_for(array, name: str = "x") -> ModuleType:
    """The backend module that runs kernels on ``array``; TypeError naming ``name`` otherwise."""
    library = array_library(array)
    module = _backend_modules.get(library)
    if module is not None:
        return module
    try:
        module_name = _BACKEND_MODULES[library]
    except KeyError:
        raise TypeError(
            f"{name} must be a numpy.ndarray or cupy.ndarray; got {type(array).__module__}."
            f"{type(array).__qualname__}"
        ) from None
    # Imported on first use only (CuPy stays unimported until a CuPy array arrives); a failed
    # import is not cached, so it is retried, and reported, on every call.
    module = importlib.import_module(module_name)
    _backend_modules[library] = module
    return module
