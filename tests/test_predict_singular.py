"""Singular and rank-deficient train kernels (diag_reg = 0): finite outputs, equal to
independent oracles, where neural-tangents divides 0 by 0.

Oracles: (1) a linear model (a single Dense layer) trained in *parameter* space, whose NTK
has rank n_features + 1 < n_train: its gradient flow is a 4-dimensional ODE and its t = ∞
limit the minimum-norm least-squares fit (numpy.linalg.lstsq); (2) duplicate training
points, equivalent to the problem with the duplicates merged and their targets averaged;
(3) the gradient flow integrated numerically (it never inverts anything).
"""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import ntkfast as nf
from ntkfast import _predict_linalg, predict

W_STD, B_STD = 1.3, 0.4


def _close(got, want, tol):
    scale = np.abs(want).max()
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() <= tol * scale, np.abs(got - want).max() / scale


@pytest.fixture(scope="module")
def linear_problem():
    """n = 20 points with 3 features: the NTK of Dense(W_std, b_std) is Φ Φᵀ with
    φ(x) = (σw x/√3, σb), rank 4."""
    rng = np.random.default_rng(5)
    x, x_test = rng.standard_normal((20, 3)), rng.standard_normal((7, 3))
    y = np.stack([np.tanh(x[:, 0] - x[:, 1]), x[:, 2] ** 2], axis=1)  # not linear: residuals stay
    net = nf.MLP(0, W_std=W_STD, b_std=B_STD)
    features = lambda z: np.hstack([W_STD * z / np.sqrt(3), np.full((len(z), 1), B_STD)])  # noqa: E731
    return dict(x=x, x_test=x_test, y=y, net=net, phi=features(x), phi_test=features(x_test),
                k=nf.gram(x, net=net, get="ntk"), k_td=nf.gram(x_test, x, net=net, get="ntk"))


def test_linear_kernel_is_rank_deficient(linear_problem):
    k = linear_problem["k"]
    np.testing.assert_allclose(k, linear_problem["phi"] @ linear_problem["phi"].T, rtol=1e-12,
                               atol=1e-13)
    mu = np.linalg.eigvalsh(k)
    assert (np.abs(mu[:-4]) < 1e-12 * mu[-1]).all()  # 16 numerically-zero eigenvalues
    with pytest.raises(np.linalg.LinAlgError):  # what a plain Cholesky solve would meet
        np.linalg.cholesky(k)


def test_limit_is_the_minimum_norm_least_squares_fit(linear_problem):
    p = linear_problem
    coef, *_ = np.linalg.lstsq(p["phi"], p["y"], rcond=None)  # min-norm weights, f₀ = 0
    fn = predict.gradient_descent_mse(p["k"], p["y"])
    f_train, f_test = fn(None, 0.0, 0.0, p["k_td"])
    _close(f_train, p["phi"] @ coef, 1e-10)  # the projection of y, not y (it cannot be fitted)
    _close(f_test, p["phi_test"] @ coef, 1e-10)
    # the same limit from t = ∞ inside a time array (eigendecomposition path)
    f_train_inf, f_test_inf = fn(np.array([np.inf]), 0.0, 0.0, p["k_td"])
    _close(f_train_inf[0], p["phi"] @ coef, 1e-10)
    _close(f_test_inf[0], p["phi_test"] @ coef, 1e-10)
    gp = predict.gp_inference(p["k"], p["y"])("ntkgp", k_test_train=p["k_td"])
    _close(gp, p["phi_test"] @ coef, 1e-10)


def test_finite_times_equal_training_the_weights(linear_problem):
    """Gradient flow on the weights w (4 numbers) of f(x) = φ(x)·w from w₀, with
    L = Σ(f − y)²/(2N): dw/dt = −(η/N) Φᵀ(Φ w − y)."""
    p = linear_problem
    phi, y = p["phi"], p["y"]
    w0 = np.random.default_rng(1).standard_normal((4, 2))
    rate, n_out = 0.5, y.size
    times = np.array([0.0, 1.0, 10.0, 100.0, 1000.0])
    sol = solve_ivp(lambda _, w: (-rate / n_out * phi.T @ (phi @ w.reshape(4, 2) - y)).ravel(),
                    (0, times[-1]), w0.ravel(), t_eval=times, method="DOP853", rtol=1e-12,
                    atol=1e-14)
    weights = sol.y.T.reshape(-1, 4, 2)
    fn = predict.gradient_descent_mse(p["k"], y, learning_rate=rate)
    f_train, f_test = fn(times, phi @ w0, p["phi_test"] @ w0, p["k_td"])
    _close(f_train, phi @ weights, 1e-9)
    _close(f_test, p["phi_test"] @ weights, 1e-9)


def test_duplicate_training_points_equal_the_merged_problem(rng):
    x = rng.standard_normal((12, 5))
    x = np.vstack([x, x[[2, 7, 7]]])  # point 2 twice, point 7 three times
    x_test = rng.standard_normal((6, 5))
    y = rng.standard_normal((15, 2))
    net = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)
    k = nf.gram(x, net=net)
    k_td = nf.gram(x_test, x, net=net)
    # merged: each distinct point once, target = mean of its copies' targets
    groups = [[i] for i in range(12)]
    groups[2] += [12]
    groups[7] += [13, 14]
    y_merged = np.stack([y[g].mean(axis=0) for g in groups])
    k_merged = nf.gram(x[:12], net=net)
    kd_merged = nf.gram(x_test, x[:12], net=net)
    for kernel in ("nngp", "ntk"):
        fn = predict.gradient_descent_mse(getattr(k, kernel), y)
        f_train, f_test = fn(None, 0.0, 0.0, getattr(k_td, kernel))
        want = predict.gradient_descent_mse(getattr(k_merged, kernel), y_merged)(
            None, 0.0, 0.0, getattr(kd_merged, kernel))
        _close(f_test, want[1], 1e-8)
        _close(f_train, np.stack([y_merged[[i for i, g in enumerate(groups) if j in g][0]]
                                  for j in range(15)]), 1e-8)
        # finite times: all finite, and late times converge to the limit
        f_train_t, f_test_t = fn(np.logspace(0, 8, 9), 0.0, 0.0, getattr(k_td, kernel))
        assert np.isfinite(f_train_t).all() and np.isfinite(f_test_t).all()
        _close(f_test_t[-1], want[1], 1e-6)
        # the GP posterior and the ensemble stay finite and agree with the merged problem
        gp = predict.gp_inference(k, y)(kernel, k_test_train=k_td, k_test_test=nf.gram(x_test, net=net))
        gp_merged = predict.gp_inference(k_merged, y_merged)(
            kernel, k_test_train=kd_merged, k_test_test=nf.gram(x_test, net=net))
        _close(gp.mean, gp_merged.mean, 1e-8)
        _close(gp.covariance, gp_merged.covariance, 1e-7)


def test_duplicates_against_the_integrated_flow(rng):
    x = rng.standard_normal((8, 3))
    x = np.vstack([x, x[:3]])
    y = rng.standard_normal((11, 1))
    f0 = rng.standard_normal((11, 1))
    k = nf.gram(x, net=nf.MLP(2, "erf", W_std=1.2, b_std=0.1), get="ntk")
    times = np.array([0.5, 5.0, 50.0]) * y.size / np.abs(k).max()
    sol = solve_ivp(lambda _, f: -(k @ (f - y.ravel())) / y.size, (0, times[-1]), f0.ravel(),
                    t_eval=times, method="DOP853", rtol=1e-12, atol=1e-14)
    got = predict.gradient_descent_mse(k, y)(times, f0)
    _close(got[..., 0], sol.y.T, 1e-9)


def test_negative_round_off_eigenvalues_are_clipped(rng):
    """A PSD kernel whose computed spectrum has tiny negative eigenvalues behaves as the same
    kernel with those eigenvalues set to 0."""
    basis, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    spectrum = np.array([-3e-14, -1e-15, 0.0, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0])
    k_neg = (basis * spectrum) @ basis.T
    k_neg = (k_neg + k_neg.T) / 2
    k_clipped = (basis * np.maximum(spectrum, 0)) @ basis.T
    k_clipped = (k_clipped + k_clipped.T) / 2
    y = rng.standard_normal((10, 1))
    k_td = rng.standard_normal((4, 10)) @ k_clipped
    times = np.array([0.0, 1.0, 100.0, np.inf])
    got = predict.gradient_descent_mse(k_neg, y)(times, 0.0, 0.0, k_td)
    want = predict.gradient_descent_mse(k_clipped, y)(times, 0.0, 0.0, k_td)
    for g, w in zip(got, want):
        _close(g, w, 1e-9)


def test_singular_posteriors_are_symmetric_psd(linear_problem):
    p = linear_problem
    k = nf.gram(p["x"], net=p["net"])
    k_td = nf.gram(p["x_test"], p["x"], net=p["net"])
    k_tt = nf.gram(p["x_test"], net=p["net"])
    out = predict.gp_inference(k, p["y"])(("nngp", "ntk", "ntkgp"), k_td, k_tt)
    train = predict.gp_inference(k, p["y"])(("nngp", "ntk", "ntkgp"), None, True)
    for result in (*out, *train):
        cov = result.covariance
        assert np.isfinite(cov).all() and np.array_equal(cov, cov.T)
        assert np.linalg.eigvalsh(cov).min() >= -1e-10 * max(np.abs(k_tt.nngp).max(), 1.0)


def _every_output(k, k_td, k_tt, y):
    times = np.array([0.0, 3.0, 300.0, np.inf])
    fn = predict.gradient_descent_mse(k.ntk, y)
    outputs = [*fn(times, 0.1, 0.0, k_td.ntk), *fn(None, 0.1, 0.0, k_td.ntk)]
    posterior = predict.gp_inference(k, y)(("nngp", "ntk", "ntkgp"), k_td, k_tt)
    return outputs + [array for gaussian in posterior for array in gaussian]


@pytest.mark.parametrize("net", [nf.MLP(0, W_std=W_STD, b_std=B_STD),  # rank-deficient
                                 nf.MLP(2, "relu", W_std=1.5, b_std=0.1)])
def test_array_api_backend_matches_scipy_backend(net, monkeypatch):
    """The CuPy code path (cholesky without ?pocon, numpy-style eigh), run with NumPy standing
    in for CuPy, agrees with the SciPy path on a singular and on a regular kernel."""
    import scipy.linalg

    stand_in = _predict_linalg.array_api_backend("numpy-as-cupy", np, np.linalg.eigh,
                                                 np.linalg.cholesky,
                                                 scipy.linalg.solve_triangular)
    rng = np.random.default_rng(3)
    x, x_test = rng.standard_normal((15, 3)), rng.standard_normal((5, 3))
    y = rng.standard_normal((15, 2))
    kernels = (nf.gram(x, net=net), nf.gram(x_test, x, net=net), nf.gram(x_test, net=net))
    want = _every_output(*kernels, y)
    monkeypatch.setattr(_predict_linalg, "backend_for", lambda _: stand_in)
    got = _every_output(*kernels, y)
    for g, w in zip(got, want):
        _close(g, w, 1e-9)
