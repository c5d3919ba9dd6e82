"""Numba CPU kernels: Philox4x32-10 words, keep test, scale-and-select, bit packing.

Kernels only: launch decisions, validation and layout handling live in ``_numba_backend``.

Speed comes from five choices. Work is split into fixed tasks of ``CHUNK`` elements (a
function of the indices alone, so the result never depends on the thread count). Inside a task
the Philox counters are generated as lanes of a small array first, in a loop with no branches
that LLVM vectorises across lanes (the 32 x 32 -> 64 bit multiplies of AVX2 or AVX-512), and only
then compared and selected; a scalar Philox per element runs at about a fifth of copy speed.
While a whole task generates its words it prefetches the lines its select loop will stream
(``fill_chunk_prefetching``), so memory traffic runs under the arithmetic. And a row that steps
by one element is looped over as a contiguous array (``unit_stride``) even when the array it
belongs to is not (a column slice), so that those loops vectorise too. And the kernels bound by
memory rather than Philox (the backward from packed bits, channel-style masks) write outputs
larger than the last-level cache with streaming stores, which skip reading the lines they
overwrite (``_numba_stream``). float16 arrays arrive as their uint16 bits (``_numba_half``).
"""

from __future__ import annotations

import sys
import types

import numba
import numpy as np

from fastdrop import _compile_labels
from fastdrop._kernel_cache import discard_stale_kernels
from fastdrop._contract import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1
from fastdrop._numba_half import load, store
from fastdrop._numba_prefetch import CACHE_LINE, line_step, prefetch
from fastdrop._numba_bits import pick, unit_span, unit_stride
from fastdrop._numba_stream import STAGE, STREAM_ROW_BYTES, lead, store_fence, stream_lines

#: Elements per parallel task: a multiple of 8 (whole bytes of packed bits) and of 4 (counters).
CHUNK = 4032
#: Words in a task's scratch buffer: the chunk plus up to 3 words of an unaligned first counter,
#: rounded up to whole counters.
_BUFFER_WORDS = CHUNK + 8

discard_stale_kernels()  # before any cached kernel loads: see _kernel_cache
_compile_labels.install()  # block labels that stay short over many compilations: see there

_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint64(PHILOX_W0)
_W1 = np.uint64(PHILOX_W1)
_MASK32 = np.uint64(0xFFFFFFFF)
#: Gathers the low bits of a uint64's eight bytes into its top byte, byte k to bit k.
_PACK_MAGIC = np.uint64(0x0102040810204080)
_LITTLE_ENDIAN = sys.byteorder == "little"  # byte k of a uint64 is its k-th byte in memory
#: A byte copied to all eight bytes of a uint64, and bit k kept in byte k (unpacking bits).
_SPREAD_BYTE = np.uint64(0x0101010101010101)
_BIT_PER_BYTE = np.uint64(0x8040201008040201)
_SHIFT32 = np.uint64(32)

_jit = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)

#: Below this many elements a kernel runs on the calling thread: starting the parallel region
#: costs more than it saves. Measured through the API on this project's 2-core machine, where
#: waking the passive OpenMP threads costs about 10 us per call (much more on a busy machine,
#: where the region waits for its slowest thread): a float32 forward with ``out=`` took 32 us
#: serial and 39 parallel at 2^14 elements, 49 and 46 at 2^15.
SERIAL_BELOW = 1 << 15
#: The same for the backward from packed bits, which has no Philox work (about a fifth of the
#: forward's time per element): 17 us serial and 26 parallel at 2^15, 36 and 36 at 2^17.
SERIAL_BELOW_BITS = 1 << 17


@numba.njit(inline="always", **_jit)
def _round(c0, c1, c2, c3, k0, k1):
    product0 = _M0 * c0
    product1 = _M1 * c2
    return (
        (product1 >> _SHIFT32) ^ c1 ^ k0,
        product1 & _MASK32,
        (product0 >> _SHIFT32) ^ c3 ^ k1,
        product0 & _MASK32,
    )


@numba.njit(inline="always", **_jit)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint64-held 32-bit words; key words must already be < 2**32."""
    # A no-op on valid keys that tells LLVM so: without it the products of round 2, whose
    # factors hold a key, cannot use the 32 x 32 -> 64 bit vpmuludq and become vpmullq (three
    # micro-operations, about three times the latency).
    k0 = k0 & _MASK32
    k1 = k1 & _MASK32
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    return _rounds_2_to_10(c0, c1, c2, c3, k0, k1)


@numba.njit(inline="always", **_jit)
def _rounds_2_to_10(c0, c1, c2, c3, k0, k1):
    """The nine rounds after the first, from the first round's key (32-bit words in uint64)."""
    for _ in range(9):
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    return c0, c1, c2, c3


@numba.njit(**_jit)
def word_at(g, k0, k1):
    """The single word of global index g (used where one word covers a whole row)."""
    q = g >> np.uint64(2)
    r0, r1, r2, r3 = philox4x32_10(q & _MASK32, q >> _SHIFT32, np.uint64(0), np.uint64(0), k0, k1)
    lane = g & np.uint64(3)
    if lane == 0:
        return r0
    if lane == 1:
        return r1
    if lane == 2:
        return r2
    return r3


@numba.njit(inline="always", **_jit)
def _store_block(buffer, lane, r0, r1, r2, r3):
    buffer[4 * lane] = np.uint32(r0)
    buffer[4 * lane + 1] = np.uint32(r1)
    buffer[4 * lane + 2] = np.uint32(r2)
    buffer[4 * lane + 3] = np.uint32(r3)


@numba.njit(inline="always", **_jit)
def _philox_counter(q, k0, k1):
    return philox4x32_10(q & _MASK32, q >> _SHIFT32, np.uint64(0), np.uint64(0), k0, k1)


@numba.njit(inline="always", **_jit)
def _philox_shared_high(low, high, k0, k1):
    """``_philox_counter`` of the counter ``high * 2**32 + low``, for lanes that all share
    ``high``. The first round, where the counter's upper two words are zero, is written out:
    its ``c0`` (``high ^ k0``), and the second round's product of it, are then the same in every
    lane, so LLVM computes them once per block rather than per lane (one vector multiply and a
    few xors fewer per counter vector: 1.07-1.16x words per second here; with the keys masked
    as in ``philox4x32_10``, the forward kernel 1.13x at 2^24 elements on two threads and 1.14x
    at 2^17 on one, ``bench/ab_kernels.py``)."""
    k0 = k0 & _MASK32  # no-ops that let LLVM use vpmuludq (see philox4x32_10)
    k1 = k1 & _MASK32
    product0 = _M0 * low
    c0 = high ^ k0
    c1 = np.uint64(0)
    c2 = (product0 >> _SHIFT32) ^ k1
    c3 = product0 & _MASK32
    return _rounds_2_to_10(c0, c1, c2, c3, k0, k1)


#: Counters per vector of ``_fill_block`` (eight uint64 lanes: one AVX-512 register, two AVX2
#: ones) and independent vectors per call.
_LANES = 8
_CHAINS = 2
#: Words per call of ``_fill_block`` (16 counters), also the words between two bursts of
#: prefetch hints. Must divide CHUNK.
PREFETCH_BLOCK = 4 * _LANES * _CHAINS
_BLOCK_COUNTERS = PREFETCH_BLOCK // 4
#: Cache lines of float32 data per block: the hints per array after each block.
_BLOCK_LINES = PREFETCH_BLOCK * 4 // CACHE_LINE
assert CHUNK % PREFETCH_BLOCK == 0 and CHUNK % 8 == 0


@numba.njit(inline="always", **_jit)
def _fill_block(buffer, base, q, k0, k1):
    """The counters q .. q + 15 into buffer[base : base + 64]: one vector iteration over 8
    lanes with two independent counters each, all computed before any store. The counters must
    share their high word (``_shared_high``; else ``_fill_counters``).

    The Philox rounds are a chain of dependent operations (multiply, shift, xor, multiply...), so
    the core needs independent chains side by side to keep its vector units busy; LLVM turns
    the lane loop into whole vectors (per round and multiplier, eight counters' products in one
    ``vpmuludq`` and their two xors in one ``vpternlogq``). Measured here, in-cache words of whole tasks, one thread, all
    versions in one process (G words/s): 4 lanes x 3 chains 0.62-0.76 (this loop until the sixth
    session), 4 x 4 1.11, 8 x 3 1.12, 8 x 2 1.24-1.86 (and 1.67 against 0.67 with
    ``NUMBA_CPU_NAME=haswell``, which alone still let LLVM use AVX-512 registers: true AVX2 code
    also needs ``NUMBA_CPU_FEATURES`` without ``avx512f``). The trip count of the caller's loop should be a
    constant (``fill_chunk_prefetching``); ``fill_words`` runs the same blocks in a loop of
    variable length, slower but still ahead of its two-halves loop."""
    block = buffer[base : base + PREFETCH_BLOCK]
    low = q & _MASK32
    high = q >> _SHIFT32
    for lane in range(_LANES):
        a0, a1, a2, a3 = _philox_shared_high(low + np.uint64(lane), high, k0, k1)
        b0, b1, b2, b3 = _philox_shared_high(low + np.uint64(lane + _LANES), high, k0, k1)
        _store_block(block, lane, a0, a1, a2, a3)
        _store_block(block, lane + _LANES, b0, b1, b2, b3)


@numba.njit(**_jit)
def _fill_counters(buffer, q_first, n_counters, k0, k1):
    """The words of ``n_counters`` counters from q_first on into buffer[0 : 4 * n_counters], one
    counter at a time: for the tasks whose counters carry into their high word (one in 2**34
    words). A plain function, not inlined: a second vector loop in every kernel doubled their
    compile time."""
    for c in range(n_counters):
        r0, r1, r2, r3 = _philox_counter(q_first + np.uint64(c), k0, k1)
        _store_block(buffer, c, r0, r1, r2, r3)


@numba.njit(inline="always", **_jit)
def _shared_high(q, count):
    """Whether the ``count`` (at least 1) counters from q on all have q's high word."""
    return ((q + np.uint64(count - 1)) >> _SHIFT32) == (q >> _SHIFT32)


@numba.njit(inline="always", **_jit)
def fill_words(buffer, g_start, count, k0, k1):
    """Write the words of g_start .. g_start + count - 1 to buffer; returns where g_start landed.

    Counters are whole, so the buffer starts at word 4 * (g_start >> 2). Whole blocks of
    ``_BLOCK_COUNTERS`` counters first (``_fill_block``; ``_fill_counters`` does it all where the
    counters carry into their high word), then the rest two counters per
    iteration (lane and lane + half, both before any store: two dependency chains). One thread,
    in cache, against the two-halves loop alone: 4000 words 1.22 vs 1.05 G words/s, 65 and 200
    words unchanged (0.7-0.9: per-call costs dominate).
    """
    q_first = g_start >> np.uint64(2)
    # (last word's counter) - (first's) + 1, written so that g = 2**64 - 1 does not overflow.
    n_counters = np.int64(((g_start + np.uint64(count - 1)) >> np.uint64(2)) - q_first) + 1
    if not _shared_high(q_first, n_counters):
        _fill_counters(buffer, q_first, n_counters, k0, k1)
        return np.int64(g_start & np.uint64(3))
    blocks = n_counters // _BLOCK_COUNTERS
    for block in range(blocks):
        _fill_block(buffer, block * PREFETCH_BLOCK, q_first + np.uint64(block * _BLOCK_COUNTERS), k0, k1)
    done = blocks * _BLOCK_COUNTERS
    rest = buffer[4 * done :]
    q_rest = q_first + np.uint64(done)
    half = (n_counters - done) // 2
    for lane in range(half):
        q = q_rest + np.uint64(lane)
        a0, a1, a2, a3 = _philox_counter(q, k0, k1)
        b0, b1, b2, b3 = _philox_counter(q + np.uint64(half), k0, k1)
        _store_block(rest, lane, a0, a1, a2, a3)
        _store_block(rest, lane + half, b0, b1, b2, b3)
    if (n_counters - done) % 2:
        last = n_counters - done - 1
        a0, a1, a2, a3 = _philox_counter(q_rest + np.uint64(last), k0, k1)
        _store_block(rest, last, a0, a1, a2, a3)
    return np.int64(g_start & np.uint64(3))


@numba.njit(inline="always", **_jit)
def fill_chunk_prefetching(buffer, g_start, k0, k1, read_a, read_b, write, i0, i1, start):
    """``fill_words`` for a whole ``CHUNK`` of elements that also hints the memory the task is
    about to stream, so that the select loop's misses are served under the Philox arithmetic
    (about 1.35x faster for a streaming 2^24 dropout here).

    Element j of the task is ``array[i0, i1, start + j]`` of the rank-3 arrays ``read_a``, ``read_b``
    (read; ``read_b`` may be None) and ``write`` (written); an array with an empty last axis
    stands for one that cannot be addressed that way and gets useless but harmless hints. After
    each ``PREFETCH_BLOCK`` words it hints ``_BLOCK_LINES`` cache lines of each (a float32 block's lines).
    The shape of this loop was measured, not guessed: each of these cost 10-20% here: more
    hints per block (even ones covering every line of a float64 block), a variable trip count
    (of blocks or of hints), a branch around the hints, or hints through a row slice instead of
    the rank-3 array; with 48-word blocks two hints per block cost 5%.
    Same words, placement and return value as ``fill_words``.
    """
    first = np.int64(g_start & np.uint64(3))
    q_first = g_start >> np.uint64(2)
    if not _shared_high(q_first, CHUNK // 4):
        # The chunk's counters carry into their high word (about one chunk in 2**34 words): no
        # hints. The counters of CHUNK words, plus the one an unaligned start pushes past them.
        _fill_counters(buffer, q_first, CHUNK // 4 + 1, k0, k1)
        return first
    # Hints are clipped to each row (index 0 of an empty one: a hint never faults).
    last_a = max(read_a.shape[2] - 1, 0)
    last_b = max(read_b.shape[2] - 1, 0) if read_b is not None else 0
    last_w = max(write.shape[2] - 1, 0)
    step_a = line_step(read_a)
    step_b = line_step(read_b) if read_b is not None else 1
    step_w = line_step(write)
    for block in range(CHUNK // PREFETCH_BLOCK):
        base = block * PREFETCH_BLOCK
        _fill_block(buffer, base, q_first + np.uint64(base // 4), k0, k1)
        for k in range(_BLOCK_LINES):
            prefetch(read_a, (i0, i1, min(start + base + k * step_a, last_a)), False)
            if read_b is not None:
                prefetch(read_b, (i0, i1, min(start + base + k * step_b, last_b)), False)
            prefetch(write, (i0, i1, min(start + base + k * step_w, last_w)), True)
    if first:
        # The words of the last counter, which the unaligned start pushed past the blocks.
        q = q_first + np.uint64(CHUNK // 4)
        r0, r1, r2, r3 = _philox_counter(q, k0, k1)
        _store_block(buffer, CHUNK // 4, r0, r1, r2, r3)
    return first


@numba.njit(inline="always", **_jit)
def task_place(task, chunks_per_row, n1, n2):
    """(i0, i1, start, count) of a task over a rank-3 view: rows of n2 elements, in row-major
    order over the first two axes, each cut into CHUNKs (a row's last one may be shorter)."""
    row = task // chunks_per_row
    start = (task - row * chunks_per_row) * CHUNK
    i0 = row // n1
    return i0, row - i0 * n1, start, min(CHUNK, n2 - start)


@numba.njit(inline="always", **_jit)
def task_words(words, g_start, count, k0, k1, read_a, read_b, write, i0, i1, start):
    """A task's words into ``words`` (see ``fill_words``); whole CHUNKs prefetch what the task
    will stream (see ``fill_chunk_prefetching``, which also explains the arguments)."""
    if count == CHUNK:
        return fill_chunk_prefetching(words, g_start, k0, k1, read_a, read_b, write, i0, i1, start)
    return fill_words(words, g_start, count, k0, k1)


@numba.njit(inline="always", **_jit)
def _pack_chunk(words, first, count, threshold, bits, byte_start):
    """Pack keep flags of words[first : first + count] into bits[byte_start:] (little bit order).

    Whole bytes go through one flag byte per element (a vectorised compare), read back eight
    at a time as a little-endian uint64 ``v`` whose byte k is flag k: the top byte of
    ``v * 0x0102040810204080`` is then sum(flag_k << k), as no partial product carries into it
    (checked exhaustively in the tests). About 4x faster than or-ing bits one at a time."""
    whole = count // 8 if _LITTLE_ENDIAN else 0
    flags = np.empty(CHUNK, dtype=np.uint8)
    row_words = words[first : first + 8 * whole]
    for j in range(8 * whole):
        flags[j] = np.uint8(np.uint64(row_words[j]) < threshold)
    groups = flags.view(np.uint64)
    for b in range(whole):
        bits[byte_start + b] = np.uint8((groups[b] * _PACK_MAGIC) >> np.uint64(56))
    for b in range(whole, (count + 7) // 8):  # a partial last byte (or every byte, big-endian)
        byte = 0
        for k in range(min(8, count - 8 * b)):
            if np.uint64(words[first + 8 * b + k]) < threshold:
                byte |= 1 << k
        bits[byte_start + b] = np.uint8(byte)


@numba.njit(inline="always", **_jit)
def unit_rows(a, b):
    """Whether the last axis of both rank-3 arrays steps by one element, so that their rows can
    be seen through ``unit_stride`` (contiguous arrays always; the rows of a sliced one too)."""
    return a.strides[2] == a.itemsize and b.strides[2] == b.itemsize


@numba.njit(inline="always", **_jit)
def line_head(out_row):
    """Elements of ``out_row`` before its first cache-line boundary (all of a short row): span
    loops run them apart, so that the main loop's vector stores do not straddle lines, nor the
    loads of inputs placed like the output (large NumPy arrays all start 16 bytes past a page).
    Measured on the seventh session's machine, forward kernel, float32 arrays 16 bytes past a
    page, ``bench/ab_kernels.py`` against the same code without it: 2^24 1.04-1.10x (two
    threads, three runs), 2^22 one thread 1.09x, 2^17 one thread 1.00-1.03x."""
    return min(lead(out_row), out_row.size)


@numba.njit(inline="always", **_jit)
def _select_loop(x_row, out_row, row_words, last_kept, scale, zero):
    for j in range(x_row.size):
        value = load(x_row, j) * scale
        store(out_row, j, pick(row_words[j] <= last_kept, value, zero))


@numba.njit(inline="always", **_jit)
def _select_span(x_row, out_row, row_words, last_kept, scale, zero):
    head = line_head(out_row)
    _select_loop(x_row[:head], out_row[:head], row_words[:head], last_kept, scale, zero)
    _select_loop(x_row[head:], out_row[head:], row_words[head:], last_kept, scale, zero)


@numba.njit(inline="always", **_jit)
def _scale_or_zero(x_row, out_row, keep, scale, zero):
    if keep:
        for j in range(x_row.size):
            store(out_row, j, load(x_row, j) * scale)
    else:
        for j in range(x_row.size):
            store(out_row, j, zero)


@numba.njit(inline="always", **_jit)
def _stream_scale_or_zero(x_row, out_row, keep, scale, zero, staged):
    """``_scale_or_zero`` with streaming stores: staged ``STAGE`` elements at a time (the
    caller's buffer ``staged``). No fence: the caller's task ends with one."""
    count = x_row.size
    if not keep:
        staged[:] = zero
    head = min(count, lead(out_row))
    _scale_or_zero(x_row[:head], out_row[:head], keep, scale, zero)
    done = head
    while done + STAGE <= count:
        if keep:
            _scale_or_zero(x_row[done : done + STAGE], staged, keep, scale, zero)
        stream_lines(out_row, done, staged, STAGE)
        done += STAGE
    _scale_or_zero(x_row[done:], out_row[done:], keep, scale, zero)


@numba.njit(inline="always", **_jit)
def _select_flags(x_row, out_row, flags, count, scale, zero):
    for j in range(count):
        store(out_row, j, pick(flags[j] != 0, load(x_row, j) * scale, zero))


@numba.njit(parallel=True, **_jit)
def select_rows(x, out, mask_stride0, mask_stride1, mask_stride2, word_offset, k0, k1,
                threshold, scale, zero, bits, pack_bits, stream):
    """out = where(keep, x * scale, 0) over a rank-3 view.

    Element (i0, i1, i2) uses word ``word_offset + i0*ms0 + i1*ms1 + i2*ms2`` where the mask
    strides are 0 along broadcast axes and ``mask_stride2`` is 0 or 1. ``pack_bits`` is only set
    for a single full row (mask index == element index), whose chunks start on byte boundaries.
    ``threshold`` must be at least 1 (threshold 0 drops everything: the backend fills zeros).
    ``stream``: write the unit-stride rows of channel-style masks (``mask_stride2 == 0``) of at
    least ``STREAM_ROW_BYTES`` with streaming stores. The words path never streams: the module
    ``_numba_stream`` says why."""
    n0, n1, n2 = x.shape
    rows = n0 * n1
    unit = unit_rows(x, out)
    stream = stream and unit
    if mask_stride2 == 0 and stream and n2 * out.itemsize >= STREAM_ROW_BYTES:
        # Channel-style masks, streamed: tasks of whole rows, up to CHUNK elements (at least
        # one row) each, so that a task's staging buffer is allocated once for several rows.
        per_task = max(1, CHUNK // max(n2, 1))
        for task in numba.prange((rows + per_task - 1) // per_task):
            staged = np.empty(STAGE, dtype=out.dtype)
            for row in range(task * per_task, min(rows, (task + 1) * per_task)):
                i0 = row // n1
                i1 = row - i0 * n1
                g = word_offset + np.uint64(i0 * mask_stride0 + i1 * mask_stride1)
                keep = word_at(g, k0, k1) < threshold
                _stream_scale_or_zero(unit_stride(x[i0, i1, :]), unit_stride(out[i0, i1, :]),
                                      keep, scale, zero, staged)
            store_fence()
        return
    if mask_stride2 == 0:
        # One word per row (channel-style masks): the row is all kept or all dropped.
        for row in numba.prange(rows):
            i0 = row // n1
            i1 = row - i0 * n1
            g = word_offset + np.uint64(i0 * mask_stride0 + i1 * mask_stride1)
            keep = word_at(g, k0, k1) < threshold
            if unit:
                _scale_or_zero(unit_stride(x[i0, i1, :]), unit_stride(out[i0, i1, :]), keep, scale, zero)
            else:
                _scale_or_zero(x[i0, i1, :], out[i0, i1, :], keep, scale, zero)
        return
    # word < threshold as a 32-bit compare (word <= threshold - 1): vectorises with half the
    # instructions of the 64-bit one (about 3% of the kernel here). Needs threshold >= 1.
    last_kept = np.uint32(threshold - np.uint64(1))
    chunks_per_row = (n2 + CHUNK - 1) // CHUNK
    for task in numba.prange(rows * chunks_per_row):
        i0, i1, start, count = task_place(task, chunks_per_row, n1, n2)
        g = word_offset + np.uint64(i0 * mask_stride0 + i1 * mask_stride1 + start)
        # Slices, not base + j indexing: a signed index needs a wraparound check per element,
        # which stops LLVM vectorising the loop (about 2x slower on a streaming array).
        x_row = x[i0, i1, start : start + count]
        out_row = out[i0, i1, start : start + count]
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        first = task_words(words, g, count, k0, k1, x, None, out, i0, i1, start)
        row_words = words[first : first + count]
        if unit:
            _select_span(unit_stride(x_row), unit_stride(out_row), row_words, last_kept, scale, zero)
        else:
            _select_span(x_row, out_row, row_words, last_kept, scale, zero)
        if pack_bits:
            _pack_chunk(words, first, count, threshold, bits, start // 8)


#: Rows of ``select_repeated_rows`` that share a task's words where they are long: the words of
#: a chunk are then made once per this many rows.
REPEATED_ROWS = 4


@numba.njit(inline="always", **_jit)
def repeated_tasks(x, out):
    """How the kernels of masks that repeat along axis 1 (``select_repeated_rows``,
    ``_numba_variants.gaussian_repeated_rows``) share out a rank-3 view: (tasks, chunks per
    row, groups of rows, rows per group, back to back). A task takes one chunk of a row's
    words and a group of rows along axis 1: about a chunk of elements of short rows, and
    ``REPEATED_ROWS`` long ones. Back to back: short rows that follow one another in memory in
    both arrays, which a task handles as one span of ``rows * n2`` elements."""
    n0, n1, n2 = x.shape
    chunks_per_row = (n2 + CHUNK - 1) // CHUNK
    per_task = max(REPEATED_ROWS, CHUNK // n2)
    groups = (n1 + per_task - 1) // per_task
    back_to_back = (unit_rows(x, out) and CHUNK // n2 >= 2 and x.strides[1] == n2 * x.itemsize
                    and out.strides[1] == n2 * out.itemsize)
    return n0 * groups * chunks_per_row, chunks_per_row, groups, per_task, back_to_back


@numba.njit(inline="always", **_jit)
def repeated_place(task, chunks_per_row, groups, per_task, n1, n2):
    """(i0, start, count, first row, rows) of a task of ``repeated_tasks``: elements
    [start, start + count) of rows [first row, first row + rows) of x[i0]."""
    i0, group, start, count = task_place(task, chunks_per_row, groups, n2)
    row_first = group * per_task
    return i0, start, count, row_first, min(n1, row_first + per_task) - row_first


@numba.njit(parallel=True, **_jit)
def select_repeated_rows(x, out, mask_stride0, word_offset, k0, k1, threshold, scale, shift,
                         dropped, bits, from_bits):
    """out = where(keep, x * scale + shift, dropped) (as ``select_columns``: dropout passes shift
    -0.0 and dropped 0, alpha dropout its affine map) for masks that repeat along axis 1: mask
    strides (ms0, 0, 1), element (i0, i1, i2) using word ``word_offset + i0*ms0 + i2``. Channel
    masks of channels-last maps walked channels innermost (``_numba_backend._unit_axis_last``)
    and a mask over (N, 1, F) on (N, T, F) (variational dropout) are such. A task makes one
    chunk of a row's words and selects them into a group of rows along axis 1
    (``repeated_tasks``); rows back to back are one span, their words repeated, so a task's cost
    is a copy's plus one row's words. ``from_bits``: the keep flags come from packed ``bits`` at
    the mask's flat index (``word_offset`` is then the mask index of element (0, 0, 0),
    ``threshold`` 1), written into the words as 0 (kept) or 2**32 - 1 (dropped)."""
    n0, n1, n2 = x.shape
    last_kept = np.uint32(threshold - np.uint64(1))
    tasks, chunks_per_row, groups, per_task, back_to_back = repeated_tasks(x, out)
    unit = unit_rows(x, out)
    for task in numba.prange(tasks):
        i0, start, count, row_first, row_count = repeated_place(task, chunks_per_row, groups, per_task, n1, n2)
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        g = word_offset + np.uint64(i0 * mask_stride0 + start)
        if from_bits:
            first = 0
            for j in range(count):
                m = g + np.uint64(j)
                kept = (bits[m >> np.uint64(3)] >> (m & np.uint64(7))) & 1
                words[j] = np.uint32(0) if kept else np.uint32(0xFFFFFFFF)
        else:
            first = fill_words(words, g, count, k0, k1)
        row_words = words[first : first + count]
        if back_to_back:  # one chunk a row here: count == n2
            repeated = np.empty(row_count * n2, dtype=np.uint32)
            for r in range(row_count):
                repeated[r * n2 : (r + 1) * n2] = row_words
            x_span = unit_span(x[i0, row_first, :], row_count * n2)
            out_span = unit_span(out[i0, row_first, :], row_count * n2)
            _lined_affine_span(x_span, out_span, repeated, last_kept, scale, shift, dropped)
            continue
        for i1 in range(row_first, row_first + row_count):
            x_row = x[i0, i1, start : start + count]
            out_row = out[i0, i1, start : start + count]
            if unit:
                _lined_affine_span(unit_stride(x_row), unit_stride(out_row), row_words, last_kept,
                                   scale, shift, dropped)
            else:
                _lined_affine_span(x_row, out_row, row_words, last_kept, scale, shift, dropped)


@numba.njit(inline="always", **_jit)
def _lined_affine_span(x_row, out_row, row_words, last_kept, scale, shift, dropped):
    """``_affine_span`` with the elements before the output's first line boundary apart (see
    ``line_head``)."""
    head = line_head(out_row)
    _affine_span(x_row[:head], out_row[:head], row_words[:head], last_kept, scale, shift, dropped)
    _affine_span(x_row[head:], out_row[head:], row_words[head:], last_kept, scale, shift, dropped)


#: A task of the columns kernels (``select_columns``): at most this many rows along the
#: unit-stride axis 1 (4 KB of float32 per column: long runs for the hardware prefetcher), and
#: about this many elements, so columns of COLUMN_ELEMENTS // rows (a multiple of 4).
COLUMN_ROWS = 1024
COLUMN_ELEMENTS = 16384


@numba.njit(inline="always", **_jit)
def column_tasks(n0, n1, n2):
    """(tasks, rows per task, columns per task, tasks along axis 1, tasks along axis 2) of the
    columns kernels over a rank-3 view."""
    rows = min(n1, COLUMN_ROWS)
    width = max(4, COLUMN_ELEMENTS // rows // 4 * 4)
    tiles1 = (n1 + rows - 1) // rows
    tiles2 = (n2 + width - 1) // width
    return n0 * tiles1 * tiles2, rows, width, tiles1, tiles2


@numba.njit(inline="always", **_jit)
def column_place(task, rows, width, tiles1, tiles2, n1, n2):
    """(i0, first row a, first column b, rows, columns) of a task of ``column_tasks``: rows x
    width tasks, row-major over the tasks of each i0."""
    i0 = task // (tiles1 * tiles2)
    rest = task - i0 * tiles1 * tiles2
    t1 = rest // tiles2
    a = t1 * rows
    b = (rest - t1 * tiles2) * width
    return i0, a, b, min(rows, n1 - a), min(width, n2 - b)


@numba.njit(inline="always", **_jit)
def column_lanes(rows):
    """Lanes of ``column_words`` for ``rows`` rows: rounded up to 16 (two vectors of 8)."""
    return (rows + 15) // 16 * 16


@numba.njit(inline="always", **_jit)
def column_rows(word_offset, i0, a, b, mask_stride0, mask_stride1, task_rows, rows, cols):
    """Lays out the column task at (i0, a, b) of ``rows`` x ``cols`` elements, whose row r
    starts at word g0 + r * mask_stride1 (g0 = word_offset + i0 * mask_stride0 + a *
    mask_stride1 + b): for each of its ``lanes`` (``column_lanes(rows)``) the row's first Philox
    counter into ``row_counters[r]`` and the place of its first word in that counter into
    ``phases[r]`` (both sized for ``task_rows``, the largest task). Returns (lanes,
    row_counters, phases, shifted, skip, blocks, counters), the last four ``column_block``'s:

    - mask_stride1 % 4 == 0: every row's first word has row 0's place ``skip``, so word t of
      each row's counter j is column 4j + t - skip (not shifted; one counter per block).
    - otherwise the places differ from row to row (they repeat every 4 rows). Block j is then
      columns 4j .. 4j + 3, words phase .. phase + 3 of a row's counters j and j + 1
      (``column_shift``); a row's last column needs counter (phase + cols - 1) // 4."""
    lanes = column_lanes(rows)
    row_counters = np.empty(column_lanes(task_rows), dtype=np.uint64)
    phases = np.empty(column_lanes(task_rows), dtype=np.uint32)
    g0 = word_offset + np.uint64(i0 * mask_stride0 + a * mask_stride1 + b)
    for r in range(lanes):
        g = g0 + np.uint64(r) * np.uint64(mask_stride1)
        row_counters[r] = g >> np.uint64(2)
        phases[r] = np.uint32(g & np.uint64(3))
    if mask_stride1 % 4 == 0:
        skip = np.int64(phases[0])
        blocks = (skip + cols + 3) // 4
        return lanes, row_counters, phases, False, skip, blocks, blocks
    top = np.int64(max(max(phases[0], phases[1]), max(phases[2], phases[3])))  # lanes >= 16
    return lanes, row_counters, phases, True, np.int64(0), (cols + 3) // 4, (top + cols - 1) // 4 + 1


@numba.njit(inline="always", **_jit)
def column_words(words, at, row_counters, k, k0, k1, lanes):
    """Philox of counters ``row_counters[r] + k`` (r < lanes, a multiple of 16): word t of
    row r's counter into ``words[at + t, r]``. Each row is a lane, so the loop vectorises as
    ``_fill_block``'s does, and the words land by column: four consecutive words of every row,
    with no transposition."""
    for r in range(lanes):
        w0, w1, w2, w3 = _philox_counter(row_counters[r] + np.uint64(k), k0, k1)
        words[at, r] = np.uint32(w0)
        words[at + 1, r] = np.uint32(w1)
        words[at + 2, r] = np.uint32(w2)
        words[at + 3, r] = np.uint32(w3)


@numba.njit(inline="always", **_jit)
def column_shift(values, held, fresh, phases, lanes):
    """``values[held + t, r]`` becomes value ``phases[r] + t`` of the eight held then fresh
    (a row's counter, then its next one) for t < 4: two steps of selects (by one, then by two
    places) that vectorise across rows."""
    for r in range(lanes):
        by_one = (phases[r] & np.uint32(1)) != 0
        by_two = (phases[r] & np.uint32(2)) != 0
        h0, h1, h2, h3 = values[held, r], values[held + 1, r], values[held + 2, r], values[held + 3, r]
        f0, f1, f2 = values[fresh, r], values[fresh + 1, r], values[fresh + 2, r]
        s0 = pick(by_one, h1, h0)
        s1 = pick(by_one, h2, h1)
        s2 = pick(by_one, h3, h2)
        s3 = pick(by_one, f0, h3)
        s4 = pick(by_one, f1, f0)
        s5 = pick(by_one, f2, f1)
        values[held, r] = pick(by_two, s2, s0)
        values[held + 1, r] = pick(by_two, s3, s1)
        values[held + 2, r] = pick(by_two, s4, s2)
        values[held + 3, r] = pick(by_two, s5, s3)


@numba.njit(inline="always", **_jit)
def column_block(words, row_counters, phases, j, shifted, counters, k0, k1, lanes):
    """Block j of a column task laid out by ``column_rows``, in ``words`` (8 x lanes): returns
    the row of ``words`` from which the words of columns 4j - skip + t (t < 4) lie. Shifted
    tasks keep a row's last counter for the next block (rows 0-3 and 4-7 take turns)."""
    if not shifted:
        column_words(words, 0, row_counters, j, k0, k1, lanes)
        return 0
    held = 4 * (j & 1)
    if j == 0:
        column_words(words, 0, row_counters, 0, k0, k1, lanes)
    if j + 1 < counters:
        column_words(words, 4 - held, row_counters, j + 1, k0, k1, lanes)
    column_shift(words, held, 4 - held, phases, lanes)
    return held


@numba.njit(parallel=True, **_jit)
def select_columns(x, out, mask_stride0, mask_stride1, word_offset, k0, k1, threshold, scale,
                   shift, dropped):
    """out = where(keep, x * scale + shift, dropped), the mask as in ``select_rows`` with mask
    stride 1 along axis 2, for views whose axis 1 steps by one element in both x and out and
    whose axis 2 does not: a transposed or F-ordered array, a channels-last map with a full
    mask, where the mask's consecutive words run across memory. Dropout passes shift -0.0
    (x * scale + -0.0 is x * scale, bit for bit, -0.0 included) and dropped 0; alpha dropout its
    affine map.

    ``select_rows`` would walk each row through memory with a large stride, a cache line per
    element (5% of a copy at 2048 x 2048 float32 here). A task takes up to COLUMN_ROWS rows,
    whose columns run along memory, and COLUMN_ELEMENTS // rows columns: ``column_words`` makes
    a Philox lane of each row's counter and its words land in column order (``column_rows``,
    ``column_block``), so each memory column is selected as a contiguous row would be, with no
    transposition of the words (which in the earlier tile kernels cost as much as the words:
    channels-last (32, 64, 56, 56) float32 maps 0.58 -> 1.15 G elements/s, 2048 x 2048
    transposed 0.56 -> 1.26 here)."""
    n0, n1, n2 = x.shape
    tasks, task_rows, width, tiles1, tiles2 = column_tasks(n0, n1, n2)
    last_kept = np.uint32(threshold - np.uint64(1))  # 32-bit compare, as in select_rows
    for task in numba.prange(tasks):
        i0, a, b, rows, cols = column_place(task, task_rows, width, tiles1, tiles2, n1, n2)
        lanes, row_counters, phases, shifted, skip, blocks, counters = column_rows(
            word_offset, i0, a, b, mask_stride0, mask_stride1, task_rows, rows, cols)
        words = np.empty((8, column_lanes(task_rows)), dtype=np.uint32)
        for j in range(blocks):
            at = column_block(words, row_counters, phases, j, shifted, counters, k0, k1, lanes)
            for t in range(4):
                c = 4 * j + t - skip
                if 0 <= c < cols:
                    _affine_span(unit_stride(x[i0, a : a + rows, b + c]),
                                 unit_stride(out[i0, a : a + rows, b + c]), words[at + t],
                                 last_kept, scale, shift, dropped)


@numba.njit(inline="always", **_jit)
def _affine_span(x_row, out_row, row_words, last_kept, scale, shift, dropped):
    for j in range(x_row.size):
        value = load(x_row, j) * scale + shift
        store(out_row, j, pick(row_words[j] <= last_kept, value, dropped))


@numba.njit(parallel=True, **_jit)
def select_columns_from_bits(x, out, mask_base, mask_stride0, mask_stride1, bits, scale, zero):
    """``select_columns`` with keep flags read from packed bits at the mask's flat index (the
    layout of ``select_rows_from_bits`` with mask stride 1 along axis 2), by the same tasks:
    the flags of a row's eight columns 8k .. 8k + 7 are the two bytes at its bit m + 8k shifted
    by m & 7, gathered once per row for eight columns, each of which is then selected with a
    shift, instead of reading and transposing a bit per element."""
    n0, n1, n2 = x.shape
    tasks, task_rows, width, tiles1, tiles2 = column_tasks(n0, n1, n2)
    last_byte = bits.size - 1
    for task in numba.prange(tasks):
        i0, a, b, rows, cols = column_place(task, task_rows, width, tiles1, tiles2, n1, n2)
        row_bytes = np.empty(task_rows, dtype=np.uint8)
        m0 = mask_base + i0 * mask_stride0 + a * mask_stride1 + b
        for k in range((cols + 7) // 8):
            for r in range(rows):
                m = m0 + r * mask_stride1 + 8 * k
                at = m >> 3
                # The next byte only holds flags of this block where m & 7 > 0; past the end of
                # the bits it is never needed.
                pair = np.uint32(bits[at]) | (np.uint32(bits[min(at + 1, last_byte)]) << np.uint32(8))
                row_bytes[r] = np.uint8((pair >> np.uint32(m & 7)) & np.uint32(0xFF))
            for t in range(min(8, cols - 8 * k)):
                c = 8 * k + t
                x_column = unit_stride(x[i0, a : a + rows, b + c])
                out_column = unit_stride(out[i0, a : a + rows, b + c])
                for j in range(rows):
                    kept = ((row_bytes[j] >> np.uint8(t)) & np.uint8(1)) != 0
                    store(out_column, j, pick(kept, load(x_column, j) * scale, zero))


@numba.njit(inline="always", **_jit)
def _stream_flags(x_row, out_row, flags, count, scale, zero):
    staged = np.empty(STAGE, dtype=out_row.dtype)
    head = min(count, lead(out_row))
    _select_flags(x_row, out_row, flags, head, scale, zero)
    done = head
    while done + STAGE <= count:
        _select_flags(x_row[done:], staged, flags[done:], STAGE, scale, zero)
        stream_lines(out_row, done, staged, STAGE)
        done += STAGE
    _select_flags(x_row[done:], out_row[done:], flags[done:], count - done, scale, zero)
    store_fence()


@numba.njit(parallel=True, **_jit)
def select_rows_from_bits(x, out, mask_base, mask_stride0, mask_stride1, mask_stride2, bits,
                          scale, zero, stream):
    """Like ``select_rows`` with keep flags read from packed bits at the mask's flat index.
    ``stream``: write chunks of at least ``STREAM_ROW_BYTES`` of unit-stride rows with streaming
    stores (this kernel is bound by memory: ``_numba_stream``)."""
    n0, n1, n2 = x.shape
    rows = n0 * n1
    unit = unit_rows(x, out)
    stream = stream and unit
    chunks_per_row = (n2 + CHUNK - 1) // CHUNK
    for task in numba.prange(rows * chunks_per_row):
        i0, i1, start, count = task_place(task, chunks_per_row, n1, n2)
        base = mask_base + i0 * mask_stride0 + i1 * mask_stride1
        x_row = x[i0, i1, start : start + count]
        out_row = out[i0, i1, start : start + count]
        done = 0
        first_bit = base + start * mask_stride2
        if mask_stride2 == 0:  # one flag for the whole row (channel-style masks)
            keep = ((bits[first_bit >> 3] >> (first_bit & 7)) & 1) != 0
            if stream and count * out.itemsize >= STREAM_ROW_BYTES:
                staged = np.empty(STAGE, dtype=out.dtype)
                _stream_scale_or_zero(unit_stride(x_row), unit_stride(out_row), keep, scale, zero, staged)
                store_fence()
            elif unit:
                _scale_or_zero(unit_stride(x_row), unit_stride(out_row), keep, scale, zero)
            else:
                _scale_or_zero(x_row, out_row, keep, scale, zero)
            continue
        if mask_stride2 == 1 and first_bit % 8 == 0 and _LITTLE_ENDIAN:
            # Whole mask bytes become one flag byte per element, eight at a time: byte k of
            # (byte * 0x0101010101010101) & 0x8040201008040201 is bit k of the mask byte (no
            # carries: each product byte is the byte itself). Then the same vectorised select as
            # the forward; a per-element bit shift ran at 2.4x the time here.
            whole = count // 8
            flags = np.empty(CHUNK, dtype=np.uint8)
            groups = flags.view(np.uint64)
            row_bits = bits[first_bit // 8 : first_bit // 8 + whole]
            for b in range(whole):
                groups[b] = (np.uint64(row_bits[b]) * _SPREAD_BYTE) & _BIT_PER_BYTE
            if stream and count * out.itemsize >= STREAM_ROW_BYTES:
                _stream_flags(unit_stride(x_row), unit_stride(out_row), flags, 8 * whole, scale, zero)
            elif unit:
                _select_flags(unit_stride(x_row), unit_stride(out_row), flags, 8 * whole, scale, zero)
            else:
                _select_flags(x_row, out_row, flags, 8 * whole, scale, zero)
            done = 8 * whole
        for j in range(done, count):
            m = base + (start + j) * mask_stride2
            keep = ((bits[m >> 3] >> (m & 7)) & 1) != 0
            store(out_row, j, pick(keep, load(x_row, j) * scale, zero))


@numba.njit(parallel=True, **_jit)
def pack_keep_bits(n, word_offset, k0, k1, threshold, bits):
    """bits = packbits(word(offset + i) < threshold for i < n), little bit order."""
    no_hints = np.empty((1, 1, 0), dtype=np.uint8)  # the bits are 1/32 of the words' bytes
    for task in numba.prange((n + CHUNK - 1) // CHUNK):
        start = task * CHUNK
        count = min(CHUNK, n - start)
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        first = task_words(words, word_offset + np.uint64(start), count, k0, k1, no_hints, None,
                           no_hints, 0, 0, start)
        _pack_chunk(words, first, count, threshold, bits, start // 8)


@numba.njit(parallel=True, **_jit)
def fill_random_bits(out, word_offset, k0, k1):
    """out[i] = word(offset + i) for a 1-D C-contiguous uint32 array."""
    n = out.size
    lines = out.reshape((1, 1, n))  # hinted for writing while a whole task makes its words
    nothing_read = np.empty((1, 1, 0), dtype=np.uint8)
    for task in numba.prange((n + CHUNK - 1) // CHUNK):
        start = task * CHUNK
        count = min(CHUNK, n - start)
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        first = task_words(words, word_offset + np.uint64(start), count, k0, k1, nothing_read,
                           None, lines, 0, 0, start)
        out[start : start + count] = words[first : first + count]


@numba.njit(parallel=True, **_jit)
def fill_keep_flags(out, word_offset, k0, k1, threshold):
    """out[i] = word(offset + i) < threshold for a 1-D C-contiguous bool array."""
    n = out.size
    lines = out.reshape((1, 1, n))
    nothing_read = np.empty((1, 1, 0), dtype=np.uint8)
    for task in numba.prange((n + CHUNK - 1) // CHUNK):
        start = task * CHUNK
        count = min(CHUNK, n - start)
        words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
        first = task_words(words, word_offset + np.uint64(start), count, k0, k1, nothing_read,
                           None, lines, 0, 0, start)
        row_words = words[first : first + count]
        row_flags = out[start : start + count]
        for j in range(count):
            row_flags[j] = np.uint64(row_words[j]) < threshold


def _serial_twin(kernel):
    """The same kernel compiled without ``parallel`` (prange runs as range). A distinct qualname
    keeps Numba's on-disk cache entries of the two apart."""
    source = kernel.py_func
    twin = types.FunctionType(source.__code__, source.__globals__, source.__name__ + "_serial")
    twin.__qualname__ = source.__qualname__ + "_serial"
    twin.__doc__ = source.__doc__
    return numba.njit(**_jit)(twin)


SERIAL = {
    kernel: _serial_twin(kernel)
    for kernel in (select_rows, select_repeated_rows, select_columns, select_rows_from_bits,
                   select_columns_from_bits, pack_keep_bits, fill_random_bits, fill_keep_flags)
}


_SERIAL_BELOW = {select_rows_from_bits: SERIAL_BELOW_BITS}


def for_size(kernel, n_elements: int):
    """``kernel`` itself, or its serial twin for problems too small to share out (below the
    kernel's own threshold, else SERIAL_BELOW)."""
    serial_below = _SERIAL_BELOW.get(kernel, SERIAL_BELOW)
    return SERIAL.get(kernel, kernel) if n_elements < serial_below else kernel
