"""ntkfast.predict refuses kernels that are not positive semi-definite (beyond round-off) and
test-test kernels without a test-train kernel; PSD-but-singular kernels keep working."""
import numpy as np
import pytest

import ntkfast as nf
from ntkfast import predict

NOT_PSD = r"must be positive semi-definite \(a kernel matrix\)"


def _indefinite(n=6, low=-1.0, seed=0):
    """A symmetric matrix with spectrum [low, 1, 2, ...]."""
    basis, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    spectrum = np.concatenate([[low], np.arange(1.0, n)])
    k = (basis * spectrum) @ basis.T
    return (k + k.T) / 2


def test_max_learning_rate_of_a_negative_definite_kernel():
    # before: a negative learning rate, -2.0
    with pytest.raises(ValueError, match=NOT_PSD + r", but it has eigenvalue -1 "):
        predict.max_learning_rate(-np.eye(3))
    with pytest.raises(ValueError, match=r"ntk_train_train must be positive semi-definite.*"
                                         r"eigenvalue -1 \(largest 5\)"):
        predict.max_learning_rate(_indefinite())


def test_max_learning_rate_large_kernels_use_cheap_necessary_conditions(rng):
    n = 600  # above the full-spectrum size: Lanczos for λ_max, then diagonal and sign checks
    with pytest.raises(ValueError, match=r"ntk_train_train must be .*its largest eigenvalue is -1"):
        predict.max_learning_rate(-np.eye(n))
    x = rng.standard_normal((n, 4))
    k = nf.gram(x, net=nf.MLP(1), get="ntk")
    k[7, 7] = -1.0
    with pytest.raises(ValueError, match=r"entry ntk_train_train\[7, 7\] = -1 is negative"):
        predict.max_learning_rate(k)


@pytest.mark.parametrize("t", [None, 1.0, np.array([0.0, 10.0, np.inf])])
def test_gradient_descent_refuses_an_indefinite_kernel(t):
    k, y = _indefinite(), np.ones((6, 1))
    fn = predict.gradient_descent_mse(k, y)
    # before: outputs frozen along the negative eigenvector (t finite), or a pseudo-inverse (t=None)
    with pytest.raises(ValueError, match=r"k_train_train must be positive semi-definite.*"
                                         r"eigenvalue -1 \(largest 5\)"):
        fn(t, 0.0, 0.0, np.ones((2, 6)))


def test_regulariser_is_part_of_the_check():
    k, y = _indefinite(low=-0.5), np.ones((6, 1))
    # K + I is positive definite: the flow is well defined
    out = predict.gradient_descent_mse(k, y, diag_reg=1.0, diag_reg_absolute_scale=True)(1.0)
    assert np.isfinite(out).all()
    with pytest.raises(ValueError, match=r"k_train_train \+ 0.2·I \(diag_reg\) has eigenvalue "
                                         r"-0.3 .*i.e. k_train_train has eigenvalue -0.5"):
        predict.gradient_descent_mse(k, y, diag_reg=0.2, diag_reg_absolute_scale=True)(1.0)


def test_gp_inference_and_ensemble_name_the_kernel(rng):
    k, y = _indefinite(), np.ones((6, 1))
    with pytest.raises(ValueError, match=r"k_train_train must be positive semi-definite"):
        predict.gp_inference(k, y)("nngp", np.ones((2, 6)))
    kernels = nf.Kernels(np.eye(6), k)
    with pytest.raises(ValueError, match=r"k_train_train \(ntk\) must be positive semi-definite"):
        predict.gp_inference(kernels, y)("ntk", nf.Kernels(np.ones((2, 6)), np.ones((2, 6))))
    x = rng.standard_normal((6, 2))

    def kernel_fn(x1, x2, get):
        return nf.Kernels(k if x2 is None else np.ones((x1.shape[0], 6)),
                          k if x2 is None else np.ones((x1.shape[0], 6)))

    ens = predict.gradient_descent_mse_ensemble(kernel_fn, x, y)
    with pytest.raises(ValueError, match=r"the ntk kernel of x_train must be positive semi-def"):
        ens(5.0, get="ntk")


def test_asymmetry_beyond_round_off_is_refused_within_is_accepted(rng):
    x = rng.standard_normal((20, 3))
    k = nf.gram(x, net=nf.MLP(2), get="ntk")
    y = rng.standard_normal((20, 1))
    noise = rng.standard_normal(k.shape) * 1e-13 * np.abs(k).max()
    assert np.isfinite(predict.gradient_descent_mse(k + noise, y)(1.0)).all()
    assert predict.max_learning_rate(k + noise) > 0
    skewed = k.copy()
    skewed[3, 4] += 1e-3 * np.abs(k).max()
    with pytest.raises(ValueError, match=r"k_train_train must be symmetric"):
        predict.gradient_descent_mse(skewed, y)
    with pytest.raises(ValueError, match=r"ntk_train_train must be symmetric"):
        predict.max_learning_rate(skewed)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n, n_features, net", [
    (40, 2, nf.MLP(0)),  # linear kernel of rank 2
    (300, 3, nf.MLP(1, "identity", W_std=1.3)),
    (600, 2, nf.MLP(2, "relu", W_std=1.5, b_std=0.1)),  # duplicates; the Lanczos path too
    (200, 4, nf.MLP(3, "erf", W_std=2.0)),
])
def test_psd_but_singular_kernels_keep_working(rng, dtype, n, n_features, net):
    x = rng.standard_normal((n, n_features)).astype(dtype)
    x[n // 2:] = x[: n - n // 2]  # every point twice: singular
    k = nf.gram(x, net=net)
    y = rng.standard_normal((n, 1)).astype(dtype)
    k_td = nf.gram(x[:5], x, net=net)
    for g in ("nngp", "ntk"):
        fn = predict.gradient_descent_mse(getattr(k, g), y)
        for t in (None, np.array([1.0, 1e3, np.inf])):
            train, test = fn(t, 0.0, 0.0, getattr(k_td, g))
            assert np.isfinite(train).all() and np.isfinite(test).all()
        assert predict.max_learning_rate(getattr(k, g)) > 0
    out = predict.gp_inference(k, y)(("nngp", "ntk"), k_td, nf.gram(x[:5], net=net))
    assert all(np.isfinite(r.covariance).all() for r in out)


def test_k_test_test_without_k_test_train_is_refused(rng):
    x = rng.standard_normal((8, 3))
    k = nf.gram(x, net=nf.MLP(2))
    gp = predict.gp_inference(k, rng.standard_normal((8, 1)))
    k_tt = nf.gram(x[:3], net=nf.MLP(2))
    # before: the training set's posterior N(y, 0), k_test_test silently ignored
    with pytest.raises(ValueError, match=r"k_test_test is a kernel but k_test_train is None"):
        gp("nngp", k_test_test=k_tt)
    with pytest.raises(ValueError, match=r"k_test_train is None"):
        gp(("nngp", "ntk"), None, k_tt)
    train = gp("nngp", k_test_test=True)  # neural-tangents' flag for the training covariance
    assert train.covariance.shape == (8, 8)


def test_gpu_code_path_checks_too(monkeypatch):
    """The CuPy code path (array-API backend, eigvalsh for max_learning_rate), with NumPy
    standing in for CuPy."""
    import scipy.linalg

    from ntkfast import _predict_linalg

    stand_in = _predict_linalg.array_api_backend("numpy-as-cupy", np, np.linalg.eigh,
                                                 np.linalg.cholesky, scipy.linalg.solve_triangular)
    monkeypatch.setattr(_predict_linalg, "backend_for", lambda _: stand_in)
    k, y = _indefinite(), np.ones((6, 1))
    with pytest.raises(ValueError, match=r"ntk_train_train must be positive semi-definite"):
        predict.max_learning_rate(k)
    for t in (None, 2.0):
        with pytest.raises(ValueError, match=r"k_train_train must be positive semi-definite"):
            predict.gradient_descent_mse(k, y)(t, 0.0)
    assert predict.max_learning_rate(np.eye(6)) == pytest.approx(2 * 6 / (1 + 1e-12))
