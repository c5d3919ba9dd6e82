"""A cache prefetch hint for Numba kernels (LLVM's ``llvm.prefetch``), which Numba does not expose.

The dropout kernels are bound by Philox arithmetic, and a task computes all its words before it
touches the arrays. Without a hint the loads and the stores' line fills of the next phase wait for
memory while the core sits idle; with the hint issued during the Philox phase the memory traffic
runs underneath the arithmetic (see ``_numba_kernels.fill_chunk_prefetching``).

A prefetch never faults and never changes a value: a wrong address only wastes the hint.
"""

from __future__ import annotations

import llvmlite
from llvmlite import binding, ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

#: Bytes in a cache line of the CPUs this targets (x86-64 and most AArch64 cores).
CACHE_LINE = 64


def _intrinsic_name() -> str:
    # LLVM mangles the intrinsic by pointer type: ``p0`` where LLVM uses opaque pointers (always
    # from LLVM 17; optional in llvmlite 0.44's LLVM 15), ``p0i8`` with typed ones (LLVM 14).
    opaque = binding.llvm_version_info[0] >= 17 or getattr(llvmlite, "opaque_pointers_enabled", False)
    return "llvm.prefetch.p0" if opaque else "llvm.prefetch.p0i8"


@intrinsic
def prefetch(typingctx, array, index, for_write):
    """Hint that ``array[index]`` will be read, or written when ``for_write`` is a true literal.

    ``index`` is an integer for a 1-D array or a tuple of ``array.ndim`` integers; any strides.
    No bounds check: the caller keeps the index in range.
    """
    if not isinstance(array, types.Array):
        return None
    if isinstance(index, types.Integer):
        if array.ndim != 1:
            return None
    elif not (isinstance(index, types.BaseTuple) and len(index) == array.ndim
              and all(isinstance(item, types.Integer) for item in index)):
        return None
    if not isinstance(for_write, (types.IntegerLiteral, types.BooleanLiteral)):
        return None
    write = int(bool(for_write.literal_value))
    signature = types.void(array, index, for_write)

    def codegen(context, builder, sig, args):
        array_type, index_type, _ = sig.args
        view = context.make_array(array_type)(context, builder, args[0])
        if isinstance(index_type, types.BaseTuple):
            items = cgutils.unpack_tuple(builder, args[1], len(index_type))
            item_types = list(index_type)
        else:
            items, item_types = [args[1]], [index_type]
        indices = [context.cast(builder, value, item_type, types.intp)
                   for value, item_type in zip(items, item_types)]
        item = cgutils.get_item_pointer(context, builder, array_type, view, indices,
                                        wraparound=False, boundscheck=False)
        address = builder.bitcast(item, cgutils.voidptr_t)
        i32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        function = cgutils.get_or_insert_function(builder.module, function_type, _intrinsic_name())
        # (address, read 0 / write 1, locality 3 = keep in all cache levels, data cache 1)
        builder.call(function, [address, i32(write), i32(3), i32(1)])
        return context.get_dummy_value()

    return signature, codegen


def line_step(array):
    """Elements per cache line along the last axis of ``array`` (at least 1). Jitted code only."""
    raise NotImplementedError("line_step is for Numba-compiled code")


@overload(line_step)
def _line_step(array):
    if not isinstance(array, types.Array):
        return None
    if array.layout == "C":
        # A compile-time constant: a runtime step measured about 10% slower in the kernels.
        bits = 8 if isinstance(array.dtype, types.Boolean) else array.dtype.bitwidth  # NumPy bools: bytes
        step = max(1, CACHE_LINE * 8 // bits)

        def contiguous(array):
            return step

        return contiguous

    def strided(array):
        stride = abs(array.strides[-1])
        step = 1
        if 0 < stride <= CACHE_LINE:
            step = CACHE_LINE // stride
        return step

    return strided
