"""Argument checks and small helpers of :mod:`ntkfast.predict`: every message names the argument
and says what was expected."""
from __future__ import annotations

import collections
import numbers

import numpy as np

from . import _predict_linalg, _validation
from ._predict_linalg import is_cupy
from ._validation import check_real_dtype, read_array, reject_non_finite

_LOSS_SCALES = ("mean", "sum")
GRAM_OPTIONS = ("dtype", "backend", "num_threads", "check_finite", "progress", "tile_size")


def real_scalar(value, name, *, minimum=None, strictly_positive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if strictly_positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def loss_scale_value(loss_scale, y_size):
    if loss_scale not in _LOSS_SCALES:
        raise ValueError(f"loss_scale must be 'mean' (neural-tangents: L = Σ(f-y)²/(2·y.size)) or "
                         f"'sum' (L = ½Σ(f-y)², see docs/dynamics.md), got {loss_scale!r}")
    return float(y_size) if loss_scale == "mean" else 1.0


def check_trace_axes(trace_axes, y_ndim):
    try:
        axes = tuple(trace_axes)
    except TypeError:
        axes = (trace_axes,)
    if axes not in ((-1,), (y_ndim - 1,)):
        raise NotImplementedError(
            f"trace_axes={trace_axes!r}: ntkfast.predict supports only trace_axes=(-1,) (one "
            "kernel shared by all output columns, neural-tangents' default)")


def check_finite_values(backend, arr, name):
    reject_non_finite(arr, name, hint="")


def as_array(backend, x, name, dtype, *, ndim=None):
    """x as a finite array of ``backend`` with ``dtype`` (NumPy input moves to the GPU when
    the train kernel lives there; the reverse is refused, it would be a silent device copy)."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if backend.name == "numpy" and is_cupy(x):
        raise TypeError(f"{name} is a CuPy array but the training kernel is a NumPy array; pass "
                        "both as NumPy arrays (CPU) or both as CuPy arrays (GPU)")
    if not is_cupy(x):
        x = read_array(x, name)
    check_real_dtype(x, name)
    if ndim is not None and x.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    arr = backend.asarray(x, dtype=dtype)
    check_finite_values(backend, arr, name)
    return arr


def compute_dtype(k):
    """float32 kernels are computed in float32, everything else in float64 (as neural-tangents
    computes in the train kernel's dtype)."""
    return np.dtype(np.float32) if getattr(k, "dtype", None) == np.float32 else np.dtype(np.float64)


def train_kernel(backend, k, name, dtype):
    arr = as_array(backend, k, name, dtype, ndim=(2,))
    n1, n2 = arr.shape
    if n1 != n2:
        raise ValueError(f"{name} must be square (n_train, n_train), got shape {tuple(arr.shape)}")
    if n1 == 0:
        raise ValueError(f"{name} is empty: predictions need at least one training point")
    _predict_linalg.check_symmetric(backend.xp, arr, name)
    return arr


def targets(backend, y, n, dtype, name="y_train", kernel_name="k_train_train"):
    arr = as_array(backend, y, name, dtype, ndim=(1, 2))
    if arr.shape[0] != n:
        raise ValueError(f"{name} must have one row per training point: {kernel_name} is "
                         f"{n} x {n} but {name} has shape {tuple(arr.shape)}")
    return arr


def initial_outputs(backend, f0, shape, dtype, name):
    """A scalar or an array broadcastable to ``shape``."""
    if isinstance(f0, numbers.Real) and not isinstance(f0, bool):
        value = float(f0)
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return backend.xp.full(shape, value, dtype=dtype)
    arr = as_array(backend, f0, name, dtype)
    try:
        fits = np.broadcast_shapes(tuple(arr.shape), shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name} must be a scalar or have shape {shape}, got shape "
                         f"{tuple(arr.shape)}")
    return backend.xp.ascontiguousarray(backend.xp.broadcast_to(arr, shape))


def cross_kernel(backend, k, n, dtype, name):
    arr = as_array(backend, k, name, dtype, ndim=(2,))
    if arr.shape[1] != n:
        raise ValueError(f"{name} must have shape (n_test, n_train) with n_train = {n}, got "
                         f"shape {tuple(arr.shape)}")
    return arr


def times_array(t):
    """The times as a flat float64 array, and their shape (t = None is handled by callers)."""
    if is_cupy(t):
        t = t.get()
    if isinstance(t, (str, bytes)):
        raise TypeError(f"t must be None, a number or an array of numbers, got {t!r}")
    arr = read_array(t, "t")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"t must be None, a number or an array of real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError("t contains NaN; use t=None (or inf) for the end of training")
    if (arr < 0).any():
        raise ValueError(f"t must be >= 0 (training time), got min(t) = {arr.min()!r}")
    return arr.reshape(-1), arr.shape


def parse_get(get, allowed, default=("nngp", "ntk")):
    return _validation.parse_get(get, allowed, default)


_RESULT_TYPES = {}


def package(names, single, values):
    """One value for a str ``get``, else a namedtuple ``Gaussians`` keyed by kernel name (as
    neural-tangents)."""
    if single:
        return values[names[0]]
    cls = _RESULT_TYPES.get(names)
    if cls is None:
        cls = _RESULT_TYPES[names] = collections.namedtuple("Gaussians", names)
    return cls(*(values[g] for g in names))


def regulariser(backend, k, diag_reg, absolute, name="k_train_train"):
    """λ: diag_reg, or diag_reg · mean(diag k) (neural-tangents' relative scale)."""
    diag_reg = real_scalar(diag_reg, "diag_reg", minimum=0.0)
    if absolute or diag_reg == 0.0:
        return diag_reg
    return relative_regulariser(diag_reg, float(backend.xp.trace(k)) / k.shape[0], name)


def relative_regulariser(diag_reg, mean_diagonal, name):
    """diag_reg · mean(diag k), or a ValueError when the product overflows: an infinite λ would
    otherwise surface later as a NaN eigenvalue blamed on the kernel."""
    with np.errstate(over="ignore"):
        reg = float(np.float64(diag_reg) * np.float64(mean_diagonal))
    if not np.isfinite(reg):
        raise ValueError(f"diag_reg · mean(diag({name})) overflows: diag_reg = {diag_reg!r}, "
                         f"mean(diag({name})) = {mean_diagonal!r}; pass a smaller diag_reg (it "
                         "is relative to the kernel's mean diagonal unless "
                         "diag_reg_absolute_scale=True)")
    return reg


def check_maxiter(maxiter):
    """None or a positive integer: the iterative path's limit on CG iterations (t = ∞) and
    Lanczos steps (finite t)."""
    if maxiter is None:
        return None
    if isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral) or maxiter < 1:
        raise ValueError(f"maxiter must be None or a positive integer (the iteration limit of "
                         f"the iterative solvers), got {maxiter!r}")
    return int(maxiter)


def flat_targets(y):
    return y[:, None] if y.ndim == 1 else y


def unflatten(out, y_ndim):
    return out[..., 0] if y_ndim == 1 else out


def square_test_kernel(backend, k, m, dtype, name):
    arr = as_array(backend, k, name, dtype, ndim=(2,))
    if tuple(arr.shape) != (m, m):
        raise ValueError(f"{name} must have shape ({m}, {m}) (n_test x n_test, matching "
                         f"k_test_train), got shape {tuple(arr.shape)}")
    return arr


def check_points(x, name, check_finite=True):
    """A 2-D real array (NumPy or CuPy), finite unless the caller opted out."""
    x = _validation.check_points(x, name)
    if check_finite:
        reject_non_finite(x, name, hint="")
    return x
