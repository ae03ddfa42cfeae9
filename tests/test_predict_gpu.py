"""ntkfast.predict on CuPy arrays: the GPU path gives CuPy outputs equal to the CPU path's.

Skipped cleanly without CuPy or a CUDA device. The kernels are computed on the CPU and moved
to the GPU, so these tests exercise the GPU linear algebra whether or not ntkfast's CUDA
kernel engine is built. Tolerance 1e-9 of each array's scale in float64 (cuSOLVER's eigh and
Cholesky vs LAPACK's: rounding only).
"""
import numpy as np
import pytest

import ntkfast as nf
from ntkfast import predict

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'ntkfast[cuda]')")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError as error:
        pytest.skip(f"no usable CUDA device: {error}")
    return cupy


NET = nf.MLP(2, "relu", W_std=1.5, b_std=0.05)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(8)
    x, x_test = rng.standard_normal((40, 5)), rng.standard_normal((10, 5))
    x = np.vstack([x, x[:2]])  # duplicates: a singular kernel as well
    return dict(x=x, x_test=x_test, y=rng.standard_normal((42, 2)), k=nf.gram(x, net=NET),
                k_td=nf.gram(x_test, x, net=NET), k_tt=nf.gram(x_test, net=NET))


def _same(cp, got, want, tol=1e-9):
    assert isinstance(got, cp.ndarray), f"expected a CuPy array, got {type(got).__name__}"
    got = cp.asnumpy(got)
    assert np.abs(got - want).max() <= tol * max(np.abs(want).max(), 1e-300)


def _to_gpu(cp, kernels):
    return nf.Kernels(*(None if k is None else cp.asarray(k) for k in kernels))


@pytest.mark.parametrize("diag_reg", [0.0, 1e-3])
def test_gradient_descent_mse_on_gpu(cp, data, diag_reg):
    times = np.array([0.0, 1.0, 100.0, np.inf])
    want = predict.gradient_descent_mse(data["k"].ntk, data["y"], diag_reg=diag_reg)
    got = predict.gradient_descent_mse(cp.asarray(data["k"].ntk), data["y"], diag_reg=diag_reg)
    for t in (times, None):
        for g, w in zip(got(t, 0.1, 0.0, cp.asarray(data["k_td"].ntk)),
                        want(t, 0.1, 0.0, data["k_td"].ntk)):
            _same(cp, g, w)


def test_gp_inference_on_gpu(cp, data):
    want = predict.gp_inference(data["k"], data["y"])(("nngp", "ntk", "ntkgp"), data["k_td"],
                                                      data["k_tt"])
    got = predict.gp_inference(_to_gpu(cp, data["k"]), data["y"])(
        ("nngp", "ntk", "ntkgp"), _to_gpu(cp, data["k_td"]), _to_gpu(cp, data["k_tt"]))
    for g, w in zip(got, want):
        _same(cp, g.mean, w.mean)
        _same(cp, g.covariance, w.covariance)


def test_ensemble_on_gpu(cp, data):
    def gpu_kernel_fn(x1, x2, get):
        k = nf.gram(cp.asnumpy(x1), None if x2 is None else cp.asnumpy(x2), net=NET, get=tuple(get))
        return _to_gpu(cp, k)

    times = np.array([0.5, 50.0])
    want = predict.gradient_descent_mse_ensemble(NET, data["x"], data["y"], diag_reg=1e-4)
    got = predict.gradient_descent_mse_ensemble(gpu_kernel_fn, cp.asarray(data["x"]), data["y"],
                                                diag_reg=1e-4)
    for t in (times, None):
        w = want(t, data["x_test"], compute_cov=True)
        g = got(t, cp.asarray(data["x_test"]), compute_cov=True)
        for name in ("nngp", "ntk"):
            _same(cp, getattr(g, name).mean, getattr(w, name).mean)
            _same(cp, getattr(g, name).covariance, getattr(w, name).covariance)


def test_max_learning_rate_on_gpu(cp, data):
    assert predict.max_learning_rate(cp.asarray(data["k"].ntk)) == pytest.approx(
        predict.max_learning_rate(data["k"].ntk), rel=1e-10)


def test_mixing_devices_is_refused(cp, data):
    fn = predict.gradient_descent_mse(data["k"].ntk, data["y"])
    with pytest.raises(TypeError, match="k_test_train is a CuPy array but the training kernel is "
                                        "a NumPy array"):
        fn(1.0, 0.0, 0.0, cp.asarray(data["k_td"].ntk))
