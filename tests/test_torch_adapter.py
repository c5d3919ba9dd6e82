"""fastdrop.torch: drop-in modules and functionals on fastdrop's kernels, checked against the
NumPy reference (bit for bit) and against PyTorch's own dropout (behaviour and element-wise)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastdrop  # noqa: E402
import fastdrop.torch as ft  # noqa: E402
from fastdrop import reference  # noqa: E402

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _reference(x, p, seed, offset=0, mask_shape=None):
    """The contract's output as a tensor (half types: computed in float32, rounded once)."""
    shape = tuple(x.shape) if mask_shape is None else mask_shape
    keep = torch.from_numpy(reference.keep_mask(shape, p, seed=seed, offset=offset))
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale = torch.tensor(fastdrop.scale_factor(p), dtype=compute)
    scaled = (x.detach().cpu().to(compute) * scale).to(x.dtype)
    return torch.where(keep, scaled, torch.zeros((), dtype=x.dtype))


def assert_bitwise(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    integer = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
    a = actual.detach().cpu().contiguous().view(integer)
    e = expected.detach().cpu().contiguous().view(integer)
    assert torch.equal(a, e), f"{int((a != e).sum())} of {a.numel()} elements differ"


def _layouts(shape, dtype):
    base = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    yield "contiguous", base
    if base.dim() == 4:
        yield "channels_last", base.contiguous(memory_format=torch.channels_last)
    yield "strided", base.transpose(0, -1)[::2]


# --- the contract through the adapter -------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, shape",
    [(torch.float32, (37,)), (torch.float32, (5, 7, 9, 3)), (torch.float64, (5, 7, 9, 3)),
     (torch.float16, (5, 7, 9, 3)), (torch.bfloat16, (5, 7, 9, 3)), (torch.float64, (1,))],
    ids=str,
)
def test_forward_and_backward_equal_reference(dtype, shape):
    for layout, x in _layouts(shape, dtype):
        for p in (0.1, 0.9):
            leaf = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
            if layout == "strided":
                leaf = x.detach().requires_grad_()
            y = ft.dropout(leaf, p, seed=2**40 + 3, offset=6)
            assert y.stride() == leaf.stride() or layout == "strided"
            assert_bitwise(y, _reference(leaf, p, 2**40 + 3, 6))
            grad = torch.randn(y.shape, dtype=torch.float64).to(dtype)
            (dx,) = torch.autograd.grad(y, leaf, grad)
            assert_bitwise(dx, _reference(grad, p, 2**40 + 3, 6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_memory_format_and_strides_preserved(dtype):
    x = torch.randn(4, 6, 5, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
    for function in (ft.dropout, ft.dropout2d, ft.alpha_dropout):
        y = function(x, 0.3, training=True, seed=1)
        assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()
    x3 = torch.randn(2, 4, 3, 5, 6, dtype=dtype).contiguous(memory_format=torch.channels_last_3d)
    assert ft.dropout3d(x3, 0.3, seed=1).stride() == x3.stride()


def test_zero_copy_exchange():
    x = torch.randn(3, 4).t()
    array = ft._as_array(x)
    assert array.__array_interface__["data"][0] == x.data_ptr()
    assert array.strides == tuple(s * x.element_size() for s in x.stride())
    y = ft.dropout(x, 0.5, seed=3)
    assert y.data_ptr() != x.data_ptr() and y.stride() == x.stride()


def test_channel_masks_use_n_c_mask_shape():
    x = torch.randn(3, 4, 5, 6)
    y = ft.dropout2d(x, 0.5, seed=9, offset=4)
    assert_bitwise(y, _reference(x, 0.5, 9, 4, mask_shape=(3, 4, 1, 1)))
    x1 = torch.randn(4, 7)  # unbatched Dropout1d: one draw per channel
    assert_bitwise(ft.dropout1d(x1, 0.5, seed=9), _reference(x1, 0.5, 9, mask_shape=(4, 1)))
    x3 = torch.randn(4, 2, 3, 5)  # unbatched Dropout3d
    assert_bitwise(ft.dropout3d(x3, 0.5, seed=9), _reference(x3, 0.5, 9, mask_shape=(4, 1, 1, 1)))


# --- autograd -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("function", [ft.dropout, ft.dropout2d, ft.alpha_dropout, ft.feature_alpha_dropout])
def test_gradcheck_float64(function):
    x = torch.randn(2, 3, 2, 1, dtype=torch.float64, requires_grad=True)

    def f(t):
        return function(t, 0.4, training=True, seed=11)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)


def test_backward_saves_no_tensor():
    packed = []

    def pack(tensor):
        packed.append(tensor)
        return tensor

    x = torch.randn(64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ft.dropout(x, 0.5, seed=1)
        z = ft.alpha_dropout(x, 0.5, training=True, seed=2)
    assert packed == []
    (y.sum() + z.sum()).backward()
    assert x.grad.shape == x.shape


def test_no_grad_and_inference_mode():
    x = torch.randn(50, requires_grad=True)
    with torch.no_grad():
        y = ft.dropout(x, 0.5, seed=4)
    assert not y.requires_grad and y.grad_fn is None
    assert_bitwise(y, _reference(x, 0.5, 4))
    with torch.inference_mode():
        z = torch.randn(50)
        out = ft.dropout(z, 0.5, seed=4)
        assert out.is_inference()
        assert_bitwise(out, _reference(z, 0.5, 4))
        assert ft.dropout2d(torch.randn(2, 3, 4, 4), 0.5, inplace=True, seed=1).is_inference()


# --- in place -----------------------------------------------------------------------------------------


def test_in_place_returns_input_and_bumps_version():
    x = torch.randn(40)
    expected = _reference(x, 0.3, 5)
    version = x._version
    assert ft.dropout(x, 0.3, inplace=True, seed=5) is x
    assert x._version > version
    assert_bitwise(x, expected)


def test_in_place_autograd_like_torch():
    w = torch.randn(30, requires_grad=True)
    h = w * 2
    y = ft.dropout(h, 0.5, inplace=True, seed=6)
    assert y is h
    y.backward(torch.ones(30))
    assert_bitwise(w.grad, _reference(torch.full((30,), 2.0), 0.5, 6))
    with pytest.raises(RuntimeError, match="leaf Variable"):
        ft.dropout(w, 0.5, inplace=True, seed=6)


def test_in_place_under_no_grad_is_seen_by_autograd():
    a = torch.randn(5, requires_grad=True)
    b = torch.randn(5)
    c = a * b  # saves b
    with torch.no_grad():
        ft.dropout(b, 0.5, inplace=True, seed=3)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        c.sum().backward()


def test_in_place_on_overlapping_memory_rejected():
    with pytest.raises(RuntimeError, match="single memory location"):
        ft.dropout(torch.ones(3).expand(4, 3), 0.5, inplace=True, seed=1)
    # read-only use of an expanded tensor is fine
    y = ft.dropout(torch.ones(3).expand(4, 3), 0.5, seed=1)
    assert_bitwise(y, _reference(torch.ones(4, 3), 0.5, 1))


# --- modules ------------------------------------------------------------------------------------------

MODULES = [
    (ft.Dropout, torch.nn.Dropout),
    (ft.Dropout1d, torch.nn.Dropout1d),
    (ft.Dropout2d, torch.nn.Dropout2d),
    (ft.Dropout3d, torch.nn.Dropout3d),
    (ft.AlphaDropout, torch.nn.AlphaDropout),
    (ft.FeatureAlphaDropout, torch.nn.FeatureAlphaDropout),
]


@pytest.mark.parametrize("ours, theirs", MODULES, ids=lambda c: c.__name__)
def test_module_like_torch(ours, theirs):
    module = ours(0.25, inplace=True)
    assert isinstance(module, theirs)
    assert repr(module) == repr(theirs(0.25, inplace=True))
    assert repr(ours()) == repr(theirs())
    assert module.state_dict() == {} and list(module.parameters()) == []
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1"):
            ours(bad)
    rank = {ft.Dropout2d: 4, ft.Dropout3d: 5}.get(ours, 3)
    x = torch.randn((2, 3, 4, 4, 4)[:rank])
    module = ours(0.5)
    assert module.eval()(x) is x
    module.train()
    assert not torch.equal(module(x), x)


def test_functional_p_checked_like_torch():
    with pytest.raises(ValueError, match="between 0 and 1, but got 1.5"):
        ft.dropout(torch.ones(3), 1.5)
    with pytest.raises(ValueError):
        ft.dropout(torch.ones(3), float("nan"))
    with pytest.raises(TypeError):
        ft.dropout(torch.ones(3), "0.5")
    x = torch.ones(5)
    assert ft.dropout(x, 0.0) is x and ft.dropout(x, 0.5, training=False) is x
    assert ft.alpha_dropout(x, 0.5) is x  # torch's default: training=False


def test_p_one_gives_zeros_and_zero_gradients():
    x = torch.tensor([1.0, -2.0, math.inf, math.nan], requires_grad=True)
    for function in (ft.dropout, ft.alpha_dropout):
        y = function(x, 1.0, training=True, seed=1)
        assert torch.equal(y, torch.zeros(4))
        (grad,) = torch.autograd.grad(y, x, torch.ones(4))
        assert torch.equal(grad, torch.zeros(4))


def test_spatial_rank_checks():
    ft.dropout1d(torch.randn(3, 4), seed=1)
    ft.dropout1d(torch.randn(2, 3, 4), seed=1)
    ft.dropout3d(torch.randn(2, 3, 2, 2), seed=1)
    ft.dropout3d(torch.randn(2, 3, 2, 2, 2), seed=1)
    for function, rank in ((ft.dropout1d, 4), (ft.dropout1d, 1), (ft.dropout2d, 2), (ft.dropout2d, 5),
                           (ft.dropout3d, 3), (ft.dropout3d, 6)):
        with pytest.raises(RuntimeError, match=f"received a {rank}D input"):
            function(torch.randn((2,) * rank))
    x = torch.randn(3, 4, 5)
    with pytest.warns(UserWarning, match="3D input"):
        y = ft.dropout2d(x, 0.5, seed=2)  # torch's behaviour: channel-wise over (N, C, L)
    assert_bitwise(y, _reference(x, 0.5, 2, mask_shape=(3, 4, 1)))


def test_spatial_dropout_drops_whole_channels():
    x = torch.rand(16, 32, 5, 5) + 1
    y = ft.Dropout2d(0.5)(x)
    zero = (y == 0).flatten(2)
    assert torch.equal(zero.any(-1), zero.all(-1))
    assert 0 < int(zero.all(-1).sum()) < 16 * 32


# --- alpha dropout ------------------------------------------------------------------------------------


def _alpha_expected(x, p, seed, offset, mask_shape=None):
    """Alpha dropout from torch's formula on fastdrop's keep mask (float64 constants)."""
    shape = tuple(x.shape) if mask_shape is None else mask_shape
    keep = torch.from_numpy(reference.keep_mask(shape, p, seed=seed, offset=offset))
    alpha_prime = -ft.SELU_NEGATIVE_SATURATION
    a = ((1 - p) * (1 + p * alpha_prime**2)) ** -0.5
    b = -a * p * alpha_prime
    return torch.where(keep, x * a + b, torch.tensor(a * alpha_prime + b, dtype=x.dtype))


@pytest.mark.parametrize("kernel", ["fastdrop", "torch-ops"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_alpha_dropout_matches_torch_formula(dtype, kernel, monkeypatch):
    if kernel == "torch-ops":
        monkeypatch.setattr(ft, "_fastdrop_alpha", lambda: None)
    elif ft._fastdrop_alpha() is None:
        pytest.skip("this fastdrop has no alpha_dropout kernel")
    x = torch.randn(1000, dtype=dtype)
    x[::97] = math.inf  # a dropped non-finite value is replaced, like every fastdrop select
    p = 0.3
    leaf = x.clone().requires_grad_()
    y = ft.alpha_dropout(leaf, p, training=True, seed=12, offset=8)
    expected = _alpha_expected(x, p, 12, 8)
    finite = torch.isfinite(expected)
    tolerance = dict(rtol=4 * torch.finfo(dtype).eps, atol=4 * torch.finfo(dtype).eps)
    torch.testing.assert_close(y[finite], expected[finite], **tolerance)
    assert torch.equal(torch.isfinite(y), finite)
    (dx,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
    keep = torch.from_numpy(reference.keep_mask(x.shape, p, seed=12, offset=8))
    a = ((1 - p) * (1 + p * ft.SELU_NEGATIVE_SATURATION**2)) ** -0.5
    torch.testing.assert_close(dx, torch.where(keep, torch.tensor(a, dtype=dtype), 0.0).to(dtype), **tolerance)
    channel = torch.randn(3, 4, 5, dtype=dtype)
    torch.testing.assert_close(ft.feature_alpha_dropout(channel, p, training=True, seed=3),
                               _alpha_expected(channel, p, 3, 0, (3, 4, 1)), **tolerance)


def test_alpha_dropout_equals_fastdrop_reference():
    if ft._fastdrop_alpha() is None or not hasattr(reference, "alpha_dropout"):
        pytest.skip("this fastdrop has no alpha_dropout kernel")
    x = torch.randn(5, 6, 7).contiguous(memory_format=torch.preserve_format)
    expected = reference.alpha_dropout(x.numpy(), 0.4, seed=5, offset=2)
    assert_bitwise(ft.alpha_dropout(x, 0.4, training=True, seed=5, offset=2), torch.from_numpy(expected))


def test_alpha_dropout_uses_fastdrop_kernel_when_available(monkeypatch):
    calls = []

    def fake_alpha(x, p, *, seed=None, offset=0, mask_shape=None, out=None):
        calls.append((seed, offset, mask_shape))
        out[...] = 7.0
        return out, None

    monkeypatch.setattr(fastdrop, "alpha_dropout", fake_alpha, raising=False)
    monkeypatch.setattr(fastdrop, "alpha_dropout_backward", lambda dy, mask, out=None: out, raising=False)
    monkeypatch.setattr(fastdrop, "AlphaDropoutMask", lambda *args: args, raising=False)
    y = ft.alpha_dropout(torch.randn(2, 3), 0.5, training=True, seed=4, offset=8)
    assert calls == [(4, 8, (2, 3))] and torch.equal(y, torch.full((2, 3), 7.0))


# --- seeds and streams -------------------------------------------------------------------------------


def test_seed_none_uses_fastdrop_stream_not_torchs():
    x = torch.randn(100)
    fastdrop.manual_seed(123)
    first = ft.dropout(x, 0.5)
    second = ft.dropout(x, 0.5)
    assert not torch.equal(first, second)  # the stream advanced
    fastdrop.manual_seed(123)
    torch.manual_seed(0)
    assert torch.equal(ft.dropout(x, 0.5), first)
    fastdrop.manual_seed(123)
    torch.manual_seed(1)  # torch's seed changes nothing
    assert torch.equal(ft.dropout(x, 0.5), first)
    assert_bitwise(first, _reference(x, 0.5, 123, 0))
    assert_bitwise(second, _reference(x, 0.5, 123, 100))


def test_seed_from_torch_generator():
    x = torch.randn(100)
    torch.manual_seed(5)
    seed = ft.seed_from_torch()
    assert 0 <= seed < 2**64
    torch.manual_seed(5)
    assert ft.seed_from_torch() == seed
    torch.manual_seed(5)
    a = ft.dropout(x, 0.5, generator=torch.default_generator)
    assert_bitwise(a, _reference(x, 0.5, seed))
    generator = torch.Generator().manual_seed(5)
    module = ft.Dropout(0.5, generator=generator)
    assert torch.equal(module(x), a)
    assert not torch.equal(module(x), a)  # next call, next seed
    with pytest.raises(ValueError, match="either seed or generator"):
        ft.dropout(x, 0.5, seed=1, generator=generator)
    with pytest.raises(TypeError, match="torch.Generator"):
        ft.Dropout(0.5, generator=3)


def test_evaluation_leaves_the_generator_alone():
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    ft.Dropout(0.5, generator=generator).eval()(torch.ones(3))
    assert torch.equal(generator.get_state(), state)


def test_negated_views_are_materialised():
    base = torch.randn(10)
    view = torch._neg_view(base)
    expected = _reference(-base, 0.5, 3)
    assert_bitwise(ft.dropout(view, 0.5, seed=3), expected)
    ft.dropout(view, 0.5, seed=3, inplace=True)
    assert_bitwise(-base, expected)


def test_explicit_offsets_slice_invariance():
    x = torch.randn(1000)
    whole = ft.dropout(x, 0.4, seed=77)
    assert torch.equal(ft.dropout(x[200:700], 0.4, seed=77, offset=200), whole[200:700])


# --- bad input ----------------------------------------------------------------------------------------


def test_bad_input_rejected():
    with pytest.raises(TypeError, match="torch.Tensor"):
        ft.dropout(np.ones(3), 0.5)
    with pytest.raises(TypeError, match="floating dtype"):
        ft.dropout(torch.ones(3, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match="floating dtype"):
        ft.dropout(torch.ones(3, dtype=torch.complex64), 0.5)
    with pytest.raises(TypeError, match="strided"):
        ft.dropout(torch.eye(3).to_sparse(), 0.5)
    with pytest.raises(ValueError, match="seed"):
        ft.dropout(torch.ones(3), 0.5, seed=-1)
    with pytest.raises(ValueError, match="offset"):
        ft.dropout(torch.ones(3), 0.5, offset=4)


# --- element-wise against PyTorch's own masks ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("p", [0.1, 1 / 3, 0.5, 0.9, 1.0])
def test_apply_keep_mask_equals_native_dropout(dtype, p):
    torch.manual_seed(int(p * 1000))
    for x in (torch.randn(10_001, dtype=dtype) * 100,
              torch.randn(4, 6, 7, 5, dtype=dtype).contiguous(memory_format=torch.channels_last)):
        out, keep = torch.ops.aten.native_dropout(x, p, True)
        mine = ft.apply_keep_mask(x, keep, p)
        assert torch.equal(mine, out)  # by value: PyTorch's -0 for a dropped negative equals +0
        assert mine.stride() == x.stride()


def test_apply_keep_mask_non_finite_difference():
    x = torch.tensor([math.inf, -math.inf, math.nan, -1.0] * 4)
    out, keep = torch.ops.aten.native_dropout(x, 0.5, True)
    mine = ft.apply_keep_mask(x, keep, 0.5)
    assert torch.equal(mine[~keep], torch.zeros(int((~keep).sum())))  # a select: dropped -> 0
    dropped_inf = ~keep & torch.isinf(x)
    assert dropped_inf.any()
    assert torch.isnan(out[dropped_inf]).all()  # PyTorch's CPU multiply: inf * 0 = NaN
    kept = keep & torch.isfinite(x)
    assert torch.equal(mine[kept], out[kept])


def test_apply_keep_mask_half_on_cpu_follows_the_contract():
    """PyTorch's CPU kernel rounds 1/(1-p) to the half type; fastdrop (the contract) to float32."""
    x = torch.randn(4096, dtype=torch.float16) * 10
    out, keep = torch.ops.aten.native_dropout(x, 0.1, True)
    mine = ft.apply_keep_mask(x, keep, 0.1)
    contract = torch.where(keep, (x.float() * torch.tensor(1 / 0.9, dtype=torch.float32)).half(),
                           torch.zeros((), dtype=torch.float16))
    assert torch.equal(mine, contract)
    half_scale = torch.where(keep, x * torch.tensor(1 / 0.9, dtype=torch.float16), torch.zeros((), dtype=torch.float16))
    assert torch.equal(out, half_scale)


def test_apply_keep_mask_broadcast_and_errors():
    x = torch.randn(3, 4, 5, 5)
    keep = torch.rand(3, 4, 1, 1) < 0.5
    assert_bitwise(ft.apply_keep_mask(x, keep, 0.25), torch.where(keep, x * (1 / 0.75), torch.zeros(())))
    with pytest.raises(TypeError, match="bool"):
        ft.apply_keep_mask(x, keep.float(), 0.25)
    with pytest.raises(ValueError, match="broadcast"):
        ft.apply_keep_mask(x, torch.ones(2, 4, 1, 1, dtype=torch.bool), 0.25)


# --- torch.compile ------------------------------------------------------------------------------------


# dynamo itself reads .grad of the non-leaf input while resuming after the graph break
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_torch_compile_graph_break_gives_eager_results():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), ft.Dropout(0.5), torch.nn.Linear(8, 2))
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(16, 8)
    fastdrop.manual_seed(3)
    eager_out = model(x)
    eager_out.sum().backward()
    eager_grad = model[0].weight.grad.clone()
    model.zero_grad()
    fastdrop.manual_seed(3)
    compiled_out = compiled(x)
    compiled_out.sum().backward()
    torch.testing.assert_close(compiled_out, eager_out)
    torch.testing.assert_close(model[0].weight.grad, eager_grad)
    assert not torch.equal(compiled(x), compiled_out)  # a fresh mask per call, not a baked-in one


# --- import hygiene -------------------------------------------------------------------------------------


def test_imports():
    code = (
        "import sys, fastdrop; assert 'torch' not in sys.modules; "
        "import fastdrop.torch; assert 'torch._dynamo' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- CUDA -----------------------------------------------------------------------------------------------


def _cuda_ready():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    pytest.importorskip("cupy", reason="CuPy is needed for fastdrop's CUDA kernels")
    pytest.importorskip("fastdrop._cupy_backend", reason="fastdrop's CuPy backend is not installed")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_cuda_forward_backward_equal_reference(dtype):
    _cuda_ready()
    for layout, x in _layouts((5, 7, 9, 3), dtype):
        leaf = x.to("cuda").requires_grad_()
        y = ft.dropout(leaf, 0.3, seed=21, offset=2)
        assert y.device == leaf.device and y.stride() == leaf.stride()
        assert_bitwise(y, _reference(x, 0.3, 21, 2))
        grad = torch.randn(x.shape, dtype=torch.float64).to(dtype)
        (dx,) = torch.autograd.grad(y, leaf, grad.to("cuda"))
        assert_bitwise(dx, _reference(grad, 0.3, 21, 2))
        assert_bitwise(ft.dropout2d(x.to("cuda"), 0.3, seed=4),
                       _reference(x, 0.3, 4, mask_shape=tuple(x.shape[:2]) + (1, 1)))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_cuda_apply_keep_mask_equals_native_dropout(dtype):
    _cuda_ready()
    torch.manual_seed(0)
    x = (torch.randn(100_003, device="cuda") * 10).to(dtype)
    for p in (0.1, 0.5, 0.9):
        out, keep = torch.ops.aten.native_dropout(x, p, True)
        assert torch.equal(ft.apply_keep_mask(x, keep, p), out)


@pytest.mark.gpu
def test_cuda_bfloat16_needs_no_float32_copy_where_cupy_holds_bfloat16():
    _cuda_ready()
    pytest.importorskip("ml_dtypes")
    x = torch.randn(4099, device="cuda").to(torch.bfloat16)
    if not ft._native(x):
        pytest.skip("this CuPy gives no bfloat16 view of a tensor (CuPy 14+ with ml_dtypes does): "
                    "bfloat16 goes through float32")
    with ft._kernel_context(x):
        array = ft._as_array(x[1:])
        assert array.dtype.name == "bfloat16" and array.data.ptr == x[1:].data_ptr()
    assert_bitwise(ft.dropout(x[1:], 0.3, seed=5), _reference(x[1:].cpu(), 0.3, 5))


def test_bfloat16_probe_falls_back_to_the_float32_round_trip(monkeypatch):
    """Where CuPy cannot hold bfloat16 (no ml_dtypes, CuPy 13, a view of another dtype), CUDA
    bfloat16 tensors take the float32 round trip, as on the CPU."""
    x = torch.ones(4, dtype=torch.bfloat16)
    for error in (ImportError("no ml_dtypes"), TypeError("unsupported dtype"), NotImplementedError("old")):
        monkeypatch.setattr(ft, "_cupy_bfloat16", [None])

        def refuse(tensor, error=error):
            raise error

        monkeypatch.setattr(ft, "_as_array", refuse)
        assert ft._cupy_holds_bfloat16(x) is False and ft._cupy_bfloat16 == [False]
        assert ft._cupy_holds_bfloat16(x) is False  # remembered: not tried again
    monkeypatch.setattr(ft, "_cupy_bfloat16", [None])
    monkeypatch.setattr(ft, "_as_array", lambda tensor: np.zeros(4, np.uint16))
    assert ft._cupy_holds_bfloat16(x) is False
    assert not ft._native(x)  # a CPU bfloat16 tensor never asks


@pytest.mark.gpu
def test_cuda_zero_copy_on_current_stream():
    _cuda_ready()
    import cupy

    x = torch.randn(1 << 20, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with ft._kernel_context(x):
            assert cupy.cuda.get_current_stream().ptr == stream.cuda_stream
            assert ft._as_array(x).data.ptr == x.data_ptr()
        y = ft.dropout(x * 2, 0.5, seed=8)  # queued behind x * 2 on the same stream
    stream.synchronize()
    assert_bitwise(y, _reference((x * 2).cpu(), 0.5, 8))
    with torch.no_grad():
        z = ft.dropout(x, 0.5, inplace=True, seed=9)
    assert z is x


@pytest.mark.parametrize("inplace", [False, True])
def test_outputs_the_adapter_allocates_are_written_as_fresh_memory(monkeypatch, inplace):
    """The CPU backend writes large outputs it allocated itself with normal stores, as they are
    fresh pages (``_numba_backend.streams``); a ``torch.empty_like`` the adapter made for the
    call counts the same, and a tensor written in place streams like any caller's memory."""
    from fastdrop import _numba_backend, _numba_stream

    if not _numba_stream.STREAMING:
        pytest.skip("streaming stores are x86-64 only")
    monkeypatch.setattr(_numba_stream, "STREAM_ABOVE", 0)
    monkeypatch.setattr(_numba_stream, "ALWAYS_FRESH_BYTES", 0)
    answers = []
    original = _numba_backend.streams
    monkeypatch.setattr(_numba_backend, "streams", lambda out: answers.append(original(out)) or answers[-1])
    x = torch.randn(4, 3, 8, 8)
    expected = _reference(x, 0.3, 5, mask_shape=(4, 3, 1, 1))
    y = ft.dropout2d(x.clone(), 0.3, inplace=inplace, seed=5)
    assert_bitwise(y, expected)
    assert answers == [inplace]
    answers.clear()
    grad = ft.dropout(x.requires_grad_(True), 0.3, seed=5)
    grad.backward(torch.ones_like(grad))
    assert answers and not any(answers)  # the forward's and the backward's new tensors
