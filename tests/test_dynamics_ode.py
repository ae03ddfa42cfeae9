"""The closed forms of ntkfast.predict against independent derivations.

* Gradient flow integrated numerically (scipy.integrate.solve_ivp, DOP853, rtol 1e-11): the
  train and test outputs, and the linear maps f₀ ↦ f_t whose push-forward of the prior
  N(0, K) gives the ensemble's mean and covariance (Lee et al. 2019, eq. 16) without any
  eigendecomposition. Tolerance 1e-8 relative to each array's scale (the integrator's).
* The posteriors at t = ∞ from the joint Gaussian's precision matrix (block inversion), a
  different computation than the Cholesky solves of gp_inference.
"""
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import ntkfast as nf
from ntkfast import predict

TOL = 1e-8
NET = nf.MLP(2, "erf", W_std=1.3, b_std=0.2)


def _close(got, want, tol=TOL):
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= tol * scale, np.abs(got - want).max() / scale


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(11)
    x, x_test = rng.standard_normal((14, 4)), rng.standard_normal((6, 4))
    y = np.stack([np.sin(x[:, 0]), np.cos(x[:, 1] * x[:, 2])], axis=1)
    return dict(x=x, x_test=x_test, y=y, k=nf.gram(x, net=NET), k_td=nf.gram(x_test, x, net=NET),
                k_tt=nf.gram(x_test, net=NET), f0=0.3 * rng.standard_normal(y.shape),
                g0=0.3 * rng.standard_normal((6, 2)))


def _flow(kernel, k_td, y, f0, g0, times, rate):
    """Integrate df/dt = −rate·K̃(f − y), dg/dt = −rate·K_td(f − y) (the train kernel K̃ may be
    regularised; the test rows see the raw cross kernel, as in the closed form)."""
    n, k = y.shape

    def rhs(_, state):
        f = state[:n * k].reshape(n, k)
        grad = f - y
        return -rate * np.concatenate([(kernel @ grad).ravel(), (k_td @ grad).ravel()])

    state0 = np.concatenate([f0.ravel(), g0.ravel()])
    sol = solve_ivp(rhs, (0.0, times[-1]), state0, t_eval=times, method="DOP853", rtol=1e-11,
                    atol=1e-13)
    assert sol.success
    states = sol.y.T
    return states[:, :n * k].reshape(-1, n, k), states[:, n * k:].reshape(-1, g0.shape[0], k)


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
@pytest.mark.parametrize("diag_reg,absolute", [(0.0, False), (1e-2, False), (0.05, True)])
@pytest.mark.parametrize("loss_scale", ["mean", "sum"])
def test_gradient_descent_mse_solves_the_flow(problem, kernel, diag_reg, absolute, loss_scale):
    k = getattr(problem["k"], kernel)
    k_td = getattr(problem["k_td"], kernel)
    y, f0, g0 = problem["y"], problem["f0"], problem["g0"]
    rate = 0.7
    n_scale = y.size if loss_scale == "mean" else 1.0
    lam = diag_reg if absolute else diag_reg * np.trace(k) / len(k)
    times = np.array([0.0, 0.3, 2.0, 15.0, 60.0]) * (n_scale / np.abs(k).max())
    want_train, want_test = _flow(k + lam * np.eye(len(k)), k_td, y, f0, g0, times * rate,
                                  1.0 / n_scale)
    fn = predict.gradient_descent_mse(k, y, learning_rate=rate, diag_reg=diag_reg,
                                      diag_reg_absolute_scale=absolute, loss_scale=loss_scale)
    got_train, got_test = fn(times, f0, g0, k_td)
    _close(got_train, want_train)
    _close(got_test, want_test)


def _flow_maps(theta, theta_td, times, rate):
    """(F_t, G_t) with f_t − y = F_t (f₀ − y) and g_t = g₀ + G_t (f₀ − y), by integrating the
    flow with f₀ − y = each unit vector (columns of I)."""
    n, m = theta.shape[0], theta_td.shape[0]
    maps = _flow(theta, theta_td, np.zeros((n, n)), np.eye(n), np.zeros((m, n)), times, rate)
    return maps  # (T, n, n), (T, m, n)


@pytest.mark.parametrize("diag_reg", [0.0, 1e-2])
def test_ensemble_is_the_pushforward_of_the_prior(problem, diag_reg):
    """mean_t = E[f_t], cov_t = Cov[f_t] for f₀ ~ N(0, K) (jointly with the test outputs)."""
    k, k_td, k_tt, y = problem["k"], problem["k_td"], problem["k_tt"], problem["y"]
    n = len(y)
    rate = 1.0 / y.size
    times = np.array([0.0, 1.0, 10.0, 100.0]) * (y.size / np.abs(k.ntk).max())
    prior, prior_td = k.nngp, k_td.nngp
    lam = diag_reg * np.trace(k.ntk) / n
    f_maps, g_maps = _flow_maps(k.ntk + lam * np.eye(n), k_td.ntk, times, rate)
    ens = predict.gradient_descent_mse_ensemble(NET, problem["x"], y, diag_reg=diag_reg)
    test = ens(t=times, x_test=problem["x_test"], get="ntk", compute_cov=True)
    train = ens(t=times, get="ntk", compute_cov=True)
    for i in range(len(times)):
        f_map, g_map = f_maps[i], g_maps[i]
        # g_t = g₀ + G (f₀ − y): mean −G y; covariance of g₀ + G f₀
        _close(test.mean[i], -g_map @ y)
        cov = k_tt.nngp + g_map @ prior_td.T + prior_td @ g_map.T + g_map @ prior @ g_map.T
        _close(test.covariance[i], cov)
        # f_t = y + F (f₀ − y): mean (I − F) y, covariance F K Fᵀ
        _close(train.mean[i], y - f_map @ y)
        _close(train.covariance[i], f_map @ prior @ f_map.T, tol=1e-7)


def test_nngp_ensemble_is_the_pushforward_without_regularisation(problem):
    """Training only the readout: dynamics and prior both use K. (With diag_reg > 0
    neural-tangents' NNGP covariance is K** − K* K̃⁻¹(I − e^{−2K̃τ/N})K*ᵀ, a convention that is
    not a push-forward; it is checked against the reference data instead.)"""
    k, k_td, k_tt, y = problem["k"].nngp, problem["k_td"].nngp, problem["k_tt"].nngp, problem["y"]
    times = np.array([0.5, 5.0, 50.0]) * (y.size / np.abs(k).max())
    f_maps, g_maps = _flow_maps(k, k_td, times, 1.0 / y.size)
    ens = predict.gradient_descent_mse_ensemble(NET, problem["x"], y)
    test = ens(t=times, x_test=problem["x_test"], get="nngp", compute_cov=True)
    train = ens(t=times, get="nngp", compute_cov=True)
    for i in range(len(times)):
        f_map, g_map = f_maps[i], g_maps[i]
        _close(test.mean[i], -g_map @ y)
        _close(test.covariance[i], k_tt + g_map @ k_td.T + k_td @ g_map.T + g_map @ k @ g_map.T)
        _close(train.covariance[i], f_map @ k @ f_map.T, tol=1e-7)


@pytest.mark.parametrize("diag_reg", [0.0, 1e-3])
def test_gp_posteriors_from_the_joint_precision(problem, diag_reg):
    """Conditioning a Gaussian = inverting its joint covariance: for J = [[K̃, K*ᵀ], [K*, K**]]
    and Λ = J⁻¹, the posterior covariance is Λ_**⁻¹ and the mean −Λ_**⁻¹ Λ_*d y."""
    k, k_td, k_tt, y = problem["k"], problem["k_td"], problem["k_tt"], problem["y"]
    n = len(y)
    gp = predict.gp_inference(k, y, diag_reg=diag_reg)
    out = gp(get=("nngp", "ntkgp"), k_test_train=k_td, k_test_test=k_tt)
    for name, kernel in (("nngp", "nngp"), ("ntkgp", "ntk")):
        kk, kd, kt = getattr(k, kernel), getattr(k_td, kernel), getattr(k_tt, kernel)
        joint = np.block([[kk + diag_reg * np.trace(kk) / n * np.eye(n), kd.T], [kd, kt]])
        precision = np.linalg.inv(joint)
        cov = np.linalg.inv(precision[n:, n:])
        mean = -cov @ precision[n:, :n] @ y
        _close(getattr(out, name).mean, mean, tol=1e-9)
        _close(getattr(out, name).covariance, cov, tol=1e-9)


def test_ntk_posterior_is_the_end_of_training(problem):
    """gp_inference('ntk') = the push-forward of the prior through the t → ∞ maps
    F = 0, G = −Θ* Θ⁻¹ (Θ⁻¹ from numpy.linalg.inv, not a Cholesky solve)."""
    k, k_td, k_tt, y = problem["k"], problem["k_td"], problem["k_tt"], problem["y"]
    g_map = -k_td.ntk @ np.linalg.inv(k.ntk)
    out = predict.gp_inference(k, y)(get="ntk", k_test_train=k_td, k_test_test=k_tt)
    _close(out.mean, -g_map @ y, tol=1e-9)
    want = k_tt.nngp + g_map @ k_td.nngp.T + k_td.nngp @ g_map.T + g_map @ k.nngp @ g_map.T
    _close(out.covariance, want, tol=1e-9)
