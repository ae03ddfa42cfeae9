"""Exceptions raised by ntkfast."""
from __future__ import annotations

__all__ = ["NonFiniteKernelError", "KernelUnderflowError", "BackendUnavailableError"]


class NonFiniteKernelError(FloatingPointError):
    """The kernel of some input overflows (or is NaN) in the requested precision.

    Raised before the Gram matrix is computed, from the per-point variances (every off-diagonal
    entry is bounded by them). Attributes: ``argument`` ('x1', 'x2' or 'x'), ``row``, ``layer``
    (the layer spec where it happened, or None for the input), ``value``.
    """

    def __init__(self, message, argument=None, row=None, layer=None, value=None):
        super().__init__(message)
        self.argument, self.row, self.layer, self.value = argument, row, layer, value


class KernelUnderflowError(FloatingPointError):
    """A per-point variance inside the network is so small (but not zero) that products of two
    variances underflow double precision, so the kernel could not be computed exactly.

    Raised before the Gram matrix is computed; same attributes as :class:`NonFiniteKernelError`.
    """

    def __init__(self, message, argument=None, row=None, layer=None, value=None):
        super().__init__(message)
        self.argument, self.row, self.layer, self.value = argument, row, layer, value


class BackendUnavailableError(RuntimeError):
    """The requested compute backend is not built or cannot run here; the message says why."""


class EngineNonFinite(Exception):
    """Internal: raised by the compiled engines, turned into NonFiniteKernelError (or
    KernelUnderflowError when ``underflow`` is set)."""

    def __init__(self, point_set, row, op, value, is_ntk, underflow=False):
        super().__init__(point_set, row, op, value, is_ntk, underflow)
        self.point_set, self.row, self.op, self.value, self.is_ntk = point_set, row, op, value, is_ntk
        self.underflow = bool(underflow)
