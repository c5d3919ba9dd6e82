"""fastdrop: fused dropout kernels with counter-based masks that are bit-identical everywhere.

Importing fastdrop imports NumPy and Numba only; CuPy and PyTorch are loaded when used.
"""

from fastdrop import reference
from fastdrop._api import dropout, dropout_backward, manual_seed, random_bits
from fastdrop._contract import keep_threshold, scale_factor
from fastdrop._mask import DropoutMask
from fastdrop._stream import stream_state
from fastdrop.layers import Dropout
from fastdrop.variants import (
    AlphaDropoutMask,
    BiasDropoutAddMask,
    GaussianNoise,
    RecurrentMask,
    alpha_dropout,
    alpha_dropout_backward,
    bias_dropout_add,
    bias_dropout_add_backward,
    dropconnect_linear,
    dropconnect_linear_backward,
    feature_alpha_dropout,
    gaussian_dropout,
    gaussian_dropout_backward,
    spatial_dropout,
    variational_dropout,
)

__version__ = "0.1.0"

__all__ = [
    "Dropout",
    "DropoutMask",
    "dropout",
    "dropout_backward",
    "keep_threshold",
    "manual_seed",
    "random_bits",
    "reference",
    "scale_factor",
    "stream_state",
    "AlphaDropoutMask",
    "BiasDropoutAddMask",
    "GaussianNoise",
    "RecurrentMask",
    "alpha_dropout",
    "alpha_dropout_backward",
    "bias_dropout_add",
    "bias_dropout_add_backward",
    "dropconnect_linear",
    "dropconnect_linear_backward",
    "feature_alpha_dropout",
    "gaussian_dropout",
    "gaussian_dropout_backward",
    "spatial_dropout",
    "variational_dropout",
]
