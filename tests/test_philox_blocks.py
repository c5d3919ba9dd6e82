"""How the CPU kernels split a task's Philox words, against the NumPy reference. Whole CHUNK
tasks generate blocks of ``_BLOCK_COUNTERS`` counters (eight vector lanes, two independent
counters per lane, with prefetch hints between blocks); any other task (``fill_words``) runs as
many whole blocks as fit, then two counters per iteration from both halves of the remaining
range plus an odd last counter. The tests walk every split: word counts on both sides of whole
blocks and halves, every start word within a counter, a carry into a counter's high word, the
end of the counter space, whole and partial CHUNKs, and rows shorter than a block."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._numba_kernels import (
    _BUFFER_WORDS, CHUNK, PREFETCH_BLOCK, SERIAL, _BLOCK_COUNTERS, fill_random_bits, task_words,
)

from conftest import assert_bitwise_equal

SEED = 0x9E3779B97F4A7C15
K0, K1 = np.uint64(SEED & 0xFFFFFFFF), np.uint64(SEED >> 32)


def test_block_shape_fits_the_task_layout():
    # Whole blocks tile a CHUNK exactly and a block is whole counters and whole bytes of bits.
    assert PREFETCH_BLOCK == 4 * _BLOCK_COUNTERS
    assert CHUNK % PREFETCH_BLOCK == 0 and PREFETCH_BLOCK % 8 == 0


_COUNTS = sorted({n for blocks in range(3) for n in range(
    max(1, blocks * PREFETCH_BLOCK - 9), blocks * PREFETCH_BLOCK + 10)})


@pytest.mark.parametrize("kernel", ["serial", "parallel"])
@pytest.mark.parametrize("start", [0, 1, 2, 3, 4 * 2**32 - 2, 2**64 - 3 * PREFETCH_BLOCK])
def test_words_around_block_boundaries(kernel, start):
    """One task per call (n < CHUNK, so ``fill_words``: whole blocks, then halves of the rest):
    even and odd counter counts from each start word within a counter (and across a carry into
    the counter's high word, and at the top of the counter space)."""
    run = SERIAL[fill_random_bits] if kernel == "serial" else fill_random_bits
    for n in _COUNTS:
        out = np.full(n, 0xDEADBEEF, np.uint32)
        run(out, np.uint64(start), K0, K1)
        assert_bitwise_equal(out, reference.random_bits(n, seed=SEED, offset=start))


@numba.njit
def _whole_chunk_words(g_start, k0, k1):
    """The words a whole-CHUNK task generates (the block path, with its prefetch hints into
    dummy arrays), from g_start on."""
    words = np.empty(_BUFFER_WORDS, dtype=np.uint32)
    dummy = np.zeros((1, 1, CHUNK), dtype=np.float32)
    first = task_words(words, g_start, CHUNK, k0, k1, dummy, None, dummy, 0, 0, 0)
    return words[first : first + CHUNK].copy()


@pytest.mark.parametrize("start", [0, 1, 2, 3, 4 * 2**32 - 4 * CHUNK // 3 - 1, 2**64 - CHUNK - 3, 2**64 - CHUNK])
def test_whole_chunk_block_words(start):
    """Every word of a whole-CHUNK task, exactly: each start within a counter, blocks crossing a
    carry into the counters' high word, and the top of the counter space."""
    words = _whole_chunk_words(np.uint64(start), K0, K1)
    assert_bitwise_equal(words, reference.random_bits(CHUNK, seed=SEED, offset=start))


@pytest.mark.parametrize("n", [CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 47, 3 * CHUNK + 48])
@pytest.mark.parametrize("offset", [0, 3])
def test_multi_task_words(n, offset):
    """Several tasks: ``random_bits`` (``fill_words`` for every task), then the same words
    through a dropout's fused keep bits, whose whole CHUNKs take the block path and whose
    partial last task takes ``fill_words``."""
    for run in (SERIAL[fill_random_bits], fill_random_bits):
        out = np.empty(n, np.uint32)
        run(out, np.uint64(offset), K0, K1)
        assert_bitwise_equal(out, reference.random_bits(n, seed=SEED, offset=offset))
    _, mask = fastdrop.dropout(np.ones(n, np.float32), 0.5, seed=SEED, offset=offset, keep_bits=True)
    keep = reference.keep_mask((n,), 0.5, seed=SEED, offset=offset)
    assert_bitwise_equal(mask.bits, reference.pack_bits(keep))


@pytest.mark.parametrize("width", [5, PREFETCH_BLOCK - 1, PREFETCH_BLOCK + 1, CHUNK + PREFETCH_BLOCK + 3])
def test_dropout_rows_through_the_remainder_path(width):
    """Rows of a sliced (non-contiguous) array are separate tasks, so rows shorter than CHUNK
    (and the partial second task of a longer row) take ``fill_words`` and whole CHUNKs the
    block path, at row starts (offset + row * width) that fall anywhere within a counter."""
    rows = 7
    wide = np.random.default_rng(width).standard_normal((rows, width + 3)).astype(np.float32)
    x = wide[:, :width]
    expected = reference.dropout(np.ascontiguousarray(x), 0.3, seed=SEED, offset=5)
    y, mask = fastdrop.dropout(x, 0.3, seed=SEED, offset=5, keep_bits=True)
    assert_bitwise_equal(y, expected)
    assert_bitwise_equal(mask.to_array(), reference.keep_mask(x.shape, 0.3, seed=SEED, offset=5))
    assert_bitwise_equal(fastdrop.dropout_backward(x, mask), expected)
