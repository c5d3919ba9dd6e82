"""The dropout article's MLP (784-256-256-10, Dropout(0.5) after each hidden layer) with
fastdrop's Dropout in place of torch's: the only change is the import.

    python examples/torch_mlp.py            # a few steps on random MNIST-shaped data

Swap in real MNIST batches (e.g. from torchvision) for the article's experiment.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastdrop
import fastdrop.torch as fd


class MLPWithDropout(nn.Module):
    def __init__(self, input_size=784, hidden_size=256, num_classes=10):
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.dropout1 = fd.Dropout(0.5)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.dropout2 = fd.Dropout(0.5)
        self.fc3 = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        x = x.view(x.size(0), -1)  # flatten
        x = F.relu(self.fc1(x))
        x = self.dropout1(x)
        x = F.relu(self.fc2(x))
        x = self.dropout2(x)
        return self.fc3(x)


def train_steps(model, inputs, targets, steps=20, lr=1e-3):
    """Adam on cross-entropy over one fixed batch; returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()  # dropout on
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def random_batch(batch=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch, 1, 28, 28, generator=generator)
    targets = torch.randint(0, 10, (batch,), generator=generator)
    return inputs, targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    fastdrop.manual_seed(args.seed)  # fastdrop's masks come from its own stream
    model = MLPWithDropout()
    losses = train_steps(model, *random_batch(seed=args.seed), steps=args.steps)
    print(model)
    print(f"loss: first step {losses[0]:.4f}, last step {losses[-1]:.4f}")
    model.eval()  # dropout off: predictions are deterministic
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
