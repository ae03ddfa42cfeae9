"""Exceptions raised by ntkfast."""
from __future__ import annotations

__all__ = ["NonFiniteKernelError", "KernelUnderflowError", "BackendUnavailableError"]


class NonFiniteKernelError(FloatingPointError):
    """The kernel of some input overflows (or is NaN) in the requested precision.

    Raised before the Gram matrix is computed, from the per-point variances (every off-diagonal
    entry is bounded by them). Attributes: ``argument`` ('x1', 'x2' or 'x'), ``row``, ``layer``
    (the layer spec where it happened, or None for the input), ``value``.

    A subclass of :class:`FloatingPointError`.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> try:
    ...     ntkfast.gram(np.full((2, 2), 1e300), net=ntkfast.MLP(1))
    ... except ntkfast.NonFiniteKernelError as error:
    ...     print(error.argument, error.row)
    x1 0
    """

    def __init__(self, message, argument=None, row=None, layer=None, value=None):
        super().__init__(message)
        self.argument, self.row, self.layer, self.value = argument, row, layer, value


class KernelUnderflowError(FloatingPointError):
    """A per-point variance inside the network is so small (but not zero) that products of two
    variances underflow double precision, so the kernel could not be computed exactly.

    Raised before the Gram matrix is computed; same attributes as :class:`NonFiniteKernelError`.
    Variances down to ~1e-300 are computed exactly (by power-of-two rescaling).

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> try:
    ...     ntkfast.gram(np.full((2, 2), 1e-200), net=ntkfast.MLP(1))
    ... except ntkfast.KernelUnderflowError as error:
    ...     print(error.argument)
    x1
    """

    def __init__(self, message, argument=None, row=None, layer=None, value=None):
        super().__init__(message)
        self.argument, self.row, self.layer, self.value = argument, row, layer, value


class BackendUnavailableError(RuntimeError):
    """The requested compute backend is not built or cannot run here; the message says why.

    ``ntkfast.get_config()["cuda"]["reason"]`` gives the same reason without raising.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> if not ntkfast.get_config()["cuda"]["available"]:
    ...     try:
    ...         ntkfast.gram(np.eye(2), net=ntkfast.MLP(1), backend="cuda")
    ...     except ntkfast.BackendUnavailableError:
    ...         print("no CUDA here")
    ... else:
    ...     print("no CUDA here")   # (the example's output either way)
    no CUDA here
    """


class EngineNonFinite(Exception):
    """Internal: raised by the compiled engines, turned into NonFiniteKernelError (or
    KernelUnderflowError when ``underflow`` is set)."""

    def __init__(self, point_set, row, op, value, is_ntk, underflow=False):
        super().__init__(point_set, row, op, value, is_ntk, underflow)
        self.point_set, self.row, self.op, self.value, self.is_ntk = point_set, row, op, value, is_ntk
        self.underflow = bool(underflow)
