"""Identities of the dynamics and posteriors (Lee et al. 2019; docs/dynamics.md), the time
conventions, caching, dtypes, max_learning_rate and the large-N LAPACK path.

Tolerances are keyed by dtype: float64 results agree with their identities to ~1e-12 of the
array's scale (a handful of GEMMs of O(1) numbers); float32 ones to 2e-3, the error of an
eigendecomposition in float32 amplified by the kernel's condition number (~50 here).
"""
import numpy as np
import pytest

import ntkfast as nf
from ntkfast import _predict_linalg, predict

NET = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)
TOL = {np.float64: 1e-12, np.float32: 2e-3}


def _close(got, want, tol):
    scale = max(np.abs(want).max(), 1e-300)
    assert np.abs(got - want).max() <= tol * scale, np.abs(got - want).max() / scale


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2024)
    x, x_test = rng.standard_normal((30, 6)), rng.standard_normal((9, 6))
    y = np.stack([np.sin(x[:, 0]), np.sign(x[:, 1]), x[:, 2] * x[:, 3]], axis=1)
    return dict(x=x, x_test=x_test, y=y, k=nf.gram(x, net=NET), k_td=nf.gram(x_test, x, net=NET),
                k_tt=nf.gram(x_test, net=NET), f0=0.5 * rng.standard_normal(y.shape),
                g0=0.5 * rng.standard_normal((9, 3)))


@pytest.mark.parametrize("diag_reg", [0.0, 1e-3])
def test_time_zero_gives_the_initial_outputs(data, diag_reg):
    fn = predict.gradient_descent_mse(data["k"].ntk, data["y"], diag_reg=diag_reg)
    f_train, f_test = fn(0.0, data["f0"], data["g0"], data["k_td"].ntk)
    assert np.array_equal(f_train, data["f0"]) and np.array_equal(f_test, data["g0"])
    ens = predict.gradient_descent_mse_ensemble(NET, data["x"], data["y"], diag_reg=diag_reg)
    prior = ens(t=0.0, x_test=data["x_test"], compute_cov=True)
    for g in ("nngp", "ntk"):  # untrained ensemble: the prior GP, mean 0 and covariance K**
        assert np.array_equal(getattr(prior, g).mean, np.zeros((9, 3)))
        _close(getattr(prior, g).covariance, data["k_tt"].nngp, 1e-13)
    _close(ens(t=0.0, get="ntk", compute_cov=True).covariance, data["k"].nngp, 1e-12)


@pytest.mark.parametrize("diag_reg", [0.0, 1e-3])
def test_late_times_approach_the_end_of_training(data, diag_reg):
    fn = predict.gradient_descent_mse(data["k"].ntk, data["y"], diag_reg=diag_reg)
    late = fn(np.array([1e9, np.inf]), data["f0"], data["g0"], data["k_td"].ntk)
    end = fn(None, data["f0"], data["g0"], data["k_td"].ntk)
    for got, want in zip(late, end):
        _close(got[0], want, 1e-10)  # eigendecomposition vs Cholesky: rounding only
        _close(got[1], want, 1e-10)
    ens = predict.gradient_descent_mse_ensemble(NET, data["x"], data["y"], diag_reg=diag_reg)
    late = ens(t=1e9, x_test=data["x_test"], compute_cov=True)
    end = ens(t=None, x_test=data["x_test"], compute_cov=True)
    for g in ("nngp", "ntk"):
        _close(getattr(late, g).mean, getattr(end, g).mean, 1e-10)
        _close(getattr(late, g).covariance, getattr(end, g).covariance, 1e-9)


def test_many_times_at_once_equal_one_at_a_time(data):
    times = np.array([[0.0, 0.01, 1.0], [30.0, 1e3, np.inf]])
    fn = predict.gradient_descent_mse(data["k"].ntk, data["y"], learning_rate=0.3)
    f_train, f_test = fn(times, data["f0"], data["g0"], data["k_td"].ntk)
    assert f_train.shape == (2, 3, 30, 3) and f_test.shape == (2, 3, 9, 3)
    ens = predict.gradient_descent_mse_ensemble(NET, data["x"], data["y"], learning_rate=0.3)
    batch = ens(t=times, x_test=data["x_test"], get="ntk", compute_cov=True)
    assert batch.mean.shape == (2, 3, 9, 3) and batch.covariance.shape == (2, 3, 9, 9)
    for index in np.ndindex(times.shape):
        one_train, one_test = fn(times[index], data["f0"], data["g0"], data["k_td"].ntk)
        assert one_train.shape == (30, 3)
        _close(f_train[index], one_train, 1e-13)
        _close(f_test[index], one_test, 1e-13)
        one = ens(t=times[index], x_test=data["x_test"], get="ntk", compute_cov=True)
        _close(batch.mean[index], one.mean, 1e-13)
        _close(batch.covariance[index], one.covariance, 1e-13)


def test_covariances_are_symmetric_psd(data):
    ens = predict.gradient_descent_mse_ensemble(NET, data["x"], data["y"], diag_reg=1e-4)
    times = np.array([0.0, 1.0, 100.0, 1e5])
    for x_test in (data["x_test"], None):
        for t in (times, None):
            out = ens(t=t, x_test=x_test, compute_cov=True)
            for g in ("nngp", "ntk"):
                cov_t = getattr(out, g).covariance
                for cov in cov_t.reshape((-1,) + cov_t.shape[-2:]):
                    assert np.array_equal(cov, cov.T)
                    assert np.linalg.eigvalsh(cov).min() >= -1e-12 * data["k"].nngp.max()
    gp = predict.gp_inference(data["k"], data["y"])(("nngp", "ntk", "ntkgp"), data["k_td"],
                                                    data["k_tt"])
    for result in gp:
        assert np.array_equal(result.covariance, result.covariance.T)
        assert np.linalg.eigvalsh(result.covariance).min() >= -1e-12 * data["k"].ntk.max()
        # the posterior variance never exceeds the prior's
        assert (np.diag(result.covariance) <= np.diag(data["k_tt"].ntk
                                                      if result is gp.ntkgp else data["k_tt"].nngp)
                + 1e-12).all()


def test_sum_loss_is_the_mean_loss_at_rescaled_times(data):
    """The ½·sum loss at time t = neural-tangents' mean loss at time N·t."""
    y = data["y"]
    mean_fn = predict.gradient_descent_mse(data["k"].ntk, y)
    sum_fn = predict.gradient_descent_mse(data["k"].ntk, y, loss_scale="sum")
    t_sum = np.array([0.0, 1e-3, 0.05, 2.0])
    for got, want in zip(sum_fn(t_sum, data["f0"], data["g0"], data["k_td"].ntk),
                         mean_fn(t_sum * y.size, data["f0"], data["g0"], data["k_td"].ntk)):
        _close(got, want, 1e-13)
    ens_sum = predict.gradient_descent_mse_ensemble(NET, data["x"], y, loss_scale="sum")
    ens_mean = predict.gradient_descent_mse_ensemble(NET, data["x"], y)
    _close(ens_sum(t_sum, data["x_test"], "ntk"), ens_mean(t_sum * y.size, data["x_test"], "ntk"),
           1e-13)


def test_learning_rate_only_scales_time(data):
    a = predict.gradient_descent_mse(data["k"].nngp, data["y"], learning_rate=4.0)(2.5, data["f0"])
    b = predict.gradient_descent_mse(data["k"].nngp, data["y"], learning_rate=1.0)(10.0, data["f0"])
    _close(a, b, 1e-14)


def test_ensemble_mean_is_gradient_descent_from_zero(data):
    """The ensemble mean is the trained output of the mean initial function f₀ = 0."""
    ens = predict.gradient_descent_mse_ensemble(NET, data["x"], data["y"], diag_reg=1e-3)
    fn = predict.gradient_descent_mse(data["k"].ntk, data["y"], diag_reg=1e-3)
    times = np.array([0.5, 50.0])
    f_train, f_test = fn(times, 0.0, 0.0, data["k_td"].ntk)
    _close(ens(times, data["x_test"], "ntk"), f_test, 1e-12)
    _close(ens(times, None, "ntk"), f_train, 1e-12)


def test_one_dimensional_targets(data):
    y1 = data["y"][:, 1]
    fn = predict.gradient_descent_mse(data["k"].ntk, y1)
    f_train, f_test = fn([1.0, 10.0], 0.0, 0.0, data["k_td"].ntk)
    assert f_train.shape == (2, 30) and f_test.shape == (2, 9)
    # one column of a 1-output problem (N = n, not 3n: time runs 3x faster than with y)
    ref_train, ref_test = predict.gradient_descent_mse(data["k"].ntk, y1[:, None])(
        [1.0, 10.0], 0.0, 0.0, data["k_td"].ntk)
    _close(f_train, ref_train[..., 0], 1e-14)
    _close(f_test, ref_test[..., 0], 1e-14)
    gp = predict.gp_inference(data["k"], y1)("nngp", data["k_td"], data["k_tt"])
    assert gp.mean.shape == (9,) and gp.covariance.shape == (9, 9)


def test_train_only_and_test_only_outputs(data):
    fn = predict.gradient_descent_mse(data["k"].ntk, data["y"])
    both = fn(3.0, data["f0"], data["g0"], data["k_td"].ntk)
    train_only = fn(3.0, data["f0"])
    test_only = fn(3.0, None, data["g0"], data["k_td"].ntk)
    assert isinstance(train_only, np.ndarray) and isinstance(test_only, np.ndarray)
    _close(train_only, both[0], 0.0)
    # fx_train_0=None means f₀(X) = 0 for the residual (neural-tangents' convention)
    _close(test_only, fn(3.0, 0.0, data["g0"], data["k_td"].ntk)[1], 0.0)
    # scalars broadcast
    _close(fn(3.0, 0.25)[0], fn(3.0, np.full((30, 3), 0.25))[0], 0.0)


def test_float32_within_bound_of_float64(data):
    k64, td64 = data["k"].ntk, data["k_td"].ntk
    k32, td32 = k64.astype(np.float32), td64.astype(np.float32)
    times = np.array([1.0, 100.0])
    got = predict.gradient_descent_mse(k32, data["y"])(times, 0.0, 0.0, td32)
    want = predict.gradient_descent_mse(k64, data["y"])(times, 0.0, 0.0, td64)
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        _close(g, w, TOL[np.float32])
    got_inf = predict.gradient_descent_mse(k32, data["y"])(None, 0.0, 0.0, td32)
    assert got_inf[1].dtype == np.float32
    _close(got_inf[1], predict.gradient_descent_mse(k64, data["y"])(None, 0.0, 0.0, td64)[1],
           TOL[np.float32])


def test_kernels_are_computed_once(data):
    calls = []

    def kernel_fn(x1, x2, get):
        calls.append((x1.shape[0], None if x2 is None else x2.shape[0], tuple(get)))
        return nf.gram(x1, x2, net=NET, get=tuple(get))

    ens = predict.gradient_descent_mse_ensemble(kernel_fn, data["x"], data["y"])
    for t in ([1.0, 2.0], None, 5.0):
        ens(t=t, x_test=data["x_test"], compute_cov=True)
    assert calls == [(30, None, ("nngp", "ntk")), (9, 30, ("nngp", "ntk")), (9, None, ("nngp",))]
    changed = data["x_test"].copy()
    changed[0, 0] += 1.0  # new content: new test kernels (the cache keys on the values)
    ens(t=1.0, x_test=changed)
    assert calls[-1] == (9, 30, ("nngp", "ntk")) and len(calls) == 4


def test_max_learning_rate_is_the_stability_edge(data):
    k, y = data["k"].ntk, data["y"]
    lr = predict.max_learning_rate(k, y_train_size=y.size)
    top = np.linalg.eigvalsh(k)[-1]
    assert lr == pytest.approx(2 * y.size / (top + 1e-12), rel=1e-12)
    assert predict.max_learning_rate(k) == pytest.approx(2 * 30 / top, rel=1e-12)
    assert predict.max_learning_rate(k, momentum=0.5) == pytest.approx(1.5 * 2 * 30 / top, rel=1e-12)

    def residual_after(rate, steps=400):  # discrete full-batch GD in function space
        r = -y.copy()
        for _ in range(steps):
            r = r - rate / y.size * (k @ r)
        return np.abs(r).max()

    assert residual_after(0.98 * lr) < np.abs(y).max()
    assert residual_after(1.02 * lr) > 1e3 * np.abs(y).max()


def test_max_learning_rate_large_kernel_uses_lanczos(rng):
    x = rng.standard_normal((700, 5))
    k = nf.gram(x, net=NET, get="ntk")
    assert predict.max_learning_rate(k, 700) == pytest.approx(
        2 * 700 / (np.linalg.eigvalsh(k)[-1] + 1e-12), rel=1e-10)


def test_eigh_driver_choice_and_agreement(rng, monkeypatch):
    assert _predict_linalg.cpu_eigh_driver(5000) == "evd"
    assert _predict_linalg.cpu_eigh_driver(32766) == "evd"  # 1 + 6N + 2N² < 2^31
    assert _predict_linalg.cpu_eigh_driver(32767) == "evr"
    assert 1 + 6 * 32766 + 2 * 32766 ** 2 < 2 ** 31 <= 1 + 6 * 32767 + 2 * 32767 ** 2
    # the large-N driver gives the same predictions (forced here at a small N)
    x = rng.standard_normal((40, 5))
    k, y = nf.gram(x, net=NET, get="ntk"), rng.standard_normal((40, 2))
    want = predict.gradient_descent_mse(k, y)([1.0, 50.0], 0.3)
    monkeypatch.setattr(_predict_linalg, "cpu_eigh_driver", lambda n: "evr")
    _close(predict.gradient_descent_mse(k, y)([1.0, 50.0], 0.3), want, 1e-11)


def test_inputs_are_not_modified(data):
    k = data["k"].ntk.copy()
    k_td = data["k_td"].ntk.copy()
    y = data["y"].copy()
    fn = predict.gradient_descent_mse(k, y, diag_reg=0.1)
    fn([1.0, 5.0], 0.1, 0.2, k_td)
    fn(None, 0.1, 0.2, k_td)
    assert np.array_equal(k, data["k"].ntk) and np.array_equal(k_td, data["k_td"].ntk)
    assert np.array_equal(y, data["y"])


def test_time_factors_against_high_precision_arithmetic():
    """On a diagonal kernel (eigenvectors exactly the unit vectors) the outputs are the scalar
    factors themselves: f_train = 1 − e^{−μτ/N} and f_test = (1 − e^{−μτ/N})/μ (τ/N at μ = 0),
    checked against 400-digit decimal arithmetic (enough to resolve 1 − e^{−x} at x ~ 1e-310)
    from tiny eigenvalues to huge times, where cancellation, underflow and 0/0 would break a
    naive evaluation."""
    import decimal

    mu = np.array([0.0, 1e-300, 1e-12, 1e-3, 1.0, 1e4])
    n = len(mu)
    y = np.ones((n, 1))  # N = y.size = n
    times = np.array([0.0, 1e-9, 1.0, 1e6, 1e290])
    fn = predict.gradient_descent_mse(np.diag(mu), y)
    f_train, f_test = fn(times, 0.0, 0.0, np.eye(n))
    with decimal.localcontext() as exact:
        exact.prec = 400
        for a, t in enumerate(times):
            for i, m in enumerate(mu):
                x = decimal.Decimal(m) * decimal.Decimal(t) / n
                rise = 1 - (-x).exp()
                growth = decimal.Decimal(t) / n if m == 0 else rise / decimal.Decimal(m)
                assert f_train[a, i, 0] == pytest.approx(float(rise), rel=1e-14, abs=1e-300)
                assert f_test[a, i, 0] == pytest.approx(float(growth), rel=1e-14, abs=1e-300)
