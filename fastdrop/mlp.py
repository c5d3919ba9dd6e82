"""The dropout article's MLP (784-256-256-10, ReLU, dropout after each hidden layer), by hand.

Written against an array module ``xp`` (numpy or cupy): the same code runs on the CPU with
fastdrop's Numba kernels and on the GPU with its CUDA kernels, because ``fastdrop.Dropout``
dispatches on the array type. Forward and backward are explicit so that no autograd framework is
needed; the layer caches only what its backward reads.
"""

from __future__ import annotations

import numpy as np

import fastdrop

__all__ = ["MLP", "softmax_cross_entropy"]

ARTICLE_LAYER_SIZES = (784, 256, 256, 10)


def softmax_cross_entropy(xp, logits, labels):
    """Mean cross-entropy of integer ``labels`` under softmax(``logits``), and its gradient."""
    count = logits.shape[0]
    rows = xp.arange(count)
    # Subtracting the row maximum keeps exp() from overflowing; it cancels in the softmax.
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    loss = (xp.log(sum_exp[:, 0]) - shifted[rows, labels]).mean()
    gradient = exp
    gradient /= sum_exp
    gradient[rows, labels] -= 1
    gradient /= count
    return loss, gradient


class MLP:
    """Fully connected ReLU network with optional dropout on the input and after each hidden layer.

    ``params`` is the flat list ``[W1, b1, W2, b2, ...]`` (W of shape (fan_in, fan_out)), the order
    in which :meth:`loss_and_gradients` returns gradients and optimizers update them. Initial weights
    depend only on ``seed`` (drawn with NumPy on the host, then moved to ``xp``), so runs with and
    without dropout start from the same point.
    """

    def __init__(
        self,
        xp,
        *,
        layer_sizes=ARTICLE_LAYER_SIZES,
        hidden_dropout: float = 0.5,
        input_dropout: float = 0.0,
        seed: int = 0,
        dtype="float32",
    ):
        self.xp = xp
        self.layer_sizes = tuple(layer_sizes)
        rng = np.random.default_rng(seed)
        self.params = []
        for fan_in, fan_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            # He-uniform: variance 2 / fan_in keeps ReLU activations at a constant scale.
            bound = np.sqrt(6.0 / fan_in)
            weights = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(dtype)
            self.params += [xp.asarray(weights), xp.zeros(fan_out, dtype=dtype)]
        # A rate of 0 means no layer at all rather than an identity layer: nothing to launch.
        self.input_dropout = fastdrop.Dropout(input_dropout) if input_dropout > 0 else None
        hidden_count = len(self.layer_sizes) - 2
        self.hidden_dropouts = [
            fastdrop.Dropout(hidden_dropout) if hidden_dropout > 0 else None for _ in range(hidden_count)
        ]

    def _layers(self):
        return list(zip(self.params[0::2], self.params[1::2]))

    def logits(self, x, *, training: bool = False):
        """Forward pass without caching (evaluation, or a training-mode draw for inspection)."""
        xp = self.xp
        if training and self.input_dropout is not None:
            x = self.input_dropout.forward(x, training=True)
        layers = self._layers()
        for index, (weights, bias) in enumerate(layers[:-1]):
            x = x @ weights
            x += bias
            xp.maximum(x, 0, out=x)
            dropout = self.hidden_dropouts[index]
            if training and dropout is not None:
                x = dropout.forward(x, training=True)
        weights, bias = layers[-1]
        out = x @ weights
        out += bias
        return out

    def loss_and_gradients(self, x, labels):
        """Training-mode forward and backward on one minibatch: (mean loss, gradients of params)."""
        xp = self.xp
        if self.input_dropout is not None:
            x = self.input_dropout.forward(x, training=True)
        layers = self._layers()
        inputs = []  # what each linear layer saw: its weight gradient needs it
        relu_outputs = []  # where they are positive is where the ReLU passes gradient
        for index, (weights, bias) in enumerate(layers[:-1]):
            inputs.append(x)
            hidden = x @ weights
            hidden += bias
            xp.maximum(hidden, 0, out=hidden)
            relu_outputs.append(hidden)
            dropout = self.hidden_dropouts[index]
            x = dropout.forward(hidden, training=True) if dropout is not None else hidden
        inputs.append(x)
        weights, bias = layers[-1]
        logits = x @ weights
        logits += bias

        loss, grad_out = softmax_cross_entropy(xp, logits, labels)
        gradients = [None] * len(self.params)
        for index in range(len(layers) - 1, -1, -1):
            weights, _ = layers[index]
            gradients[2 * index] = inputs[index].T @ grad_out
            gradients[2 * index + 1] = grad_out.sum(axis=0)
            if index == 0:
                break  # no gradient is needed for the images themselves
            grad_hidden = grad_out @ weights.T
            dropout = self.hidden_dropouts[index - 1]
            if dropout is not None:
                grad_hidden = dropout.backward(grad_hidden)
            grad_hidden *= relu_outputs[index - 1] > 0
            grad_out = grad_hidden
        return loss, gradients

    def evaluate(self, images, labels, *, batch_size: int = 2000):
        """(mean loss, accuracy) in evaluation mode (dropout off), as Python floats."""
        xp = self.xp
        total_loss = xp.zeros((), dtype=np.float64)
        correct = xp.zeros((), dtype=np.int64)
        count = images.shape[0]
        for start in range(0, count, batch_size):
            batch_labels = labels[start : start + batch_size]
            logits = self.logits(images[start : start + batch_size], training=False)
            loss, _ = softmax_cross_entropy(xp, logits, batch_labels)
            total_loss += loss * batch_labels.shape[0]
            correct += (logits.argmax(axis=1) == batch_labels).sum()
        return float(total_loss) / count, int(correct) / count
