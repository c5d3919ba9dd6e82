"""SGD with momentum and Adam, updating parameters in place, for any array module.

Updates use in-place arithmetic and reuse the gradient arrays as scratch space (the caller hands
them over and does not read them afterwards), so a step allocates nothing the size of a parameter.
``lr`` is a plain attribute so that a schedule can set it between steps.
"""

from __future__ import annotations

import math

__all__ = ["SGD", "Adam", "make_optimizer", "DEFAULT_LEARNING_RATES"]

#: What ``--lr`` defaults to for each optimizer (the constant rate, or the peak of a schedule).
DEFAULT_LEARNING_RATES = {"sgd": 0.05, "adam": 1e-3}


class SGD:
    """``velocity = momentum * velocity + grad; param -= lr * velocity`` (PyTorch's convention)."""

    def __init__(self, xp, params, *, lr: float, momentum: float = 0.9):
        self.params = params
        self.lr = lr
        self.momentum = momentum
        self.velocities = [xp.zeros_like(param) for param in params]

    def step(self, gradients) -> None:
        for param, grad, velocity in zip(self.params, gradients, self.velocities):
            velocity *= self.momentum
            velocity += grad
            # grad is consumed: reuse it for lr * velocity instead of allocating a temporary.
            grad[...] = velocity
            grad *= self.lr
            param -= grad


class Adam:
    """Adam (Kingma and Ba, 2015) with bias-corrected moment estimates."""

    def __init__(self, xp, params, *, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.xp = xp
        self.params = params
        self.lr = lr
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.steps = 0
        self.first_moments = [xp.zeros_like(param) for param in params]
        self.second_moments = [xp.zeros_like(param) for param in params]

    def step(self, gradients) -> None:
        xp = self.xp
        self.steps += 1
        # The bias corrections fold into two scalars: lr / (1 - beta1^t) and 1 / sqrt(1 - beta2^t).
        step_size = self.lr / (1.0 - self.beta1**self.steps)
        second_scale = 1.0 / math.sqrt(1.0 - self.beta2**self.steps)
        for param, grad, first, second in zip(self.params, gradients, self.first_moments, self.second_moments):
            first *= self.beta1
            first += (1.0 - self.beta1) * grad
            second *= self.beta2
            grad *= grad
            grad *= 1.0 - self.beta2
            second += grad
            # grad is consumed: it becomes the denominator sqrt(v_hat) + eps, then the update.
            xp.sqrt(second, out=grad)
            grad *= second_scale
            grad += self.eps
            xp.divide(first, grad, out=grad)
            grad *= step_size
            param -= grad


def make_optimizer(name: str, xp, params, *, lr: float):
    if name == "sgd":
        return SGD(xp, params, lr=lr)
    if name == "adam":
        return Adam(xp, params, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
