"""Review tests (session 3) for commit 5164100 and its follow-up: the ``pick`` select, the
byte-at-a-time backward from packed bits, the branch-free Box-Muller, the variant launchers on the
core fast paths (``_row_views``, ``_plain``, cached scalars, serial twins) and the benchmark
report's allocating-copy column. Every numeric case is compared with the NumPy reference bit for
bit, on both sides of SERIAL_BELOW where the launcher picks a kernel by size."""

from __future__ import annotations

import threading

import numba
import numpy as np
import pytest

import fastdrop
from fastdrop import _bench_report, reference
from fastdrop._numba_bits import bits_float64, float64_bits, pick
from fastdrop._numba_kernels import CHUNK, SERIAL_BELOW, SERIAL_BELOW_BITS
from fastdrop._numba_variants import _exact_float, box_muller_pair

from conftest import assert_bitwise_equal

TOP = 2**64
DTYPES = [np.float16, np.float32, np.float64]


def _values(shape, dtype, seed, nonfinite=True):
    values = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if nonfinite:
        flat = values.reshape(-1)
        flat[::11] = np.nan
        flat[4::13] = np.inf
        flat[6::17] = -0.0
    return values


# ------------------------------------------------------------------ variants on the fast paths

# (N, C, H, W) with N*C*H*W below and above SERIAL_BELOW; a channel mask takes the
# "channel-style" fast path of _row_views when x is C-contiguous.
CHANNEL_SHAPES = [(2, 3, 5, 7), (4, 8, 16, 33)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CHANNEL_SHAPES, ids=str)
@pytest.mark.parametrize("offset", [0, 3, "end"])
def test_alpha_channel_mask_fast_and_general_paths(dtype, shape, offset):
    mask_shape = shape[:2] + (1, 1)
    offset = TOP - int(np.prod(mask_shape)) if offset == "end" else offset
    x = _values(shape, dtype, 1)
    expected = reference.alpha_dropout(x.copy(), 0.3, seed=11, offset=offset, mask_shape=mask_shape)
    y, _ = fastdrop.alpha_dropout(x, 0.3, seed=11, offset=offset, mask_shape=mask_shape)
    assert_bitwise_equal(y, expected)
    # Same through the general path: a non-contiguous out (and a Fortran x).
    out = np.full(shape + (2,), 9, dtype=dtype)[..., 0]
    fastdrop.alpha_dropout(np.asfortranarray(x), 0.3, seed=11, offset=offset, mask_shape=mask_shape, out=out)
    assert_bitwise_equal(out, expected)
    # In place.
    inplace = x.copy()
    fastdrop.alpha_dropout(inplace, 0.3, seed=11, offset=offset, mask_shape=mask_shape, out=inplace)
    assert_bitwise_equal(inplace, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CHANNEL_SHAPES, ids=str)
@pytest.mark.parametrize("offset", [0, 1, "end"])
def test_gaussian_channel_mask_fast_and_general_paths(dtype, shape, offset):
    mask_shape = shape[:2] + (1, 1)
    n_mask = int(np.prod(mask_shape))
    offset = TOP - n_mask - 1 if offset == "end" else offset  # the last pair's word fits
    x = _values(shape, dtype, 2)
    expected = reference.gaussian_dropout(x.copy(), 0.4, seed=12, offset=offset, mask_shape=mask_shape)
    y, noise = fastdrop.gaussian_dropout(x, 0.4, seed=12, offset=offset, mask_shape=mask_shape)
    assert_bitwise_equal(y, expected)
    out = np.full(shape + (2,), 9, dtype=dtype)[..., 1]
    fastdrop.gaussian_dropout(x[:, ::-1][:, ::-1], 0.4, seed=12, offset=offset, mask_shape=mask_shape, out=out)
    assert_bitwise_equal(out, expected)
    dx = fastdrop.gaussian_dropout_backward(x, noise)
    assert_bitwise_equal(dx, reference.gaussian_dropout_backward(x, 0.4, seed=12, offset=offset,
                                                                 mask_shape=mask_shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_shape", [(1, 5, 1), (3, 1, 1), (1, 1, 4099), (3, 1, 4099), (3, 5, 1)],
                         ids=str)
def test_gaussian_and_alpha_broadcast_masks_odd_row_starts(dtype, mask_shape):
    # Rows of 4099 words start at odd and even word indices; rows longer than CHUNK have a
    # second task whose first word index has the row's parity.
    shape = (3, 5, 4099)
    x = _values(shape, dtype, 3)
    for offset in (0, 1, 2, 3):
        y, _ = fastdrop.gaussian_dropout(x, 0.25, seed=4, offset=offset, mask_shape=mask_shape)
        assert_bitwise_equal(y, reference.gaussian_dropout(x, 0.25, seed=4, offset=offset, mask_shape=mask_shape))
    y, _ = fastdrop.alpha_dropout(x, 0.25, seed=4, offset=5, mask_shape=mask_shape)
    assert_bitwise_equal(y, reference.alpha_dropout(x, 0.25, seed=4, offset=5, mask_shape=mask_shape))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [7, CHUNK - 1, CHUNK + 1, 2 * CHUNK + 1])
def test_gaussian_strided_rows_every_parity(dtype, width):
    # A strided x forces rank-3 launches of `rows` rows of `width` words each; odd widths start
    # half the rows at odd words, and the serial/parallel switch falls between these sizes.
    rows = 5
    base = _values((rows, 2 * width), dtype, width)
    x = base[:, ::2]
    for offset in (1, TOP - rows * width - 1):
        expected = reference.gaussian_dropout(np.array(x), 0.3, seed=9, offset=offset)
        y, _ = fastdrop.gaussian_dropout(x, 0.3, seed=9, offset=offset)
        assert_bitwise_equal(y, expected)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, CHUNK * 2 + 1])
def test_gaussian_at_the_very_end_of_the_counter_space(n):
    # The last valid offset (offset + n + 1 words <= 2**64): the last element is word 2**64 - 2,
    # whose pair (2**64 - 2, 2**64 - 1) is the top half of the last counter; nothing may wrap.
    x = np.random.default_rng(n).standard_normal(n)
    offset = TOP - n - 1
    y, _ = fastdrop.gaussian_dropout(x, 0.5, seed=3, offset=offset)
    assert_bitwise_equal(y, reference.gaussian_dropout(x, 0.5, seed=3, offset=offset))
    # And the last counter's words alone, through a broadcast (one normal per row).
    x2 = np.ones((n, 3))
    y2, _ = fastdrop.gaussian_dropout(x2, 0.5, seed=3, offset=offset, mask_shape=(n, 1))
    assert_bitwise_equal(y2, reference.gaussian_dropout(x2, 0.5, seed=3, offset=offset, mask_shape=(n, 1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1e-12, 1.0 - 1e-12, 1.0])  # thresholds 2**32, 0, 0
@pytest.mark.parametrize("n", [100, SERIAL_BELOW + 100])
def test_alpha_extreme_thresholds_both_sides(dtype, p, n):
    x = _values(n, dtype, 5)
    with np.errstate(all="ignore"):  # float16 overflow of a * x + b near p = 1 in the oracle
        expected = reference.alpha_dropout(x.copy(), p, seed=1, offset=2)
        xr = x.reshape(-1, 4)  # a row mask: one word per row of 4
        shape = (xr.shape[0], 1)
        expected_rows = reference.alpha_dropout(xr.copy(), p, seed=1, offset=2, mask_shape=shape)
    y, _ = fastdrop.alpha_dropout(x, p, seed=1, offset=2)
    assert_bitwise_equal(y, expected)
    y, _ = fastdrop.alpha_dropout(xr, p, seed=1, offset=2, mask_shape=shape)
    assert_bitwise_equal(y, expected_rows)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [3, SERIAL_BELOW // 64 + 1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_dropout_add_in_place_and_layouts_both_sides(dtype, rows, with_bias):
    width = 64
    x = _values((rows, width), dtype, 6)
    bias = _values(width, dtype, 7, nonfinite=False) if with_bias else None
    residual = _values((rows, width), dtype, 8, nonfinite=False)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = reference.bias_dropout_add(x.copy(), bias, residual.copy(), 0.2, seed=13, offset=7)
    y, _ = fastdrop.bias_dropout_add(x, bias, residual, 0.2, seed=13, offset=7)
    assert_bitwise_equal(y, expected)
    r = residual.copy()
    fastdrop.bias_dropout_add(x, bias, r, 0.2, seed=13, offset=7, out=r)
    assert_bitwise_equal(r, expected)
    xc = x.copy()
    fastdrop.bias_dropout_add(xc, bias, residual, 0.2, seed=13, offset=7, out=xc)
    assert_bitwise_equal(xc, expected)
    # Non-contiguous residual and out.
    wide = np.zeros((rows, 2 * width), dtype)
    wide[:, ::2] = residual
    out = np.full((rows, 2 * width), 5, dtype)[:, 1::2]
    fastdrop.bias_dropout_add(x, bias, wide[:, ::2], 0.2, seed=13, offset=7, out=out)
    assert_bitwise_equal(out, expected)


def test_bias_dropout_add_at_the_end_of_the_counter_space():
    for rows in (3, SERIAL_BELOW // 64 + 1):
        x = _values((rows, 64), np.float32, 1)
        residual = _values((rows, 64), np.float32, 2, nonfinite=False)
        offset = TOP - x.size
        with np.errstate(invalid="ignore"):
            expected = reference.bias_dropout_add(x, None, residual, 0.5, seed=5, offset=offset)
        y, _ = fastdrop.bias_dropout_add(x, None, residual, 0.5, seed=5, offset=offset)
        assert_bitwise_equal(y, expected)


class _Sub(np.ndarray):
    """A plain ndarray subclass (np.matrix warns on creation)."""


def test_variants_accept_ndarray_subclasses():
    for dtype in DTYPES:
        x = _values((6, 9), dtype, 4, nonfinite=False)
        m = x.view(_Sub)
        y, _ = fastdrop.alpha_dropout(m, 0.3, seed=2, offset=1)
        assert_bitwise_equal(np.asarray(y), reference.alpha_dropout(x, 0.3, seed=2, offset=1))
        y, _ = fastdrop.gaussian_dropout(m, 0.3, seed=2, offset=1, mask_shape=(6, 1))
        assert_bitwise_equal(np.asarray(y), reference.gaussian_dropout(x, 0.3, seed=2, offset=1, mask_shape=(6, 1)))
        y, _ = fastdrop.bias_dropout_add(m, None, x.copy().view(_Sub), 0.3, seed=2, offset=1)
        assert_bitwise_equal(np.asarray(y), reference.bias_dropout_add(x, None, x.copy(), 0.3, seed=2, offset=1))
        _, mask = fastdrop.dropout(m, 0.3, seed=2, offset=1, keep_bits=True)
        assert_bitwise_equal(np.asarray(fastdrop.dropout_backward(m, mask)),
                             reference.dropout_backward(x, 0.3, seed=2, offset=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_dimensional_and_short_masks(dtype):
    x0 = np.asarray(np.float64(1.25)).astype(dtype)
    for offset in (0, 1, TOP - 2):
        y, _ = fastdrop.alpha_dropout(x0, 0.5, seed=3, offset=offset)
        assert_bitwise_equal(y, reference.alpha_dropout(x0, 0.5, seed=3, offset=offset))
        y, _ = fastdrop.gaussian_dropout(x0, 0.5, seed=3, offset=offset)
        assert_bitwise_equal(y, reference.gaussian_dropout(x0, 0.5, seed=3, offset=offset))
    x = _values((6, 9), dtype, 5)
    for mask_shape in [(9,), (1, 9), (6, 1), (1, 1), ()]:
        y, _ = fastdrop.alpha_dropout(x, 0.4, seed=3, offset=5, mask_shape=mask_shape)
        assert_bitwise_equal(y, reference.alpha_dropout(x, 0.4, seed=3, offset=5, mask_shape=mask_shape))
        y, _ = fastdrop.gaussian_dropout(x, 0.4, seed=3, offset=5, mask_shape=mask_shape)
        assert_bitwise_equal(y, reference.gaussian_dropout(x, 0.4, seed=3, offset=5, mask_shape=mask_shape))


@pytest.mark.parametrize("shape, mask_shape", [((0, 3, 4), (0, 3, 1)), ((2, 0, 4), (2, 0, 4)),
                                               ((2, 3, 0), (2, 3, 1)), ((0,), (0,))], ids=str)
def test_zero_size_variants_with_masks(shape, mask_shape):
    for dtype in DTYPES:
        x = np.empty(shape, dtype)
        out = np.empty(shape, dtype)
        y, _ = fastdrop.alpha_dropout(x, 0.3, seed=1, mask_shape=mask_shape, out=out)
        assert y.shape == shape
        y, _ = fastdrop.gaussian_dropout(x, 0.3, seed=1, mask_shape=mask_shape)
        assert y.shape == shape
        _, mask = fastdrop.dropout(x, 0.3, seed=1, mask_shape=mask_shape, keep_bits=True)
        assert fastdrop.dropout_backward(x, mask).shape == shape


# ------------------------------------------------------------------ backward from packed bits

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_shape", [(4, 1, 16), (4, 1, 12), (4, 1, CHUNK + 13), (1, 3, 8200)], ids=str)
def test_backward_bits_broadcast_rows_with_aligned_and_unaligned_bases(dtype, mask_shape):
    shape = (4, 3, mask_shape[2])
    dy = _values(shape, dtype, 8)
    _, mask = fastdrop.dropout(dy, 0.45, seed=31, offset=9, mask_shape=mask_shape, keep_bits=True)
    expected = reference.dropout_backward(dy.copy(), 0.45, seed=31, offset=9, mask_shape=mask_shape)
    assert_bitwise_equal(fastdrop.dropout_backward(dy, mask), expected)
    # Transposed/strided dy: general launches, rows that are not mask rows.
    dy_t = np.ascontiguousarray(dy.transpose(2, 1, 0)).transpose(2, 1, 0)
    assert_bitwise_equal(fastdrop.dropout_backward(dy_t, mask), expected)
    out = np.full(shape, 3, dtype)
    fastdrop.dropout_backward(dy, mask, out=out)
    assert_bitwise_equal(out, expected)
    inplace = dy.copy()
    fastdrop.dropout_backward(inplace, mask, out=inplace)
    assert_bitwise_equal(inplace, expected)


@pytest.mark.parametrize("n", [8, 9, 15, 16, SERIAL_BELOW_BITS - 8, SERIAL_BELOW_BITS + 7])
def test_backward_bits_one_row_tails(n):
    dy = _values(n, np.float32, n)
    for p in (0.5, 1e-12, 1.0 - 1e-12):
        _, mask = fastdrop.dropout(dy, p, seed=7, offset=1, keep_bits=True)
        expected = reference.dropout_backward(dy.copy(), p, seed=7, offset=1)
        assert_bitwise_equal(fastdrop.dropout_backward(dy, mask), expected)


# ------------------------------------------------------------------ intrinsics

@numba.njit
def _exact_floats(ks):
    out = np.empty(ks.size)
    for i in range(ks.size):
        out[i] = _exact_float(ks[i])
    return out


@numba.njit
def _roundtrip(values):
    out = np.empty(values.size, dtype=np.uint64)
    back = np.empty(values.size)
    for i in range(values.size):
        out[i] = float64_bits(values[i])
        back[i] = bits_float64(out[i])
    return out, back


@numba.njit
def _pick_u32(flags, a, b):
    out = np.empty(flags.size, dtype=np.uint32)
    for i in range(flags.size):
        out[i] = pick(flags[i], a[i], b[i])
    return out


def test_bit_intrinsics_and_exact_float():
    ks = np.array([0, 1, 2, 2**31, 2**32 - 1, 2**32, 2**52 - 1], dtype=np.uint64)
    np.testing.assert_array_equal(_exact_floats(ks), ks.astype(np.float64))
    values = np.array([0.0, -0.0, 1.5, np.inf, -np.inf, 5e-324, np.nan])
    bits, back = _roundtrip(values)
    np.testing.assert_array_equal(bits, values.view(np.uint64))
    np.testing.assert_array_equal(back.view(np.uint64), values.view(np.uint64))
    flags = np.array([True, False, True])
    got = _pick_u32(flags, np.array([1, 2, 3], np.uint32), np.array([7, 8, 9], np.uint32))
    np.testing.assert_array_equal(got, [1, 8, 3])


@numba.njit
def _pair(r, a):
    return box_muller_pair(np.uint64(r), np.uint64(a))


def test_box_muller_pair_random_words_against_reference(monkeypatch):
    rng = np.random.default_rng(99)
    words = rng.integers(0, 2**32, size=2 * 4000, dtype=np.uint64).astype(np.uint32)
    monkeypatch.setattr(reference, "random_bits", lambda n, *, seed, offset=0: words[:n])
    expected = reference.standard_normals(words.size, seed=0)
    got = np.empty(words.size)
    for k in range(words.size // 2):
        got[2 * k], got[2 * k + 1] = _pair(words[2 * k], words[2 * k + 1])
    np.testing.assert_array_equal(got.view(np.uint64), expected.view(np.uint64))


# ------------------------------------------------------------------ threads

def test_variants_from_several_threads():
    sizes = [1000, SERIAL_BELOW + 77, SERIAL_BELOW_BITS + 5]  # serial, parallel (bits serial), all parallel
    cases = []
    for i, n in enumerate(sizes * 2):
        x = _values(n, np.float32, 40 + i, nonfinite=False)
        cases.append((x, i))
    expected = {}
    for x, i in cases:
        expected[("alpha", i)] = reference.alpha_dropout(x, 0.3, seed=i, offset=i)
        expected[("gauss", i)] = reference.gaussian_dropout(x, 0.3, seed=i, offset=i)
        expected[("bits", i)] = reference.dropout_backward(x, 0.3, seed=i, offset=i)
    errors, results = [], {}

    def work(x, i):
        try:
            for _ in range(5):
                results[("alpha", i)] = fastdrop.alpha_dropout(x, 0.3, seed=i, offset=i)[0]
                results[("gauss", i)] = fastdrop.gaussian_dropout(x, 0.3, seed=i, offset=i)[0]
                _, mask = fastdrop.dropout(x, 0.3, seed=i, offset=i, keep_bits=True)
                results[("bits", i)] = fastdrop.dropout_backward(x, mask)
                for key in (("alpha", i), ("gauss", i), ("bits", i)):
                    assert_bitwise_equal(results[key], expected[key])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=case) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


# ------------------------------------------------------------------ benchmark report

def _result(op, impl, n, gbps, seconds=1.0, copy_ratio=None, dtype="float32", device="cpu"):
    return {"op": op, "impl": impl, "n": n, "dtype": dtype, "device": device, "gbps": gbps,
            "seconds": seconds, "copy_ratio": copy_ratio, "copy_gbps": 10.0}


def test_report_alloc_copy_column_and_compare_with_an_old_document():
    n = 1 << 20
    new = {"results": [
        _result("copy", "copy", n, 10.0), _result("copy", "copy_alloc", n, 5.0),
        _result("forward", "fastdrop", n, 4.0, copy_ratio=0.4),
        _result("forward", "fastdrop_out", n, 8.0, copy_ratio=0.8),
        _result("backward_bits", "fastdrop", n, 6.0, copy_ratio=0.6),
    ]}
    rows = _bench_report.summary(new)
    assert [row["op"] for row in rows] == ["forward", "backward_bits"]
    assert rows[0]["alloc_copy_pct"] == pytest.approx(80.0)
    assert rows[1]["alloc_copy_pct"] == pytest.approx(120.0)
    text = _bench_report.format_summary(rows)
    assert "% of alloc. copy" in text and "80%" in text
    markdown = _bench_report.format_summary(rows, markdown=True)
    assert all(line.count("|") == 11 for line in markdown.splitlines())
    old = {"results": [r for r in new["results"] if r["impl"] != "copy_alloc"]}
    checked, regressions = _bench_report.compare(old, new)
    assert not regressions
    assert "fastdrop % of allocating copy" not in {c["ratio"] for c in checked}
    # A GPU document has no allocating copy: a dash, not a crash.
    gpu = {"results": [_result("forward", "fastdrop", n, 4.0, copy_ratio=0.4, device="gpu")]}
    assert _bench_report.summary(gpu)[0]["alloc_copy_pct"] is None
    assert "-" in _bench_report.format_summary(_bench_report.summary(gpu))


# ------------------------------------------------------------------ randomised layouts

def _random_case(rng):
    ndim = int(rng.integers(1, 5))
    shape = tuple(int(rng.choice([1, 2, 3, 5, 8, 9, 17, 33])) for _ in range(ndim))
    while np.prod(shape) > 6000:  # keep the oracle fast
        shape = shape[1:]
    mask_shape = tuple(d if rng.random() < 0.6 else 1 for d in shape)
    if rng.random() < 0.3:
        mask_shape = mask_shape[int(rng.integers(0, ndim)):]  # fewer axes: leading ones implied
    dtype = DTYPES[int(rng.integers(0, 3))]
    base = _values(tuple(2 * d for d in shape), dtype, int(rng.integers(0, 2**31)))
    layout = rng.choice(["C", "F", "step", "neg", "transposed"])
    if layout == "C":
        x = np.ascontiguousarray(base[tuple(slice(0, d) for d in shape)])
    elif layout == "F":
        x = np.asfortranarray(base[tuple(slice(0, d) for d in shape)])
    elif layout == "step":
        x = base[tuple(slice(0, 2 * d, 2) for d in shape)]
    elif layout == "neg":
        x = base[tuple(slice(d - 1, None, -1) if d > 1 else slice(0, 1) for d in shape)]
    else:
        x = np.ascontiguousarray(base[tuple(slice(0, d) for d in shape)].T).T
    n_mask = int(np.prod(mask_shape)) if mask_shape else 1
    offset = [0, 1, 2, 3, 4093, TOP - n_mask - 1][int(rng.integers(0, 6))]
    return x, mask_shape, offset


def test_randomised_layouts_masks_and_offsets_against_the_reference():
    rng = np.random.default_rng(20261128)
    for case in range(60):
        x, mask_shape, offset = _random_case(rng)
        p = float(rng.choice([0.1, 0.5, 0.9]))
        host = np.array(x)
        with np.errstate(all="ignore"):
            expected_alpha = reference.alpha_dropout(host, p, seed=case, offset=offset, mask_shape=mask_shape)
            expected_gauss = reference.gaussian_dropout(host, p, seed=case, offset=offset, mask_shape=mask_shape)
            expected_back = reference.dropout_backward(host, p, seed=case, offset=offset, mask_shape=mask_shape)
        context = (x.shape, x.strides, x.dtype, mask_shape, offset, p)
        y, _ = fastdrop.alpha_dropout(x, p, seed=case, offset=offset, mask_shape=mask_shape)
        assert_bitwise_equal(y, expected_alpha), context
        y, _ = fastdrop.gaussian_dropout(x, p, seed=case, offset=offset, mask_shape=mask_shape)
        assert_bitwise_equal(y, expected_gauss), context
        _, mask = fastdrop.dropout(x, p, seed=case, offset=offset, mask_shape=mask_shape, keep_bits=True)
        out = np.empty(x.shape, x.dtype, order="F")
        fastdrop.dropout_backward(x, mask, out=out)
        assert_bitwise_equal(out, expected_back), context
        assert_bitwise_equal(x, host)  # inputs untouched


def test_bench_targets_measure_ratios_without_timing(monkeypatch):
    # bench/targets.py's ratios from fixed "timings" (no timing loop): each round asks for the
    # implementations in IMPLS order.
    import importlib.util
    import itertools
    from pathlib import Path

    from fastdrop import _bench_impls as impls

    path = Path(__file__).resolve().parents[1] / "bench" / "targets.py"
    spec = importlib.util.spec_from_file_location("_review_targets", path)
    targets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(targets)
    fixed = {"copy": 1.0, "copy_alloc": 2.0, "fastdrop": 4.0, "fastdrop_out": 2.0, "numpy": 8.0, "torch": 12.0}
    assert set(fixed) == set(targets.IMPLS)
    if importlib.util.find_spec("torch") is None:
        pytest.skip("bench/targets.py runs PyTorch")
    n = 1 << 10
    for op in targets.OPS:
        seconds = itertools.cycle([fixed[impl] for impl in targets.IMPLS])
        monkeypatch.setattr(targets, "_best_of", lambda run, calls: next(seconds))
        result = targets.measure(op, n, 2, 0.1)
        bytes_ratio = impls.bytes_moved(op, n, 4, 0) / impls.bytes_moved(impls.COPY_OP, n, 4, 0)
        assert result["copy"]["median"] == pytest.approx(bytes_ratio / 4)
        assert result["copy_out"]["median"] == pytest.approx(bytes_ratio / 2)
        assert result["alloc_copy"]["median"] == pytest.approx(bytes_ratio / 2)
        assert result["numpy"]["median"] == pytest.approx(2.0)
        assert result["torch"]["median"] == pytest.approx(3.0)
