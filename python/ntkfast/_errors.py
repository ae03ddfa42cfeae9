"""Exceptions raised by ntkfast."""
from __future__ import annotations

__all__ = ["NonFiniteKernelError", "BackendUnavailableError"]


class NonFiniteKernelError(FloatingPointError):
    """The kernel of some input overflows (or is NaN) in the requested precision.

    Raised before the Gram matrix is computed, from the per-point variances (every off-diagonal
    entry is bounded by them). Attributes: ``argument`` ('x1', 'x2' or 'x'), ``row``, ``layer``
    (the layer spec where it happened, or None for the input), ``value``.
    """

    def __init__(self, message, argument=None, row=None, layer=None, value=None):
        super().__init__(message)
        self.argument, self.row, self.layer, self.value = argument, row, layer, value


class BackendUnavailableError(RuntimeError):
    """The requested compute backend is not built or cannot run here; the message says why."""


class EngineNonFinite(Exception):
    """Internal: raised by the compiled engines, turned into NonFiniteKernelError."""

    def __init__(self, point_set, row, op, value, is_ntk):
        super().__init__(point_set, row, op, value, is_ntk)
        self.point_set, self.row, self.op, self.value, self.is_ntk = point_set, row, op, value, is_ntk
