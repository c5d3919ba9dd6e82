"""Numba's block-label counter is reset at each outermost compilation (fastdrop._compile_labels):
without it, a process that compiles every kernel (the test suite from an empty cache, as in CI)
ran the counter to over a thousand digits and LLVM refused the IR ("unable to create block
named 'B2281...'"). Without the reset, this test fails the same way."""

from __future__ import annotations

import numba
import numpy as np
from numba.core import ir_utils

from fastdrop import _compile_labels


@numba.njit(inline="always")
def _twice_if_positive(values, j):
    return values[j] * 2 if values[j] > 0 else 0


@numba.njit(inline="always")
def _span(values, out):
    for j in range(values.size):
        out[j] = _twice_if_positive(values, j)


def _fresh_kernel():
    """A new dispatcher each call (nothing cached): loops over inlined helpers, like the kernels."""

    @numba.njit
    def two_spans(values, out):
        for k in range(2):
            _span(values[k * 3 : k * 3 + 3], out[k * 3 : k * 3 + 3])

    return two_spans


def test_block_labels_stay_short_after_a_long_session():
    _compile_labels.install()
    # The counter as a long session leaves it: block names past LLVM's 1024 characters.
    ir_utils._the_max_label._value = 10**1100
    out = np.zeros(6, dtype=np.int64)
    _fresh_kernel()(np.arange(-2, 4), out)
    np.testing.assert_array_equal(out, [0, 0, 0, 2, 4, 6])
    assert ir_utils._the_max_label._value < 10**9
