"""The engine's side of :class:`~ntkfast.DualKernel` layers: the user's dual kernels, checked.

The CPU engine runs a network with DualKernel layers in segments between them (engine.hpp,
``DualKernelFn``) and hands each block of entries that reaches one to :class:`DualKernelCallback`
(``evaluate(index, c, t, q1, q2)`` in the binding): a tile of the Gram, or the rows' own
variances. Here the user's functions run on it, and whatever they return is checked before it
goes back, so a wrong shape, a NaN or a non-vectorised function is an error naming the layer,
never a wrong kernel.
"""
from __future__ import annotations

import numpy as np

from ._layers import dual_kernel_layers

__all__ = ["DualKernelCallback", "dual_kernel_callback"]


def dual_kernel_callback(net, names, backend):
    """The engine's callback for ``net``'s DualKernel layers (None without them), after checking
    that they can give the kernels ``names`` on ``backend``."""
    layers = dual_kernel_layers(net)
    if not layers:
        return None
    if backend != "cpu":
        raise NotImplementedError(
            f"backend={backend!r} cannot run DualKernel layers ({layers[0]!r}): their dual "
            "kernels are Python functions, which only the CPU engine calls; use backend='cpu'")
    if "ntk" in names:
        for layer in layers:
            if layer.d_nngp_fn is None:
                raise ValueError(
                    f"{layer!r} has no d_nngp_fn, which the NTK needs (the derivative of nngp_fn "
                    "in cov12, E[φ'(u)φ'(v)]); pass d_nngp_fn=..., or ask for the NNGP alone "
                    "(get='nngp')")
    return DualKernelCallback(layers)


class DualKernelCallback:
    """``evaluate(index, c, t, q1, q2)`` of the binding: the new (c, t) of a block whose entries
    enter DualKernel layer ``index``. c and t are (rows, cols) float64 arrays (t None without the
    NTK), q1 the rows' variances, q2 the columns' or None: then the block is a column of the
    rows' own entries (c = q1 = q2)."""

    def __init__(self, layers):
        self.layers = layers

    def __call__(self, index, c, t, q1, q2):
        layer = self.layers[index]
        diagonal = q2 is None
        var1 = q1[:, None]
        var2 = var1 if diagonal else q2[None, :]
        for array in (c, var1, var2):
            array.flags.writeable = False  # the user's functions get inputs, not buffers
        value = _evaluate(layer, "nngp_fn", c, var1, var2)
        if diagonal and np.any(value < 0):
            k = int(np.argmax(value < 0))
            raise ValueError(
                f"{layer!r}: nngp_fn(var, var, var) must be a variance (>= 0), got "
                f"{float(value.flat[k])!r} at var = {float(q1[k])!r}")
        if t is not None:
            t *= _evaluate(layer, "d_nngp_fn", c, var1, var2)
        return value, t


def _evaluate(layer, name, c, var1, var2):
    """layer.<name>(c, var1, var2) as a float64 array of c's shape, finite, or a ValueError
    naming the layer, the function and what was wrong."""
    fn = getattr(layer, name)
    where = f"{layer!r}: {name}(cov12, var1, var2)"
    called_with = (f"it is called with NumPy arrays (cov12 of shape {c.shape}, var1 "
                   f"{var1.shape}, var2 {var2.shape}), which are read-only, and must be vectorised "
                   "(NumPy functions, not math.*, no Python if on array values)")
    try:
        result = fn(c, var1, var2)
    except (TypeError, ValueError, IndexError, AttributeError) as error:
        raise ValueError(f"{where} raised {type(error).__name__}: {error}; {called_with}") \
            from error
    try:
        result = np.asarray(result)
        if result.dtype.kind not in "biuf":
            raise TypeError(f"dtype {result.dtype}")
        out = np.array(np.broadcast_to(result, c.shape), dtype=np.float64)
    except (TypeError, ValueError) as error:
        shape = getattr(result, "shape", None)
        raise ValueError(f"{where} returned {type(result).__name__} of shape {shape} ({error}), "
                         f"not real values broadcastable to {c.shape}; {called_with}") from None
    bad = ~np.isfinite(out)
    if bad.any():
        i, j = np.unravel_index(int(np.argmax(bad)), out.shape)
        raise ValueError(
            f"{where} returned {float(out[i, j])!r} at cov12 = {float(c[i, j])!r}, var1 = "
            f"{float(np.broadcast_to(var1, c.shape)[i, j])!r}, var2 = "
            f"{float(np.broadcast_to(var2, c.shape)[i, j])!r} ({int(bad.sum())} non-finite "
            f"of {out.size}); the kernel must be finite there")
    return out
