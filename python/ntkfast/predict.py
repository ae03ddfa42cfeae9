"""Training dynamics and Bayesian posteriors of infinitely wide networks, from their kernels.

Call-compatible with ``neural_tangents.predict`` (argument names, conventions, output
structure), on NumPy arrays (SciPy's LAPACK) or CuPy arrays (cuSOLVER), outputs of the same kind:

* :func:`gradient_descent_mse` -- outputs of a network trained by gradient flow on the MSE, at
  any times t (Jacot et al. 2018; Lee et al. 2019, eq. 16 ff.; docs/dynamics.md);
* :func:`gradient_descent_mse_ensemble` -- mean and covariance of an infinite ensemble of such
  networks (the initialisation marginalised), computing the kernels with :func:`ntkfast.gram`;
* :func:`gp_inference` -- the NNGP posterior, the trained-ensemble NTK 'posterior' and the NTKGP
  posterior at t = ∞ (Lee et al. 2018 and Matthews et al. 2018 for the NNGP; Lee et al. 2019
  for the trained ensemble; He et al. 2020 for the NTKGP);
* :func:`max_learning_rate` -- the largest stable full-batch learning rate.

Conventions (neural-tangents', see ``docs/dynamics.md``)
--------------------------------------------------------
* Loss L = 1/(2N) Σ (f − y)² with N = y_train.size (½ × the mean over all output entries), so
  gradient flow gives df/dt = −(η/N) Θ (f − y); t counts steps of size η (τ = η t). The loss
  ½ Σ (f − y)² is the same flow with η/N → η: pass ``loss_scale='sum'``
  or, equivalently, convert times as t_nt = N · t_sum.
* ``diag_reg`` adds λI to the train kernel, λ = diag_reg · mean(diag K) (or λ = diag_reg with
  ``diag_reg_absolute_scale=True``).
* One kernel is shared by all output columns (neural-tangents' ``trace_axes=(-1,)``).
* t = None (or ∞) is the end of training, computed by a Cholesky solve.

What ntkfast does differently: a singular train kernel (duplicate training points, fewer
features than points, ``diag_reg=0``) gives finite outputs, the exact limits of the gradient
flow, where neural-tangents returns NaN (it divides by ``|μ| = 0``); negative round-off
eigenvalues (down to −10·n·ε·λ_max) are clipped to 0 in every factor, while a clearly negative
eigenvalue (not a kernel matrix) is a ValueError; the eigendecomposition (one per kernel,
cached) uses a LAPACK driver that works for N ≥ 32768.
"""
from __future__ import annotations

import hashlib
import numbers
import typing

import numpy as np

from . import _predict_iterative, _predict_linalg
from ._predict_checks import (GRAM_OPTIONS, as_array, check_maxiter, check_points,
                              check_trace_axes, compute_dtype, cross_kernel, flat_targets,
                              initial_outputs, loss_scale_value, package, parse_get, real_scalar,
                              regulariser, relative_regulariser, square_test_kernel, targets,
                              times_array, train_kernel, unflatten)
from ._predict_core import KernelSystem, batched_products, check_psd, psd_tolerance, symmetrize
from ._predict_linalg import is_cupy
from ._validation import Kernels

__all__ = ["Gaussian", "gradient_descent_mse", "gradient_descent_mse_ensemble", "gp_inference",
           "max_learning_rate"]


class Gaussian(typing.NamedTuple):
    """A ``(mean, covariance)`` pair (neural-tangents' ``predict.Gaussian``).

    Attributes
    ----------
    mean : array, shape ``([*t.shape,] n_points, n_outputs)``
    covariance : array, shape ``([*t.shape,] n_points, n_points)``
        Shared by every output column.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> g = ntkfast.predict.Gaussian(mean=np.zeros((3, 1)), covariance=np.eye(3))
    >>> mean, covariance = g
    >>> g.covariance.shape
    (3, 3)
    """

    mean: typing.Any
    covariance: typing.Any


# ----------------------------------------------------------------------------------------------
# gradient_descent_mse

def gradient_descent_mse(k_train_train, y_train, learning_rate=1.0, diag_reg=0.0,
                         diag_reg_absolute_scale=False, trace_axes=(-1,), *, loss_scale="mean",
                         solver="auto", tol=None, maxiter=None, preconditioner_rank=None,
                         progress=False):
    r"""Outputs of a network trained by gradient flow on the MSE, in closed form.

    For the linearised network (exact at infinite width) with kernel Θ = ``k_train_train``,
    Θ̃ = Θ + λI, τ = η·t and N = y_train.size (Lee et al. 2019, "Wide neural networks of any
    depth evolve as linear models under gradient descent", eqs. 9–10, in neural-tangents'
    normalisation; docs/dynamics.md):

    .. math::
        f_t(X)  &= f_0(X) + (e^{-\tilde\Theta\tau/N} - I)(f_0(X) - Y) \\
        f_t(x^*) &= f_0(x^*)
                   + \Theta(x^*, X)\,\tilde\Theta^{-1}(I - e^{-\tilde\Theta\tau/N})(Y - f_0(X))

    computed from one eigendecomposition Θ̃ = V diag(μ) Vᵀ (cached: every later call, time and
    test set reuses it) with ``expm1`` and, per eigenvalue, the limit τ/N of
    (1 − e^{−μτ/N})/μ as μ → 0. t = None uses a Cholesky solve instead
    (:math:`f_\infty(X) = Y`,
    :math:`f_\infty(x^*) = f_0(x^*) + \Theta(x^*,X)\tilde\Theta^{-1}(Y - f_0(X))`);
    when Θ̃ is numerically singular (reciprocal condition below n_train·ε) it falls back to the
    eigendecomposition's pseudo-inverse, the exact t → ∞ limit of the flow: test outputs
    stay finite and the training outputs keep their initial values along the kernel's null
    space (where no gradient ever acts).

    Parameters
    ----------
    k_train_train : array, shape (n_train, n_train)
        Symmetric kernel Θ(X, X) (NTK; the NNGP for training only the readout). NumPy arrays
        compute on the CPU, CuPy arrays on the GPU. float32 kernels compute in float32.
    y_train : array, shape (n_train, n_outputs) or (n_train,)
        Targets Y.
    learning_rate : float
        η > 0. Only τ = η·t matters.
    diag_reg : float
        Diagonal regulariser: λ = diag_reg · mean(diag Θ), or λ = diag_reg with
        ``diag_reg_absolute_scale=True``.
    diag_reg_absolute_scale : bool
    trace_axes : (-1,)
        Accepted for neural-tangents compatibility; only (-1,) is supported.
    loss_scale : {'mean', 'sum'}
        'mean' (default): L = Σ(f − y)²/(2N), neural-tangents' convention. 'sum':
        L = ½Σ(f − y)² (docs/dynamics.md), i.e. the flow df/dt = −η Θ̃ (f − y); the same
        as 'mean' at times multiplied by N.
    solver : {'auto', 'eigh', 'cg', 'lanczos'}
        'eigh': the exact path above (the kernel as an array). 'cg' or 'lanczos': the
        iterative path for kernels too large to hold or decompose (docs/large.md):
        ``k_train_train`` may be a :class:`ntkfast.KernelOperator`; t = ∞ is solved by
        conjugate gradients preconditioned by a rank-``preconditioner_rank`` Nyström
        approximation, finite t by one Lanczos basis for all times (t = ∞ inside a time array
        is that solve). An array kernel gets the same checks as on the exact path, and an
        indefinite one the same ValueError (from the Lanczos Ritz values). 'auto' (default):
        'eigh' for arrays, the iterative path for operators. The last solver's report
        (iterations, residuals; the CG one when the times include ∞) is ``predict_fn.info``.
    tol, maxiter, preconditioner_rank, progress
        Iterative path only: the relative residual / error target (default 1e-10 for float64
        kernels, 1e-5 for float32); the iteration limit, None or a positive integer (checked
        on every path): CG iterations at t = ∞, Lanczos steps (the Krylov dimension, memory
        8·n_train·maxiter bytes per output column) at finite t; the Nyström rank (default
        min(n/4, 1000); 0 for none); a progress bar. A solve that misses ``tol`` within
        ``maxiter`` raises :class:`ntkfast.ConvergenceError` with the residual reached.

    Returns
    -------
    predict_fn : callable(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None)
        ``t``: None (= ∞), a number ≥ 0 or an array of them of any shape (the outputs get
        leading axes t.shape; all times are one batched product). ``fx_train_0``: initial
        train outputs f₀(X) (scalar or (n_train, n_outputs)); None skips the train outputs.
        ``fx_test_0``: initial test outputs f₀(x*) (scalar or (n_test, n_outputs)); needs
        ``k_test_train`` Θ(x*, X) of shape (n_test, n_train). Returns ``fx_train_t``,
        ``fx_test_t`` or ``(fx_train_t, fx_test_t)`` (neural-tangents' structure), each of
        shape ``(*t.shape, n_points, n_outputs)``.

    Raises
    ------
    TypeError, ValueError
        Mismatched shapes, a non-square, non-symmetric or not positive semi-definite train
        kernel, negative or NaN times, NaN/Inf values, a relative ``diag_reg`` whose λ
        overflows, ``maxiter`` not None or a positive integer; the message names the argument.
    ntkfast.ConvergenceError
        Iterative path: a solve missed ``tol`` within ``maxiter``.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> rng = np.random.default_rng(0)
    >>> x, x_test = rng.standard_normal((50, 5)), rng.standard_normal((10, 5))
    >>> y = np.sin(x[:, :1])
    >>> net = ntkfast.MLP(2, "relu", W_std=1.5, b_std=0.05)
    >>> fn = ntkfast.predict.gradient_descent_mse(ntkfast.gram(x, net=net, get="ntk"), y)
    >>> f_train, f_test = fn(t=np.logspace(0, 4, 20), fx_train_0=0.0, fx_test_0=0.0,
    ...                      k_test_train=ntkfast.gram(x_test, x, net=net, get="ntk"))
    >>> f_train.shape, f_test.shape
    ((20, 50, 1), (20, 10, 1))
    """
    if hasattr(k_train_train, "ntk") and hasattr(k_train_train, "nngp"):
        raise TypeError("k_train_train must be one kernel array (e.g. kernels.ntk, or kernels.nngp "
                        "to train only the readout), got a Kernels pair")
    maxiter = check_maxiter(maxiter)
    iterative = _predict_iterative.iterative_requested(solver, k_train_train)
    if iterative:
        system = _iterative_system(k_train_train, "k_train_train", diag_reg,
                                   diag_reg_absolute_scale, tol, maxiter, preconditioner_rank,
                                   progress)
        backend, dtype, n = _predict_linalg.CPU, np.dtype(np.float64), system.n
    else:
        backend = _predict_linalg.backend_for(k_train_train)
        dtype = compute_dtype(k_train_train)
        k = train_kernel(backend, k_train_train, "k_train_train", dtype)
        n = k.shape[0]
        system = KernelSystem(backend, k, regulariser(backend, k, diag_reg, diag_reg_absolute_scale,
                                                      "k_train_train"), "k_train_train")
    y = targets(backend, y_train, n, dtype)
    check_trace_axes(trace_axes, y.ndim)
    eta = real_scalar(learning_rate, "learning_rate", strictly_positive=True)
    scale = loss_scale_value(loss_scale, y.size)
    y2 = flat_targets(y)
    xp = backend.xp

    def predict_fn(t=None, fx_train_0=0.0, fx_test_0=None, k_test_train=None):
        if fx_train_0 is None and fx_test_0 is None:
            raise ValueError("fx_train_0 and fx_test_0 are both None: no predictions requested "
                             "(fx_train_0=None skips the training set, fx_test_0=None the test set)")
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError("fx_test_0 is given but k_test_train is None: test predictions need "
                             "the test-train kernel k_test_train, shape (n_test, n_train)")
        f0 = None if fx_train_0 is None else flat_targets(
            initial_outputs(backend, fx_train_0, tuple(y.shape), dtype, "fx_train_0"))
        k_td = g0 = None
        if fx_test_0 is not None:
            k_td = k_test_train if iterative and _predict_iterative.is_operator(k_test_train) \
                else cross_kernel(backend, k_test_train, n, dtype, "k_test_train")
            g0 = flat_targets(initial_outputs(backend, fx_test_0,
                                              (k_td.shape[0],) + tuple(y.shape[1:]), dtype,
                                              "fx_test_0"))
        # residual at t = 0; with no train outputs, f₀(X) = 0 (neural-tangents' convention)
        r0 = (f0 if f0 is not None else xp.zeros_like(y2)) - y2

        if t is None:
            train = test = None
            if f0 is not None:
                # exact y when Θ̃ is regular; along a numerical null space f keeps f₀
                train = y2 + system.null_projection(r0)
            if k_td is not None:
                test = g0 - _predict_iterative.apply_cross(k_td, system.solve(r0), n, "k_test_train")
            predict_fn.info = getattr(system, "last_info", None)
            return _gd_outputs(train, test, y.ndim)

        times, t_shape = times_array(t)
        with np.errstate(over="ignore"):  # η·t beyond float64 is the end of training, τ = ∞
            tau = eta * times

        def with_time_axes(a):  # (T, ...) -> (*t.shape, ...)
            return None if a is None else a.reshape(t_shape + a.shape[1:])

        if iterative:
            train, test = _iterative_dynamics(system, tau, scale, y2, r0, f0 is not None, k_td, g0)
            predict_fn.info = system.last_info
            return _gd_outputs(with_time_axes(train), with_time_axes(test), y.ndim)
        decay, rise, growth = system.time_factors(tau, scale)
        _, v = system.eig
        r0_eig = system.to_eigenbasis(r0)
        train = test = None
        if f0 is not None:
            train = f0[None] - batched_products(xp, [v], rise, r0_eig)
        if k_td is not None:
            test = g0[None] - _test_products(xp, k_td, v, growth, r0_eig)
        return _gd_outputs(with_time_axes(train), with_time_axes(test), y.ndim)

    predict_fn.info = None
    return predict_fn


def _iterative_system(k, name, diag_reg, absolute, tol, maxiter, preconditioner_rank, progress):
    """The IterativeSystem of a train kernel (operator or array), λ as for the exact path."""
    op = _predict_iterative.as_operator(k, name)
    diag_reg = real_scalar(diag_reg, "diag_reg", minimum=0.0)
    shift = diag_reg
    if diag_reg and not absolute:
        shift = relative_regulariser(diag_reg, float(np.mean(op.diagonal())), name)
    return _predict_iterative.IterativeSystem(op, shift, name=name, tol=tol, maxiter=maxiter,
                                              preconditioner_rank=preconditioner_rank,
                                              progress=progress)


def _iterative_dynamics(system, tau, scale, y2, r0, want_train, k_td, g0):
    """(train (T, n, k) or None, test (T, n_test, k) or None) on the iterative path: finite τ
    from one Lanczos basis, τ = ∞ from the solve exactly as t = None (the Ritz functions have
    no τ = ∞ limit on a singular kernel, and a solve is cheaper), in the order of ``tau``."""
    n, k_cols = y2.shape
    n_times = tau.shape[0]
    system.last_info = None  # t = [] runs no solver
    finite = np.isfinite(tau)
    train = np.empty((n_times, n, k_cols)) if want_train else None
    test = np.empty((n_times, k_td.shape[0], k_cols)) if k_td is not None else None
    growth_r = None
    if finite.any():
        decay_r, growth_r = system.dynamics(tau[finite], scale, r0)  # each (T_finite, n, k)
        if want_train:
            train[finite] = y2[None] + decay_r
    if not finite.all():
        if want_train:
            train[~finite] = y2 + system.null_projection(r0)
        if k_td is not None:
            solved = system.solve(r0)
            # one product with the cross kernel for all times: finite growths and the solve
            growth_r = solved[None] if growth_r is None else np.concatenate([growth_r,
                                                                             solved[None]])
    if k_td is not None and growth_r is not None:
        n_products = growth_r.shape[0]
        stacked = growth_r.transpose(1, 0, 2).reshape(n, n_products * k_cols)
        products = _predict_iterative.apply_cross(k_td, stacked, n, "k_test_train")
        products = products.reshape(-1, n_products, k_cols).transpose(1, 0, 2)
        n_finite = int(finite.sum())
        test[finite] = g0[None] - products[:n_finite]
        if n_finite < n_times:
            test[~finite] = g0 - products[n_finite]
    return train, test


def _test_products(xp, k_td, v, factors, rhs):
    """k_td @ V @ (factors[t] ⊙ rhs) for all t, in the cheaper order: (k_td V) costs
    n_test·n², V (factors ⊙ rhs) costs n²·T·k."""
    if factors.shape[0] * rhs.shape[1] < k_td.shape[0]:
        return batched_products(xp, [k_td, v], factors, rhs)
    return batched_products(xp, [k_td @ v], factors, rhs)


def _gd_outputs(train, test, y_ndim):
    train = None if train is None else unflatten(train, y_ndim)
    test = None if test is None else unflatten(test, y_ndim)
    if train is not None and test is not None:
        return train, test
    return train if train is not None else test


# ----------------------------------------------------------------------------------------------
# gp_inference

class _Posterior:
    """t = ∞ posteriors from the train kernels' Cholesky factors (shared by gp_inference and
    the ensemble's t = None)."""

    def __init__(self, backend, systems, y2, y_ndim):
        self.backend, self.systems, self.y2, self.y_ndim = backend, systems, y2, y_ndim
        self._k_inv_y = {}

    def k_inv_y(self, kernel):
        if kernel not in self._k_inv_y:
            self._k_inv_y[kernel] = self.systems[kernel].solve(self.y2)
        return self._k_inv_y[kernel]

    def mean(self, g, k_td):
        kernel = "ntk" if g == "ntkgp" else g
        if k_td is None:
            # train set: y exactly (along a numerical null space the y component is not fitted)
            return self.y2 - self.systems[kernel].null_projection(self.y2)
        system = self.systems[kernel]
        return _predict_iterative.apply_cross(k_td[kernel], self.k_inv_y(kernel), system.n,
                                              "k_test_train")

    def covariance(self, g, k_td, k_tt, nngp_train):
        """K** − K*ᵀ K̃⁻¹ K* (nngp), Θ** − Θ*ᵀ Θ̃⁻¹ Θ* (ntkgp), and for the trained ensemble
        (ntk) K** + Θ* Θ̃⁻¹ K Θ̃⁻¹ Θ*ᵀ − (Θ* Θ̃⁻¹ K*ᵀ + transpose) (Lee et al. 2019, eq. 16 at
        t = ∞)."""
        xp = self.backend.xp
        if g in ("nngp", "ntkgp"):
            kernel = "ntk" if g == "ntkgp" else "nngp"
            system = self.systems[kernel]
            if k_td is None:
                return xp.zeros((system.n, system.n), dtype=k_tt_dtype(system))
            if isinstance(system, _predict_iterative.IterativeSystem):
                return symmetrize(xp, k_tt[kernel] - k_td[kernel] @ system.solve(k_td[kernel].T))
            w = system.half_solve(k_td[kernel].T)
            return symmetrize(xp, k_tt[kernel] - w.T @ w)
        system = self.systems["ntk"]
        if k_td is None:  # P₀ K P₀: nothing trains along Θ's null space, the prior stays there
            if not system.singular:
                return xp.zeros((system.n, system.n), dtype=k_tt_dtype(system))
            if nngp_train is None:
                raise ValueError("the 'ntk' training-set covariance of a singular NTK needs the "
                                 "NNGP train kernel too: pass ntkfast.Kernels with both kernels")
            projected = system.null_projection(nngp_train)
            return symmetrize(xp, system.null_projection(projected.T))
        a = system.solve(k_td["ntk"].T)  # Θ̃⁻¹ Θ*ᵀ, (n_train, n_test)
        cross = k_td["nngp"] @ a  # K* Θ̃⁻¹ Θ*ᵀ
        k_a = nngp_train.matmat(a) if _predict_iterative.is_operator(nngp_train) else nngp_train @ a
        cov = k_tt["nngp"] + a.T @ k_a - cross - cross.T
        return symmetrize(xp, cov)


def k_tt_dtype(system):
    return system.k.dtype if hasattr(system, "k") else np.float64


def _kernel_field(k, g, name):
    """The g kernel of k: an array stands for any kernel (neural-tangents), else an attribute."""
    if k is None:
        return None
    if hasattr(k, "shape") and hasattr(k, "dtype"):
        return k
    value = getattr(k, g, None)
    if value is None:
        raise ValueError(f"{name} has no {g!r} kernel: pass ntkfast.Kernels (or an object with "
                         f".{g}) holding it")
    return value


def _first_kernel(k):
    if hasattr(k, "shape") and hasattr(k, "dtype"):
        return k
    for g in ("ntk", "nngp"):
        value = getattr(k, g, None)
        if value is not None:
            return value
    raise TypeError("k_train_train must be an array or ntkfast.Kernels with an 'nngp' and/or "
                    f"'ntk' array, got {type(k).__name__}")


def gp_inference(k_train_train, y_train, diag_reg=0.0, diag_reg_absolute_scale=False,
                 trace_axes=(-1,), *, solver="auto", tol=None, maxiter=None,
                 preconditioner_rank=None, progress=False):
    r"""Posteriors at t = ∞: the NNGP (Bayesian), the trained ensemble (NTK) and the NTKGP.

    With K the NNGP and Θ the NTK, K̃ = K + λI, Θ̃ = Θ + λI, * the test points:

    * 'nngp': mean K*ᵀ K̃⁻¹ Y, covariance K** − K*ᵀ K̃⁻¹ K* (exact Bayesian inference in the
      infinitely wide network, observation noise λ);
    * 'ntk': mean Θ*ᵀ Θ̃⁻¹ Y, covariance K** + Θ*ᵀ Θ̃⁻¹ K Θ̃⁻¹ Θ* − (Θ*ᵀ Θ̃⁻¹ K* + transpose):
      the output distribution of an infinite ensemble of infinitely wide networks trained by
      gradient flow to convergence (Lee et al. 2019, eq. 16 at t = ∞);
    * 'ntkgp': mean Θ*ᵀ Θ̃⁻¹ Y, covariance Θ** − Θ*ᵀ Θ̃⁻¹ Θ* (a GP with the NTK as its prior,
      He et al. 2020).

    Solves use one Cholesky factorisation per kernel (cached); a numerically singular K̃ falls
    back to its eigendecomposition's pseudo-inverse (finite outputs).

    Parameters
    ----------
    k_train_train : ntkfast.Kernels or array, shape (n_train, n_train)
        Train kernels. A plain array is used for whichever kernel ``get`` asks for. 'ntk' with
        covariances needs both kernels.
    y_train : array, shape (n_train, n_outputs) or (n_train,)
    diag_reg, diag_reg_absolute_scale, trace_axes
        As for :func:`gradient_descent_mse`.
    solver, tol, maxiter, preconditioner_rank, progress
        As for :func:`gradient_descent_mse`: with operators (``ntkfast.KernelOperator``, alone
        or in ``ntkfast.Kernels``) every solve is a preconditioned CG; ``k_test_train`` may then
        be a cross operator for the means, and must be an array (n_test × n_train, moderate
        n_test: one CG right-hand side per test point) for covariances.

    Returns
    -------
    predict_fn : callable(get=None, k_test_train=None, k_test_test=None)
        ``get``: 'nngp', 'ntk', 'ntkgp' or a tuple of them (None = ('nngp', 'ntk')).
        ``k_test_train``: Kernels (or array) of shape (n_test, n_train); None gives the
        training set's outputs (Y, zero covariance). ``k_test_test``: Kernels (or array)
        (n_test, n_test) -- the NNGP for 'nngp' and 'ntk', the NTK for 'ntkgp'; given, each
        result is a :class:`Gaussian` (mean, covariance), else the mean alone. On the training
        set (``k_test_train=None``) pass ``k_test_test=True`` for the covariance
        (neural-tangents' convention); a kernel there is a ValueError. A str ``get`` returns
        one result, a tuple a namedtuple ``Gaussians`` keyed by kernel name.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> rng = np.random.default_rng(0)
    >>> x, x_test = rng.standard_normal((30, 4)), rng.standard_normal((5, 4))
    >>> y = np.sin(x[:, :1])
    >>> net = ntkfast.MLP(2, "erf", W_std=1.5, b_std=0.1)
    >>> fn = ntkfast.predict.gp_inference(ntkfast.gram(x, net=net), y, diag_reg=1e-4)
    >>> post = fn("nngp", ntkfast.gram(x_test, x, net=net), ntkfast.gram(x_test, net=net))
    >>> post.mean.shape, post.covariance.shape
    ((5, 1), (5, 5))
    """
    maxiter = check_maxiter(maxiter)
    k_first = _first_kernel(k_train_train)
    iterative = _predict_iterative.iterative_requested(solver, k_first)
    if iterative:
        backend, dtype = _predict_linalg.CPU, np.dtype(np.float64)
        prepare = lambda k, name: _predict_iterative.as_operator(k, name)  # noqa: E731
    else:
        backend = _predict_linalg.backend_for(k_first)
        dtype = compute_dtype(k_first)
        prepare = lambda k, name: train_kernel(backend, k, name, dtype)  # noqa: E731
    trains, labels = {}, {}
    if k_first is k_train_train:  # one array stands for whichever kernel get asks for
        shared = prepare(k_train_train, "k_train_train")
        trains = {"nngp": shared, "ntk": shared}
        labels = {"nngp": "k_train_train", "ntk": "k_train_train"}
    else:
        for g in ("nngp", "ntk"):
            field = getattr(k_train_train, g, None)
            if field is not None:
                labels[g] = f"k_train_train ({g})"
                trains[g] = prepare(field, labels[g])
    n = next(iter(trains.values())).shape[0]
    shapes = {tuple(k.shape) for k in trains.values()}
    if len(shapes) > 1:
        raise ValueError(f"k_train_train: the nngp and ntk kernels differ in shape: {sorted(shapes)}")
    y = targets(backend, y_train, n, dtype)
    check_trace_axes(trace_axes, y.ndim)
    diag_reg = real_scalar(diag_reg, "diag_reg", minimum=0.0)
    solver_options = dict(tol=tol, maxiter=maxiter, preconditioner_rank=preconditioner_rank,
                          progress=progress) if iterative else None
    systems = _LazySystems(backend, trains, diag_reg, diag_reg_absolute_scale, labels,
                           solver_options)
    posterior = _Posterior(backend, systems, flat_targets(y), y.ndim)

    def predict_fn(get=None, k_test_train=None, k_test_test=None):
        names, single = parse_get(get, ("nngp", "ntk", "ntkgp"))
        if k_test_train is None and k_test_test is not None and k_test_test is not True:
            # a test-test kernel without k_test_train would silently give the training set's
            # posterior; only neural-tangents' flag k_test_test=True asks for that
            raise ValueError(
                "k_test_test is a kernel but k_test_train is None: the test posterior needs the "
                "test-train kernel k_test_train, shape (n_test, n_train); for the training "
                "set's covariance pass k_test_train=None, k_test_test=True")
        needed = _gp_dependencies(names, k_test_test is not None and k_test_train is not None)
        for g in needed:
            if g not in trains:
                raise ValueError(f"get={get!r} needs the {g!r} train kernel, which k_train_train "
                                 "does not hold: pass ntkfast.Kernels with both kernels")
        k_td = k_tt = None
        if k_test_train is not None:
            k_td = {}
            for g in needed:
                field = _kernel_field(k_test_train, g, "k_test_train")
                if iterative and _predict_iterative.is_operator(field):
                    if k_test_test is not None:
                        raise ValueError("covariances on the iterative path need k_test_train as "
                                         "an array (n_test, n_train), not an operator: one CG "
                                         "right-hand side per test point")
                    k_td[g] = field
                else:
                    k_td[g] = cross_kernel(backend, field, n, dtype, f"k_test_train ({g})")
            sizes = {a.shape[0] for a in k_td.values()}
            if len(sizes) > 1:
                raise ValueError(f"k_test_train: the kernels differ in their number of test rows: "
                                 f"{sorted(sizes)}")
            m = sizes.pop()
            if k_test_test is not None:
                k_tt = {}
                for g in names:
                    prior = "ntk" if g == "ntkgp" else "nngp"
                    if prior not in k_tt:
                        k_tt[prior] = square_test_kernel(
                            backend, _kernel_field(k_test_test, prior, "k_test_test"), m, dtype,
                            f"k_test_test ({prior})")
        values = {}
        for g in names:
            mean = unflatten(posterior.mean(g, k_td), y.ndim)
            if k_test_test is None:
                values[g] = mean
            else:
                values[g] = Gaussian(mean, posterior.covariance(g, k_td, k_tt, trains.get("nngp")))
        return package(names, single, values)

    return predict_fn


def _gp_dependencies(names, test_covariance):
    needed = []
    for g in names:
        kernel = "ntk" if g == "ntkgp" else g
        if kernel not in needed:
            needed.append(kernel)
        if g == "ntk" and test_covariance and "nngp" not in needed:
            needed.append("nngp")
    return tuple(needed)


class _LazySystems(dict):
    """kernel name -> KernelSystem, built on first access (the regulariser of each kernel is
    relative to its own diagonal, as in neural-tangents)."""

    def __init__(self, backend, trains, diag_reg, absolute, labels, solver_options=None):
        super().__init__()
        self.backend, self.trains, self.diag_reg, self.absolute = backend, trains, diag_reg, absolute
        self.labels = labels  # kernel name -> the argument it came from, for error messages
        self.solver_options = solver_options  # None: exact systems; else iterative ones

    def __missing__(self, name):
        k = self.trains[name]
        for other, system in self.items():
            if self.trains[other] is k:  # one array standing for both kernels: factor it once
                break
        else:
            if self.solver_options is not None:
                system = _iterative_system(k, self.labels[name], self.diag_reg, self.absolute,
                                           **self.solver_options)
            else:
                system = KernelSystem(self.backend, k, regulariser(
                    self.backend, k, self.diag_reg, self.absolute, self.labels[name]),
                    self.labels[name])
        self[name] = system
        return system


# ----------------------------------------------------------------------------------------------
# gradient_descent_mse_ensemble

def gradient_descent_mse_ensemble(net, x_train, y_train, learning_rate=1.0, diag_reg=0.0,
                                  diag_reg_absolute_scale=False, trace_axes=(-1,), *,
                                  loss_scale="mean", solver="auto", tol=None, maxiter=None,
                                  preconditioner_rank=None, **gram_options):
    r"""Mean and covariance of an infinite ensemble of wide networks trained by gradient flow.

    The outputs at initialisation are a GP with the NNGP kernel K; training with kernel
    Θ_g (g = 'ntk': all layers; g = 'nngp': only the readout, Θ_g = K) for time t gives, with
    T_t = Θ̃⁻¹(I − e^{−Θ̃τ/N}), τ = η t, N = y_train.size (Lee et al. 2019, eq. 16):

    .. math::
        \mu_t(x^*) &= \Theta(x^*, X)\, T_t\, Y \\
        \Sigma_t(x^*) &= K^{**} + \Theta^* T_t K T_t^\top \Theta^{*\top}
                        - (\Theta^* T_t K^{*\top} + K^* T_t^\top \Theta^{*\top})

    and for g = 'nngp' Σ_t = K** − K* K̃⁻¹(I − e^{−2K̃τ/N}) K*ᵀ. On the training set
    (``x_test=None``): μ_t = (I − e^{−Θ̃τ/N}) Y, Σ_t = e^{−Θ̃τ/N} K e^{−Θ̃τ/N} ('ntk') or
    V diag(μ₊ e^{−2μ₊τ/N}) Vᵀ ('nngp', from K̃'s eigenpairs, as neural-tangents). t = None
    gives :func:`gp_inference`'s posteriors.

    The kernels come from :func:`ntkfast.gram` (train-train once, cached; test kernels cached
    for the last test set); one ``eigh`` per train kernel serves every t and test set, and all
    times are evaluated as one batched product for the means (covariances: a few GEMMs per t).

    Parameters
    ----------
    net : ntkfast network or callable
        ``ntkfast.MLP(...)``/``ntkfast.serial(...)``, or a neural-tangents style
        ``kernel_fn(x1, x2, get)`` returning an object with ``.nngp``/``.ntk`` arrays.
    x_train : array, shape (n_train, n_features)
        NumPy (CPU) or CuPy (GPU) array.
    y_train : array, shape (n_train, n_outputs) or (n_train,)
    learning_rate, diag_reg, diag_reg_absolute_scale, trace_axes, loss_scale
        As for :func:`gradient_descent_mse`.
    solver, tol, maxiter, preconditioner_rank
        As for :func:`gradient_descent_mse`. The iterative path ('cg' or 'lanczos') never forms
        the train kernels: they are :class:`ntkfast.KernelOperator` objects (storage chosen from
        the available memory), test kernels are computed as (n_test, n_train) arrays. It gives
        means at any t, and covariances at t = None (one CG right-hand side per test point);
        ``compute_cov=True`` at finite t is a ValueError there (it needs the N×N
        eigendecomposition). 'auto' (default) takes the exact path when the kernels and their
        eigendecomposition fit in half the available memory, else the iterative one.
    **gram_options
        Passed to :func:`ntkfast.gram`: ``dtype``, ``backend``, ``num_threads``,
        ``check_finite``, ``progress``, ``tile_size``.

    Returns
    -------
    predict_fn : callable(t=None, x_test=None, get=None, compute_cov=False)
        ``t``: None (= ∞), a number ≥ 0 or an array of them (leading axes t.shape).
        ``x_test``: (n_test, n_features), or None for the training set (unregularised at
        t = None; pass x_test=x_train for the regularised one). ``get``: 'nngp', 'ntk' or a
        tuple (None = both). With ``compute_cov`` each result is a :class:`Gaussian` with mean
        ``(*t.shape, n, n_outputs)`` and covariance ``(*t.shape, n, n)``, else the mean alone; a str
        ``get`` returns one result, a tuple a namedtuple ``Gaussians`` keyed by kernel name.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> rng = np.random.default_rng(0)
    >>> x, x_test = rng.standard_normal((60, 8)), rng.standard_normal((20, 8))
    >>> y = np.sign(x[:, :1])
    >>> fn = ntkfast.predict.gradient_descent_mse_ensemble(ntkfast.MLP(3, "relu", W_std=1.5), x, y)
    >>> out = fn(t=[10.0, 100.0, 1e4], x_test=x_test, compute_cov=True)
    >>> out.ntk.mean.shape, out.ntk.covariance.shape
    ((3, 20, 1), (3, 20, 20))
    """
    unknown = sorted(set(gram_options) - set(GRAM_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {unknown}: gradient_descent_mse_ensemble "
                        f"passes only {GRAM_OPTIONS} on to ntkfast.gram")
    kernel_fn = _kernel_function(net, gram_options)
    check_finite = gram_options.get("check_finite", True)
    x_train_checked = check_points(x_train, "x_train", check_finite)
    n = x_train_checked.shape[0]
    if n == 0:
        raise ValueError("x_train is empty: predictions need at least one training point")
    if not is_cupy(y_train):  # check the targets now, not after the kernels are computed
        y_train = as_array(_predict_linalg.CPU, y_train, "y_train", None, ndim=(1, 2))
    y_shape = tuple(y_train.shape)
    if len(y_shape) not in (1, 2) or y_shape[0] != n:
        raise ValueError(f"y_train must have shape (n_train, n_outputs) or (n_train,) with "
                         f"n_train = {n} (x_train has shape {tuple(x_train_checked.shape)}), got "
                         f"shape {y_shape}")
    check_trace_axes(trace_axes, len(y_shape))
    eta = real_scalar(learning_rate, "learning_rate", strictly_positive=True)
    diag_reg = real_scalar(diag_reg, "diag_reg", minimum=0.0)
    maxiter = check_maxiter(maxiter)
    scale = loss_scale_value(loss_scale, int(np.prod(y_shape)))
    if _ensemble_is_iterative(solver, net, n, is_cupy(x_train_checked)):
        return _iterative_ensemble(net, x_train_checked, y_train, eta, diag_reg,
                                   bool(diag_reg_absolute_scale), loss_scale, check_finite,
                                   dict(tol=tol, maxiter=maxiter,
                                        preconditioner_rank=preconditioner_rank,
                                        progress=bool(gram_options.get("progress", False))),
                                   gram_options)
    state = _EnsembleState(kernel_fn, x_train_checked, y_train, diag_reg,
                           bool(diag_reg_absolute_scale))

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False):
        names, single = parse_get(get, ("nngp", "ntk"))
        compute_cov = bool(compute_cov)
        needed = tuple(g for g in ("nngp", "ntk")
                       if g in names or (g == "nngp" and "ntk" in names and compute_cov))
        state.ensure_train(needed)
        k_td = k_tt = None
        if x_test is not None:
            x_test_checked = check_points(x_test, "x_test", check_finite)
            if x_test_checked.shape[1] != x_train_checked.shape[1]:
                raise ValueError(f"x_test must have the {x_train_checked.shape[1]} features of "
                                 f"x_train, got shape {tuple(x_test_checked.shape)}")
            k_td, k_tt = state.test_kernels(x_test_checked, needed, compute_cov)

        if t is None:
            values = {}
            for g in names:
                mean = unflatten(state.posterior.mean(g, k_td), state.y_ndim)
                if compute_cov:
                    cov = state.posterior.covariance(g, k_td, k_tt, state.trains.get("nngp"))
                    values[g] = Gaussian(mean, cov)
                else:
                    values[g] = mean
            return package(names, single, values)

        times, t_shape = times_array(t)
        with np.errstate(over="ignore"):  # η·t beyond float64 is the end of training, τ = ∞
            tau = eta * times
        values = {}
        for g in names:
            mean, cov = _ensemble_finite(state, g, tau, scale, k_td, k_tt, compute_cov)
            mean = unflatten(mean.reshape(t_shape + mean.shape[1:]), state.y_ndim)
            if compute_cov:
                values[g] = Gaussian(mean, cov.reshape(t_shape + cov.shape[1:]))
            else:
                values[g] = mean
        return package(names, single, values)

    return predict_fn


def _ensemble_is_iterative(solver, net, n, on_gpu):
    """'cg'/'lanczos' ask for it; 'auto' takes it when two n×n kernels plus an eigh workspace
    (~6 n² doubles) would not fit in half the available memory. CuPy points stay on the GPU's
    eigh path (the iterative solvers run on the CPU): 'auto' keeps them there."""
    from ._layers import Layer
    from ._validation import available_memory

    solver = _predict_iterative.check_solver(solver)
    if solver == "eigh" or (on_gpu and solver == "auto"):
        return False
    if on_gpu:
        raise TypeError(f"x_train: solver={solver!r} runs on the CPU, and x_train is a CuPy array; "
                        "pass NumPy points (backend='cuda' still computes the kernels on the "
                        "GPU), or solver='eigh' (or 'auto') for the GPU's eigh path")
    if solver == "auto":
        free = available_memory()
        if free is None or 6 * 8 * n * n <= 0.5 * free:
            return False
    if not isinstance(net, Layer):
        raise ValueError("the iterative path needs an ntkfast network (it computes kernels as "
                         "operators), not a kernel_fn callable; pass solver='eigh'")
    return True


def _iterative_ensemble(net, x_train, y_train, eta, diag_reg, absolute, loss_scale,
                        check_finite, solver_options, gram_options):
    """gradient_descent_mse_ensemble's predict_fn on the iterative path (docstring there)."""
    from ._operator import KernelOperator

    options = {k: v for k, v in gram_options.items() if k != "progress"}
    ops = {}

    def train_operator(g):
        if g not in ops:
            ops[g] = KernelOperator(x_train, net=net, get=g, **options)
        return ops[g]

    def test_kernel(x_test, g):
        return KernelOperator(x_test, x_train, net=net, get=g, storage="recompute", **options)

    gd_fns = {}

    def predict_fn(t=None, x_test=None, get=None, compute_cov=False):
        names, single = parse_get(get, ("nngp", "ntk"))
        x_test_checked = None
        if x_test is not None:
            x_test_checked = check_points(x_test, "x_test", check_finite)
            if x_test_checked.shape[1] != x_train.shape[1]:
                raise ValueError(f"x_test must have the {x_train.shape[1]} features of x_train, "
                                 f"got shape {tuple(x_test_checked.shape)}")
        if t is None:
            needed = _gp_dependencies(names, compute_cov and x_test is not None)
            trains = Kernels(**{g: train_operator(g) if g in needed else None
                                for g in ("nngp", "ntk")})
            fn = gp_inference(trains, y_train, diag_reg, absolute, solver="cg", **solver_options)
            k_td = k_tt = None
            if x_test_checked is not None:
                from ._gram import gram

                if compute_cov:
                    k_td = gram(x_test_checked, x_train, net=net, get=tuple(needed), **options)
                    k_tt = gram(x_test_checked, net=net, get=("nngp", "ntk"), **options)
                else:
                    k_td = Kernels(**{g: test_kernel(x_test_checked, g) if g in needed else None
                                      for g in ("nngp", "ntk")})
            result = fn(get=names, k_test_train=k_td,
                        k_test_test=(k_tt if x_test is not None else True) if compute_cov else None)
            return result[0] if single else result
        if compute_cov:
            raise ValueError("compute_cov=True at finite t needs the N×N eigendecomposition; on "
                             "the iterative path covariances are available at t=None, or pass "
                             "solver='eigh'")
        values = {}
        for g in names:
            if g not in gd_fns:
                gd_fns[g] = gradient_descent_mse(train_operator(g), y_train, eta, diag_reg, absolute,
                                                 loss_scale=loss_scale, solver="lanczos",
                                                 **solver_options)
            if x_test_checked is None:
                values[g] = gd_fns[g](t=t, fx_train_0=0.0)
            else:
                values[g] = gd_fns[g](t=t, fx_train_0=None, fx_test_0=0.0,
                                      k_test_train=test_kernel(x_test_checked, g))
        return package(names, single, values)

    return predict_fn


def _kernel_function(net, gram_options):
    """kernel_fn(x1, x2, names) -> {name: array} for an ntkfast network or an NT kernel_fn."""
    from ._layers import Layer

    if isinstance(net, Layer):
        from ._gram import gram

        def kernel_fn(x1, x2, names):
            result = gram(x1, x2, net=net, get=tuple(names), **gram_options)
            return {g: getattr(result, g) for g in names}

        return kernel_fn
    if callable(net):
        if gram_options:
            raise TypeError(f"{sorted(gram_options)} are options of ntkfast.gram; they cannot be "
                            "used with a kernel_fn callable")

        def kernel_fn(x1, x2, names):
            result = net(x1, x2, tuple(names))
            out = {}
            for g in names:
                value = getattr(result, g, None)
                if value is None:
                    raise ValueError(f"kernel_fn returned no {g!r} kernel (got "
                                     f"{type(result).__name__})")
                out[g] = value
            return out

        return kernel_fn
    raise TypeError("net must be an ntkfast network (e.g. ntkfast.MLP(3)) or a kernel_fn(x1, x2, "
                    f"get) callable, got {type(net).__name__}")


class _EnsembleState:
    """Kernels (train cached forever, test for the last x_test), their systems and projections."""

    def __init__(self, kernel_fn, x_train, y_train, diag_reg, absolute):
        self.kernel_fn, self.x_train, self.y_train_input = kernel_fn, x_train, y_train
        self.diag_reg, self.absolute = diag_reg, absolute
        self.trains = {}
        self.backend = self.dtype = self.systems = self.posterior = self.y2 = None
        self.y_ndim = y_train.ndim
        self._test_key = None
        self._test = ({}, {})
        self._nngp_in_ntk_basis = None

    def ensure_train(self, names):
        missing = [g for g in names if g not in self.trains]
        if not missing:
            return
        computed = self.kernel_fn(self.x_train, None, missing)
        n = self.x_train.shape[0]
        for g in missing:
            if self.backend is None:  # the kernels' array library decides CPU or GPU
                self.backend = _predict_linalg.backend_for(computed[g])
                self.dtype = compute_dtype(computed[g])
            k = train_kernel(self.backend, computed[g], f"the {g} kernel of x_train", self.dtype)
            if k.shape != (n, n):
                raise ValueError(f"the {g} kernel of x_train has shape {tuple(k.shape)}, "
                                 f"expected ({n}, {n})")
            self.trains[g] = k
        if self.systems is None:
            y = targets(self.backend, self.y_train_input, self.x_train.shape[0], self.dtype,
                        kernel_name="x_train")
            self.y2 = flat_targets(y)
            self.systems = _LazySystems(self.backend, self.trains, self.diag_reg, self.absolute,
                                        {g: f"the {g} kernel of x_train" for g in ("nngp", "ntk")})
            self.posterior = _Posterior(self.backend, self.systems, self.y2, self.y_ndim)

    def test_kernels(self, x_test, names, compute_cov):
        key = _content_key(x_test)
        if key != self._test_key:
            self._test_key, self._test = key, ({}, {})
        k_td, k_tt = self._test
        missing = [g for g in names if g not in k_td]
        if missing:
            computed = self.kernel_fn(x_test, self.x_train, missing)
            for g in missing:
                k_td[g] = cross_kernel(self.backend, computed[g], self.x_train.shape[0],
                                       self.dtype, f"the {g} kernel of (x_test, x_train)")
        if compute_cov and "nngp" not in k_tt:
            computed = self.kernel_fn(x_test, None, ("nngp",))
            k_tt["nngp"] = square_test_kernel(self.backend, computed["nngp"], x_test.shape[0],
                                              self.dtype, "the nngp kernel of x_test")
        return k_td, (k_tt if compute_cov else None)

    def nngp_in_ntk_basis(self):
        """M = Vᵀ K V with Θ̃ = V diag(μ) Vᵀ (the NTK ensemble's covariance terms), cached."""
        if self._nngp_in_ntk_basis is None:
            v = self.systems["ntk"].eig[1]
            self._nngp_in_ntk_basis = symmetrize(self.backend.xp, v.T @ (self.trains["nngp"] @ v))
        return self._nngp_in_ntk_basis


def _content_key(x):
    """Identity of a point set by content (shape, dtype, bytes): in-place edits miss no cache."""
    host = np.ascontiguousarray(x.get() if is_cupy(x) else x)
    digest = hashlib.blake2b(host.view(np.uint8).reshape(-1), digest_size=16).hexdigest()
    return (tuple(host.shape), str(host.dtype), digest)


def _ensemble_finite(state, g, tau, scale, k_td, k_tt, compute_cov):
    """(mean (T, n, k), covariance (T, n, n) or None) of the g-trained ensemble at times τ."""
    xp = state.backend.xp
    system = state.systems[g]
    _, v = system.eig
    decay, rise, growth = system.time_factors(tau, scale)
    y_eig = system.to_eigenbasis(state.y2, key="y")
    n_times = decay.shape[0]

    if k_td is None:  # the training set
        mean = batched_products(xp, [v], rise, y_eig)
        if not compute_cov:
            return mean, None
        cov = xp.empty((n_times, system.n, system.n), dtype=v.dtype)
        if g == "nngp":
            mu_pos = xp.maximum(system.eig[0], 0.0)
            for i in range(n_times):  # V diag(μ₊ e^{−2μ₊τ/N}) Vᵀ, one GEMM per time
                scaled = v * (mu_pos * decay[i] ** 2)[None, :]
                cov[i] = symmetrize(xp, scaled @ v.T)
        else:
            m_basis = state.nngp_in_ntk_basis()
            for i in range(n_times):  # e^{−Θ̃τ/N} K e^{−Θ̃τ/N} = (V D) M (V D)ᵀ
                vd = v * decay[i][None, :]
                cov[i] = symmetrize(xp, vd @ (m_basis @ vd.T))
        return mean, cov

    k_g = k_td[g]
    if not compute_cov:
        return _test_products(xp, k_g, v, growth, y_eig), None
    b = k_g @ v  # Θ* V, (n_test, n_train)
    mean = batched_products(xp, [b], growth, y_eig)
    n_test = b.shape[0]
    cov = xp.empty((n_times, n_test, n_test), dtype=v.dtype)
    if g == "nngp":
        _, _, growth2 = system.time_factors(2 * tau, scale)  # K̃⁻¹(I − e^{−2K̃τ/N})
        for i in range(n_times):
            cov[i] = symmetrize(xp, k_tt["nngp"] - (b * growth2[i][None, :]) @ b.T)
        return mean, cov
    q = v.T @ k_td["nngp"].T  # Vᵀ K*ᵀ, (n_train, n_test)
    n = system.n
    # Θ* T_t K T_tᵀ Θ*ᵀ via M = Vᵀ K V (2n³ once, then n_test·n² per t) or directly
    # (2·n_test·n² per t): whichever costs less for this many times.
    use_basis = state._nngp_in_ntk_basis is not None or 2 * n < n_times * n_test
    for i in range(n_times):
        bg = b * growth[i][None, :]  # Θ* V diag(g_t) = Θ* T_t V
        if use_basis:
            middle = bg @ (state.nngp_in_ntk_basis() @ bg.T)
        else:
            a_t = bg @ v.T  # Θ* T_t, (n_test, n_train)
            middle = a_t @ (state.trains["nngp"] @ a_t.T)
        cross = bg @ q  # Θ* T_t K*ᵀ
        cov[i] = symmetrize(xp, k_tt["nngp"] + middle - cross - cross.T)
    return mean, cov


# ----------------------------------------------------------------------------------------------
# max_learning_rate

def max_learning_rate(ntk_train_train, y_train_size=None, momentum=0.0, eps=1e-12):
    r"""The largest learning rate for which full-batch gradient descent on the MSE converges.

    Discrete steps f ← f − (η/N) Θ (f − y) contract iff η λ_max(Θ)/N < 2, so
    η_max = 2 (1 + momentum) N / (λ_max + eps) (neural-tangents' formula; momentum as in
    "Why Momentum Really Works"). A kernel whose largest eigenvalue is 0 (the zero kernel:
    gradient descent never moves the outputs) has no unstable rate, and the result is ``inf``
    for every n_train and eps, not the artefact 2N/eps.

    Parameters
    ----------
    ntk_train_train : array, shape (n_train, n_train)
        Symmetric NTK on the training set (NumPy or CuPy).
    y_train_size : int, optional
        N = y_train.size, the loss normalisation. None uses n_train (neural-tangents' default).
        For the ½·sum loss (``loss_scale='sum'``) pass 1.
    momentum : float
        In [0, 1).
    eps : float
        ≥ 0, added to λ_max (neural-tangents' safeguard); eps = 0 is allowed.

    Returns
    -------
    float
        η_max > 0; ``inf`` when λ_max = 0 (or when 2 (1 + momentum) N / (λ_max + eps)
        exceeds the float64 range).

    Raises
    ------
    ValueError
        ``ntk_train_train`` is not a square, symmetric, finite, positive semi-definite array;
        ``y_train_size``, ``momentum`` or ``eps`` out of range.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((40, 6))
    >>> ntk = ntkfast.gram(x, net=ntkfast.MLP(2, "relu"), get="ntk")
    >>> eta = ntkfast.predict.max_learning_rate(ntk)
    >>> bool(np.isclose(eta, 2 * 40 / (np.linalg.eigvalsh(ntk)[-1] + 1e-12)))
    True
    """
    backend = _predict_linalg.backend_for(ntk_train_train)
    dtype = compute_dtype(ntk_train_train)
    k = train_kernel(backend, ntk_train_train, "ntk_train_train", dtype)
    if y_train_size is None:
        factor = k.shape[0]
    elif (isinstance(y_train_size, bool) or not isinstance(y_train_size, numbers.Integral)
          or y_train_size < 1):
        raise ValueError(f"y_train_size must be a positive integer or None, got {y_train_size!r}")
    else:
        factor = int(y_train_size)
    momentum = real_scalar(momentum, "momentum", minimum=0.0)
    if momentum >= 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    eps = real_scalar(eps, "eps", minimum=0.0)
    top = _largest_eigenvalue(backend, k, "ntk_train_train")
    if top <= 0.0:  # a PSD kernel with λ_max ≤ 0 (round-off) is zero: every rate is stable
        return float("inf")
    with np.errstate(over="ignore"):  # a denormal λ_max: the rate is beyond float64, inf
        return float(np.float64(2.0 * (1.0 + momentum) * factor) / np.float64(top + eps))


def _largest_eigenvalue(backend, k, name):
    """λ_max of the kernel k, which is checked to be positive semi-definite: fully where all
    eigenvalues are cheap (n <= 512, or the GPU's eigvalsh), else through the necessary
    conditions λ_max >= 0 and diag(k) >= 0 (every diagonal entry is a Rayleigh quotient, so a
    negative one bounds λ_min from above)."""
    n = k.shape[0]
    eps = float(np.finfo(k.dtype).eps)
    if backend.name != "numpy":
        w = backend.xp.linalg.eigvalsh(k)
        check_psd(float(w[0]), float(w[-1]), n, eps, name)
        return float(w[-1])
    if n <= 512:
        import scipy.linalg

        w = scipy.linalg.eigh(k, eigvals_only=True, check_finite=False, driver="evd")
        check_psd(float(w[0]), float(w[-1]), n, eps, name)
        return float(w[-1])
    diag = np.diagonal(k)
    if not diag.any() and not np.any(k):  # ARPACK stops on the zero kernel (A·v0 = 0)
        return 0.0
    top = _lanczos_top(k)
    i = int(diag.argmin())
    lowest = min(top, float(diag[i]))
    if lowest < -psd_tolerance(n, eps, max(abs(top), abs(lowest))):
        found = (f"its largest eigenvalue is {top:.6g}" if top <= lowest else
                 f"its diagonal entry {name}[{i}, {i}] = {float(diag[i]):.6g} is negative, so "
                 "it has an eigenvalue at most that")
        raise ValueError(f"{name} must be positive semi-definite (a kernel matrix), but {found}")
    return top


def _lanczos_top(k):
    n = k.shape[0]
    # Lanczos: O(n²) per iteration instead of an O(n³) tridiagonalisation; the top eigenvalue
    # of a kernel matrix is well separated, so a few dozen iterations reach machine precision.
    from scipy.sparse.linalg import eigsh

    start = np.random.default_rng(0).standard_normal(n).astype(k.dtype)
    return float(eigsh(k, k=1, which="LA", v0=start, tol=0.0, return_eigenvectors=False)[0])
