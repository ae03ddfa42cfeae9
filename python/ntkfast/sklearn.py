"""scikit-learn estimators and Gaussian-process kernels for infinitely wide networks.

Needs scikit-learn >= 1.6 (``pip install "ntkfast[sklearn]"``); ``import ntkfast`` alone never
imports it.

* :class:`NTKRegressor` / :class:`NNGPRegressor`: the mean of the infinite ensemble of infinitely
  wide networks trained by gradient descent on the MSE (all layers: NTK; only the readout: NNGP),
  at the end of training (``t=None``: kernel regression) or at a training time ``t``
  (Lee et al. 2019, eq. 16), with ``predict(X, return_std=True)`` for the ensemble's (NTK) or the
  posterior's (NNGP) standard deviation. Multi-output targets share one kernel.
* :class:`NTKClassifier` / :class:`NNGPClassifier`: the same regression on centred one-hot targets
  (one ±1 column for two classes), as in the NTK papers (Lee et al. 2019; Arora et al. 2019);
  ``decision_function`` is the regression output and ``predict_proba`` the fraction of the
  infinite ensemble (NTK) or the posterior probability (NNGP) that a class's output is the
  largest.
* :class:`NNGPKernel` / :class:`NTKKernel`: ``sklearn.gaussian_process.kernels.Kernel`` objects,
  computed whole-matrix by :func:`ntkfast.gram`, with σw and σb as hyperparameters and their exact
  gradients, so that ``GaussianProcessRegressor`` fits them by maximising the marginal likelihood
  and ``SVC``/``KernelRidge`` call them once per fit instead of once per pair of rows.

Parameters are validated in ``fit`` (or when a kernel is first evaluated), following
scikit-learn's developer guide; an invalid one raises a ``ValueError`` (also a ``TypeError``)
that names it. See the guide in ``docs/sklearn.md``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.gaussian_process.kernels import Hyperparameter, Kernel
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as _error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "ntkfast.sklearn needs scikit-learn >= 1.6 (validate_data, __sklearn_tags__): install "
        "the extra with pip install \"ntkfast[sklearn]\" (or pip install \"scikit-learn>=1.6\"); "
        f"the import failed with: {_error}") from _error

from scipy import special

from . import _kernel_grad
from . import predict as _predict
from ._gram import diagonal as _diagonal
from ._gram import gram as _gram
from ._layers import Layer, MLP, _Activation, activation_from_name
from ._validation import (available_memory, check_real_dtype, read_array,
                          reject_non_finite)

__all__ = ["NTKRegressor", "NNGPRegressor", "NTKClassifier", "NNGPClassifier", "NNGPKernel",
           "NTKKernel"]

#: Entries of one test-train kernel block computed at a time in predict (~64 MB in float64).
_PREDICT_BLOCK_ENTRIES = 1 << 23
#: Test points per posterior-covariance call (each call forms a block × block covariance).
_COVARIANCE_BLOCK = 512
#: Gauss–Hermite nodes for the multiclass predict_proba integral.
_QUADRATURE_NODES = 64
_SOLVERS = ("auto", "eigh", "cg", "lanczos")
_BACKENDS = ("auto", "cpu", "cuda")


# ----------------------------------------------------------------------------------------------
# Parameter validation (in fit, per scikit-learn's developer guide).

class _InvalidParameterError(ValueError, TypeError):
    """A parameter of the wrong type or value (scikit-learn's convention: both a ValueError and a
    TypeError, the message naming the parameter)."""


def _invalid(owner, name, expected, value):
    return _InvalidParameterError(f"The {name!r} parameter of {owner} must be {expected}. "
                                  f"Got {value!r} instead.")


def _check_int(owner, name, value, minimum, maximum=None, allow_none=False):
    if value is None and allow_none:
        return None
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    expected = f"an int {bounds}" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _invalid(owner, name, expected, value)
    if value < minimum or (maximum is not None and value > maximum):
        raise _invalid(owner, name, expected, value)
    return int(value)


def _check_real(owner, name, value, minimum=None, allow_none=False, allow_inf=False,
                strict=False):
    if value is None and allow_none:
        return None
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
    expected = f"a {'' if allow_inf else 'finite '}real number{bound}" + \
        (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _invalid(owner, name, expected, value)
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise _invalid(owner, name, expected, value)
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        raise _invalid(owner, name, expected, value)
    return value


def _check_choice(owner, name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise _invalid(owner, name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def _check_bool(owner, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise _invalid(owner, name, "a bool", value)
    return bool(value)


def _check_dtype(owner, value):
    expected = "None, 'float32' or 'float64' (or the NumPy types)"
    if value is None:
        return None
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise _invalid(owner, "dtype", expected, value) from None
    if dtype not in (np.float32, np.float64):
        raise _invalid(owner, "dtype", expected, value)
    return dtype


def _store_network(obj, depth, activation, W_std, b_std, parameterization, width):
    """The MLP parameters as attributes, unchanged (an __init__ only stores its arguments)."""
    obj.depth, obj.activation, obj.W_std, obj.b_std = depth, activation, W_std, b_std
    obj.parameterization, obj.width = parameterization, width


def _network(owner, depth, activation, W_std, b_std, parameterization, width):
    """The ``ntkfast.MLP`` of these parameters, each checked and named in the error."""
    depth = _check_int(owner, "depth", depth, 0)
    if isinstance(activation, str):
        try:
            activation = activation_from_name(activation)
        except (TypeError, ValueError):
            from ._layers import ACTIVATIONS

            raise _invalid(owner, "activation",
                           "an activation name (one of " + ", ".join(sorted(ACTIVATIONS))
                           + ", case and '-' ignored; those with required parameters, "
                             "e.g. 'leaky_relu', as a layer: ntkfast.LeakyRelu(0.1)) or an "
                             "ntkfast activation layer", activation) from None
    elif not isinstance(activation, _Activation):
        raise _invalid(owner, "activation", "an activation name (e.g. 'relu', 'erf') or an "
                       "ntkfast activation layer (e.g. ntkfast.LeakyRelu(0.1))", activation)
    W_std = _check_real(owner, "W_std", W_std, minimum=0.0)
    b_std = _check_real(owner, "b_std", b_std, minimum=0.0, allow_none=True)
    for name, value in (("W_std", W_std), ("b_std", b_std)):
        if value is not None and value > 1e150:
            raise _invalid(owner, name, "below 1e150 (its square must be a finite double)",
                           value)
    parameterization = _check_choice(owner, "parameterization", parameterization,
                                     ("ntk", "standard"))
    width = _check_int(owner, "width", width, 1, allow_none=True)
    if parameterization == "standard" and depth > 0 and width is None:
        raise _invalid(owner, "width", "a positive int with parameterization='standard' (its "
                       "NTK depends on the hidden width)", width)
    return MLP(depth, activation, W_std, b_std, parameterization, width=width)


# ----------------------------------------------------------------------------------------------
# Estimators.

class _IdentityOperator:
    """The n × n identity as an operator (``matmat``): as ``k_test_train`` of
    ``ntkfast.predict.gradient_descent_mse`` it returns the dual coefficients T_t Y themselves,
    without forming an n × n matrix on the iterative path."""

    def __init__(self, n):
        self.shape = (n, n)
        self.dtype = np.dtype(np.float64)

    def matmat(self, v):
        return np.array(v, dtype=np.float64, copy=True)


class _NetworkEstimator(BaseEstimator):
    """Shared parameters, fit and prediction of the four estimators (see their docstrings)."""

    _kernel = "ntk"  # the kernel trained with: 'ntk' (all layers) or 'nngp' (the readout only)

    def __init__(self, *, depth=2, activation="relu", W_std=1.0, b_std=0.1,
                 parameterization="ntk", width=None, net=None, diag_reg=0.0,
                 diag_reg_absolute_scale=False, t=None, solver="auto", tol=None, maxiter=None,
                 dtype=None, backend="auto", num_threads=None):
        _store_network(self, depth, activation, W_std, b_std, parameterization, width)
        self.net = net
        self.diag_reg = diag_reg
        self.diag_reg_absolute_scale = diag_reg_absolute_scale
        self.t = t
        self.solver = solver
        self.tol = tol
        self.maxiter = maxiter
        self.dtype = dtype
        self.backend = backend
        self.num_threads = num_threads

    # -- parameters ------------------------------------------------------------------------------

    def _checked_network(self):
        owner = type(self).__name__
        if self.net is None:
            return _network(owner, self.depth, self.activation, self.W_std, self.b_std,
                            self.parameterization, self.width)
        if not isinstance(self.net, Layer):
            raise _invalid(owner, "net", "None or an ntkfast network (e.g. ntkfast.MLP(3, "
                           "'erf') or ntkfast.serial(...))", self.net)
        defaults = {"depth": 2, "activation": "relu", "W_std": 1.0, "b_std": 0.1,
                    "parameterization": "ntk", "width": None}
        changed = [name for name, default in defaults.items() if getattr(self, name) != default]
        if changed:
            raise _invalid(owner, "net", f"None when {', '.join(changed)} are set (net= replaces "
                           "depth, activation, W_std, b_std, parameterization and width)",
                           self.net)
        return self.net

    def _checked_options(self):
        owner = type(self).__name__
        t = _check_real(owner, "t", self.t, minimum=0.0, allow_none=True, allow_inf=True)
        return dict(
            diag_reg=_check_real(owner, "diag_reg", self.diag_reg, minimum=0.0),
            diag_reg_absolute_scale=_check_bool(owner, "diag_reg_absolute_scale",
                                                self.diag_reg_absolute_scale),
            t=None if t is None or math.isinf(t) else t,
            solver=_check_choice(owner, "solver", self.solver, _SOLVERS),
            tol=_check_real(owner, "tol", self.tol, minimum=0.0, allow_none=True, strict=True),
            maxiter=_check_int(owner, "maxiter", self.maxiter, 1, allow_none=True),
            dtype=_check_dtype(owner, self.dtype),
            backend=_check_choice(owner, "backend", self.backend, _BACKENDS),
            num_threads=_check_int(owner, "num_threads", self.num_threads, 1, 1024,
                                   allow_none=True))

    def _iterative_options(self, options=None):
        options = self._options if options is None else options
        return dict(tol=options["tol"], maxiter=options["maxiter"])

    def _gram_options(self, options=None):
        options = self._options if options is None else options
        return dict(dtype=options["dtype"], backend=options["backend"],
                    num_threads=options["num_threads"])

    # -- fit -------------------------------------------------------------------------------------

    #: Every attribute a fit sets. A fit computes them all before storing any (``_commit``), so
    #: a fit that fails (bad data, a bad parameter, a solve that does not converge) leaves the
    #: previous model whole instead of mixing the new network or options with the old
    #: coefficients.
    _FITTED_ATTRIBUTES = ("net_", "_options", "solver_", "dual_coef_", "solve_info_", "X_fit_",
                          "_cache", "_y_ndim", "classes_", "n_features_in_", "feature_names_in_")

    def _prepare_fit(self, X, y, **validation):
        """(network, options, X, y, fitted attributes so far): parameters and data checked, and
        nothing stored on self yet. ``validate_data`` records ``n_features_in_`` and
        ``feature_names_in_`` on the estimator it is given: an unfitted twin takes them."""
        net = self._checked_network()
        options = self._checked_options()
        twin = type(self)(**self.get_params(deep=False))
        X, y = validate_data(twin, X, y, dtype=(np.float64, np.float32), **validation)
        fitted = {name: getattr(twin, name) for name in ("n_features_in_", "feature_names_in_")
                  if hasattr(twin, name)}
        return net, options, X, y, fitted

    def _fit_targets(self, X, Y, net, options):
        """The fitted attributes of checked inputs X (n, d) and targets Y (n, k): the dual
        coefficients T_t Y and what prediction needs besides."""
        n = X.shape[0]
        solver = options["solver"]
        if solver == "auto":
            free = available_memory()
            itemsize = np.dtype(options["dtype"] or X.dtype).itemsize
            dense = free is None or 6 * itemsize * n * n <= 0.5 * free
            solver = "eigh" if dense else "cg"
        common = dict(diag_reg=options["diag_reg"],
                      diag_reg_absolute_scale=options["diag_reg_absolute_scale"])
        if solver == "eigh":
            k = _gram(X, net=net, get=self._kernel, **self._gram_options(options))
            fn = _predict.gradient_descent_mse(k, Y.astype(k.dtype, copy=False), solver="eigh",
                                               **common)
            identity = np.eye(n, dtype=k.dtype)
        else:
            from ._operator import KernelOperator

            k = KernelOperator(X, net=net, get=self._kernel, **self._gram_options(options))
            fn = _predict.gradient_descent_mse(k, Y, solver=solver, **common,
                                               **self._iterative_options(options))
            identity = _IdentityOperator(n)
        dual_coef = fn(t=options["t"], fx_train_0=None, fx_test_0=0.0, k_test_train=identity)
        return dict(net_=net, _options=options, solver_=solver, dual_coef_=dual_coef,
                    solve_info_=getattr(fn, "info", None) if solver != "eigh" else None,
                    X_fit_=X,
                    _cache={})  # the posterior-covariance function, built on first use

    def _commit(self, fitted):
        """Store a finished fit's attributes, and drop those of an earlier fit it does not set
        (``feature_names_in_`` after a refit on a plain array)."""
        for name in self._FITTED_ATTRIBUTES:
            if name in fitted:
                setattr(self, name, fitted[name])
            else:
                self.__dict__.pop(name, None)
        return self

    # -- prediction ------------------------------------------------------------------------------

    def _checked_X(self, X):
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=(np.float64, np.float32))

    def _decision(self, X):
        """Θ(X, X_fit) T_t Y in row blocks, shape (n, k)."""
        n_train = self.X_fit_.shape[0]
        rows = max(1, _PREDICT_BLOCK_ENTRIES // max(n_train, 1))
        out = None
        for start in range(0, X.shape[0], rows):
            block = X[start:start + rows]
            k = _gram(block, self.X_fit_, net=self.net_, get=self._kernel, **self._gram_options())
            values = k @ self.dual_coef_.astype(k.dtype, copy=False)
            if out is None:
                out = np.empty((X.shape[0], values.shape[1]), dtype=values.dtype)
            out[start:start + rows] = values
        if out is None:
            out = np.empty((0, self.dual_coef_.shape[1]), dtype=self.dual_coef_.dtype)
        return out

    def _variance(self, X):
        """Diagonal of the ensemble's (NTK) or the posterior's (NNGP) covariance at X, via
        ``ntkfast.predict.gradient_descent_mse_ensemble`` (its function is cached)."""
        t = self._options["t"]
        if t is not None and self.solver_ != "eigh":
            raise ValueError(f"the standard deviation at a finite training time t={t!r} needs "
                             f"the dense eigendecomposition, but this {type(self).__name__} was "
                             f"fitted with solver={self.solver_!r}; use solver='eigh' or t=None")
        fn = self._cache.get("ensemble")
        if fn is None:
            # the covariance does not depend on the targets: zeros of their shape stand in for
            # them (the shape sets the time scale: the loss is normalised by y.size)
            fn = _predict.gradient_descent_mse_ensemble(
                self.net_, self.X_fit_, np.zeros(self.dual_coef_.shape),
                diag_reg=self._options["diag_reg"],
                diag_reg_absolute_scale=self._options["diag_reg_absolute_scale"],
                solver=self.solver_, **self._gram_options(),
                **(self._iterative_options() if self.solver_ != "eigh" else {}))
            self._cache["ensemble"] = fn
        variance = np.empty(X.shape[0])
        for start in range(0, X.shape[0], _COVARIANCE_BLOCK):
            block = X[start:start + _COVARIANCE_BLOCK]
            result = fn(t=t, x_test=block, get=self._kernel, compute_cov=True)
            variance[start:start + len(block)] = np.diagonal(result.covariance)
        return np.maximum(variance, 0.0)

    def __getstate__(self):
        state = super().__getstate__()
        if "_cache" in state:  # the cached function holds closures and kernels: rebuilt on demand
            state = dict(state)
            state["_cache"] = {}
        return state


class _Regressor(RegressorMixin, _NetworkEstimator):

    def fit(self, X, y):
        """Compute the dual coefficients of the trained infinite ensemble.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs (NumPy, lists, pandas DataFrames; float32 stays float32 unless
            ``dtype`` says otherwise).
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Targets.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        net, options, X, y, fitted = self._prepare_fit(X, y, multi_output=True, y_numeric=True)
        Y = np.asarray(y, dtype=np.float64)
        fitted["_y_ndim"] = Y.ndim
        fitted.update(self._fit_targets(X, Y.reshape(len(Y), -1), net, options))
        return self._commit(fitted)

    def predict(self, X, return_std=False):
        """Mean output of the trained infinite ensemble, and optionally its standard deviation.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        return_std : bool
            Also return the standard deviation of the outputs: over the infinite ensemble of
            trained networks (NTK; Lee et al. 2019, eq. 16) or of the NNGP posterior (Bayesian
            inference with observation noise λ; for finite ``t``, the ensemble trained on the
            readout only). It excludes the observation noise and is shared by all targets.

        Returns
        -------
        y_mean : ndarray of shape (n_samples,) or (n_samples, n_targets)
        y_std : ndarray, the shape of y_mean
            Only with ``return_std=True``.
        """
        X = self._checked_X(X)
        mean = self._decision(X)
        if self._y_ndim == 1:
            mean = mean[:, 0]
        if not return_std:
            return mean
        std = np.sqrt(self._variance(X)).astype(mean.dtype, copy=False)
        return mean, (std if mean.ndim == 1 else np.repeat(std[:, None], mean.shape[1], axis=1))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


def _probabilities_available(estimator):
    """predict_proba needs the outputs' spread: not at a finite t on the iterative path. A
    fitted estimator answers for the model it holds (``set_params`` acts at the next fit)."""
    options = getattr(estimator, "_options", None)
    if options is not None:
        t, solver = options["t"], estimator.solver_
    else:
        t, solver = estimator.t, estimator.solver
    finite = t is not None and not (isinstance(t, numbers.Real) and math.isinf(t))
    return not (finite and solver in ("cg", "lanczos"))


class _Classifier(ClassifierMixin, _NetworkEstimator):

    def fit(self, X, y):
        """Regress the centred one-hot encoding of the classes (one ±1 column for two).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (at least two classes).

        Returns
        -------
        self : object
            The fitted estimator.
        """
        net, options, X, y, fitted = self._prepare_fit(X, y)
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        n_classes = len(classes)
        if n_classes < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the "
                             f"data, but the data contains only one class: {classes[0]!r}")
        if n_classes == 2:
            targets = (2.0 * encoded - 1.0)[:, None]
        else:  # one-hot minus 1/C: every row sums to 0, no class is favoured a priori
            targets = np.full((len(encoded), n_classes), -1.0 / n_classes)
            targets[np.arange(len(encoded)), encoded] += 1.0
        fitted["classes_"] = classes
        fitted.update(self._fit_targets(X, targets, net, options))
        return self._commit(fitted)

    def decision_function(self, X):
        """The trained ensemble's mean outputs: the regression on the class encoding.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,) for two classes (> 0 means ``classes_[1]``), else
            (n_samples, n_classes), one column per class of ``classes_``.
        """
        scores = self._decision(self._checked_X(X))
        return scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X):
        """The class with the largest mean output.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[np.argmax(scores, axis=1)]

    @available_if(_probabilities_available)
    def predict_proba(self, X):
        """Probability that each class's output is the largest.

        The outputs at x are Gaussian: mean μ (``decision_function``) and standard deviation σ(x)
        (over the infinite ensemble of trained networks for the NTK; the NNGP posterior's),
        independent across classes. For two classes (one output) P(classes_[1]) = Φ(μ/σ); for C
        classes P(c) = ∫ φ(z) Π_{j≠c} Φ((μ_c − μ_j)/σ + z) dz (Gauss–Hermite quadrature, rows
        normalised to 1). Where σ = 0 (a training point without regularisation) the
        probabilities are 0 or 1 (ties split evenly). A tie is a mean within √ε of 0 (two
        classes) or of the largest mean (C classes), √ε = 1.5e-8 for float64 kernels, 3.5e-4
        for float32: the targets have size 1, so a smaller mean is round-off of the solve (e.g.
        1e-14 at duplicate training points with contradictory labels) and its sign must not
        decide a probability of 0 or 1; where σ > 0 this moves a probability by at most
        0.4·√ε/σ. The ranking follows ``decision_function`` within one point, not
        across points: an uncertain point is pulled towards 1/C.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        X = self._checked_X(X)
        scores = self._decision(X)
        tie = _tie_tolerance(scores.dtype)
        scores = scores.astype(np.float64)
        sigma = np.sqrt(self._variance(X))
        if len(self.classes_) == 2:
            mean = np.where(np.abs(scores[:, 0]) <= tie, 0.0, scores[:, 0])
            p1 = special.ndtr(_safe_ratio(mean, sigma))
            return np.column_stack([1.0 - p1, p1])
        return _argmax_probabilities(scores, sigma, tie)

    @available_if(_probabilities_available)
    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba` (``-inf`` where a probability is 0).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


def _tie_tolerance(dtype):
    """The largest difference of two decision values that predict_proba reads as a tie.

    The classifiers' targets have size 1 (±1, or one-hot − 1/C), so a mean that should be 0
    (say, the average of contradictory labels at duplicate points) comes out of the solve as
    round-off, ε times the targets amplified by the kernel's conditioning: measured 1e-14 to
    1e-12 in float64 with ``diag_reg=0``. √ε sits halfway between on a log scale: it stays above
    that round-off for condition numbers up to 1/√ε, and far below the size of a mean that
    carries a decision."""
    return math.sqrt(np.finfo(dtype).eps)


def _safe_ratio(mu, sigma):
    """μ/σ, and where σ = 0: +inf for μ > 0, -inf for μ < 0, 0 for μ = 0."""
    positive = sigma > 0
    limit = np.where(mu > 0, np.inf, np.where(mu < 0, -np.inf, 0.0))
    return np.where(positive, mu / np.where(positive, sigma, 1.0), limit)


def _argmax_probabilities(mu, sigma, tie=0.0):
    """P(argmax = c) for independent outputs N(μ_c, σ²) (rows of mu, one σ per row); means
    within ``tie`` of each other count as equal."""
    n, n_classes = mu.shape
    nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE_NODES)
    weights = weights / weights.sum()
    proba = np.empty((n, n_classes))
    certain = sigma <= 0
    if certain.any():  # σ = 0: the largest mean wins, ties split evenly
        top = mu[certain] >= mu[certain].max(axis=1, keepdims=True) - tie
        proba[certain] = top / top.sum(axis=1, keepdims=True)
    rows = np.flatnonzero(~certain)
    block = max(1, (1 << 22) // (n_classes * n_classes * _QUADRATURE_NODES))
    for start in range(0, len(rows), block):
        idx = rows[start:start + block]
        gaps = mu[idx, :, None] - mu[idx, None, :]  # (b, c, j)
        gaps = np.where(np.abs(gaps) <= tie, 0.0, gaps) / sigma[idx, None, None]
        log_cdf = special.log_ndtr(gaps[..., None] + nodes)  # (b, c, j, nodes)
        # Φ(gap + z) over j ≠ c: the j = c term is Φ(z); subtract it from the sum of logs
        log_prod = log_cdf.sum(axis=2) - special.log_ndtr(nodes)
        proba[idx] = np.exp(log_prod) @ weights
    proba /= proba.sum(axis=1, keepdims=True)
    return proba


_ESTIMATOR_PARAMETERS = """
    Parameters
    ----------
    depth : int, default=2
        Hidden layers of the MLP (0: a linear model).
    activation : str or ntkfast activation layer, default='relu'
        A name of ``ntkfast.ACTIVATIONS`` or a layer such as ``ntkfast.LeakyRelu(0.1)``.
    W_std, b_std : float, default=1.0, 0.1
        σw and σb of every Dense layer (``b_std=None``: no bias parameters).
    parameterization : {'ntk', 'standard'}, default='ntk'
    width : int, optional
        Hidden width; required by (and only used by) ``parameterization='standard'``.
    net : ntkfast network, optional
        Any ``ntkfast.serial(...)`` network instead of the MLP parameters above (which must then
        keep their defaults).
    diag_reg : float, default=0.0
        λ added to the train kernel's diagonal, relative to its mean diagonal (neural-tangents'
        convention) unless ``diag_reg_absolute_scale``. 0 interpolates the training data.
    diag_reg_absolute_scale : bool, default=False
        λ = ``diag_reg`` itself (then equal to ``KernelRidge``'s ``alpha``).
    t : float or None, default=None
        Training time in ``ntkfast.predict``'s units (learning rate 1, loss
        Σ(f − y)²/(2·y.size)); None (or inf) is the end of training, kernel regression.
    solver : {'auto', 'eigh', 'cg', 'lanczos'}, default='auto'
        'eigh': dense kernels, exact. 'cg'/'lanczos': the iterative large-N path of
        ``ntkfast.predict`` (train kernel as a ``KernelOperator``, never stored as an n × n
        array; needs ``diag_reg`` > 0 unless the kernel is well conditioned; ``return_std`` and
        ``predict_proba`` then need ``t=None``). 'auto': 'eigh' when the kernels and their
        eigendecomposition fit in half the available memory, else 'cg'.
    tol, maxiter : float, int, optional
        Relative residual and iteration limit of the iterative solvers (default: 1e-10 for
        float64, 1e-5 for float32; ``ntkfast.predict``'s limit: CG iterations at t = None,
        Lanczos steps at a finite t); a solve that misses them raises
        ``ntkfast.ConvergenceError``.
    dtype : {None, 'float32', 'float64'}, default=None
        Kernel dtype; None follows the input (float32 stays float32).
    backend : {'auto', 'cpu', 'cuda'}, default='auto'
        Where :func:`ntkfast.gram` computes the kernels ('cuda': on the GPU, NumPy arrays in and
        out; the solves stay on the CPU).
    num_threads : int, optional
        OpenMP threads of the kernel computation (default: all, or ``OMP_NUM_THREADS``, which
        joblib's workers in ``GridSearchCV(n_jobs=...)`` set to share the cores).
"""

_ESTIMATOR_ATTRIBUTES = """
    Attributes
    ----------
    net_ : ntkfast network
        The network fitted with.
    X_fit_ : ndarray of shape (n_samples, n_features)
        Training inputs.
    dual_coef_ : ndarray of shape (n_samples, n_outputs)
        T_t Y: predictions are ``kernel(X, X_fit_) @ dual_coef_``.
    solver_ : str
        The solver used ('eigh', 'cg' or 'lanczos').
    solve_info_ : object or None
        The iterative solver's report (iterations or Lanczos steps, residuals: ``ntkfast.predict``'s
        ``predict_fn.info``); None for 'eigh'.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when fitted on a DataFrame with string column names.
"""


_CLASSES = """    classes_ : ndarray of shape (n_classes,)
        The class labels.
"""


class NTKRegressor(_Regressor):
    __doc__ = """Kernel regression with the NTK: the mean of infinitely wide networks trained by
    gradient descent.

    The mean output at time t of an infinite ensemble of infinitely wide MLPs trained on the MSE
    by gradient flow (Jacot et al. 2018; Lee et al. 2019, eq. 16):
    μ_t(x) = Θ(x, X) Θ̃⁻¹ (I − e^{−Θ̃ t/N}) Y, Θ̃ = Θ + λI; at t = None, Θ(x, X) Θ̃⁻¹ Y. Predictions
    equal ``ntkfast.predict.gradient_descent_mse_ensemble(...)(t, x, get='ntk')``.
""" + _ESTIMATOR_PARAMETERS + _ESTIMATOR_ATTRIBUTES + """
    Examples
    --------
    >>> import numpy as np
    >>> from ntkfast.sklearn import NTKRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 3)); y = np.sin(X[:, 0])
    >>> reg = NTKRegressor(depth=3, diag_reg=1e-3).fit(X, y)
    >>> mean, std = reg.predict(X[:5], return_std=True)
    >>> mean.shape, std.shape
    ((5,), (5,))
    >>> bool(reg.score(X, y) > 0.99)
    True
    """
    _kernel = "ntk"


class NNGPRegressor(_Regressor):
    __doc__ = """Gaussian-process regression with the NNGP kernel of an infinitely wide network.

    At t = None the posterior mean K(x, X) K̃⁻¹ Y and standard deviation of exact Bayesian
    inference in the infinitely wide network (Lee et al. 2018; Matthews et al. 2018), K̃ = K + λI;
    at finite t the ensemble of networks whose readout alone is trained by gradient descent.
    Predictions equal ``ntkfast.predict.gradient_descent_mse_ensemble(...)(t, x, get='nngp')``.
    For σw, σb fitted by marginal likelihood use
    ``GaussianProcessRegressor(kernel=NNGPKernel(...) + WhiteKernel())``.
""" + _ESTIMATOR_PARAMETERS + _ESTIMATOR_ATTRIBUTES + """
    Examples
    --------
    >>> import numpy as np
    >>> from ntkfast.sklearn import NNGPRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 3)); y = np.sin(X[:, 0])
    >>> reg = NNGPRegressor(activation="erf", diag_reg=1e-3).fit(X, y)
    >>> mean, std = reg.predict(X[:5], return_std=True)
    >>> bool(np.all(std < 0.1))   # training points: small posterior spread
    True
    """
    _kernel = "nngp"


class NTKClassifier(_Classifier):
    __doc__ = """Classification by NTK regression on one-hot targets (infinitely wide trained
    networks).

    Regresses the centred one-hot encoding (one-hot − 1/C; ±1 for two classes) with
    :class:`NTKRegressor`'s model, as the NTK papers do (Lee et al. 2019; Arora et al. 2019), and
    predicts the class with the largest output. ``predict_proba`` is the fraction of the
    infinite ensemble of trained networks whose output is largest for each class.
""" + _ESTIMATOR_PARAMETERS + _ESTIMATOR_ATTRIBUTES + _CLASSES + """
    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from ntkfast.sklearn import NTKClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = NTKClassifier(depth=2, diag_reg=1e-2).fit(X, y)
    >>> clf.predict(X[:3]), clf.predict_proba(X[:3]).shape
    (array([0, 0, 0]), (3, 3))
    """
    _kernel = "ntk"


class NNGPClassifier(_Classifier):
    __doc__ = """Classification by NNGP regression on one-hot targets (Bayesian infinitely wide
    networks).

    As :class:`NTKClassifier`, with the NNGP posterior (Lee et al. 2018): ``predict_proba`` is
    the posterior probability that each class's latent output is the largest.
""" + _ESTIMATOR_PARAMETERS + _ESTIMATOR_ATTRIBUTES + _CLASSES + """
    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from ntkfast.sklearn import NNGPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = NNGPClassifier(activation="erf", diag_reg=1e-2).fit(X, y)
    >>> bool(clf.score(X, y) > 0.95)
    True
    """
    _kernel = "nngp"


# ----------------------------------------------------------------------------------------------
# Gaussian-process kernels.

class _NetworkKernel(Kernel):
    """Shared code of :class:`NNGPKernel` and :class:`NTKKernel`."""

    _get = "nngp"

    def __init__(self, depth=2, activation="relu", W_std=1.0, b_std=0.1, parameterization="ntk",
                 width=None, W_std_bounds=(1e-2, 1e2), b_std_bounds=(1e-5, 1e2), backend="auto",
                 num_threads=None):
        _store_network(self, depth, activation, W_std, b_std, parameterization, width)
        self.W_std_bounds = W_std_bounds
        self.b_std_bounds = b_std_bounds
        self.backend = backend
        self.num_threads = num_threads

    @property
    def hyperparameter_W_std(self):
        """σw of every Dense layer (its logarithm is the optimised hyperparameter).

        Returns
        -------
        sklearn.gaussian_process.kernels.Hyperparameter
        """
        return Hyperparameter("W_std", "numeric", self.W_std_bounds)

    @property
    def hyperparameter_b_std(self):
        """σb of every Dense layer; fixed where ``b_std`` is 0 or None (log 0 is no parameter).

        Returns
        -------
        sklearn.gaussian_process.kernels.Hyperparameter
        """
        fixed = self.b_std is None or (isinstance(self.b_std, numbers.Real) and self.b_std == 0)
        return Hyperparameter("b_std", "numeric", "fixed" if fixed else self.b_std_bounds)

    def _network(self):
        owner = type(self).__name__
        net = _network(owner, self.depth, self.activation, self.W_std, self.b_std,
                       self.parameterization, self.width)
        _check_choice(owner, "backend", self.backend, _BACKENDS)
        _check_int(owner, "num_threads", self.num_threads, 1, 1024, allow_none=True)
        return net

    @staticmethod
    def _points(X, name):
        """X as a finite float64 2-D array; complex, object or string arrays are a TypeError
        (a cast would drop imaginary parts, or fail without naming X)."""
        if isinstance(X, (str, bytes)) or X is None:
            raise TypeError(f"{name} must be a real 2-D array (n_samples, n_features), got "
                            f"{type(X).__name__}")
        X = read_array(X, name)
        check_real_dtype(X, name)
        if X.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got shape "
                             f"{X.shape}")
        reject_non_finite(X, name, hint="")
        return np.asarray(X, dtype=np.float64)

    def __call__(self, X, Y=None, eval_gradient=False):
        """The Gram matrix K(X, Y), and optionally its gradient in the log hyperparameters.

        Parameters
        ----------
        X : ndarray of shape (n_samples_X, n_features)
        Y : ndarray of shape (n_samples_Y, n_features), optional
            None computes K(X, X) (symmetric, half the work).
        eval_gradient : bool
            Also return ∂K/∂log σw and ∂K/∂log σb (the non-fixed ones, in the order of
            ``hyperparameters``), exact (see :mod:`ntkfast._kernel_grad`); only for Y = None.

        Returns
        -------
        K : ndarray of shape (n_samples_X, n_samples_Y)
        K_gradient : ndarray of shape (n_samples_X, n_samples_X, n_dims)
            Only with ``eval_gradient=True``.

        Raises
        ------
        ValueError
            ``eval_gradient`` with Y given, or a bad parameter (named).
        NotImplementedError
            The gradient of a custom activation without derivatives here.
        """
        net = self._network()
        if Y is X:  # pairwise_kernels(X) passes X twice: the symmetric path does half the work
            Y = None
        X = self._points(X, "X")
        if Y is not None:
            if eval_gradient:
                raise ValueError("Gradient can only be evaluated when Y is None.")
            Y = self._points(Y, "Y")
        k = _gram(X, Y, net=net, get=self._get, dtype=np.float64, backend=self.backend,
                  num_threads=self.num_threads)
        if not eval_gradient:
            return k
        free = [h.name for h in self.hyperparameters if not h.fixed]
        if not free:
            return k, np.empty((X.shape[0], X.shape[0], 0))
        _, gradient = _kernel_grad.kernel_and_gradient(X, net, self._get, free,
                                                       num_threads=self.num_threads)
        return k, gradient

    def diag(self, X):
        """K(x, x) for every row, in O(n) (:func:`ntkfast.diagonal`).

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return _diagonal(self._points(X, "X"), net=self._network(), get=self._get,
                         dtype=np.float64, num_threads=self.num_threads)

    def is_stationary(self):
        """False: the kernel depends on the points, not only on their difference.

        Returns
        -------
        bool
        """
        return False

    def __repr__(self):
        def number(v):
            return "None" if v is None else (f"{v:.3g}" if isinstance(v, numbers.Real) else repr(v))

        parts = [f"depth={self.depth!r}", f"activation={self.activation!r}",
                 f"W_std={number(self.W_std)}", f"b_std={number(self.b_std)}"]
        if self.parameterization != "ntk":
            parts.append(f"parameterization={self.parameterization!r}")
        if self.width is not None:
            parts.append(f"width={self.width!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


_KERNEL_PARAMETERS = """
    Parameters
    ----------
    depth : int, default=2
        Hidden layers of the MLP.
    activation : str or ntkfast activation layer, default='relu'
    W_std, b_std : float, default=1.0, 0.1
        σw and σb of every Dense layer: the hyperparameters (log scale). ``b_std`` 0 or None
        (no bias) is held fixed.
    parameterization : {'ntk', 'standard'}, default='ntk'
    width : int, optional
        Hidden width for ``parameterization='standard'``.
    W_std_bounds, b_std_bounds : pair of floats or 'fixed', default=(1e-2, 1e2), (1e-5, 1e2)
        Bounds of σw and σb for the optimiser; 'fixed' keeps one out of ``theta``.
    backend : {'auto', 'cpu', 'cuda'}, default='auto'
    num_threads : int, optional
        OpenMP threads (default: all, or ``OMP_NUM_THREADS``).

    Notes
    -----
    Values and ``diag`` come from the engine (:func:`ntkfast.gram`, :func:`ntkfast.diagonal`),
    in float64. The gradient is exact (forward-mode through the layer recursion, closed forms per
    activation: the derivative kernel ∂E/∂c = E[φ'φ'], Euler's identity for positively
    homogeneous activations; docs/sklearn.md), in NumPy: O(n² · depth) time, the upper triangle
    in row blocks on ``num_threads`` threads, a few seconds for n = 2000; every activation of
    ``ntkfast.ACTIVATIONS`` is supported.
"""


class NNGPKernel(_NetworkKernel):
    __doc__ = """The NNGP kernel of an infinitely wide MLP as a scikit-learn GP kernel.

    Σ(x, x'), the covariance of the network's output at initialisation (Lee et al. 2018;
    Matthews et al. 2018). As the kernel of ``GaussianProcessRegressor`` it is exact Bayesian
    inference in the infinitely wide network; σw and σb are fitted by maximising the marginal
    likelihood with exact gradients.
""" + _KERNEL_PARAMETERS + """
    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.gaussian_process import GaussianProcessRegressor
    >>> from sklearn.gaussian_process.kernels import WhiteKernel
    >>> from ntkfast.sklearn import NNGPKernel
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((40, 2))
    >>> y = np.tanh(2 * X[:, 0]) + 0.3 + 0.1 * rng.standard_normal(40)
    >>> kernel = NNGPKernel(depth=2, activation="erf", W_std=1.0, b_std=0.5) + WhiteKernel(1e-2)
    >>> gpr = GaussianProcessRegressor(kernel, random_state=0).fit(X, y)   # fits σw, σb, noise
    >>> [h.name for h in gpr.kernel_.hyperparameters]
    ['k1__W_std', 'k1__b_std', 'k2__noise_level']
    >>> bool(0.005 < gpr.kernel_.k2.noise_level < 0.02)   # the noise variance, 0.01
    True
    """
    _get = "nngp"


class NTKKernel(_NetworkKernel):
    __doc__ = """The NTK of an infinitely wide MLP as a scikit-learn kernel.

    Θ(x, x') (Jacot et al. 2018; Arora et al. 2019): for ``SVC(kernel=NTKKernel(...))`` (the NTK
    SVM of Arora et al. 2019) or ``KernelRidge(kernel=NTKKernel(...))``, both of which call it once
    per fit on whole matrices, and as the prior of ``GaussianProcessRegressor`` (the NTK-GP of He
    et al. 2020).
""" + _KERNEL_PARAMETERS + """
    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.model_selection import cross_val_score
    >>> from sklearn.svm import SVC
    >>> from ntkfast.sklearn import NTKKernel
    >>> X, y = load_iris(return_X_y=True)
    >>> scores = cross_val_score(SVC(kernel=NTKKernel(depth=3), C=10.0), X, y, cv=3)
    >>> bool(scores.mean() > 0.9)
    True
    """
    _get = "ntk"
