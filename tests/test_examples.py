"""The dropout article's PyTorch models with fastdrop's modules swapped in (examples/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import fastdrop  # noqa: E402
import fastdrop.torch as ft  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """torch's intra-op threads and Numba's kernel threads oversubscribe a small machine (10x slower
    training on 2 shared cores); these tests are about behaviour, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(name):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = [
    ("torch_mlp", "MLPWithDropout", ft.Dropout, 2, dict(batch=32)),
    ("torch_cnn", "CNNWithSpatialDropout", ft.Dropout2d, 1, dict(batch=8)),
]


@pytest.mark.parametrize("name, model_name, dropout_type, n_dropout, batch", CASES, ids=[c[0] for c in CASES])
def test_article_model_trains_and_evaluates_deterministically(name, model_name, dropout_type, n_dropout, batch):
    example = _load(name)
    torch.manual_seed(0)
    model = getattr(example, model_name)()
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) or isinstance(m, torch.nn.Dropout2d)]
    assert len(layers) == n_dropout and all(type(m) is dropout_type for m in layers)

    inputs, targets = example.random_batch(seed=1, **batch)
    losses = example.train_steps(model, inputs, targets, steps=12, lr=2e-3)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses

    model.train()
    assert not torch.equal(model(inputs), model(inputs))  # dropout is on: fresh masks each call
    model.eval()
    stream = fastdrop.stream_state()
    with torch.no_grad():
        first, second = model(inputs), model(inputs)
    assert torch.equal(first, second)
    assert fastdrop.stream_state() == stream  # evaluation draws nothing


def test_cnn_runs_channels_last():
    example = _load("torch_cnn")
    model = example.CNNWithSpatialDropout().to(memory_format=torch.channels_last)
    inputs, targets = example.random_batch(batch=4, seed=2)
    losses = example.train_steps(model, inputs.contiguous(memory_format=torch.channels_last), targets, steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_examples_main_runs(capsys):
    assert _load("torch_mlp").main(["--steps", "2"]) == 0
    assert "loss: first step" in capsys.readouterr().out
