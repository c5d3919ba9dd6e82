"""The MNIST trainer: learning on a 2,000-image subset, dropout modes, gradients, data loading.

The canonical MNIST files live in ``../shared/data/mnist`` beside the checkout (CI clones the
project next to ``shared/``). The full with/without-dropout comparison is a command
(``fastdrop train --compare``), not a test.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop import mnist
from fastdrop.mlp import MLP, softmax_cross_entropy
from fastdrop.optim import make_optimizer
from fastdrop.train import PIXEL_MEAN, PIXEL_STD, main

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
SUBSET = 2000

needs_mnist = pytest.mark.skipif(
    not all((SHARED_MNIST / name).is_file() for name, _ in mnist.FILES.values()),
    reason=f"the canonical MNIST files are not in {SHARED_MNIST}",
)


@pytest.fixture(autouse=True)
def _restore_omp_wait_policy(monkeypatch):
    """main() sets OMP_WAIT_POLICY for its process; hand the rest of the session its own back."""
    if "OMP_WAIT_POLICY" in os.environ:
        monkeypatch.setenv("OMP_WAIT_POLICY", os.environ["OMP_WAIT_POLICY"])
    else:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)


@pytest.fixture(scope="module")
def mnist_arrays():
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"the canonical MNIST files are not in {SHARED_MNIST}")
    return mnist.load(SHARED_MNIST, download=False)


def _normalised(images, dtype=np.float32):
    flat = images.reshape(len(images), -1).astype(dtype) / 255
    return ((flat - PIXEL_MEAN) / PIXEL_STD).astype(dtype)


@pytest.fixture(scope="module")
def subset(mnist_arrays):
    """2,000 training images to learn from and the last 1,000 of the training file to check on."""
    train = _normalised(mnist_arrays.train_images[:SUBSET])
    held_out = _normalised(mnist_arrays.train_images[-1000:])
    return (
        train,
        mnist_arrays.train_labels[:SUBSET].astype(np.int64),
        held_out,
        mnist_arrays.train_labels[-1000:].astype(np.int64),
    )


# --- learning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer_name, lr", [("sgd", 0.05), ("adam", 1e-3)])
def test_learning_happens_on_a_subset(subset, optimizer_name, lr):
    train_images, train_labels, held_images, held_labels = subset
    fastdrop.manual_seed(0)
    model = MLP(np, hidden_dropout=0.5, seed=0)
    optimizer = make_optimizer(optimizer_name, np, model.params, lr=lr)
    order_rng = np.random.default_rng(0)
    epoch_losses = []
    for _ in range(4):
        losses = []
        for batch in np.array_split(order_rng.permutation(SUBSET), SUBSET // 128):
            loss, gradients = model.loss_and_gradients(train_images[batch], train_labels[batch])
            optimizer.step(gradients)
            losses.append(float(loss))
        epoch_losses.append(np.mean(losses))
    assert epoch_losses[-1] < 0.5 * epoch_losses[0], epoch_losses
    _, accuracy = model.evaluate(held_images, held_labels)
    assert accuracy > 0.8, f"held-out accuracy {accuracy:.3f} (chance is 0.1)"


def test_dropout_is_active_in_training_and_off_in_evaluation(subset):
    images = subset[0][:64]
    with_dropout = MLP(np, hidden_dropout=0.5, input_dropout=0.2, seed=3)
    without_dropout = MLP(np, hidden_dropout=0.0, seed=3)
    for a, b in zip(with_dropout.params, without_dropout.params):
        np.testing.assert_array_equal(a, b)  # same seed, same initial weights

    first = with_dropout.logits(images, training=True)
    second = with_dropout.logits(images, training=True)
    assert not np.allclose(first, second), "two training-mode passes drew the same masks"

    evaluation = with_dropout.logits(images, training=False)
    np.testing.assert_array_equal(evaluation, with_dropout.logits(images, training=False))
    np.testing.assert_array_equal(evaluation, without_dropout.logits(images, training=False))


def test_dropout_zeroes_hidden_units_in_training_step(subset):
    """About half the hidden activations reach the next layer as zeros beyond what ReLU zeroes."""
    images, labels = subset[0][:128], subset[1][:128]
    model = MLP(np, hidden_dropout=0.5, seed=1)
    layer = model.hidden_dropouts[0]
    fastdrop.manual_seed(5)
    model.loss_and_gradients(images, labels)
    keep = layer.mask.to_array()
    # 32,768 Bernoulli(0.5) draws: the standard deviation of the rate is 0.0028, so 0.02 is 7 sigma.
    assert abs(keep.mean() - 0.5) < 0.02


# --- gradients --------------------------------------------------------------------------------


def test_one_step_gradients_match_finite_differences(subset):
    """Central differences along a random direction per parameter, float64, masks held fixed."""
    images = subset[0][:16].astype(np.float64)
    labels = subset[1][:16]
    model = MLP(np, hidden_dropout=0.5, input_dropout=0.2, seed=2, dtype="float64")

    def loss_and_gradients():
        fastdrop.manual_seed(11)  # the same stream each time, hence the same dropout masks
        return model.loss_and_gradients(images, labels)

    _, gradients = loss_and_gradients()
    gradients = [gradient.copy() for gradient in gradients]
    direction_rng = np.random.default_rng(4)
    step = 1e-5
    for index, (param, gradient) in enumerate(zip(model.params, gradients)):
        direction = direction_rng.standard_normal(param.shape)
        original = param.copy()
        param += step * direction
        loss_plus = float(loss_and_gradients()[0])
        param[...] = original - step * direction
        loss_minus = float(loss_and_gradients()[0])
        param[...] = original
        numeric = (loss_plus - loss_minus) / (2 * step)
        analytic = float(np.sum(gradient * direction))
        # Central differences err by O(step**2) ~ 1e-10 here; float64 rounding by ~1e-16 / step.
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-9), f"parameter {index}"


def test_softmax_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)
    loss, gradient = softmax_cross_entropy(np, logits, np.array([0]))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.isfinite(gradient))


# --- the command ------------------------------------------------------------------------------


@needs_mnist
def test_compare_command_writes_json_and_plot_deterministically(tmp_path):
    pytest.importorskip("matplotlib")
    common = ["--compare", "--epochs", "2", "--limit", "1000", "--data-dir", str(SHARED_MNIST), "--quiet"]
    assert main(common + ["--json", str(tmp_path / "a.json"), "--plot", str(tmp_path / "curves.png")]) == 0
    assert main(common + ["--json", str(tmp_path / "b.json")]) == 0
    first = json.loads((tmp_path / "a.json").read_text())
    second = json.loads((tmp_path / "b.json").read_text())
    assert set(first) == {"dropout", "no_dropout"}
    for name, result in first.items():
        for key in ("train_acc", "val_acc", "test_acc"):
            assert 0.5 < result[key] <= 1.0, (name, key, result[key])
        assert result["seconds_per_epoch"] > 0
        assert [record["epoch"] for record in result["history"]] == [1, 2]
        for key in ("train_acc", "val_acc", "test_acc"):
            assert result[key] == second[name][key], "same --seed, different result"
        losses = [record["train_loss"] for record in result["history"]]
        assert losses == [record["train_loss"] for record in second[name]["history"]]
    assert first["dropout"]["settings"]["hidden_dropout"] == 0.5
    assert first["no_dropout"]["settings"]["hidden_dropout"] == 0.0
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["--dropout", "1.5"])
    assert "--dropout must be in [0, 1), got 1.5" in capsys.readouterr().err


def test_importing_the_trainer_pulls_in_no_optional_library():
    code = (
        "import sys, fastdrop.train, fastdrop.mlp, fastdrop.mnist, fastdrop.optim\n"
        "loaded = [m for m in ('torch', 'cupy', 'pooch', 'matplotlib', 'tqdm') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- data loading -----------------------------------------------------------------------------


@pytest.fixture
def no_local_copies(monkeypatch, tmp_path):
    """Hide every folder the loader would find on this machine."""
    monkeypatch.delenv("FASTDROP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(mnist, "_checkout_data_dir", lambda: tmp_path / "no-checkout")
    return tmp_path


@pytest.fixture
def offline(no_local_copies, monkeypatch):
    """No local copies, and downloads fail as they do without a network."""

    def unreachable(folder):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(mnist, "_download", unreachable)
    return no_local_copies


def test_missing_files_offline_say_where_to_put_them(offline):
    empty = offline / "empty"
    empty.mkdir()
    with pytest.raises(mnist.MnistUnavailableError) as caught:
        mnist.load(empty)
    message = str(caught.value)
    assert "Network is unreachable" in message
    assert str(empty) in message and str(offline / "cache" / "fastdrop" / "mnist") in message
    for name, _ in mnist.FILES.values():
        assert name in message
    assert "--data-dir" in message and "FASTDROP_DATA" in message


def test_command_reports_missing_files_without_a_traceback(offline, capsys):
    assert main(["--data-dir", str(offline / "nowhere"), "--no-download", "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("fastdrop train: MNIST files not found")
    assert "downloads disabled" in error


def _fill(folder: Path, *, corrupt: str | None = None) -> None:
    """Copy the four canonical files into ``folder``, flipping one payload byte of ``corrupt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, _ in mnist.FILES.values():
        if name == corrupt:
            with gzip.open(SHARED_MNIST / name, "rb") as stream:
                payload = bytearray(stream.read())
            payload[-1] ^= 0xFF
            with gzip.open(folder / name, "wb") as stream:
                stream.write(bytes(payload))
        else:
            shutil.copyfile(SHARED_MNIST / name, folder / name)


@needs_mnist
def test_checksum_mismatch_is_detected(tmp_path):
    _fill(tmp_path, corrupt="t10k-labels-idx1-ubyte.gz")
    with pytest.raises(mnist.ChecksumError, match="t10k-labels-idx1-ubyte.gz.*expected ff7bcfd4"):
        mnist.load(tmp_path, download=False)


@needs_mnist
def test_download_verifies_payload_and_falls_back_to_the_next_mirror(no_local_copies, monkeypatch):
    corrupt_mirror = no_local_copies / "mirror-0"
    _fill(corrupt_mirror, corrupt="train-labels-idx1-ubyte.gz")
    requested = []

    def retrieve(url, known_hash, fname, path):
        requested.append(url)
        source = corrupt_mirror if url.startswith(mnist.MIRRORS[0]) else SHARED_MNIST
        shutil.copyfile(source / fname, Path(path) / fname)
        return str(Path(path) / fname)

    monkeypatch.setitem(sys.modules, "pooch", types.SimpleNamespace(retrieve=retrieve))
    loaded = mnist.load(no_local_copies / "empty")
    assert loaded.train_labels.shape == (60000,)
    assert mnist.MIRRORS[1] + "train-labels-idx1-ubyte.gz" in requested
    assert mnist.MIRRORS[1] + "train-images-idx3-ubyte.gz" not in requested


def test_lookup_order_is_argument_then_environment_then_cache(no_local_copies, monkeypatch):
    folders = {label: no_local_copies / label for label in ("argument", "environment", "cache")}
    for folder in folders.values():
        folder.mkdir()
        for name, _ in mnist.FILES.values():
            (folder / name).touch()  # locate() only checks presence; load() verifies
    monkeypatch.setenv("FASTDROP_DATA", str(folders["environment"]))
    monkeypatch.setattr(mnist, "cache_dir", lambda: folders["cache"])
    assert mnist.locate(folders["argument"]) == folders["argument"]
    assert mnist.locate(no_local_copies / "missing") == folders["environment"]
    monkeypatch.delenv("FASTDROP_DATA")
    assert mnist.locate(None) == folders["cache"]


def test_parse_idx_rejects_other_files():
    with pytest.raises(ValueError, match="magic"):
        mnist.parse_idx(b"\x1f\x8b\x08\x00 not idx")
    header = bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big")
    np.testing.assert_array_equal(mnist.parse_idx(header + bytes(range(5))), np.arange(5))
    with pytest.raises(ValueError, match="shape"):
        mnist.parse_idx(header + bytes(3))
