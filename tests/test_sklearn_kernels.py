"""ntkfast.sklearn's Gaussian-process kernels: values against ntkfast.gram, exact gradients
against central finite differences of the engine's kernels (every activation, both
parameterisations) and against homogeneity identities, a GP fit recovering σw and σb from data
sampled from the NNGP prior, and agreement with precomputed kernels in GaussianProcessRegressor,
SVC and KernelRidge."""
import dataclasses

import numpy as np
import pytest

pytest.importorskip("sklearn")
ntksk = pytest.importorskip("ntkfast.sklearn")

import ntkfast  # noqa: E402
from ntkfast import _kernel_grad  # noqa: E402
from ntkfast.sklearn import NNGPKernel, NTKKernel, NTKRegressor  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.gaussian_process import GaussianProcessRegressor  # noqa: E402
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel  # noqa: E402
from sklearn.kernel_ridge import KernelRidge  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

KERNELS = (NNGPKernel, NTKKernel)


def _points(rng, n=24, d=4):
    """Random points plus the awkward ones: a duplicate, a scaled copy, a negated copy."""
    x = rng.standard_normal((n, d))
    x[1] = x[0]
    x[3] = 2.5 * x[2]
    x[5] = -x[4]
    return x


# ----------------------------------------------------------------------------------------------
# Values.

@pytest.mark.parametrize("cls", KERNELS)
def test_values_and_diag_equal_ntkfast(rng, cls):
    x, y = _points(rng), rng.standard_normal((7, 4))
    kernel = cls(depth=3, activation="erf", W_std=1.3, b_std=0.2)
    net = ntkfast.MLP(3, "erf", W_std=1.3, b_std=0.2)
    get = "ntk" if cls is NTKKernel else "nngp"
    assert np.array_equal(kernel(x), ntkfast.gram(x, net=net, get=get))
    assert np.array_equal(kernel(x, y), ntkfast.gram(x, y, net=net, get=get))
    assert np.array_equal(kernel(x, x), kernel(x))  # the same array twice: symmetric path
    assert np.array_equal(kernel.diag(x), ntkfast.diagonal(x, net=net, get=get))
    assert np.array_equal(kernel.diag(x), np.diag(kernel(x)))
    k, grad = kernel(x, eval_gradient=True)
    assert np.array_equal(k, kernel(x)) and grad.shape == (24, 24, 2)
    assert not kernel.is_stationary() and kernel.requires_vector_input


# ----------------------------------------------------------------------------------------------
# Gradients: exact, against central differences of the engine's kernels.

def _richardson(f, h=1e-3):
    """Central difference with one Richardson step: error O(h⁴)."""
    d1 = (f(h) - f(-h)) / (2 * h)
    d2 = (f(h / 2) - f(-h / 2)) / h
    return (4 * d2 - d1) / 3


ACTIVATIONS = [
    "relu", ntkfast.LeakyRelu(0.2), "abs", ntkfast.ABRelu(-0.3, 0.7), "erf",
    ntkfast.Erf(0.7, 1.3, 0.2), "sigmoid_like", "gelu", "sin", ntkfast.Cos(1.2, 0.8, 0.3),
    ntkfast.Rbf(0.7), ntkfast.Exp(0.5, 0.4), ntkfast.Gaussian(0.8, -0.6), "gabor", "sign",
    ntkfast.RectifiedMonomial(0), ntkfast.RectifiedMonomial(2), ntkfast.RectifiedMonomial(3),
    ntkfast.Polynomial([0.3, -0.5, 0.2, 0.1]), ntkfast.Monomial(3), ntkfast.Hermite(2),
    ntkfast.ExpNormalized(0.7), ntkfast.ExpNormalized(0.7, do_clip=True), "identity",
]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("cls", KERNELS)
def test_gradient_matches_central_differences(rng, activation, parameterization, cls):
    x = _points(rng)
    width = 128 if parameterization == "standard" else None
    params = dict(depth=2, activation=activation, parameterization=parameterization, width=width)
    w, b = 1.3, 0.4
    kernel = cls(W_std=w, b_std=b, **params)
    _, grad = kernel(x, eval_gradient=True)

    def k(w_, b_):
        return cls(W_std=w_, b_std=b_, **params)(x)

    expected = np.stack([_richardson(lambda h: k(w * np.exp(h), b)),
                         _richardson(lambda h: k(w, b * np.exp(h)))], axis=-1)
    # relative to the derivative, or to the kernel where the derivative vanishes (an Rbf layer
    # ignores a shift of all its covariances: its b_std derivative is 0, the differences ~1e-10)
    floor = 1e-3 * np.abs(kernel(x)).max()
    for p in range(2):
        scale = max(np.abs(expected[..., p]).max(), floor)
        assert np.abs(grad[..., p] - expected[..., p]).max() <= 1e-6 * scale, \
            f"d/dlog {['W_std', 'b_std'][p]}"


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_gradient_at_other_depths(rng, depth):
    x = _points(rng)
    kernel = NTKKernel(depth=depth, activation="relu", W_std=0.9, b_std=1.1)
    _, grad = kernel(x, eval_gradient=True)
    fd = _richardson(lambda h: NTKKernel(depth=depth, W_std=0.9, b_std=1.1 * np.exp(h))(x))
    assert np.abs(grad[..., 1] - fd).max() <= 1e-6 * np.abs(fd).max()


@pytest.mark.parametrize("activation,order", [("relu", None), (ntkfast.LeakyRelu(0.3), None),
                                              ("abs", None), ("sign", 0),
                                              (ntkfast.RectifiedMonomial(0), 0)])
def test_gradient_without_bias_follows_homogeneity(rng, activation, order):
    """No bias: a ReLU-family net is positively homogeneous, K ∝ σw^(2(L+1)) exactly; a sign or
    step net only feels the readout's σw², K ∝ σw². Duplicates, scaled and negated copies stay
    exactly parallel there, and a zero row has zero variance: the gradient is exact for all.
    (The values are compared with the engine's for the ReLU family only: for sign and step the
    engine's values at the scaled pair carry its rounding of ρ = 1, amplified by √ε per layer.)"""
    x = _points(rng)
    x[7] = 0.0
    depth = 3
    power = 2 * (depth + 1) if order is None else 2
    for cls in KERNELS:
        kernel = cls(depth=depth, activation=activation, W_std=1.4, b_std=0.0)
        assert [h.name for h in kernel.hyperparameters if not h.fixed] == ["W_std"]
        value, grad = _kernel_grad.kernel_and_gradient(x, kernel._network(), kernel._get,
                                                       ("W_std",))
        if order is None:
            assert np.abs(value - kernel(x)).max() <= 1e-6 * np.abs(value).max()
        if cls is NTKKernel and order == 0:
            continue  # the NTK of a sign/step net counts the last layers only: no simple power
        assert np.allclose(grad[..., 0], power * value, rtol=1e-12,
                           atol=1e-14 * np.abs(value).max())
        if order is None:  # the zero row: zero variance at every layer, and zero gradient
            assert np.all(grad[7, :, 0] == 0) and np.all(grad[:, 7, 0] == 0)


def test_recursion_values_match_the_engine(rng):
    """The gradient module's own values (the primal of its dual numbers) equal ntkfast.gram."""
    x = _points(rng)
    for activation in ACTIVATIONS:
        net = ntkfast.MLP(3, activation, W_std=1.2, b_std=0.3)
        for get in ("nngp", "ntk"):
            value, _ = _kernel_grad.kernel_and_gradient(x, net, get)
            expected = ntkfast.gram(x, net=net, get=get)
            assert np.abs(value - expected).max() <= 1e-12 * np.abs(expected).max(), activation


def test_gradient_in_row_blocks(rng, monkeypatch):
    x = _points(rng, n=37)
    net = ntkfast.MLP(2, "gelu", W_std=1.1, b_std=0.5)
    whole = _kernel_grad.kernel_and_gradient(x, net, "ntk")[1]
    monkeypatch.setattr(_kernel_grad, "_BLOCK_ENTRIES", 5 * 37)  # blocks of 5 rows, one ragged
    blocked = _kernel_grad.kernel_and_gradient(x, net, "ntk", num_threads=1)[1]
    assert np.allclose(blocked, whole, rtol=1e-13, atol=0)  # only the input GEMM's rounding
    threaded = _kernel_grad.kernel_and_gradient(x, net, "ntk", num_threads=3)[1]
    assert np.array_equal(threaded, blocked)  # blocks are independent: same bits in any order
    assert np.array_equal(blocked, blocked.transpose(1, 0, 2))  # exactly symmetric


def test_gradient_through_kernel_algebra(rng):
    """sklearn's sums and products chain our gradient: check the composite against differences."""
    x = _points(rng)
    kernel = ConstantKernel(2.0) * NNGPKernel(activation="erf", W_std=1.2, b_std=0.3) \
        + WhiteKernel(0.1)
    _, grad = kernel(x, eval_gradient=True)
    theta = kernel.theta
    for p in range(len(theta)):
        step = np.eye(len(theta))[p]
        fd = _richardson(lambda h: kernel.clone_with_theta(theta + h * step)(x))
        assert np.abs(grad[..., p] - fd).max() <= 1e-6 * np.abs(fd).max()


class _Custom(ntkfast._layers._Activation):
    """An activation this module has no derivatives for (lowers to ReLU for the values)."""

    def _ops(self, ctx):
        ntkfast.Relu()._ops(ctx)


_Custom = dataclasses.dataclass(frozen=True, repr=False)(_Custom)


def test_unknown_activation_gradient_is_a_named_error(rng):
    x = _points(rng)
    kernel = NNGPKernel(activation=_Custom())
    assert np.array_equal(kernel(x), NNGPKernel(activation="relu")(x))  # values still work
    with pytest.raises(NotImplementedError, match="activation _Custom.*W_std_bounds='fixed'"):
        kernel(x, eval_gradient=True)
    fixed = NNGPKernel(activation=_Custom(), W_std_bounds="fixed", b_std_bounds="fixed")
    k, grad = fixed(x, eval_gradient=True)
    assert grad.shape == (24, 24, 0) and np.array_equal(k, kernel(x))


# ----------------------------------------------------------------------------------------------
# The hyperparameter interface.

def test_hyperparameters_theta_bounds_and_clone():
    kernel = NTKKernel(W_std=1.5, b_std=0.2, W_std_bounds=(0.1, 10.0))
    assert [h.name for h in kernel.hyperparameters] == ["W_std", "b_std"]
    assert np.allclose(kernel.theta, np.log([1.5, 0.2]))
    assert np.allclose(kernel.bounds, np.log([[0.1, 10.0], [1e-5, 1e2]]))
    other = kernel.clone_with_theta(np.log([2.0, 0.5]))
    assert (other.W_std, other.b_std) == pytest.approx((2.0, 0.5))
    assert (kernel.W_std, kernel.b_std) == (1.5, 0.2)
    assert clone(kernel) == kernel and other != kernel
    assert repr(other) == "NTKKernel(depth=2, activation='relu', W_std=2, b_std=0.5)"
    for b in (0.0, None):  # log 0 is no hyperparameter: held fixed
        assert len(NNGPKernel(b_std=b).theta) == 1
    assert len(NNGPKernel(W_std_bounds="fixed").theta) == 1
    assert kernel.get_params()["activation"] == "relu"


def test_kernel_errors(rng):
    x = rng.standard_normal((5, 3))
    with pytest.raises(ValueError, match="Gradient can only be evaluated when Y is None"):
        NNGPKernel()(x, x[:2], eval_gradient=True)
    with pytest.raises(ValueError, match="The 'depth' parameter of NNGPKernel must be"):
        NNGPKernel(depth=-1)(x)
    with pytest.raises(ValueError, match="The 'activation' parameter of NTKKernel must be"):
        NTKKernel(activation="softmax")(x)
    with pytest.raises(ValueError, match="The 'backend' parameter of NTKKernel must be"):
        NTKKernel(backend="gpu")(x)
    with pytest.raises(ValueError, match="2-D array"):
        NNGPKernel()(x[0])
    with pytest.raises(ValueError, match="NaN"):
        NNGPKernel()(np.full((2, 3), np.nan))


# ----------------------------------------------------------------------------------------------
# GaussianProcessRegressor.

def test_gp_fit_recovers_weight_and_bias_scales(rng):
    """Data sampled from the NNGP prior of (σw, σb) = (1.6, 0.5): maximising the marginal
    likelihood (L-BFGS-B with our exact gradient) finds them within the posterior's spread,
    measured by the Laplace approximation (the inverse Hessian of the log marginal likelihood
    in log σ, by differences of the exact gradient)."""
    x = rng.standard_normal((300, 4))
    truth = np.log([1.6, 0.5])
    prior = NNGPKernel(depth=2, W_std=1.6, b_std=0.5)(x) + 1e-2 * np.eye(300)
    y = np.linalg.cholesky(prior) @ rng.standard_normal(300)
    start = NNGPKernel(depth=2, W_std=1.0, b_std=0.1) + WhiteKernel(1e-2, "fixed")
    gpr = GaussianProcessRegressor(start, random_state=0).fit(x, y)
    theta = gpr.kernel_.theta
    lml, gradient = gpr.log_marginal_likelihood(theta, eval_gradient=True)
    assert np.abs(gradient).max() < 1e-2 * abs(lml)  # an interior optimum
    h = 1e-4
    def gradient_at(th):
        return gpr.log_marginal_likelihood(th, eval_gradient=True)[1]

    hessian = np.array([(gradient_at(theta + h * e) - gradient_at(theta - h * e)) / (2 * h)
                        for e in np.eye(2)])
    spread = np.sqrt(np.diag(np.linalg.inv(-hessian)))
    assert np.all(spread < 0.5)  # the data do pin the parameters down
    assert np.all(np.abs(theta - truth) <= 3 * spread), (theta, truth, spread)


def test_gp_optimiser_gradient_equals_numerical_optimum(rng):
    """The marginal likelihood's gradient from our kernel equals its differences."""
    x = rng.standard_normal((40, 3))
    y = np.tanh(x[:, 0]) + 0.1 * rng.standard_normal(40)
    kernel = NTKKernel(activation="erf", W_std=1.1, b_std=0.3) + WhiteKernel(1e-2)
    gpr = GaussianProcessRegressor(kernel, optimizer=None).fit(x, y)
    theta = kernel.theta
    _, gradient = gpr.log_marginal_likelihood(theta, eval_gradient=True)
    fd = np.array([_richardson(lambda h: np.array(gpr.log_marginal_likelihood(theta + h * e)))
                   for e in np.eye(len(theta))])
    assert np.allclose(gradient, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cls,get", [(NNGPKernel, "nngp"), (NTKKernel, "ntkgp")])
def test_gpr_equals_gp_inference(rng, cls, get):
    """GaussianProcessRegressor with the kernel = ntkfast.predict.gp_inference on precomputed
    kernels (NNGP posterior; with the NTK as the prior, the NTK-GP)."""
    x, x_test = rng.standard_normal((50, 3)), rng.standard_normal((9, 3))
    y = np.sin(x[:, 0]) + x[:, 1]
    kernel = cls(depth=2, activation="gelu", W_std=1.2, b_std=0.3, W_std_bounds="fixed",
                 b_std_bounds="fixed")
    gpr = GaussianProcessRegressor(kernel, alpha=1e-3, optimizer=None).fit(x, y)
    mean, cov = gpr.predict(x_test, return_cov=True)
    net = ntkfast.MLP(2, "gelu", W_std=1.2, b_std=0.3)
    fn = ntkfast.predict.gp_inference(ntkfast.gram(x, net=net), y, diag_reg=1e-3,
                                      diag_reg_absolute_scale=True)
    expected = fn(get, ntkfast.gram(x_test, x, net=net), ntkfast.gram(x_test, net=net))
    assert np.allclose(mean, expected.mean, rtol=1e-9, atol=1e-12)
    assert np.allclose(cov, expected.covariance, rtol=1e-8, atol=1e-10 * np.abs(cov).max())
    _, std = gpr.predict(x_test, return_std=True)  # through diag()
    assert np.allclose(std ** 2, np.diag(expected.covariance), rtol=1e-8,
                       atol=1e-10 * np.abs(cov).max())


# ----------------------------------------------------------------------------------------------
# SVC and KernelRidge: whole-matrix calls, equal to precomputed kernels.

def test_svc_with_kernel_equals_precomputed(rng):
    from sklearn.datasets import load_wine
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    train, test = np.arange(0, 178, 2), np.arange(1, 178, 2)
    kernel = NTKKernel(depth=3, b_std=0.0)
    svc = SVC(kernel=kernel, C=3.0).fit(x[train], y[train])
    net = ntkfast.MLP(3, "relu", W_std=1.0, b_std=0.0)
    pre = SVC(kernel="precomputed", C=3.0).fit(ntkfast.gram(x[train], net=net, get="ntk"), y[train])
    scores = svc.decision_function(x[test])
    expected = pre.decision_function(ntkfast.gram(x[test], x[train], net=net, get="ntk"))
    assert np.allclose(scores, expected, rtol=1e-7, atol=1e-9)
    assert svc.score(x[test], y[test]) > 0.9


def test_kernel_ridge_calls_whole_matrices_and_equals_the_regressor(rng, monkeypatch):
    x, x_test = rng.standard_normal((60, 3)), rng.standard_normal((11, 3))
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    calls = []
    original = ntksk._gram

    def spy(a, b=None, **kwargs):
        calls.append((len(a), None if b is None else len(b)))
        return original(a, b, **kwargs)

    monkeypatch.setattr(ntksk, "_gram", spy)
    ridge = KernelRidge(kernel=NTKKernel(activation="erf"), alpha=0.05).fit(x, y)
    prediction = ridge.predict(x_test)
    assert calls == [(60, None), (11, 60)]  # one symmetric Gram to fit, one cross to predict
    reg = NTKRegressor(activation="erf", diag_reg=0.05, diag_reg_absolute_scale=True).fit(x, y)
    assert np.allclose(prediction, reg.predict(x_test), rtol=1e-10, atol=1e-12)


def test_grid_search_over_kernel_hyperparameters():
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    grid = GridSearchCV(SVC(kernel=NTKKernel()), {"kernel__depth": [1, 3], "C": [1.0, 10.0]},
                        cv=3).fit(x, y)
    assert set(grid.best_params_) == {"kernel__depth", "C"} and grid.best_score_ > 0.9
    assert isinstance(grid.best_estimator_.kernel, NTKKernel)
