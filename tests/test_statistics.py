"""Statistical checks of the masks.

Each test rejects at significance ALPHA = 1e-6: over the choice of seed, a correct generator fails
any one of these tests with probability 1e-6 (about 3e-5 for the whole file). The seeds are fixed,
so a run is reproducible; the bound says how unlucky a seed would have to be.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import fastdrop
from fastdrop._contract import keep_threshold

ALPHA = 1e-6
N = 1 << 22


@pytest.mark.parametrize("p", [0.001, 0.1, 0.5, 0.9])
def test_keep_rate_is_binomial_with_exact_threshold(p):
    _, mask = fastdrop.dropout(np.zeros(N, np.float32), p, seed=11, offset=5)
    kept = int(mask.to_array().sum())
    result = stats.binomtest(kept, N, keep_threshold(p) / 2**32)
    assert result.pvalue > ALPHA, (kept, N, p)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_output_is_unbiased(p):
    """E[y] = x: for x = 1 the mean of y is s * t / 2**32 = 1 up to 2**-33 relative."""
    y, _ = fastdrop.dropout(np.ones(N, np.float64), p, seed=12)
    result = stats.ttest_1samp(y, 1.0)
    assert result.pvalue > ALPHA, (y.mean(), p)


def test_neighbouring_elements_are_uncorrelated():
    keep = fastdrop.dropout(np.zeros(N, np.float32), 0.5, seed=13)[1].to_array().astype(np.float64)
    for lag in (1, 2, 3, 4, 5, 8, 4096):
        result = stats.pearsonr(keep[:-lag], keep[lag:])
        assert result.pvalue > ALPHA, (lag, result.statistic)


def test_words_of_one_counter_are_uncorrelated():
    words = fastdrop.random_bits(N, seed=14).reshape(-1, 4).astype(np.float64)
    for a in range(4):
        for b in range(a + 1, 4):
            result = stats.pearsonr(words[:, a], words[:, b])
            assert result.pvalue > ALPHA, (a, b, result.statistic)


def test_consecutive_calls_are_uncorrelated():
    fastdrop.manual_seed(15)
    x = np.zeros(N // 4, np.float32)
    first = fastdrop.dropout(x, 0.5)[1].to_array().astype(np.float64)
    second = fastdrop.dropout(x, 0.5)[1].to_array().astype(np.float64)
    result = stats.pearsonr(first, second)
    assert result.pvalue > ALPHA, result.statistic


def test_words_are_uniform_chi_square():
    words = fastdrop.random_bits(N, seed=16)
    for shift in (0, 8, 16, 24):  # every byte of the word over 256 bins
        counts = np.bincount((words >> shift) & 0xFF, minlength=256)
        assert stats.chisquare(counts).pvalue > ALPHA, shift


def test_every_bit_is_fair():
    words = fastdrop.random_bits(N, seed=17)
    ones = [(words >> bit) & 1 for bit in range(32)]
    # 32 tests: Bonferroni keeps the total false-failure rate at ALPHA.
    for bit, column in enumerate(ones):
        assert stats.binomtest(int(column.sum()), N, 0.5).pvalue > ALPHA / 32, bit


def test_keep_rate_at_tiny_p():
    """p = 1e-6 drops about 4 of 4M elements: Poisson, not zero and not many."""
    _, mask = fastdrop.dropout(np.zeros(N, np.float32), 1e-6, seed=18)
    dropped = N - int(mask.to_array().sum())
    expected = N * (1 - keep_threshold(1e-6) / 2**32)
    assert stats.poisson.sf(dropped - 1, expected) > ALPHA / 2
    assert stats.poisson.cdf(dropped, expected) > ALPHA / 2
