"""Seconds per MNIST training epoch: fastdrop's NumPy trainer against the same MLP in PyTorch (CPU).

    python bench/train_speed.py [--optimizer adam|sgd] [--epochs 4] [--rounds 2] [--data-dir DIR]
                                [--json PATH]

Both train the dropout article's 784-256-256-10 ReLU MLP (dropout 0.5 after each hidden layer, and
once without dropout) on the 50,000 training images, minibatches of 128, in float32, with Adam
(lr 0.001, the trainer's default) or SGD with momentum 0.9 (lr 0.05). Each measurement runs in a fresh subprocess, so that one library's thread pools (libgomp,
OpenBLAS, MKL) never idle or spin next to the other's; fastdrop runs as ``fastdrop train`` does
(``OMP_WAIT_POLICY=PASSIVE`` unless set). The first epoch of each process is a warm-up (JIT cache
load, allocator, BLAS threads) and is left out. The table gives the median and the fastest of the
other epochs over all rounds, which alternate between the two libraries: on a shared machine another
job stalls a 2-thread BLAS call many times over, and the fastest epoch is the one it spared.
Timed: the training pass only (no evaluation), as in the trainer's ``seconds_per_epoch``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

BATCH_SIZE = 128
LEARNING_RATES = {"adam": 1e-3, "sgd": 0.05}
MOMENTUM = 0.9


def _training_split(data_dir):
    from fastdrop import mnist
    from fastdrop.train import PIXEL_MEAN, PIXEL_STD, VALIDATION_SIZE

    data = mnist.load(data_dir)
    count = len(data.train_images) - VALIDATION_SIZE
    images = data.train_images[:count].reshape(count, -1).astype(np.float32) / np.float32(255)
    images = (images - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    return images, data.train_labels[:count].astype(np.int64)


def _fastdrop_epochs(images, labels, dropout: float, epochs: int, optimizer_name: str) -> list[float]:
    import fastdrop
    from fastdrop.mlp import MLP
    from fastdrop.optim import make_optimizer
    from fastdrop.train import train_epoch

    fastdrop.manual_seed(0)
    model = MLP(np, hidden_dropout=dropout, seed=0)
    optimizer = make_optimizer(optimizer_name, np, model.params, lr=LEARNING_RATES[optimizer_name])
    order_rng = np.random.default_rng(0)
    seconds = []
    for _ in range(epochs):
        order = order_rng.permutation(len(images))
        started = time.perf_counter()
        train_epoch(model, optimizer, images, labels, order, batch_size=BATCH_SIZE)
        seconds.append(time.perf_counter() - started)
    return seconds


def _torch_epochs(images, labels, dropout: float, epochs: int, optimizer_name: str) -> list[float]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = [nn.Linear(784, 256), nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, 256), nn.ReLU(), nn.Dropout(dropout)]
    if dropout == 0:
        layers = [layer for layer in layers if not isinstance(layer, nn.Dropout)]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATES["adam"])
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATES["sgd"], momentum=MOMENTUM)
    loss_function = nn.CrossEntropyLoss()
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    order_rng = np.random.default_rng(0)
    model.train()
    seconds = []
    for _ in range(epochs):
        order = torch.from_numpy(order_rng.permutation(len(images)))
        started = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64)
        for start in range(0, len(images), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        seconds.append(time.perf_counter() - started)
    return seconds


def _worker(args) -> None:
    if args.worker == "fastdrop":
        from fastdrop.train import passive_openmp_waits

        passive_openmp_waits()  # as the `fastdrop train` command does, before any kernel runs
    images, labels = _training_split(args.data_dir)
    run = _fastdrop_epochs if args.worker == "fastdrop" else _torch_epochs
    print(json.dumps(run(images, labels, args.dropout, args.epochs, args.optimizer)))


def _measure(library: str, dropout: float, args) -> list[float]:
    command = [sys.executable, __file__, "--worker", library, "--dropout", str(dropout)]
    command += ["--epochs", str(args.epochs), "--optimizer", args.optimizer]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    finished = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])[1:]  # epoch 1 is the warm-up


def _environment(optimizer_name: str) -> dict:
    import numba
    import torch

    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OMP_WAIT_POLICY (fastdrop)": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "optimizer": optimizer_name,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="default adam, as the trainer")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per process, the first a warm-up (default 4)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both libraries (default 2)")
    parser.add_argument("--data-dir", help="folder with the MNIST .gz files (else fastdrop's lookup)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--worker", choices=("fastdrop", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--dropout", type=float, default=0.5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is a warm-up)")
    if args.worker:
        _worker(args)
        return 0

    results = {}
    for dropout in (0.5, 0.0):
        samples = {"fastdrop": [], "torch": []}
        for _ in range(args.rounds):
            for library in samples:
                samples[library] += _measure(library, dropout, args)
        results[f"dropout {dropout:g}"] = summary = {"samples": samples}
        for statistic in (statistics.median, min):
            fastdrop_seconds, torch_seconds = statistic(samples["fastdrop"]), statistic(samples["torch"])
            summary[statistic.__name__] = {
                "fastdrop_seconds": fastdrop_seconds,
                "torch_seconds": torch_seconds,
                "ratio": fastdrop_seconds / torch_seconds,
            }

    environment = _environment(args.optimizer)
    print("  ".join(f"{key}={value}" for key, value in environment.items()))
    print(f"{'MLP':<14}{'epoch seconds':<15}{'fastdrop':>10}{'torch':>10}{'ratio':>8}")
    for name, summary in results.items():
        for statistic in ("median", "min"):
            row = summary[statistic]
            print(
                f"{name:<14}{statistic:<15}{row['fastdrop_seconds']:>10.3f}{row['torch_seconds']:>10.3f}"
                f"{row['ratio']:>8.2f}"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump({"environment": environment, "results": results}, stream, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
