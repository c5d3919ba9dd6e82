"""The checks behind ``fastdrop validate``: fastdrop.torch against PyTorch's own dropout.

Three kinds, each returning :class:`CheckResult` rows:

- exact: a count of mismatching elements that must not exceed 0 (PyTorch's output for the mask it
  drew, reproduced by fastdrop's scale-and-select; the adapter against ``fastdrop.reference``);
- statistical: a two-sample (or exact one-sample) test from ``scipy.stats`` whose p-value must be
  at least ``ALPHA`` (fastdrop against PyTorch at ``SAMPLE_SIZE`` elements per sample);
- semantic: a count of violated properties (evaluation is identity, p = 0 and p = 1, dtype, shape
  and memory format, in place, whole channels, alpha dropout's moments).

False failures: each statistical row tests a true null hypothesis at level ``ALPHA`` = 1e-4 (exact
for the continuous statistics, conservative for the discrete ones), so with fresh seeds a correct
implementation fails a given row with probability at most 1e-4 and any of the ``k`` statistical
rows with probability at most ``k * ALPHA`` (Bonferroni; 28 rows on the CPU, so under 3e-3). The seeds
are fixed by default, so a run is reproducible; ``fastdrop validate --seed`` draws others.
Importing this module imports torch and scipy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

import fastdrop
import fastdrop.torch as ft
from fastdrop import reference

#: Level of every statistical test (its false-failure rate under the null hypothesis).
ALPHA = 1e-4
#: Elements per sample in the element-wise statistical tests (2**20).
SAMPLE_SIZE = 1 << 20
#: (samples, channels) of the channel-wise tests: 2**18 channel draws per sample.
CHANNEL_BATCH = (4096, 64)

CPU_DTYPES = (torch.float32, torch.float64)
#: CPU half types compute through float32 (the contract's rule); checked against the reference only,
#: since PyTorch's CPU kernel rounds 1 / (1 - p) to the half type first (see docs/torch.md).
CPU_HALF_DTYPES = (torch.float16, torch.bfloat16)
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class CheckResult:
    check: str
    backend: str
    dtype: str
    statistic: float
    threshold: float
    rule: str  # "p-value >= threshold" or "count <= threshold"
    passed: bool
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _p_value_row(check, device, dtype, p_value, detail) -> CheckResult:
    p_value = float(p_value)
    return CheckResult(check, device, _dtype_name(dtype), p_value, ALPHA, "p-value >= threshold",
                       bool(p_value >= ALPHA), detail)


def _count_row(check, device, dtype, count, detail) -> CheckResult:
    return CheckResult(check, device, _dtype_name(dtype), float(count), 0.0, "count <= threshold",
                       count == 0, detail)


def cuda_status() -> tuple[bool, str]:
    """(usable, reason): CUDA checks need a GPU for torch, CuPy and fastdrop's CuPy backend."""
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    try:
        import cupy  # noqa: F401

        import fastdrop._cupy_backend  # noqa: F401
    except Exception as error:  # ImportError, or a CUDA library that fails to load
        return False, f"CuPy or fastdrop's CuPy backend unavailable ({type(error).__name__}: {error})"
    return True, ""


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(shape, dtype, device, seed, mean=0.0):
    """Standard normal (shifted by ``mean``) input, drawn on the CPU so every device sees the same."""
    x = torch.randn(shape, generator=_generator(seed), dtype=torch.float64) + mean
    return x.to(dtype=dtype, device=device)


def _bits(tensor) -> torch.Tensor:
    integer = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.detach().contiguous().view(integer)


def _bit_mismatches(actual, expected) -> int:
    return int((_bits(actual.cpu()) != _bits(expected.cpu())).sum())


# --- exact checks -------------------------------------------------------------------------------

ELEMENTWISE_P = (0.1, 0.5, 0.9)


def elementwise_native_dropout(device: str, dtype, seed: int = 0) -> CheckResult:
    """PyTorch's ``native_dropout`` output equals fastdrop's scale-and-select with PyTorch's mask.

    Compared by value on finite input (PyTorch's CPU multiply gives -0 for a dropped negative,
    fastdrop's select +0; they compare equal)."""
    torch.manual_seed(seed)
    shapes = [(100_003,), (8, 24, 13, 11)]
    mismatches = total = 0
    for index, shape in enumerate(shapes):
        x = _normal(shape, dtype, device, seed + index) * 10
        if len(shape) == 4:
            x = x.to(memory_format=torch.channels_last)
        for p in ELEMENTWISE_P:
            out, keep = torch.ops.aten.native_dropout(x, p, True)
            mine = ft.apply_keep_mask(x, keep, p)
            mismatches += int((mine != out).sum())
            total += x.numel()
    return _count_row("elementwise vs native_dropout", device, dtype, mismatches,
                      f"{total} elements, p in {ELEMENTWISE_P}, incl. channels_last")


def adapter_matches_reference(device: str, dtype, seed: int = 0) -> CheckResult:
    """fastdrop.torch forward and backward equal fastdrop.reference bit for bit (contiguous,
    channels_last and strided input; element-wise and channel-wise masks)."""
    mismatches = total = 0
    cases = [
        ((1001,), None, "contiguous"),
        ((6, 10, 9, 7), "channels_last", "channels_last"),
        ((12, 34), "strided", "strided"),
    ]
    for index, (shape, layout, _) in enumerate(cases):
        base = _normal(shape, torch.float64, "cpu", seed + 10 + index)
        x = base.to(dtype=dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        if layout == "strided":
            x = x[:, ::3]
        channel_wise = len(shape) == 4
        mask_shape = tuple(x.shape[:2]) + (1, 1) if channel_wise else tuple(x.shape)
        for p in (0.2, 0.5):
            x_device = x.to(device).requires_grad_()
            function = ft.dropout2d if channel_wise else ft.dropout
            y = function(x_device, p, seed=seed + 99, offset=5)
            grad = _normal(tuple(x.shape), dtype, device, seed + 50 + index)
            (dx,) = torch.autograd.grad(y, x_device, grad)
            expected_y = _reference(x, p, seed + 99, 5, mask_shape)
            expected_dx = _reference(grad.cpu(), p, seed + 99, 5, mask_shape)
            mismatches += _bit_mismatches(y, expected_y) + _bit_mismatches(dx, expected_dx)
            total += 2 * x.numel()
    return _count_row("adapter vs reference (fwd+bwd)", device, dtype, mismatches,
                      f"{total} elements, bitwise, contiguous/channels_last/strided")


def _reference(x, p, seed, offset, mask_shape):
    """The contract's result as a CPU tensor of x's dtype (bfloat16: computed in float32, rounded once)."""
    if x.dtype == torch.bfloat16:
        keep = torch.from_numpy(reference.keep_mask(mask_shape, p, seed=seed, offset=offset))
        scaled = (x.float() * torch.tensor(fastdrop.scale_factor(p), dtype=torch.float32)).to(x.dtype)
        return torch.where(keep, scaled, torch.zeros((), dtype=x.dtype))
    array = reference.dropout(x.detach().cpu().numpy(), p, seed=seed, offset=offset, mask_shape=mask_shape)
    return torch.from_numpy(array)


# --- statistical checks ---------------------------------------------------------------------------


def _samples(device, dtype, seed, p, spatial=False):
    """(fastdrop output, torch output) on independent unit-normal inputs shifted to mean 1."""
    shape = CHANNEL_BATCH + (2, 2) if spatial else (SAMPLE_SIZE,)
    x_fastdrop = _normal(shape, dtype, device, seed + 1, mean=1.0)
    x_torch = _normal(shape, dtype, device, seed + 2, mean=1.0)
    torch.manual_seed(seed + 3)
    if spatial:
        return (ft.dropout2d(x_fastdrop, p, seed=seed + 4),
                torch.nn.functional.dropout2d(x_torch, p, training=True))
    return ft.dropout(x_fastdrop, p, seed=seed + 4), torch.nn.functional.dropout(x_torch, p, training=True)


def _keep_count(y, spatial: bool) -> tuple[int, int]:
    kept = y[..., 0, 0] != 0 if spatial else y != 0
    return int(kept.sum()), kept.numel()


def dropout_statistics(device: str, dtype, seed: int = 0, p: float = 0.1) -> list[CheckResult]:
    """Keep rate (against the exact t / 2**32 and against torch), mean, variance and distribution
    of element-wise dropout, fastdrop against torch, ``SAMPLE_SIZE`` elements per sample."""
    n = SAMPLE_SIZE
    y_fd, y_torch = _samples(device, dtype, seed + int(p * 100), p)
    kept_fd, _ = _keep_count(y_fd, False)
    kept_torch, _ = _keep_count(y_torch, False)
    exact = fastdrop.keep_threshold(p) / 2**32
    table = [[kept_fd, n - kept_fd], [kept_torch, n - kept_torch]]
    a = y_fd.double().cpu().numpy()
    b = y_torch.double().cpu().numpy()
    ks = stats.ks_2samp(a, b, method="asymp")
    return [
        _p_value_row(f"keep rate = t/2^32 (p={p})", device, dtype, stats.binomtest(kept_fd, n, exact).pvalue,
                     f"exact binomial, kept {kept_fd}/{n}, expected {exact * n:.0f}"),
        _p_value_row(f"keep rate vs torch (p={p})", device, dtype,
                     stats.chi2_contingency(table, correction=False).pvalue,
                     f"2x2 chi-square, n={n} each, kept {kept_fd} vs {kept_torch}"),
        _p_value_row(f"mean vs torch (p={p})", device, dtype, stats.ttest_ind(a, b, equal_var=False).pvalue,
                     f"Welch t, n={n} each, means {a.mean():.5f} vs {b.mean():.5f}"),
        _p_value_row(f"variance vs torch (p={p})", device, dtype, stats.levene(a, b, center="median").pvalue,
                     f"Brown-Forsythe, n={n} each, var {a.var():.5f} vs {b.var():.5f}"),
        _p_value_row(f"distribution vs torch (p={p})", device, dtype, ks.pvalue,
                     f"two-sample KS, n={n} each, D={ks.statistic:.5f}"),
    ]


def channel_statistics(device: str, dtype, seed: int = 0, p: float = 0.25) -> list[CheckResult]:
    """Dropout2d's channel keep rate, fastdrop against torch, on ``CHANNEL_BATCH`` channels."""
    y_fd, y_torch = _samples(device, dtype, seed + 7, p, spatial=True)
    kept_fd, channels = _keep_count(y_fd, True)
    kept_torch, _ = _keep_count(y_torch, True)
    table = [[kept_fd, channels - kept_fd], [kept_torch, channels - kept_torch]]
    return [_p_value_row(
        f"Dropout2d channel keep rate vs torch (p={p})", device, dtype,
        stats.chi2_contingency(table, correction=False).pvalue,
        f"2x2 chi-square, {channels} channels each, kept {kept_fd} vs {kept_torch}")]


def statistical_checks(device: str, dtype, seed: int = 0) -> list[CheckResult]:
    rows = dropout_statistics(device, dtype, seed, 0.1) + dropout_statistics(device, dtype, seed, 0.5)
    return rows + channel_statistics(device, dtype, seed) + alpha_checks(device, dtype, seed)


def alpha_checks(device: str, dtype, seed: int = 0, p: float = 0.2) -> list[CheckResult]:
    """Alpha dropout keeps mean 0 and variance 1 of unit-normal input, and matches torch's output
    distribution."""
    n = SAMPLE_SIZE
    x = _normal((n,), dtype, device, seed + 20)
    y = ft.alpha_dropout(x, p, training=True, seed=seed + 21).double().cpu().numpy()
    mean, var = y.mean(), y.var(ddof=1)
    z_mean = mean / math.sqrt(var / n)
    fourth = np.mean((y - mean) ** 4)
    z_var = (var - 1.0) / math.sqrt((fourth - var**2) / n)
    torch.manual_seed(seed + 22)
    x_torch = _normal((n,), dtype, device, seed + 23)
    y_torch = torch.nn.functional.alpha_dropout(x_torch, p, training=True).double().cpu().numpy()
    ks = stats.ks_2samp(y, y_torch, method="asymp")
    return [
        _p_value_row(f"alpha dropout mean = 0 (p={p})", device, dtype, 2 * stats.norm.sf(abs(z_mean)),
                     f"z-test, n={n}, mean {mean:.5f}"),
        _p_value_row(f"alpha dropout variance = 1 (p={p})", device, dtype, 2 * stats.norm.sf(abs(z_var)),
                     f"z-test on the sample variance, n={n}, var {var:.5f}"),
        _p_value_row(f"alpha dropout distribution vs torch (p={p})", device, dtype, ks.pvalue,
                     f"two-sample KS, n={n} each, D={ks.statistic:.5f}"),
    ]


# --- semantic checks ---------------------------------------------------------------------------------


def semantic_checks(device: str, dtype, seed: int = 0) -> list[CheckResult]:
    rows = []

    def row(name, violations, detail):
        rows.append(_count_row(name, device, dtype, violations, detail))

    x = _normal((4, 6, 5, 3), dtype, device, seed + 30)
    modules = [ft.Dropout(0.5), ft.Dropout2d(0.5), ft.Dropout3d(0.5), ft.AlphaDropout(0.5)]
    row("eval mode is identity", sum(m.eval()(x) is not x for m in modules),
        "Dropout, Dropout2d, Dropout3d, AlphaDropout in eval() return the input")

    violations = int(ft.dropout(x, 0.0, seed=1) is not x)
    leaf = x.clone().requires_grad_()
    y = ft.dropout(leaf, 1.0, seed=1)
    (grad,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
    violations += int((y != 0).sum()) + int((grad != 0).sum())
    row("p=0 identity, p=1 zeros", violations, "p=1: zero output and zero gradient")

    violations = 0
    for function in (ft.dropout, ft.dropout2d, ft.alpha_dropout):
        for layout in (torch.contiguous_format, torch.channels_last):
            source = x.contiguous(memory_format=layout)
            out = function(source, 0.3, training=True, seed=2)
            violations += int(out.dtype != dtype) + int(out.shape != source.shape)
            violations += int(not out.is_contiguous(memory_format=layout)) + int(out.device != source.device)
    row("dtype, shape, memory format kept", violations, "dropout, dropout2d, alpha_dropout x 2 layouts")

    violations = 0
    for function in (ft.dropout, ft.dropout2d, ft.alpha_dropout):
        expected = function(x, 0.3, training=True, seed=3)
        target = x.clone()
        result = function(target, 0.3, training=True, inplace=True, seed=3)
        violations += int(result is not target) + _bit_mismatches(target, expected)
    row("in place equals out of place", violations, "same seed; result is the input tensor")

    y = ft.dropout2d(x.abs() + 1, 0.5, seed=4)
    dropped = (y == 0)
    per_channel = dropped.flatten(2)
    violations = int((per_channel.any(-1) != per_channel.all(-1)).sum())
    y3 = ft.dropout3d(x.unsqueeze(2).abs() + 1, 0.5, seed=5).flatten(2) == 0
    violations += int((y3.any(-1) != y3.all(-1)).sum())
    row("spatial dropout drops whole channels", violations, "Dropout2d and Dropout3d, (N, C) slices")
    return rows


# --- everything ------------------------------------------------------------------------------------


def run_all(seed: int = 0, include_cuda: bool | None = None) -> tuple[list[CheckResult], list[str]]:
    """All checks on this machine: (rows, notes). CUDA runs when usable unless include_cuda=False."""
    rows, notes = [], []
    devices = [("cpu", CPU_DTYPES)]
    usable, reason = cuda_status()
    if include_cuda is not False and usable:
        devices.append(("cuda", CUDA_DTYPES))
    elif include_cuda is not False:
        notes.append(f"cuda: skipped ({reason})")
    for device, dtypes in devices:
        for dtype in dtypes:
            rows.append(elementwise_native_dropout(device, dtype, seed))
            rows.append(adapter_matches_reference(device, dtype, seed))
        if device == "cpu":
            rows.extend(adapter_matches_reference(device, dtype, seed) for dtype in CPU_HALF_DTYPES)
        for dtype in (torch.float32,) if device == "cuda" else dtypes:
            rows.extend(statistical_checks(device, dtype, seed))
            rows.extend(semantic_checks(device, dtype, seed))
    return rows, notes
