"""The RNG contract itself: Philox known answers, threshold and scale rules, the reference."""

from __future__ import annotations

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._contract import keep_threshold, scale_factor

# Random123's published known-answer vectors for philox4x32-10 (kat_vectors).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in reference.philox4x32(counter, key)) == expected


def test_stream_layout_counter_and_key():
    """Word g is word g & 3 of philox(counter=(q lo, q hi, 0, 0), key=(seed lo, seed hi))."""
    seed = 0x0123456789ABCDEF
    offset = (1 << 34) - 6  # crosses from q = 2**32 - 2 into q = 2**32 (hi word of the counter)
    words = reference.random_bits(16, seed=seed, offset=offset)
    expected = []
    for g in range(offset, offset + 16):
        q = g >> 2
        block = reference.philox4x32([q & 0xFFFFFFFF, q >> 32, 0, 0], [seed & 0xFFFFFFFF, seed >> 32])
        expected.append(int(block[g & 3]))
    assert [int(w) for w in words] == expected


@pytest.mark.parametrize(
    "p, threshold",
    [(0.0, 1 << 32), (1.0, 0), (0.5, 1 << 31), (0.1, round(0.9 * 2**32)), (1e-6, round((1 - 1e-6) * 2**32))],
)
def test_keep_threshold_is_exact_integer(p, threshold):
    assert keep_threshold(p) == threshold
    assert abs(keep_threshold(p) / 2**32 - (1 - p)) <= 2**-33


def test_no_eight_bit_shortcut():
    # An 8-bit threshold would keep 230/256 = 0.8984 at p = 0.1.
    assert keep_threshold(0.1) / 2**32 == pytest.approx(0.9, abs=2**-33)


def test_scale_rules():
    assert scale_factor(0.0) == 1.0
    assert scale_factor(0.5) == 2.0
    assert scale_factor(1.0) == 0.0  # nothing kept, no division by zero
    assert scale_factor(0.3) == 1.0 / 0.7


def test_reference_select_semantics():
    x = np.array([np.nan, np.inf, -np.inf, 1.0, -0.0, 3.0] * 50, dtype=np.float32)
    keep = reference.keep_mask(x.shape, 0.5, seed=5)
    y = reference.dropout(x, 0.5, seed=5)
    assert np.all(y[~keep] == 0) and not np.any(np.isnan(y[~keep]))  # a dropped NaN/Inf gives 0
    np.testing.assert_array_equal(y[keep], x[keep] * np.float32(2.0))


def test_reference_float16_rounds_once():
    x = np.linspace(-3, 3, 1001, dtype=np.float16)
    y = reference.dropout(x, 0.3, seed=1)
    keep = reference.keep_mask(x.shape, 0.3, seed=1)
    expected = (x.astype(np.float32) * np.float32(1 / 0.7)).astype(np.float16)
    np.testing.assert_array_equal(y[keep].view(np.uint16), expected[keep].view(np.uint16))


def test_public_random_bits_matches_reference():
    words = fastdrop.random_bits(1003, seed=2**64 - 1, offset=7)
    assert words.dtype == np.uint32
    np.testing.assert_array_equal(words, reference.random_bits(1003, seed=2**64 - 1, offset=7))


def test_contract_document_exists_and_cites_sources():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "rng-contract.md").read_text()
    for needle in ("Philox4x32-10", "curand_init", "randint4x", "round((1 - p) * 2**32)"):
        assert needle in text
