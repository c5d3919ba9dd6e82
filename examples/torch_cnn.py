"""The dropout article's CNN with spatial dropout (conv 3->64, Dropout2d(0.25), conv 64->128,
max-pool, linear) with fastdrop's Dropout2d in place of torch's. Inputs are 3x16x16 images, which
the article's ``Linear(128 * 8 * 8, 10)`` implies after one 2x2 pooling.

    python examples/torch_cnn.py            # a few steps on random data
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastdrop
import fastdrop.torch as fd


class CNNWithSpatialDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, padding=1)
        self.spatial_dropout = fd.Dropout2d(0.25)  # drops entire channels
        self.conv2 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(128 * 8 * 8, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.spatial_dropout(x)
        x = self.pool(F.relu(self.conv2(x)))
        x = x.reshape(x.size(0), -1)  # reshape, not view: also works for channels_last input
        return self.fc(x)


def train_steps(model, inputs, targets, steps=20, lr=1e-3):
    """Adam on cross-entropy over one fixed batch; returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def random_batch(batch=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch, 3, 16, 16, generator=generator)
    targets = torch.randint(0, 10, (batch,), generator=generator)
    return inputs, targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels-last", action="store_true", help="run in channels_last memory format")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    fastdrop.manual_seed(args.seed)
    model = CNNWithSpatialDropout()
    inputs, targets = random_batch(seed=args.seed)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    losses = train_steps(model, inputs, targets, steps=args.steps)
    print(model)
    print(f"loss: first step {losses[0]:.4f}, last step {losses[-1]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
