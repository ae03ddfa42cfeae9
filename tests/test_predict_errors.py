"""Bad input to ntkfast.predict gets a clear exception that names the argument."""
import numpy as np
import pytest

import ntkfast as nf
from ntkfast import predict

NET = nf.MLP(2, "relu", W_std=1.5, b_std=0.05)


@pytest.fixture
def kern(rng):
    x, x_test = rng.standard_normal((8, 3)), rng.standard_normal((4, 3))
    return dict(x=x, x_test=x_test, y=rng.standard_normal((8, 2)), k=nf.gram(x, net=NET),
                k_td=nf.gram(x_test, x, net=NET), k_tt=nf.gram(x_test, net=NET))


@pytest.mark.parametrize("bad,error,match", [
    (np.ones((8, 7)), ValueError, r"k_train_train must be square .*got shape \(8, 7\)"),
    (np.ones(8), ValueError, r"k_train_train must be 2-D, got shape \(8,\)"),
    (np.ones((8, 8), dtype=complex), TypeError, r"k_train_train is complex"),
    (np.array([["a"] * 8] * 8), TypeError, r"k_train_train must hold real numbers"),
    ("kernel", TypeError, r"k_train_train must be an array"),
    (np.ones((0, 0)), ValueError, r"k_train_train is empty"),
])
def test_bad_train_kernel(kern, bad, error, match):
    with pytest.raises(error, match=match):
        predict.gradient_descent_mse(bad, kern["y"])


def test_non_symmetric_train_kernel(kern):
    k = kern["k"].ntk.copy()
    k[1, 5] += 1e-3 * np.abs(k).max()
    with pytest.raises(ValueError, match=r"k_train_train must be symmetric .*k_train_train\[1, 5\]"):
        predict.gradient_descent_mse(k, kern["y"])
    with pytest.raises(ValueError, match=r"ntk_train_train must be symmetric"):
        predict.max_learning_rate(k)
    with pytest.raises(ValueError, match=r"k_train_train \(ntk\) must be symmetric"):
        predict.gp_inference(nf.Kernels(kern["k"].nngp, k), kern["y"])
    # rounding-level asymmetry (as from other libraries) is accepted
    k = kern["k"].ntk.copy()
    k[1, 5] *= 1 + 1e-14
    predict.gradient_descent_mse(k, kern["y"])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values(kern, value):
    k = kern["k"].ntk.copy()
    k[2, 2] = value
    with pytest.raises(ValueError, match=r"k_train_train contains 1 non-finite value.*\[2, 2\]"):
        predict.gradient_descent_mse(k, kern["y"])
    y = kern["y"].copy()
    y[3, 1] = value
    with pytest.raises(ValueError, match=r"y_train contains 1 non-finite value.*y_train\[3, 1\]"):
        predict.gradient_descent_mse(kern["k"].ntk, y)
    with pytest.raises(ValueError, match=r"y_train contains"):
        predict.gradient_descent_mse_ensemble(NET, kern["x"], y)
    fn = predict.gradient_descent_mse(kern["k"].ntk, kern["y"])
    f0 = np.zeros((8, 2))
    f0[0, 0] = value
    with pytest.raises(ValueError, match=r"fx_train_0 contains"):
        fn(1.0, f0)
    with pytest.raises(ValueError, match=r"fx_test_0 must be finite"):
        fn(1.0, 0.0, value, kern["k_td"].ntk)
    k_td = kern["k_td"].ntk.copy()
    k_td[1, 1] = value
    with pytest.raises(ValueError, match=r"k_test_train contains"):
        fn(1.0, 0.0, 0.0, k_td)


def test_target_and_output_shapes(kern):
    with pytest.raises(ValueError, match=r"y_train must have one row per training point: "
                                         r"k_train_train is 8 x 8 but y_train has shape \(7, 2\)"):
        predict.gradient_descent_mse(kern["k"].ntk, kern["y"][:7])
    with pytest.raises(ValueError, match=r"y_train must be 1-D or 2-D, got shape \(8, 2, 1\)"):
        predict.gradient_descent_mse(kern["k"].ntk, kern["y"][..., None])
    fn = predict.gradient_descent_mse(kern["k"].ntk, kern["y"])
    with pytest.raises(ValueError, match=r"fx_train_0 must be a scalar or have shape \(8, 2\), "
                                         r"got shape \(8, 3\)"):
        fn(1.0, np.zeros((8, 3)))
    with pytest.raises(ValueError, match=r"fx_test_0 must be a scalar or have shape \(4, 2\), "
                                         r"got shape \(5, 2\)"):
        fn(1.0, 0.0, np.zeros((5, 2)), kern["k_td"].ntk)
    with pytest.raises(ValueError, match=r"k_test_train must have shape \(n_test, n_train\) with "
                                         r"n_train = 8, got shape \(4, 7\)"):
        fn(1.0, 0.0, 0.0, kern["k_td"].ntk[:, :7])
    with pytest.raises(ValueError, match=r"k_test_train must be 2-D"):
        fn(1.0, 0.0, 0.0, kern["k_td"].ntk[0])
    with pytest.raises(TypeError, match=r"k_train_train must be one kernel array .*Kernels pair"):
        predict.gradient_descent_mse(kern["k"], kern["y"])


def test_missing_predictions_or_test_kernel(kern):
    fn = predict.gradient_descent_mse(kern["k"].ntk, kern["y"])
    with pytest.raises(ValueError, match=r"fx_train_0 and fx_test_0 are both None"):
        fn(1.0, None, None)
    with pytest.raises(ValueError, match=r"fx_test_0 is given but k_test_train is None"):
        fn(1.0, 0.0, 0.0)


@pytest.mark.parametrize("t,error,match", [
    (-1.0, ValueError, r"t must be >= 0 .*-1\.0"),
    (np.array([1.0, -0.5]), ValueError, r"t must be >= 0"),
    (np.nan, ValueError, r"t contains NaN"),
    ([1.0, np.nan], ValueError, r"t contains NaN"),
    ("10", TypeError, r"t must be None, a number or an array"),
    (np.array([1j]), TypeError, r"t must be None, a number or an array of real numbers"),
])
def test_bad_times(kern, t, error, match):
    fn = predict.gradient_descent_mse(kern["k"].ntk, kern["y"])
    with pytest.raises(error, match=match):
        fn(t, 0.0)
    ens = predict.gradient_descent_mse_ensemble(NET, kern["x"], kern["y"])
    with pytest.raises(error, match=match):
        ens(t=t)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(learning_rate=0.0), ValueError, r"learning_rate must be > 0"),
    (dict(learning_rate=np.nan), ValueError, r"learning_rate must be finite"),
    (dict(learning_rate=True), TypeError, r"learning_rate must be a real number"),
    (dict(diag_reg=-1e-3), ValueError, r"diag_reg must be >= 0"),
    (dict(diag_reg="1e-3"), TypeError, r"diag_reg must be a real number"),
    (dict(loss_scale="half-sum"), ValueError, r"loss_scale must be 'mean' .* or 'sum'"),
    (dict(trace_axes=()), NotImplementedError, r"supports only trace_axes=\(-1,\)"),
])
def test_bad_options(kern, kwargs, error, match):
    with pytest.raises(error, match=match):
        predict.gradient_descent_mse(kern["k"].ntk, kern["y"], **kwargs)
    with pytest.raises(error, match=match):
        predict.gradient_descent_mse_ensemble(NET, kern["x"], kern["y"], **kwargs)


def test_gp_inference_errors(kern):
    gp = predict.gp_inference(kern["k"], kern["y"])
    with pytest.raises(ValueError, match=r"get must be one of \('nngp', 'ntk', 'ntkgp'\)"):
        gp("ntkk", kern["k_td"])
    with pytest.raises(ValueError, match=r"get must be one of"):
        gp((), kern["k_td"])
    with pytest.raises(ValueError, match=r"get lists a kernel twice"):
        gp(("ntk", "ntk"), kern["k_td"])
    with pytest.raises(ValueError, match=r"k_test_test \(nngp\) must have shape \(4, 4\)"):
        gp("nngp", kern["k_td"], kern["k_tt"].nngp[:3, :3])
    with pytest.raises(ValueError, match=r"k_test_train \(ntk\) must have shape \(n_test, n_train\)"):
        gp("ntk", nf.Kernels(kern["k_td"].nngp, kern["k_td"].ntk[:, :5]))
    only_ntk = predict.gp_inference(nf.Kernels(None, kern["k"].ntk), kern["y"])
    with pytest.raises(ValueError, match=r"needs the 'nngp' train kernel"):
        only_ntk("ntk", kern["k_td"], kern["k_tt"])  # the NTK ensemble covariance needs K
    only_ntk("ntk", kern["k_td"])  # the mean alone does not
    with pytest.raises(ValueError, match=r"k_test_test has no 'ntk' kernel"):
        gp("ntkgp", kern["k_td"], nf.Kernels(kern["k_tt"].nngp, None))
    with pytest.raises(ValueError, match=r"the nngp and ntk kernels differ in shape"):
        predict.gp_inference(nf.Kernels(kern["k"].nngp, kern["k"].ntk[:5, :5]), kern["y"])
    with pytest.raises(TypeError, match=r"k_train_train must be an array or ntkfast.Kernels"):
        predict.gp_inference(nf.Kernels(None, None), kern["y"])


def test_ensemble_errors(kern):
    with pytest.raises(TypeError, match=r"net must be an ntkfast network .* or a kernel_fn"):
        predict.gradient_descent_mse_ensemble("relu", kern["x"], kern["y"])
    with pytest.raises(ValueError, match=r"x_train must be 2-D \(n_points, n_features\)"):
        predict.gradient_descent_mse_ensemble(NET, kern["x"][0], kern["y"])
    with pytest.raises(ValueError, match=r"y_train must have shape \(n_train, n_outputs\) or "
                                         r"\(n_train,\) with n_train = 8"):
        predict.gradient_descent_mse_ensemble(NET, kern["x"], kern["y"][:6])
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['num_thread'\]"):
        predict.gradient_descent_mse_ensemble(NET, kern["x"], kern["y"], num_thread=2)
    with pytest.raises(TypeError, match=r"options of ntkfast.gram; they cannot be used with a "
                                        r"kernel_fn"):
        predict.gradient_descent_mse_ensemble(lambda *a: None, kern["x"], kern["y"], progress=True)
    ens = predict.gradient_descent_mse_ensemble(NET, kern["x"], kern["y"])
    with pytest.raises(ValueError, match=r"x_test must have the 3 features of x_train, got shape "
                                         r"\(4, 5\)"):
        ens(1.0, np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"get must be one of \('nngp', 'ntk'\)"):
        ens(1.0, kern["x_test"], get="ntkgp")
    bad_fn = predict.gradient_descent_mse_ensemble(lambda x1, x2, get: nf.Kernels(None, None),
                                                   kern["x"], kern["y"])
    with pytest.raises(ValueError, match=r"kernel_fn returned no 'nngp' kernel"):
        bad_fn(1.0)
    x = kern["x"].copy()
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"x_train contains 1 non-finite value.*x_train\[0, 0\]"):
        predict.gradient_descent_mse_ensemble(NET, x, kern["y"])
    with pytest.raises(ValueError, match=r"x_test contains 1 non-finite"):
        ens(1.0, x[:4])


def test_gpu_request_without_cuda_is_a_clear_error(kern):
    reason = nf._cuda_probe.cuda_unavailable_reason()
    if reason is None:
        pytest.skip("the CUDA backend is available here")
    ens = predict.gradient_descent_mse_ensemble(NET, kern["x"], kern["y"], backend="cuda")
    with pytest.raises(nf.BackendUnavailableError, match="the CUDA backend is not available"):
        ens(1.0)


def test_max_learning_rate_errors(kern):
    with pytest.raises(ValueError, match=r"y_train_size must be a positive integer or None"):
        predict.max_learning_rate(kern["k"].ntk, y_train_size=0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        predict.max_learning_rate(kern["k"].ntk, momentum=1.0)
    with pytest.raises(ValueError, match=r"eps must be >= 0"):
        predict.max_learning_rate(kern["k"].ntk, eps=-1.0)
