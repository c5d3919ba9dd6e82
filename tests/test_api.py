"""The public objects: DropoutMask, the module stream, the Dropout layer, threads, memory, imports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import numpy as np
import pytest

import fastdrop
from fastdrop import reference

from conftest import assert_bitwise_equal


def test_mask_attributes_and_immutability():
    x = np.ones((3, 4, 5), np.float32)
    _, mask = fastdrop.dropout(x, 0.25, seed=5, offset=8, mask_shape=(3, 4, 1), keep_bits=True)
    assert (mask.p, mask.seed, mask.offset, mask.shape, mask.input_shape) == (0.25, 5, 8, (3, 4, 1), (3, 4, 5))
    assert mask.nbytes == 2 and mask.bits.dtype == np.uint8
    np.testing.assert_array_equal(mask.to_array(), reference.keep_mask((3, 4, 1), 0.25, seed=5, offset=8))
    with pytest.raises(AttributeError):
        mask.p = 0.5
    with pytest.raises(ValueError):
        mask.bits[0] = 0  # the stored bits are read-only
    _, plain = fastdrop.dropout(x, 0.25, seed=5, offset=8, mask_shape=(3, 4, 1))
    assert plain.bits is None and plain.nbytes == 0
    np.testing.assert_array_equal(plain.to_array(), mask.to_array())
    assert plain == mask and "DropoutMask(p=0.25" in repr(mask)


def test_stream_never_reuses_a_counter():
    fastdrop.manual_seed(42)
    x = np.zeros(10, np.float32)
    masks = [fastdrop.dropout(x, 0.5)[1] for _ in range(3)]
    assert [m.seed for m in masks] == [42, 42, 42]
    assert [m.offset for m in masks] == [0, 12, 24]  # 10 words, rounded up to whole counters
    fastdrop.manual_seed(42)
    again = fastdrop.dropout(x, 0.5)[1]
    assert again.offset == 0 and fastdrop.stream_state() == (42, 12)


def test_stream_is_random_without_manual_seed():
    code = "import fastdrop; print(fastdrop.stream_state()[0])"
    seeds = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
             for _ in range(2)}
    assert len(seeds) == 2


def test_dropout_layer_training_and_evaluation():
    layer = fastdrop.Dropout(0.5, seed=3)
    x = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    assert layer.forward(x, training=False) is x
    assert layer.backward(x) is x  # identity in evaluation
    y1 = layer.forward(x)
    dx1 = layer.backward(np.ones_like(x))
    assert_bitwise_equal(y1, reference.dropout(x, 0.5, seed=3, offset=0))
    assert_bitwise_equal(dx1, reference.dropout(np.ones_like(x), 0.5, seed=3, offset=0))
    y2 = layer.forward(x)  # the next training step draws a fresh mask
    assert_bitwise_equal(y2, reference.dropout(x, 0.5, seed=3, offset=512))
    assert repr(layer) == "Dropout(p=0.5)"


def test_concurrent_calls_equal_serial_calls():
    x = np.random.default_rng(1).standard_normal(300_001).astype(np.float32)
    expected = {seed: fastdrop.dropout(x, 0.3, seed=seed)[0] for seed in range(8)}
    results = {}

    def work(seed):
        for _ in range(3):
            results[seed] = fastdrop.dropout(x, 0.3, seed=seed)[0]

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed in range(8):
        assert_bitwise_equal(results[seed], expected[seed])


def test_concurrent_stream_calls_take_distinct_offsets():
    x = np.zeros(1000, np.float32)
    offsets = []

    def work():
        for _ in range(20):
            offsets.append(fastdrop.dropout(x, 0.5)[1].offset)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(offsets)) == 80


def test_forward_allocates_only_its_output():
    """No hidden float or boolean temporaries the size of x: peak extra memory is y (+ bits)."""
    x = np.ones(1 << 22, np.float32)
    fastdrop.dropout(x, 0.5, seed=1, keep_bits=True)  # compile and warm up first
    for keep_bits, allowed in ((False, x.nbytes), (True, x.nbytes + x.size // 8)):
        tracemalloc.start()
        y, mask = fastdrop.dropout(x, 0.5, seed=1, keep_bits=keep_bits)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < allowed + 64 * 1024, (keep_bits, peak, allowed)
    for _ in range(2):  # the first round compiles the in-place and from-bits specialisations
        tracemalloc.start()
        fastdrop.dropout(x, 0.5, seed=1, out=x)
        fastdrop.dropout_backward(x, mask, out=x)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 64 * 1024


def _run_isolated(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env={**os.environ, **env}, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_loads_no_optional_library():
    out = _run_isolated(
        """
        import sys, fastdrop
        import fastdrop.layers, fastdrop.reference
        print(sorted(m for m in ("cupy", "torch", "scipy", "matplotlib") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


@pytest.mark.parametrize("threads", ["1", "2"])
def test_masks_do_not_depend_on_thread_count(threads):
    code = """
        import hashlib, numpy as np, numba, fastdrop
        x = np.random.default_rng(0).standard_normal((3, 70001)).astype(np.float32)
        y, m = fastdrop.dropout(x, 0.37, seed=2024, offset=3, keep_bits=True)
        z, _ = fastdrop.dropout(x[:, ::3], 0.37, seed=2024, mask_shape=(3, 1))
        # A transposed view of odd width: the columns kernels, forward and from bits.
        t = np.random.default_rng(1).standard_normal((37, 2050)).astype(np.float32).T
        u, tm = fastdrop.dropout(t, 0.37, seed=2024, offset=5, keep_bits=True)
        du = fastdrop.dropout_backward(t, tm)
        parts = (y, m.bits, z, u, tm.bits, du)
        print(numba.get_num_threads(), hashlib.sha256(b"".join(a.tobytes() for a in parts)).hexdigest())
        """
    count, digest = _run_isolated(code, NUMBA_NUM_THREADS=threads).split()
    assert count == threads
    x = np.random.default_rng(0).standard_normal((3, 70001)).astype(np.float32)
    y = reference.dropout(x, 0.37, seed=2024, offset=3)
    bits = reference.pack_bits(reference.keep_mask(x.shape, 0.37, seed=2024, offset=3))
    z = reference.dropout(x[:, ::3], 0.37, seed=2024, mask_shape=(3, 1))
    t = np.ascontiguousarray(np.random.default_rng(1).standard_normal((37, 2050)).astype(np.float32).T)
    u = reference.dropout(t, 0.37, seed=2024, offset=5)
    t_bits = reference.pack_bits(reference.keep_mask(t.shape, 0.37, seed=2024, offset=5))
    import hashlib

    parts = (y, bits, z, u, t_bits, u)  # the backward of dy = t is the forward
    assert digest == hashlib.sha256(b"".join(a.tobytes() for a in parts)).hexdigest()
