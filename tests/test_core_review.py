"""Independent review of the core (issue 2): edge cases, parallel paths against the oracle, and
failed calls that must modify nothing. Tests marked "Regression" guard defects found in review
(since fixed); the others cover gaps in the original suite."""

from __future__ import annotations

import math
import re
import tracemalloc
import warnings

import numpy as np
import pytest

import fastdrop
from fastdrop import DropoutMask, reference
from fastdrop._contract import KEEP_ALL, keep_threshold
from fastdrop._numba_kernels import CHUNK, SERIAL_BELOW

from conftest import assert_bitwise_equal

#: Big enough for the parallel (not the serial-twin) kernels and several CHUNK-sized tasks.
LARGE = SERIAL_BELOW + 3 * CHUNK + 5


def _values(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------------------------
# Threshold rounding and p near 0 and 1
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "p, threshold",
    [
        (1e-17, KEEP_ALL),            # 1 - p rounds to 1.0
        (2**-33, KEEP_ALL),           # 2**32 - 0.5 rounds half to even: 2**32
        (3 * 2**-34, KEEP_ALL - 1),   # 2**32 - 0.75
        (2**-32, KEEP_ALL - 1),
        (1 - 2**-32, 1),
        (1 - 2**-33, 0),              # 0.5 rounds half to even: 0
        (1 - 3 * 2**-34, 1),          # 0.75
        (1 - 2**-53, 0),
        (1 - 1e-17, 0),               # this is p = 1.0 in float64
        (5e-324, KEEP_ALL),
    ],
)
def test_threshold_rounding_is_pythons_round(p, threshold):
    assert keep_threshold(p) == threshold == round((1 - p) * 2**32)


@pytest.mark.parametrize(
    "p", [1e-17, 2**-33, 3 * 2**-34, 2**-32, 1e-9, 1 - 2**-32, 1 - 2**-33, 1 - 2**-53, 1 - 1e-17, 5e-324]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_p_matches_reference(p, dtype):
    x = _values(4103, dtype)
    y, mask = fastdrop.dropout(x, p, seed=3, offset=1, keep_bits=True)
    expected = reference.dropout(x, p, seed=3, offset=1)
    assert_bitwise_equal(y, expected)
    assert_bitwise_equal(fastdrop.dropout_backward(x, mask), expected)
    _, plain = fastdrop.dropout(x, p, seed=3, offset=1)
    assert_bitwise_equal(fastdrop.dropout_backward(x, plain), expected)
    assert_bitwise_equal(mask.bits, reference.pack_bits(reference.keep_mask(x.shape, p, seed=3, offset=1)))


# --------------------------------------------------------------------------------------------
# The parallel kernels (>= SERIAL_BELOW elements) against the oracle, bit for bit. The existing
# suite compares the parallel builds with the reference only through one subprocess test.
# --------------------------------------------------------------------------------------------

def test_parallel_random_bits_and_keep_flags_match_reference():
    for offset in (3, 2**64 - LARGE):
        words = fastdrop.random_bits(LARGE, seed=2**64 - 1, offset=offset)
        assert_bitwise_equal(words, reference.random_bits(LARGE, seed=2**64 - 1, offset=offset))
    _, mask = fastdrop.dropout(np.zeros(LARGE, np.float32), 0.3, seed=5, offset=7)
    assert_bitwise_equal(mask.to_array(), reference.keep_mask((LARGE,), 0.3, seed=5, offset=7))


def test_parallel_second_pass_bits_and_backward_from_bits_with_strided_dy():
    """F-ordered input with a broadcast mask: the bits come from the separate packing pass, and
    backward reads them with a dy of yet another layout."""
    x = np.asfortranarray(_values((37, 23, 61), np.float32, seed=1))  # 51911 elements
    mask_shape = (37, 1, 61)
    y, mask = fastdrop.dropout(x, 0.45, seed=11, offset=2, mask_shape=mask_shape, keep_bits=True)
    assert_bitwise_equal(y, reference.dropout(x, 0.45, seed=11, offset=2, mask_shape=mask_shape))
    keep = reference.keep_mask(mask_shape, 0.45, seed=11, offset=2)
    assert_bitwise_equal(mask.bits, reference.pack_bits(keep))
    dy = _values((61, 23, 37), np.float32, seed=2).transpose(2, 1, 0)[::-1, :, ::-1]
    out = np.empty((37, 46, 61), np.float32)[:, ::2]
    dx = fastdrop.dropout_backward(dy, mask, out=out)
    assert dx is out
    assert_bitwise_equal(dx, reference.dropout(dy, 0.45, seed=11, offset=2, mask_shape=mask_shape))


@pytest.mark.parametrize("mask_shape", [None, (3, 1)], ids=str)
def test_offsets_at_the_end_of_the_stream(mask_shape):
    """The last words a call may use (offset + n - 1 = 2**64 - 1), serial and parallel kernels,
    the chunked path and the one-word-per-row path."""
    for n_columns in (5, LARGE // 3 + 1):
        x = _values((3, n_columns), np.float64, seed=n_columns)
        n_words = math.prod(mask_shape or x.shape)
        for offset in (2**64 - n_words, 2**64 - n_words - 3):
            y, mask = fastdrop.dropout(x, 0.3, seed=2**64 - 1, offset=offset, mask_shape=mask_shape,
                                       keep_bits=True)
            expected = reference.dropout(x, 0.3, seed=2**64 - 1, offset=offset, mask_shape=mask_shape)
            assert_bitwise_equal(y, expected)
            assert_bitwise_equal(fastdrop.dropout_backward(x, mask), expected)
            assert_bitwise_equal(
                mask.bits, reference.pack_bits(reference.keep_mask(mask.shape, 0.3, seed=2**64 - 1, offset=offset))
            )
    with pytest.raises(ValueError, match="offset"):
        fastdrop.dropout(x, 0.3, seed=1, offset=2**64 - n_words + 1, mask_shape=mask_shape)


# --------------------------------------------------------------------------------------------
# Layouts the existing tests do not reach: strided out, zero strides, unaligned data
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [4099, LARGE])
def test_strided_and_reversed_out(n):
    x = _values(n, np.float32, seed=4)
    before = x.copy()
    out = np.full(3 * n, 7.0, np.float32)[::-3]
    y, _ = fastdrop.dropout(x, 0.25, seed=9, out=out)
    assert y is out
    assert_bitwise_equal(out, reference.dropout(x, 0.25, seed=9))
    assert_bitwise_equal(x, before)


def test_zero_stride_input():
    x = np.broadcast_to(_values((1, 7), np.float32), (9, 7))
    for mask_shape in (None, (9, 1), (1, 7)):
        y, mask = fastdrop.dropout(x, 0.5, seed=4, mask_shape=mask_shape, keep_bits=True)
        assert_bitwise_equal(y, reference.dropout(x, 0.5, seed=4, mask_shape=mask_shape))
        assert_bitwise_equal(fastdrop.dropout_backward(x, mask), reference.dropout(x, 0.5, seed=4, mask_shape=mask_shape))


def test_unaligned_input_and_in_place():
    buffer = bytearray(4 * 101 + 1)
    x = np.ndarray((101,), dtype=np.float32, buffer=buffer, offset=1)
    x[:] = _values(101)
    assert not x.flags.aligned
    before = x.copy()
    assert_bitwise_equal(fastdrop.dropout(x, 0.5, seed=1)[0], reference.dropout(before, 0.5, seed=1))
    fastdrop.dropout(x, 0.5, seed=1, out=x)
    assert_bitwise_equal(x, reference.dropout(before, 0.5, seed=1))


def test_in_place_through_a_second_view_object():
    base = _values((7, 9), np.float64)
    expected = base.copy()
    expected[::-1, 1::2] = reference.dropout(base[::-1, 1::2], 0.5, seed=2)
    fastdrop.dropout(base[::-1, 1::2], 0.5, seed=2, out=base[::-1, 1::2])
    assert_bitwise_equal(base, expected)


def test_zero_size_input_with_a_non_empty_broadcast_mask():
    x = np.empty((5, 0), np.float32)
    y, mask = fastdrop.dropout(x, 0.5, seed=3, mask_shape=(5, 1), keep_bits=True)
    keep = reference.keep_mask((5, 1), 0.5, seed=3)
    assert keep.any() and not keep.all()  # a seed whose bits are not all equal
    assert y.shape == (5, 0)
    assert_bitwise_equal(mask.bits, reference.pack_bits(keep))
    np.testing.assert_array_equal(mask.to_array(), keep)


def test_zero_dimensional_with_bits():
    x = np.array(2.5, np.float32)
    for offset in range(4):
        y, mask = fastdrop.dropout(x, 0.5, seed=1, offset=offset, keep_bits=True)
        assert y.shape == () and mask.shape == ()
        assert_bitwise_equal(y, reference.dropout(x, 0.5, seed=1, offset=offset))
        assert_bitwise_equal(fastdrop.dropout_backward(x, mask), reference.dropout(x, 0.5, seed=1, offset=offset))


def test_non_native_byte_order_is_a_clear_type_error():
    x = _values(10).astype(">f4")
    with pytest.raises(TypeError, match=r"^x "):
        fastdrop.dropout(x, 0.5, seed=1)


# --------------------------------------------------------------------------------------------
# Failed calls modify nothing
# --------------------------------------------------------------------------------------------

def test_failed_calls_leave_out_x_and_stream_untouched():
    x = _values((4, 6))
    x_before = x.copy()
    state = fastdrop.stream_state()
    wrong_dtype = np.full((4, 6), 3.0, np.float64)
    read_only = np.full((4, 6), 3.0, np.float32)
    read_only.flags.writeable = False
    overlapping_base = np.full(48, 3.0, np.float32)
    calls = [
        dict(out=wrong_dtype),
        dict(out=read_only),
        dict(mask_shape=(4, 5), out=np.full((4, 6), 3.0, np.float32)),
        dict(offset=4, out=np.full((4, 6), 3.0, np.float32)),  # offset without a seed
    ]
    for kwargs in calls:
        out = kwargs.get("out")
        out_before = out.copy()
        with pytest.raises((TypeError, ValueError)):
            fastdrop.dropout(x, 0.5, keep_bits=True, **kwargs)
        assert_bitwise_equal(out, out_before)
    overlap_x = overlapping_base[:24].reshape(4, 6)
    with pytest.raises(ValueError, match="overlaps"):
        fastdrop.dropout(overlap_x, 0.5, out=overlapping_base[12:36].reshape(4, 6))
    assert_bitwise_equal(overlapping_base, np.full(48, 3.0, np.float32))
    assert_bitwise_equal(x, x_before)
    assert fastdrop.stream_state() == state


def test_failed_backward_leaves_out_untouched():
    x = _values((4, 6))
    _, mask = fastdrop.dropout(x, 0.5, seed=1, keep_bits=True)
    out = np.full((4, 6), 3.0, np.float32)
    with pytest.raises(ValueError, match="dy has shape"):
        fastdrop.dropout_backward(np.ones((6, 4), np.float32), mask, out=out)
    with pytest.raises(TypeError, match="out has dtype"):
        fastdrop.dropout_backward(np.ones((4, 6), np.float32), mask, out=np.zeros((4, 6)))
    assert_bitwise_equal(out, np.full((4, 6), 3.0, np.float32))


def test_numpy_matrix_input_fails_cleanly_or_works_and_never_spends_the_stream():
    """Regression (found in review, fixed): np.matrix passes validation, takes (seed, offset) from the module stream, then
    dies inside Numba with a TypingError (x.reshape(1, 1, -1) cannot make a 3-D matrix)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        x = np.matrix(_values((3, 4)))
    state = fastdrop.stream_state()
    try:
        y, mask = fastdrop.dropout(x, 0.5)
    except (TypeError, ValueError) as error:
        assert re.search(r"\bx\b", str(error)), error
        assert fastdrop.stream_state() == state
    else:
        expected = reference.dropout(np.asarray(x), 0.5, seed=mask.seed, offset=mask.offset)
        assert_bitwise_equal(np.asarray(y), expected)


# --------------------------------------------------------------------------------------------
# Validation gaps found in review
# --------------------------------------------------------------------------------------------

class _UserArray(np.ndarray):
    """A NumPy subclass defined outside NumPy (astropy-, xarray- or pint-style)."""


def test_user_ndarray_subclass_is_accepted():
    """Regression (found in review, fixed): backend dispatch looks at type(x).__module__ ('tests...'), so a subclass of
    numpy.ndarray is refused with 'fastdrop runs on numpy.ndarray' (as x and as out)."""
    values = _values(50)
    y, mask = fastdrop.dropout(values.view(_UserArray), 0.5, seed=1)
    assert_bitwise_equal(np.asarray(y), reference.dropout(values, 0.5, seed=1))
    out = np.empty(50, np.float32).view(_UserArray)
    fastdrop.dropout(values, 0.5, seed=1, out=out)
    assert_bitwise_equal(np.asarray(out), reference.dropout(values, 0.5, seed=1))


@pytest.mark.parametrize("p", [10**400, -(10**400)], ids=["10**400", "-10**400"])
def test_huge_integer_p_is_a_value_error_naming_p(p):
    """Regression (found in review, fixed): float(p) raises OverflowError ('int too large to convert to float')."""
    with pytest.raises(ValueError, match="p must be in"):
        fastdrop.dropout(_values(4), p, seed=1)


def test_not_an_array_names_the_argument():
    """Regression (found in review, fixed): the message is 'fastdrop runs on numpy.ndarray and cupy.ndarray; got builtins.list'
    for x, dy and like alike."""
    with pytest.raises(TypeError, match=r"\bx\b"):
        fastdrop.dropout([1.0, 2.0], 0.5, seed=1)
    _, mask = fastdrop.dropout(np.ones(2), 0.5, seed=1)
    with pytest.raises(TypeError, match=r"\bdy\b"):
        fastdrop.dropout_backward([1.0, 2.0], mask)


def _big_bits():
    big = np.full(64, 0xFF, np.uint8)  # bits[1:] lie inside this buffer: reading them is safe
    return big[:1]


#: case -> (builds the mask, the field its error message must name). Built lazily, inside
#: pytest.raises, so a fix may validate in the constructor or in dropout_backward.
HAND_BUILT_MASKS = {
    "p above 1": (lambda: DropoutMask(2.0, 1, 0, (16,), (16,)), "p"),
    "p NaN": (lambda: DropoutMask(float("nan"), 1, 0, (16,), (16,)), "p"),
    "negative seed": (lambda: DropoutMask(0.5, -1, 0, (16,), (16,)), "seed"),
    "seed 2**65": (lambda: DropoutMask(0.5, 2**65, 0, (16,), (16,)), "seed"),
    "negative offset": (lambda: DropoutMask(0.5, 1, -4, (16,), (16,)), "offset"),
    "shape not broadcasting": (lambda: DropoutMask(0.5, 1, 0, (5,), (16,)), "shape"),
    "bits too short": (lambda: DropoutMask(0.5, 1, 0, (16,), (16,), bits=_big_bits()), "bits"),
}


@pytest.mark.parametrize("case", list(HAND_BUILT_MASKS))
def test_hand_built_mask_is_validated(case):
    """Regression (found in review, fixed): DropoutMask is public but its constructor checks nothing; backward then raises
    OverflowError/ValueError without naming the field, computes with a 66-bit key, silently
    returns garbage for a shape that does not broadcast, or reads past the end of short bits."""
    build, field = HAND_BUILT_MASKS[case]
    dy = np.ones(16, np.float32)
    with pytest.raises((TypeError, ValueError)) as info:
        fastdrop.dropout_backward(dy, build())
    assert re.search(rf"\b{field}\b", str(info.value)), info.value


def test_in_place_with_the_same_elements_but_other_strides_on_a_size_one_axis():
    """Regression (found in review, fixed): same_memory compares strides of size-1 axes, so this exact in-place call is
    refused as 'partly overlaps'."""
    a = _values(5, np.float64)
    before = a.copy()
    x, out = a[None, :], a.reshape(1, 5)
    assert x.strides != out.strides and np.shares_memory(x, out)
    fastdrop.dropout(x, 0.5, seed=1, out=out)
    assert_bitwise_equal(a, reference.dropout(before, 0.5, seed=1))


# --------------------------------------------------------------------------------------------
# The reference must implement the contract it is the oracle for
# --------------------------------------------------------------------------------------------

def test_reference_p_zero_is_bitwise_identity_for_signalling_nans():
    """Regression (found in review, fixed): the oracle multiplies by 1.0 at p = 0, which quiets signalling NaNs (and warns),
    while the contract (and the Numba backend) copy x bit for bit."""
    x = np.array([0x7F800001, 0x7FA00000, 0x3F800000], np.uint32).view(np.float32)
    assert_bitwise_equal(fastdrop.dropout(x, 0.0, seed=1)[0], x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_bitwise_equal(reference.dropout(x, 0.0, seed=1), x)


def test_reference_p_one_with_infinite_input_is_clean():
    """Regression (found in review, fixed): the oracle computes inf * 0 before selecting, a RuntimeWarning that the project's
    pytest configuration (filterwarnings = error) turns into a failure."""
    x = np.array([np.inf, -np.inf, np.nan, 1.0], np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_bitwise_equal(reference.dropout(x, 1.0, seed=1), np.zeros(4))
    assert_bitwise_equal(fastdrop.dropout(x, 1.0, seed=1)[0], np.zeros(4))


# --------------------------------------------------------------------------------------------
# Memory and the layer
# --------------------------------------------------------------------------------------------

def test_strided_forward_with_bits_allocates_only_output_and_bits():
    x = np.asfortranarray(np.ones((512, 1024), np.float32))
    mask_shape = (512, 1)
    dy = np.ones((1024, 512), np.float32).T
    for _ in range(2):  # the first round compiles
        tracemalloc.start()
        y, mask = fastdrop.dropout(x, 0.5, seed=1, mask_shape=mask_shape, keep_bits=True)
        _, peak_forward = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del y
        tracemalloc.start()
        fastdrop.dropout_backward(dy, mask, out=x)
        _, peak_backward = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak_forward < x.nbytes + 64 * 1024
    assert peak_backward < 64 * 1024


def test_layer_with_mask_shape_bits_and_stream():
    fastdrop.manual_seed(321)
    layer = fastdrop.Dropout(0.3, mask_shape=(6, 1), keep_bits=True)
    x = _values((6, 10), np.float64)
    y1 = layer.forward(x)
    first = layer.mask
    y2 = layer.forward(x)
    assert (first.seed, first.offset, layer.mask.offset) == (321, 0, 8)  # 6 words -> 2 counters
    assert_bitwise_equal(y1, reference.dropout(x, 0.3, seed=321, offset=0, mask_shape=(6, 1)))
    assert_bitwise_equal(y2, reference.dropout(x, 0.3, seed=321, offset=8, mask_shape=(6, 1)))
    dy = _values((10, 6), np.float64, seed=3).T
    assert_bitwise_equal(layer.backward(dy), reference.dropout(dy, 0.3, seed=321, offset=8, mask_shape=(6, 1)))
