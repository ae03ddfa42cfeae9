"""ntkfast: exact NNGP and NTK Gram matrices of infinitely wide fully-connected networks.

>>> import numpy as np, ntkfast
>>> x = np.random.default_rng(0).standard_normal((500, 784))
>>> k = ntkfast.gram(x, net=ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05))   # Kernels(nngp, ntk)

The network specs mirror ``neural_tangents.stax`` (names, parameters, conventions).
"""
from __future__ import annotations

__version__ = "0.1.0"

from ._layers import (ACTIVATIONS, ABRelu, Abs, Cos, Dense, Erf, Exp, ExpNormalized, Gabor,
                      Gaussian, Gelu, Hermite, Identity, Layer, LeakyRelu, MLP, Monomial,
                      Polynomial, Rbf, RectifiedMonomial, Relu, Serial, Sigmoid_like, Sign, Sin,
                      serial, Tanh, Sigmoid, Softplus, Silu, Elu, Selu, Mish,
                      ElementwiseNumerical, Elementwise, DualKernel, MAX_SERIES_DEGREE)
from ._errors import BackendUnavailableError, KernelUnderflowError, NonFiniteKernelError
from ._gram import Kernels, diagonal, gram
from ._operator import KernelOperator
from ._solvers import ConvergenceError
from ._config import get_config, show_config
from . import predict

__all__ = [
    "__version__", "gram", "diagonal", "Kernels", "KernelOperator", "show_config", "get_config",
    "serial", "Serial", "Layer", "Dense", "MLP", "ACTIVATIONS",
    "Relu", "LeakyRelu", "ABRelu", "Abs", "Erf", "Sigmoid_like", "Gelu", "Sin", "Cos", "Rbf",
    "Exp", "ExpNormalized", "Gaussian", "Gabor", "Sign", "Monomial", "RectifiedMonomial",
    "Polynomial", "Hermite", "Identity",
    "Tanh", "Sigmoid", "Softplus", "Silu", "Elu", "Selu", "Mish", "ElementwiseNumerical",
    "Elementwise", "DualKernel", "MAX_SERIES_DEGREE",
    "NonFiniteKernelError", "KernelUnderflowError", "BackendUnavailableError", "ConvergenceError",
    "predict",
]
