"""Streaming (non-temporal) stores: the backward from packed bits and channel-style masks write
outputs larger than the last-level cache with them (``_numba_stream``), and so does
bias-dropout-add on the CPUs of ``STREAM_PHILOX_CPUS``. The threshold is lowered
here so that small arrays take those paths; every result against the NumPy reference bit for
bit: outputs at every alignment within a cache line, rows and chunks too short to stream, partial
lines at both ends, in place, float16/32/64, serial and parallel sizes."""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastdrop
from fastdrop import _numba_backend, _numba_stream, _numba_variants, reference
from fastdrop._numba_kernels import CHUNK, SERIAL_BELOW
from fastdrop._numba_stream import STAGE, STREAM_ROW_BYTES
from fastdrop._numba_prefetch import CACHE_LINE

from conftest import assert_bitwise_equal

DTYPES = [np.float16, np.float32, np.float64]

pytestmark = pytest.mark.skipif(not _numba_stream.STREAMING, reason="streaming stores are x86-64 only")


@pytest.fixture(autouse=True)
def stream_everything(monkeypatch):
    """Every output may stream; yields the list of what ``streams`` answered, call by call."""
    monkeypatch.setattr(_numba_stream, "STREAM_ABOVE", 0)
    answers = []
    original = _numba_backend.streams
    monkeypatch.setattr(_numba_backend, "streams", lambda out: answers.append(original(out)) or answers[-1])
    return answers


def _shifted(shape, dtype, items, seed, fill=None):
    """An array of ``shape`` whose first element lies ``items`` elements past a cache-line
    boundary (a slice of a line-aligned buffer)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    raw = np.empty((size + items) * dtype.itemsize + CACHE_LINE, dtype=np.uint8)
    start = (-raw.ctypes.data) % CACHE_LINE
    array = raw[start : start + (size + items) * dtype.itemsize].view(dtype)[items:].reshape(shape)
    assert (array.ctypes.data - items * dtype.itemsize) % CACHE_LINE == 0
    if fill is None:
        array[...] = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    else:
        array[...] = fill
    return array


def _shifts(dtype):
    per_line = CACHE_LINE // np.dtype(dtype).itemsize
    return sorted({0, 1, per_line // 2, per_line - 1})


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [5, 3 * STAGE + 7, CHUNK + 13, SERIAL_BELOW * 4 + 29], ids=str)
def test_backward_from_bits(dtype, n, stream_everything):
    x = np.random.default_rng(1).standard_normal(n).astype(dtype)
    expected = reference.dropout(x, 0.3, seed=4, offset=8)
    _, mask = fastdrop.dropout(x, 0.3, seed=4, offset=8, keep_bits=True)
    for shift in _shifts(dtype):
        dx = _shifted((n,), dtype, shift, 0, fill=np.nan)
        assert fastdrop.dropout_backward(x, mask, out=dx) is dx
        assert_bitwise_equal(dx, expected)
    in_place = x.copy()
    fastdrop.dropout_backward(in_place, mask, out=in_place)
    assert_bitwise_equal(in_place, expected)
    assert stream_everything and all(stream_everything)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_backward_from_bits_of_rows(dtype):
    """A 2-D array whose rows are chunks of different lengths, a column slice among them."""
    width = 2 * CHUNK + 3 * STAGE + 5
    x = np.random.default_rng(2).standard_normal((3, width)).astype(dtype)
    expected = reference.dropout(x, 0.5, seed=6)
    _, mask = fastdrop.dropout(x, 0.5, seed=6, keep_bits=True)
    for shift in _shifts(dtype):
        dx = _shifted((3, width), dtype, shift, 0, fill=np.nan)
        fastdrop.dropout_backward(x, mask, out=dx)
        assert_bitwise_equal(dx, expected)
    base = np.full((3, width + 9), np.nan, dtype=dtype)
    fastdrop.dropout_backward(x, mask, out=base[:, 4:-5])
    assert_bitwise_equal(base[:, 4:-5], expected)


def _row_elements(dtype, extra):
    return STREAM_ROW_BYTES // np.dtype(dtype).itemsize + extra


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("extra", [-1, 0, 3 * STAGE + 5], ids=lambda e: f"row+{e}")
@pytest.mark.parametrize("rows", [(2, 3), (5, 8)], ids=str)
def test_channel_masks(dtype, extra, rows, stream_everything):
    """Rows just under and over STREAM_ROW_BYTES (1-2K elements); (5, 8) of them are enough
    elements for the parallel kernel."""
    shape = (*rows, _row_elements(dtype, extra))
    mask_shape = (*rows, 1)
    x = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    x[0, 0, :3] = [np.nan, np.inf, -0.0]
    expected = reference.dropout(x, 0.5, seed=9, offset=5, mask_shape=mask_shape)
    for shift in _shifts(dtype):
        out = _shifted(shape, dtype, shift, 0, fill=np.nan)
        y, mask = fastdrop.dropout(x, 0.5, seed=9, offset=5, mask_shape=mask_shape, out=out)
        assert_bitwise_equal(y, expected)
        dx = _shifted(shape, dtype, shift, 0, fill=np.nan)
        assert_bitwise_equal(fastdrop.dropout_backward(x, mask, out=dx), expected)
    in_place = x.copy()
    fastdrop.dropout(in_place, 0.5, seed=9, offset=5, mask_shape=mask_shape, out=in_place)
    assert_bitwise_equal(in_place, expected)
    assert stream_everything and all(stream_everything)


def test_spatial_dropout_large_maps(stream_everything):
    x = np.random.default_rng(5).standard_normal((2, 16, 48, 48)).astype(np.float32)
    out = _shifted(x.shape, np.float32, 5, 0, fill=np.nan)
    y, mask = fastdrop.spatial_dropout(x, 0.4, seed=12, out=out)
    assert y is out and stream_everything == [True]
    assert_bitwise_equal(y, reference.spatial_dropout(x, 0.4, seed=12))


def test_misaligned_elements_fall_back_to_normal_stores():
    """A float32 array at an odd byte address never reaches a line boundary on an element:
    ``lead`` is its size and every store is a normal one."""
    raw = np.zeros(4 * 3000 + 1, dtype=np.uint8)
    out = raw[1:].view(np.float32)
    assert out.ctypes.data % 4
    x = np.random.default_rng(7).standard_normal(3000).astype(np.float32)
    _, mask = fastdrop.dropout(x, 0.3, seed=2, keep_bits=True)
    fastdrop.dropout_backward(x, mask, out=out)
    assert_bitwise_equal(out, reference.dropout(x, 0.3, seed=2))

    @numba.njit
    def lead_of(array):
        return _numba_stream.lead(array)

    assert lead_of(out) == out.size
    aligned = _shifted((100,), np.float32, 0, 0)
    assert lead_of(aligned) == 0
    assert lead_of(_shifted((100,), np.float32, 3, 0)) == CACHE_LINE // 4 - 3


def test_threshold_is_the_last_level_cache(tmp_path):
    for index, (kind, size) in enumerate([("Data", "32K"), ("Instruction", "64M"),
                                          ("Unified", "512K"), ("Unified", "32768K")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "type").write_text(kind + "\n")
        (folder / "size").write_text(size + "\n")
    assert _numba_stream.last_level_cache_bytes(str(tmp_path)) == 32 << 20
    assert _numba_stream.last_level_cache_bytes(str(tmp_path / "missing"), default=7) == 7


def test_threshold_is_capped_for_a_slice_of_a_shared_cache(tmp_path):
    """A VM sees its host's whole L3 (300 MiB on one of ours): the threshold stops at the cap;
    a smaller cache is its own threshold."""
    for size, expected in (("307200K", _numba_stream.CACHE_SHARE_CAP), ("16384K", 16 << 20)):
        folder = tmp_path / size / "index3"
        folder.mkdir(parents=True)
        (folder / "type").write_text("Unified\n")
        (folder / "size").write_text(size + "\n")
        assert _numba_stream.stream_threshold(str(tmp_path / size)) == expected
    assert _numba_stream.CACHE_SHARE_CAP == 64 << 20


def test_fresh_outputs_are_not_streamed(monkeypatch):
    """An output the backend allocated for the call is fresh memory (see ``_fresh_outputs``):
    the call that receives it writes it with normal stores; memory the caller passed streams."""
    x = np.ones(1000, dtype=np.float32)
    small = _numba_backend.empty_like(x)
    assert id(small) not in _numba_backend._fresh_outputs  # under ALWAYS_FRESH_BYTES: may be reused heap
    assert _numba_backend.streams(small)
    monkeypatch.setattr(_numba_stream, "ALWAYS_FRESH_BYTES", 0)
    fresh = _numba_backend.empty_like(x)
    assert not _numba_backend.streams(fresh)
    assert _numba_backend.streams(fresh)  # asked once: the next call sees existing memory
    assert _numba_backend.streams(np.empty_like(x))
    assert id(fresh) not in _numba_backend._fresh_outputs
    unused = _numba_backend.empty_like(x)
    key = id(unused)
    assert key in _numba_backend._fresh_outputs
    del unused  # an output no kernel asked about leaves no entry behind
    assert key not in _numba_backend._fresh_outputs


def test_views_of_fresh_outputs_are_not_streamed(monkeypatch):
    """Bias-dropout-add writes its new output through a (rows, width) view: still fresh."""
    monkeypatch.setattr(_numba_stream, "ALWAYS_FRESH_BYTES", 0)
    fresh = _numba_backend.empty_like(np.ones((4, 6), dtype=np.float32))
    assert not _numba_backend.streams(fresh.reshape(6, 4)[1:])
    assert _numba_backend.streams(fresh.reshape(6, 4))  # asked once, as above


@pytest.fixture
def philox_streams(monkeypatch):
    """Bias-dropout-add streams on any CPU (``STREAM_PHILOX``), as it does on Zen 5; yields the
    ``stream`` argument of each rows-kernel launch."""
    monkeypatch.setattr(_numba_stream, "STREAM_PHILOX", True)
    launches = []
    original = _numba_variants._for_size

    def for_size(kernel, n_elements):
        chosen = original(kernel, n_elements)
        if kernel is not _numba_variants.bias_dropout_add_rows:
            return chosen

        def launch(*arguments):
            launches.append(arguments[-1])
            return chosen(*arguments)

        return launch

    monkeypatch.setattr(_numba_variants, "_for_size", for_size)
    return launches


#: Widths of one column, under, at and over one STAGE, long; rows * width at serial and
#: parallel sizes (a task's first element then falls at many columns and line offsets).
BIAS_SHAPES = [(700, 1), (3, 5), (7, 100), (9, STAGE - 1), (9, STAGE), (9, STAGE + 1),
               (40, 1000), (SERIAL_BELOW // 60 + 3, 60), (4, CHUNK + 3 * STAGE + 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", BIAS_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_bias_dropout_add(dtype, shape, with_bias, philox_streams, stream_everything):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    residual = rng.standard_normal(shape).astype(dtype)
    x[0, :3] = [np.nan, np.inf, -0.0][: shape[1]]
    residual[0, :3] = -0.0
    bias = rng.standard_normal(shape[1]).astype(dtype) if with_bias else None
    offset = 2**40 + 3
    expected = reference.bias_dropout_add(x, bias, residual, 0.3, seed=11, offset=offset)
    for shift in _shifts(dtype):
        out = _shifted(shape, dtype, shift, 0, fill=np.nan)
        y, _ = fastdrop.bias_dropout_add(x, bias, residual, 0.3, seed=11, offset=offset, out=out)
        assert y is out
        assert_bitwise_equal(y, expected)
    for target in ("residual", "x"):
        residual_in, x_in = residual.copy(), x.copy()
        out = residual_in if target == "residual" else x_in
        fastdrop.bias_dropout_add(x_in, bias, residual_in, 0.3, seed=11, offset=offset, out=out)
        assert_bitwise_equal(out, expected)
    assert stream_everything and all(stream_everything)
    assert philox_streams and all(philox_streams)


@pytest.mark.parametrize("case", ["flat_no_bias", "flat_full_bias", "carry", "p0"])
def test_bias_dropout_add_edges(case, philox_streams, stream_everything):
    """1-D x (one row of n columns) with no bias and with a bias of x's whole shape, counters
    that carry into their high word inside a task (offset 2**34 - 5: words of no prefetch
    hints), and p = 0."""
    rng = np.random.default_rng(14)
    n = 3 * CHUNK + 77
    x = rng.standard_normal(n).astype(np.float32)
    residual = rng.standard_normal(n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if case == "flat_full_bias" else None
    p, offset = (0.0 if case == "p0" else 0.3), (2**34 - 5 if case == "carry" else 9)
    out = _shifted((n,), np.float32, 3, 0, fill=np.nan)
    fastdrop.bias_dropout_add(x, bias, residual, p, seed=15, offset=offset, out=out)
    assert_bitwise_equal(out, reference.bias_dropout_add(x, bias, residual, p, seed=15, offset=offset))
    assert philox_streams == [True]


@pytest.mark.parametrize("layout", ["x_column_slice", "residual_column_slice", "out_column_slice",
                                    "out_misaligned", "bias_strided"])
def test_bias_dropout_add_layouts_that_do_not_stream(layout, philox_streams, stream_everything):
    """Streamed tasks run over flat arrays: other layouts take the rows path, just as right."""
    rng = np.random.default_rng(12)
    shape = (30, 700)

    def matrix(sliced):
        wide = rng.standard_normal((30, 710)).astype(np.float32)[:, 3:703]
        return wide if sliced else np.ascontiguousarray(wide)

    x, residual = matrix(layout == "x_column_slice"), matrix(layout == "residual_column_slice")
    bias = rng.standard_normal(1400).astype(np.float32)
    bias = bias[::2] if layout == "bias_strided" else bias[:700]
    if layout == "out_column_slice":
        out = np.full((30, 705), np.nan, dtype=np.float32)[:, 5:]
    elif layout == "out_misaligned":
        out = np.zeros(4 * 30 * 700 + 1, dtype=np.uint8)[1:].view(np.float32).reshape(shape)
        assert out.ctypes.data % 4
    else:
        out = np.full(shape, np.nan, dtype=np.float32)
    fastdrop.bias_dropout_add(x, bias, residual, 0.4, seed=13, offset=17, out=out)
    assert_bitwise_equal(out, reference.bias_dropout_add(x, bias, residual, 0.4, seed=13, offset=17))
    assert philox_streams == [False]


def test_bias_dropout_add_new_output_is_not_streamed(monkeypatch, philox_streams,
                                                     stream_everything):
    """A new output is fresh pages (its (rows, width) view too): normal stores, and its mark is
    used up by the call."""
    monkeypatch.setattr(_numba_stream, "ALWAYS_FRESH_BYTES", 0)
    x = np.random.default_rng(16).standard_normal((50, 300)).astype(np.float32)
    y, _ = fastdrop.bias_dropout_add(x, x[0], x, 0.5, seed=17)
    assert_bitwise_equal(y, reference.bias_dropout_add(x, x[0], x, 0.5, seed=17))
    assert stream_everything == [False] and philox_streams == [False]
    assert not _numba_backend._fresh_outputs


def test_bias_dropout_add_streams_only_where_measured(monkeypatch, philox_streams,
                                                     stream_everything):
    """Without ``STREAM_PHILOX`` (every CPU but Zen 5) it never streams."""
    monkeypatch.setattr(_numba_stream, "STREAM_PHILOX", False)
    x = np.ones((4, 300), dtype=np.float32)
    fastdrop.bias_dropout_add(x, None, x.copy(), 0.5, seed=1, out=np.empty_like(x))
    assert philox_streams == [False]


def test_streams_follows_bases_a_bounded_way():
    """An exporter whose base is itself ends the walk (a streamable output)."""

    class Cyclic:
        nbytes = 1 << 40

    cyclic = Cyclic()
    cyclic.base = cyclic
    assert _numba_backend.streams(cyclic)
