"""ntkfast.predict against neural-tangents 0.6.5's own outputs (../shared/reference/dynamics.*).

Every array in dynamics.npz is checked, with the reference's stored kernels fed in so the
prediction code is tested apart from the kernel code (float64, rtol 1e-9 plus an absolute
floor of 1e-12 x the array's scale for entries that are ~0, e.g. outputs at t = 0). A second
test recomputes the kernels with ntkfast.gram: neural-tangents' NTK diagonal is off by up to
~3e-9 relative (reference/README.md), which the train kernel's condition number (~600 here)
amplifies to ~1e-9 of each array's scale, hence rtol 1e-7 and 1e-8 x scale there.
"""
import numpy as np

import ntkfast as nf
from ntkfast import predict

RTOL = 1e-9
NET = nf.MLP(2, "relu", W_std=1.5, b_std=0.05)  # the reference's network (dynamics.json)


def _tag(diag_reg):
    return "dr0" if diag_reg == 0 else f"dr{diag_reg:g}"


def _assert_close(got, want, name, rtol=RTOL, atol_scale=1e-12):
    """Elementwise rtol, plus atol_scale x max |want| for entries near 0."""
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_scale * np.abs(want).max(),
                               err_msg=name)


def _stored_kernel_fn(arrays):
    """A neural-tangents style kernel_fn(x1, x2, get) returning the stored reference kernels."""

    def kernel_fn(x1, x2, get):
        if x2 is None:
            which = "train_train" if x1 is arrays["x_train"] else "test_test"
        else:
            assert x1 is arrays["x_test"] and x2 is arrays["x_train"]
            which = "test_train"
        return nf.Kernels(*(arrays[f"k_{which}_{g}"] if g in get else None
                            for g in ("nngp", "ntk")))

    return kernel_fn


def _check_every_array(arrays, kernel_fn_or_net, rtol, atol_scale=1e-12):
    """Recompute every output array of the reference; returns the names checked."""
    checked = set()
    ts = arrays["ts"]

    def check(name, got):
        _assert_close(np.asarray(got), arrays[name], name, rtol, atol_scale)
        checked.add(name)

    def kernels(which):
        return nf.Kernels(arrays[f"k_{which}_nngp"], arrays[f"k_{which}_ntk"])

    for diag_reg in (0.0, 1e-4):
        tag = _tag(diag_reg)
        for g in ("nngp", "ntk"):
            fn = predict.gradient_descent_mse(arrays[f"k_train_train_{g}"], arrays["y_train"],
                                              learning_rate=1.0, diag_reg=diag_reg)
            for t, suffix in ((ts, "t"), (None, "inf")):
                f_train, f_test = fn(t, arrays["fx_train_0"], arrays["fx_test_0"],
                                     arrays[f"k_test_train_{g}"])
                check(f"gd_{tag}_{g}_fx_train_{suffix}", f_train)
                check(f"gd_{tag}_{g}_fx_test_{suffix}", f_test)
        gp = predict.gp_inference(kernels("train_train"), arrays["y_train"], diag_reg=diag_reg)
        out = gp(get=("nngp", "ntk", "ntkgp"), k_test_train=kernels("test_train"),
                 k_test_test=kernels("test_test"))
        for g in ("nngp", "ntk", "ntkgp"):
            check(f"gp_{tag}_{g}_mean", getattr(out, g).mean)
            check(f"gp_{tag}_{g}_cov", getattr(out, g).covariance)
        ens = predict.gradient_descent_mse_ensemble(kernel_fn_or_net, arrays["x_train"],
                                                    arrays["y_train"], learning_rate=1.0,
                                                    diag_reg=diag_reg)
        for where, x_test in (("test", arrays["x_test"]), ("train", None)):
            for t, suffix in ((ts, "t"), (None, "inf")):
                out = ens(t=t, x_test=x_test, get=("nngp", "ntk"), compute_cov=True)
                for g in ("nngp", "ntk"):
                    check(f"ens_{where}_{tag}_{g}_mean_{suffix}", getattr(out, g).mean)
                    check(f"ens_{where}_{tag}_{g}_cov_{suffix}", getattr(out, g).covariance)
    return checked


def test_every_reference_array(dynamics_reference):
    _, arrays = dynamics_reference
    checked = _check_every_array(arrays, _stored_kernel_fn(arrays), RTOL)
    outputs = {k for k in arrays if k.startswith(("gd_", "gp_", "ens_"))}
    assert checked == outputs, f"not checked: {sorted(outputs - checked)}"


def test_reference_with_kernels_from_ntkfast_gram(dynamics_reference):
    _, arrays = dynamics_reference
    k = nf.gram(arrays["x_train"], net=NET)
    np.testing.assert_allclose(k.ntk, arrays["k_train_train_ntk"], rtol=1e-8)
    checked = _check_every_array(arrays, NET, rtol=1e-7, atol_scale=1e-8)
    assert len(checked) == 60


def test_result_structure_follows_get(dynamics_reference):
    _, arrays = dynamics_reference
    ens = predict.gradient_descent_mse_ensemble(NET, arrays["x_train"], arrays["y_train"])
    both = ens(t=arrays["ts"], x_test=arrays["x_test"])  # get=None: both kernels, means only
    assert type(both).__name__ == "Gaussians" and both._fields == ("nngp", "ntk")
    assert both.ntk.shape == (4, 25, 3)
    reordered = ens(t=1.0, x_test=arrays["x_test"], get=("ntk", "nngp"), compute_cov=True)
    assert reordered._fields == ("ntk", "nngp")
    assert isinstance(reordered.ntk, predict.Gaussian)
    assert reordered.ntk.mean.shape == (25, 3) and reordered.ntk.covariance.shape == (25, 25)
    single = ens(t=None, x_test=arrays["x_test"], get="nngp", compute_cov=True)
    assert isinstance(single, predict.Gaussian)
    np.testing.assert_allclose(single.mean, arrays["ens_test_dr0_nngp_mean_inf"], rtol=1e-7)
    assert isinstance(ens(t=2.0, get="ntk"), np.ndarray)
