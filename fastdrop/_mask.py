"""DropoutMask: what backward needs to rebuild a forward's mask (a seed, not a mask)."""

from __future__ import annotations

import math

from fastdrop import _backend, _validate
from fastdrop._contract import keep_threshold


class DropoutMask:
    """An immutable description of one dropout mask.

    ``p``, ``seed``, ``offset``: the draw; ``shape``: the mask's own logical shape (``mask_shape``
    of the forward, padded to the input's rank); ``input_shape``: the shape of the forward's input
    (and of the gradient that backward accepts); ``bits``: None, or the keep flags packed as
    ``np.packbits(flat_keep, bitorder="little")`` (a read-only array in the input's memory).
    """

    __slots__ = ("_p", "_seed", "_offset", "_shape", "_input_shape", "_bits")

    def __init__(self, p, seed, offset, shape, input_shape, bits=None):
        # The class is public: a mask built by hand is checked like the arguments of dropout.
        input_shape = tuple(_validate.count(d, "input_shape") for d in input_shape)
        shape = _validate.mask_shape(shape, input_shape)
        size = math.prod(shape)
        p, seed, offset = _validate.probability(p), _validate.seed(seed), _validate.offset(offset, size)
        if bits is not None and (
            str(getattr(bits, "dtype", None)) != "uint8"
            or getattr(bits, "ndim", None) != 1
            or bits.shape[0] != (size + 7) // 8
        ):
            raise ValueError(
                f"bits must be a 1-D uint8 array of {(size + 7) // 8} bytes for a mask of {size} "
                f"elements; got {getattr(bits, 'dtype', type(bits).__name__)} of shape "
                f"{getattr(bits, 'shape', None)}"
            )
        self._fill(p, seed, offset, shape, input_shape, bits)

    @classmethod
    def _validated(cls, p, seed, offset, shape, input_shape, bits=None):
        """For the library's own forwards, whose arguments were checked at the public edge (p a
        float, the shapes tuples): the same object without checking them twice on the hot path."""
        mask = cls.__new__(cls)
        mask._fill(p, seed, offset, shape, input_shape, bits)
        return mask

    def _fill(self, p, seed, offset, shape, input_shape, bits):
        set_field = object.__setattr__  # past the immutability guard of __setattr__
        set_field(self, "_p", p)
        set_field(self, "_seed", seed)
        set_field(self, "_offset", offset)
        set_field(self, "_shape", shape)
        set_field(self, "_input_shape", input_shape)
        if bits is not None and hasattr(bits, "flags") and hasattr(bits.flags, "writeable"):
            try:
                bits.flags.writeable = False
            except (AttributeError, ValueError):  # CuPy arrays cannot be made read-only
                pass
        object.__setattr__(self, "_bits", bits)

    def __setattr__(self, name, value):
        raise AttributeError("DropoutMask is immutable")

    def __delattr__(self, name):
        raise AttributeError("DropoutMask is immutable")

    p = property(lambda self: self._p, doc="drop probability")
    seed = property(lambda self: self._seed, doc="64-bit Philox seed")
    offset = property(lambda self: self._offset, doc="word index of the mask's first element")
    shape = property(lambda self: self._shape, doc="logical shape of the mask")
    input_shape = property(lambda self: self._input_shape, doc="shape of the forward's input")
    bits = property(lambda self: self._bits, doc="packed keep flags, or None")

    @property
    def size(self) -> int:
        """Number of mask elements (Philox words drawn)."""
        return math.prod(self._shape)

    @property
    def nbytes(self) -> int:
        """Bytes of mask state held: 0 when regenerated from the seed, else the packed bits."""
        return 0 if self._bits is None else int(self._bits.nbytes)

    @property
    def threshold(self) -> int:
        """The exact keep threshold: word < threshold keeps."""
        return keep_threshold(self._p)

    def to_array(self, like=None):
        """Boolean keep flags of ``.shape`` (NumPy, or the bits' array library; ``like`` picks one)."""
        reference = like if like is not None else self._bits
        if reference is None:
            import numpy as np

            reference = np.empty(0, dtype=np.uint8)
        backend = _backend.backend_for(reference)
        flags = backend.empty(self.size, bool)
        if self._bits is not None and _backend.array_library(self._bits) == _backend.array_library(flags):
            xp = _array_module(flags)
            flags[...] = xp.unpackbits(self._bits, bitorder="little")[: self.size].astype(bool)
        elif self.size:
            backend.keep_flags(flags, seed=self._seed, offset=self._offset, threshold=self.threshold)
        return flags.reshape(self._shape)

    def __eq__(self, other):
        if not isinstance(other, DropoutMask):
            return NotImplemented
        return (self._p, self._seed, self._offset, self._shape, self._input_shape) == (
            other._p, other._seed, other._offset, other._shape, other._input_shape
        )

    def __hash__(self):
        return hash((self._p, self._seed, self._offset, self._shape, self._input_shape))

    def __repr__(self):
        bits = "none" if self._bits is None else f"{self.nbytes} bytes"
        return (
            f"DropoutMask(p={self._p}, seed={self._seed}, offset={self._offset}, "
            f"shape={self._shape}, input_shape={self._input_shape}, bits={bits})"
        )


def _array_module(array):
    import importlib

    return importlib.import_module(_backend.array_library(array))
