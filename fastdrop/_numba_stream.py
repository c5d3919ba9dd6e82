"""Non-temporal (streaming) stores for Numba kernels, which Numba does not offer.

A normal store to a line that is not in the cache first reads the line from memory (a "read for
ownership"), so a kernel that writes an output it never reads moves the output's bytes twice. A
non-temporal store writes whole lines to memory without reading them. Measured on this project's
first 2-core machine (AMD EPYC, 16 MB L3), 2^24 float32: a Numba ``prange`` copy moves 27 GB/s
with normal stores and 39 GB/s with streaming ones.

Where it pays, and where it does not (same machine):

* Memory-bound kernels: the backward from packed bits and channel-style masks (one word per
  row), 1.1-1.45x faster on outputs larger than the last-level cache (``STREAM_ABOVE``, capped
  by ``CACHE_SHARE_CAP``). Below that size normal stores win (2^21 float32: 5.3 against 4.9 G
  elements/s): the output would have stayed in the cache for whoever reads it next.
* Not the Philox kernels (forward, backward from the seed, the variants): a task computes its
  words first and writes afterwards, so its streaming stores come in a burst that the write
  buffers cannot absorb: 2^24 float32 forward 2.2 -> 1.75 G elements/s. Their normal stores,
  whose lines are prefetched while the words are computed, overlap the arithmetic instead.
  One exception, by CPU (``STREAM_PHILOX``): bias-dropout-add, which reads two arrays per one it
  writes, on AMD Zen 5, whose Philox runs at 4.6 G words/s per core (bench/RESULTS.md).
* Results go through a small staging buffer (``STAGE`` elements, in the L1 cache) between
  streaming stores. Staging a whole task first (16 KB) and then streaming it serialises the
  reads and the writes and gained nothing (27.5 GB/s for the copy); 128 elements at a time gave
  35 GB/s, 32 gave 27, 512 gave 27.

x86-64 only (``STREAMING``): streaming stores are weakly ordered there, so every task ends with
``store_fence`` (SFENCE) before the parallel region's barrier publishes its results.
"""

from __future__ import annotations

import glob
import os
import platform

import numba
from llvmlite import binding, ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from fastdrop._numba_prefetch import CACHE_LINE

#: Whether this machine's kernels may stream (x86-64, where LLVM emits MOVNT* for these stores).
STREAMING = platform.machine().lower() in ("x86_64", "amd64")


def last_level_cache_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache",
                           default: int = 16 << 20) -> int:
    """The largest data or unified cache of CPU 0 as Linux reports it under ``root``, else
    ``default``."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for entry in glob.glob(os.path.join(root, "index*")):
        try:
            with open(os.path.join(entry, "type")) as kind, open(os.path.join(entry, "size")) as size:
                if kind.read().strip() == "Instruction":
                    continue
                text = size.read().strip().upper()
            digits = text[:-1] if text[-1:] in units else text
            sizes.append(int(digits) * units.get(text[-1:], 1))
        except (OSError, ValueError):
            continue
    return max(sizes, default=default)


#: The most of a last-level cache a process is taken to have to itself. A VM given 2 cores of a
#: server sees the whole shared L3 in sysfs (300 MiB on the Emerald Rapids machine of the
#: seventh session) but gets a share of it; there (``bench/streaming.py``, out=, float32)
#: streaming lost or tied up to 2^23 elements (32 MiB: channel rows of 1024 0.79x, the rest
#: 0.94-1.06x) and won from 2^24 (64 MiB: channel rows of 16384 1.36x, 2^25 1.42x; bits
#: backward 1.12x, 0.98x at 2^25), so no output under 64 MiB is taken to overflow the cache.
CACHE_SHARE_CAP = 64 << 20


def stream_threshold(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Bytes from which outputs are streamed: the last-level cache, at most ``CACHE_SHARE_CAP``."""
    return min(last_level_cache_bytes(root), CACHE_SHARE_CAP)


#: Outputs of at least this many bytes are streamed (``stream_threshold``).
STREAM_ABOVE = stream_threshold()

#: CPUs (LLVM's names) on which bias-dropout-add streams its output like the memory-bound
#: kernels. Measured on Zen 5 (2 cores, 32 MiB L3; 2^24 float32, rows of 1024, out=, as % of
#: its byte roofline beside a copy): normal stores 84-92%, streaming 94-102%, in place
#: (out=residual) 75% and 102%; 2^23 a tie, 2^22 (under the threshold) streaming lost. The
#: forward there still lost (0.8-0.9x), as on the Zen 2 and Emerald Rapids machines of earlier
#: sessions, where bias-dropout-add was not measured this way: other CPUs keep normal stores.
STREAM_PHILOX_CPUS = frozenset({"znver5"})
STREAM_PHILOX = STREAMING and binding.get_host_cpu_name() in STREAM_PHILOX_CPUS
#: Elements staged between streaming stores (a multiple of a line for every item size).
STAGE = 128
#: Rows (or a bits task's chunk) shorter than this are not streamed: the partial lines at both
#: ends take normal stores, and 1 KB rows of a channel mask ran at 0.65x streamed.
STREAM_ROW_BYTES = 4096
#: glibc serves allocations of at least this size (its largest mmap threshold on 64-bit) with
#: fresh pages from the OS every time; smaller ones may reuse freed, uncached heap memory.
ALWAYS_FRESH_BYTES = 32 << 20


@intrinsic
def stream_line(typingctx, destination, i, source, j):
    """Copy one cache line, ``CACHE_LINE`` bytes, from ``source[j:]`` to ``destination[i:]`` with
    a non-temporal store. Both are 1-D C-contiguous arrays of the same dtype; the address of
    ``destination[i]`` must be a multiple of ``CACHE_LINE`` (the store is emitted as aligned: a
    misaligned address faults). No bounds check."""
    if not (isinstance(destination, types.Array) and isinstance(source, types.Array)):
        return None
    if destination.ndim != 1 or source.ndim != 1 or destination.layout != "C" or source.layout != "C":
        return None
    if destination.dtype != source.dtype or not isinstance(i, types.Integer) or not isinstance(j, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        destination_type, i_type, source_type, j_type = signature.args
        item_type = context.get_data_type(destination_type.dtype)
        per_line = CACHE_LINE // context.get_abi_sizeof(item_type)
        vector = ir.VectorType(item_type, per_line)
        pointers = []
        for array_type, array, index, index_type in ((destination_type, args[0], args[1], i_type),
                                                     (source_type, args[2], args[3], j_type)):
            view = context.make_array(array_type)(context, builder, array)
            index = context.cast(builder, index, index_type, types.intp)
            item = cgutils.get_item_pointer(context, builder, array_type, view, [index],
                                            wraparound=False, boundscheck=False)
            pointers.append(builder.bitcast(item, vector.as_pointer()))
        value = builder.load(pointers[1], align=context.get_abi_sizeof(item_type))
        stored = builder.store(value, pointers[0], align=CACHE_LINE)
        stored.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return types.void(destination, i, source, j), codegen


@intrinsic
def store_fence(typingctx):
    """Order this thread's earlier streaming stores before its later stores (SFENCE)."""

    def codegen(context, builder, signature, args):
        if STREAMING:
            function_type = ir.FunctionType(ir.VoidType(), [])
            function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.x86.sse.sfence")
            builder.call(function, [])
        return context.get_dummy_value()

    return types.void(), codegen


@numba.njit(inline="always", nogil=True, cache=True, boundscheck=False)
def lead(destination):
    """Elements of the 1-D C-contiguous ``destination`` before its first cache-line boundary
    (its size when an element-misaligned address never reaches one)."""
    item = destination.itemsize
    address = destination.ctypes.data
    if address % item:
        return destination.size
    return ((CACHE_LINE - address % CACHE_LINE) % CACHE_LINE) // item


@numba.njit(inline="always", nogil=True, cache=True, boundscheck=False)
def stream_lines(destination, at, staged, count):
    """destination[at : at + count] = staged[:count] with streaming stores; ``count`` a multiple
    of the elements per line and ``destination[at]`` on a line boundary."""
    per_line = CACHE_LINE // destination.itemsize
    for line in range(count // per_line):
        stream_line(destination, at + line * per_line, staged, line * per_line)
