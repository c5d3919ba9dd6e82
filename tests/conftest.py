"""Shared fixtures: every backend runs the same tests against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

import fastdrop

#: Backends available in this process, as (id, array converter, numpy converter).
BACKENDS = [pytest.param("numpy", id="numba-cpu")]


def _cupy_usable() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, or no device
        return False


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test; the CuPy leg is skipped (with its reason) without a GPU."""
    if request.param == "cupy":
        if not _cupy_usable():
            pytest.skip("CuPy with a working CUDA GPU is not available here")
        import cupy

        return cupy
    return np


def to_numpy(array):
    return array.get() if hasattr(array, "get") else np.asarray(array)


def assert_bitwise_equal(actual, expected):
    """Equal bit for bit (so NaN payloads, signed zeros and dtypes all count)."""
    actual, expected = to_numpy(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    view = {2: np.uint16, 4: np.uint32, 8: np.uint64, 1: np.uint8}[actual.itemsize]
    a, e = np.ascontiguousarray(actual).view(view), np.ascontiguousarray(expected).view(view)
    mismatches = np.flatnonzero(a.reshape(-1) != e.reshape(-1))
    assert mismatches.size == 0, (
        f"{mismatches.size} of {a.size} elements differ; first at flat index {mismatches[:5]}"
    )


@pytest.fixture(autouse=True)
def _fresh_stream():
    """Tests that use seed=None start from a known stream and leave it as they found it."""
    state = fastdrop.stream_state()
    fastdrop.manual_seed(20261127)
    yield
    fastdrop.manual_seed(state[0])
