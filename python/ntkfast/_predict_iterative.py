"""The iterative path of ``ntkfast.predict``: kernels as operators, never as N×N matrices.

:class:`IterativeSystem` stands in for ``_predict_core.KernelSystem`` where the train kernel is
an operator (``ntkfast.KernelOperator``, ``ntkfast.dask.KernelOperator``, or any object with
``shape``, ``matmat``, ``diagonal`` and ``columns``): Θ̃⁻¹B by preconditioned conjugate gradients
with a Nyström preconditioner (``_solvers.block_cg``, ``nystrom_preconditioner``), and the
gradient-flow factors e^{−Θ̃τ/N} r and Θ̃⁻¹(I − e^{−Θ̃τ/N}) r for all times from one Lanczos basis
(``_solvers.lanczos_functions``). Each call's solver report is kept in ``last_info``.
"""
from __future__ import annotations

import numpy as np

from . import _predict_checks, _predict_linalg
from ._predict_core import check_psd
from ._solvers import ConvergenceError, DenseOperator, block_cg, dynamics_functions, \
    lanczos_functions, nystrom_preconditioner
from ._validation import is_cupy

__all__ = ["SOLVERS", "IterativeSystem", "is_operator", "as_operator", "apply_cross",
           "check_solver", "iterative_requested", "default_preconditioner_rank"]

SOLVERS = ("auto", "eigh", "cg", "lanczos")


def is_operator(k):
    """A kernel given as an operator rather than an array."""
    return hasattr(k, "matmat") and hasattr(k, "shape") and not hasattr(k, "__array__") \
        and not is_cupy(k)


def check_solver(solver):
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return solver


def iterative_requested(solver, kernel):
    """'cg' and 'lanczos' select the iterative path (PCG at t = ∞, Lanczos at finite t);
    'auto' takes it for operators and keeps the exact eigh/Cholesky path for arrays."""
    solver = check_solver(solver)
    if solver == "eigh" and is_operator(kernel):
        raise ValueError("solver='eigh' needs the kernel as an array; an operator "
                         "(ntkfast.KernelOperator) takes solver='auto', 'cg' or 'lanczos'")
    return solver in ("cg", "lanczos") or (solver == "auto" and is_operator(kernel))


def as_operator(k, name):
    """The operator protocol for a train kernel: operators as they are, arrays wrapped after
    the exact path's checks (real, 2-D, square, non-empty, finite, symmetric). A float32 array
    stays float32: the checks make no copy of it, the iterative path exists for memory."""
    if is_operator(k):
        for attr in ("diagonal", "columns"):
            if not callable(getattr(k, attr, None)):
                raise TypeError(f"{name}: an operator needs .{attr}() for the iterative solvers "
                                f"(ntkfast.KernelOperator has it), got {type(k).__name__}")
        if is_cupy(getattr(k, "x", None)):  # a KernelOperator of CuPy points gives CuPy products
            raise TypeError(f"{name}: the iterative solvers run on the CPU, and this operator holds "
                            "CuPy points; build it from NumPy points (backend='cuda' still "
                            "computes its kernel on the GPU), or pass a CuPy kernel array for "
                            "the GPU's eigh path")
        n1, n2 = k.shape
        if n1 != n2:
            raise ValueError(f"{name} must be square (n_train, n_train), got shape {k.shape}")
        if n1 == 0:
            raise ValueError(f"{name} is empty: predictions need at least one training point")
        return k
    if is_cupy(k):
        raise TypeError(f"{name}: the iterative solvers run on the CPU; pass a NumPy array or a "
                        "KernelOperator")
    arr = _predict_checks.train_kernel(_predict_linalg.CPU, k, name,
                                       _predict_checks.compute_dtype(k))
    return DenseOperator(arr)


def apply_cross(k_td, m, n_train, name):
    """k_test_train @ M for an array or a cross operator of shape (n_test, n_train)."""
    if is_operator(k_td):
        if k_td.shape[1] != n_train:
            raise ValueError(f"{name} must have shape (n_test, n_train) with n_train = {n_train}, "
                             f"got shape {k_td.shape}")
        return k_td.matmat(m)
    return k_td @ m


def default_preconditioner_rank(n):
    """Nyström rank when none is given: enough to take most of the spectrum's head (a few
    hundred for digits-like data), capped so the factor (n × rank float64) stays ≤ ~0.8 GB."""
    return int(min(max(1, n // 4), 1000, max(1, 100_000_000 // max(n, 1))))


class IterativeSystem:
    """Θ̃ = Θ + λI of a train-kernel operator, for predict's solves and dynamics."""

    def __init__(self, op, shift, *, name="k_train_train", tol=None, maxiter=None,
                 preconditioner_rank=None, progress=False):
        self.op, self.shift, self.n, self.name = op, float(shift), op.shape[0], name
        self.tol, self.progress = tol, progress
        self.maxiter = _predict_checks.check_maxiter(maxiter)
        if preconditioner_rank is None:
            preconditioner_rank = default_preconditioner_rank(self.n)
        if isinstance(preconditioner_rank, bool) or not isinstance(preconditioner_rank, (int, np.integer)) \
                or not 0 <= preconditioner_rank <= self.n:
            raise ValueError(f"preconditioner_rank must be an integer from 0 (none) to n_train = "
                             f"{self.n}, got {preconditioner_rank!r}")
        self.rank = int(preconditioner_rank)
        self._precond = None
        self.last_info = None
        self.singular = False  # unknown without a decomposition; the solvers say when it matters

    def preconditioner(self):
        if self._precond is None and self.rank:
            try:
                self._precond = nystrom_preconditioner(self.op, self.rank, self.shift)
            except ValueError as error:  # e.g. a negative diagonal entry: say which kernel
                raise ValueError(f"{self.name}: {error}") from None
        return self._precond

    def solve(self, b):
        """Θ̃⁻¹ B (CG per column)."""
        x, self.last_info = block_cg(self.op, b, shift=self.shift, precond=self.preconditioner(),
                                     tol=self.tol, maxiter=self.maxiter, progress=self.progress)
        return x

    def null_projection(self, b):
        # Along a null space of Θ̃ (λ = 0, duplicate points) CG on a consistent system converges
        # and on an inconsistent one raises ConvergenceError: no projection is needed or possible.
        return np.zeros_like(b)

    def dynamics(self, tau, scale, r0):
        """(e^{−Θ̃τ/N} r0, Θ̃⁻¹(I − e^{−Θ̃τ/N}) r0), each (T, n, k), for all finite τ at once,
        in at most ``maxiter`` Lanczos steps. A ValueError naming the kernel when a Ritz value
        proves Θ̃ indefinite: the functions clip λ < 0 to 0, which would silently freeze those
        outputs where the true flow diverges."""
        functions = dynamics_functions(tau, scale)
        try:
            values, self.last_info = lanczos_functions(
                self.op, r0, functions, steps=self.maxiter, shift=self.shift, tol=self.tol,
                progress=self.progress)
        except ConvergenceError as error:
            if error.info is not None:  # an indefinite kernel is the better diagnosis
                self._check_psd(error.info)
            # lanczos_functions speaks of `steps`; predict's callers set them with maxiter
            steps = int(error.info.steps.max()) if error.info is not None else self.maxiter
            raise ConvergenceError(
                f"the Lanczos dynamics of {self.name} (finite t) did not reach tol in "
                f"{steps} steps (maxiter={self.maxiter}): worst estimated relative error "
                f"{float(np.max(error.residuals)):.3e}; pass a larger maxiter (memory "
                f"8·n_train·maxiter bytes per output column) or a larger diag_reg",
                residuals=error.residuals, info=error.info) from error
        self._check_psd(self.last_info)
        if values.ndim == 2:  # a single column came back without its column axis
            values = values[:, :, None]
        return functions.split(values)

    def _check_psd(self, info):
        # Ritz values lie inside the spectrum of Θ̃, so a PSD kernel never fails this beyond
        # round-off; the tolerance is the exact path's, in the operator's own precision.
        if not np.isfinite(info.ritz_min):
            return
        dtype = getattr(self.op, "dtype", np.float64)
        eps = float(np.finfo(dtype if np.dtype(dtype).kind == "f" else np.float64).eps)
        check_psd(info.ritz_min, info.ritz_max, self.n, eps, self.name, reg=self.shift)
