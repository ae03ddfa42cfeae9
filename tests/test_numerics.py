"""Numerical edge cases: no NaN wherever the limit exists (the guarded closed forms, e.g. the
arc-cosine kernels of Cho & Saul 2009 at correlation ±1)."""
import numpy as np
import pytest

import ntkfast as nf
import numpy_reference
from test_closed_forms import ACTIVATIONS

ALL = ACTIVATIONS + [nf.ExpNormalized(), nf.ExpNormalized(do_clip=True), nf.Hermite(2), nf.Identity()]


def _ids(layer):
    return repr(layer)


def _compare(got, want, rtol, name=""):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-13 * scale, err_msg=name)


@pytest.mark.parametrize("layer", ALL, ids=_ids)
def test_zero_norm_rows_without_bias(rng, layer):
    """Zero inputs and b_std = 0: a zero-variance pre-activation, whose pairs have a limit."""
    x = rng.standard_normal((9, 6))
    y = rng.standard_normal((5, 6))
    x[[0, 4]] = 0.0
    y[2] = 0.0
    net = nf.serial(nf.Dense(W_std=1.4, b_std=0.0), layer, nf.Dense(W_std=1.2, b_std=0.0), layer,
                    nf.Dense(W_std=1.0, b_std=0.0))
    for a, b in ((x, None), (x, y)):
        k = nf.gram(a, b, net=net)
        oracle = numpy_reference.kernels(net, a, b)
        for got, want in zip(k, oracle):
            assert np.isfinite(got).all()
            _compare(got, want, 1e-11)


@pytest.mark.parametrize("layer", ALL, ids=_ids)
def test_parallel_rows(rng, layer):
    """ρ = ±1: duplicates equal the diagonal exactly; negated and scaled rows match the oracle."""
    x = rng.standard_normal((8, 7))
    x[5] = x[1]
    x[6] = -x[2]
    x[7] = 3.0 * x[3]
    net = nf.serial(nf.Dense(W_std=1.3, b_std=0.1), layer, nf.Dense(W_std=1.1, b_std=0.2), layer,
                    nf.Dense(W_std=1.0, b_std=0.1))
    k = nf.gram(x, net=net)
    oracle = numpy_reference.kernels(net, x)
    for got, want in zip(k, oracle):
        assert np.isfinite(got).all()
        assert got[5, 1] == got[1, 1] == got[5, 5]
        # near |ρ| = 1 the oracle's own rounding of ρ limits agreement (reference README: 1e-7)
        _compare(got, want, 1e-8)


@pytest.mark.parametrize("layer", [nf.Relu(), nf.Erf(), nf.Gelu(), nf.Sign(), nf.Sin(), nf.Gaussian(),
                                   nf.RectifiedMonomial(2), nf.Monomial(3)], ids=_ids)
def test_very_different_scales(rng, layer):
    x = 30.0 * rng.standard_normal((10, 5))
    y = 0.01 * rng.standard_normal((6, 5))
    y[0] = 1e-6 * x[0]
    net = nf.serial(nf.Dense(W_std=1.2, b_std=0.05), layer, nf.Dense(W_std=1.2, b_std=0.05), layer,
                    nf.Dense(W_std=1.0, b_std=0.05))
    k = nf.gram(x, y, net=net)
    for got, want in zip(k, numpy_reference.kernels(net, x, y)):
        assert np.isfinite(got).all()
        _compare(got, want, 1e-9)


def test_near_duplicates_are_not_snapped(rng):
    """Only |ρ| within rounding of 1 is snapped; ρ = 1 - 1e-10 keeps its own angle."""
    x = rng.standard_normal((4, 20))
    y = x + 1e-5 * rng.standard_normal((4, 20))
    net = nf.MLP(3, "relu", W_std=1.4, b_std=0.0)
    k = nf.gram(x, y, net=net)
    oracle = numpy_reference.kernels(net, x, y)
    for got, want in zip(k, oracle):
        _compare(got, want, 1e-9)
    assert k.ntk[0, 0] < nf.diagonal(x[:1], net=net, get="ntk")[0]  # strictly below the diagonal


@pytest.mark.parametrize("name,depth,w_std,b_std", [("relu", 150, 2 ** 0.5, 0.05),
                                                    ("erf", 200, 1.6, 0.1),
                                                    ("gelu", 120, 1.3, 0.0),
                                                    ("leaky_relu", 128, 1.2, 0.3)])
def test_very_deep_float64(rng, name, depth, w_std, b_std):
    params = {"alpha": 0.1} if name == "leaky_relu" else {}
    net = nf.MLP(depth, name, W_std=w_std, b_std=b_std, **params)
    x = rng.standard_normal((12, 8))
    k = nf.gram(x, net=net)
    oracle = numpy_reference.kernels(net, x)
    for got, want in zip(k, oracle):
        assert np.isfinite(got).all()
        # rounding accumulates over the layers (~depth x 1e-16 per entry, amplified near ρ = 1)
        _compare(got, want, 1e-9)


def test_deep_float32_without_overflow(rng):
    """W_std = 2 doubles the variance per ReLU layer: at depth 110 the kernels are ~1e33-1e35,
    which fit float32 (q1·q2 would not); at depth 130 they do not, and that is a clear error."""
    x = rng.standard_normal((10, 6))
    net = nf.MLP(110, "relu", W_std=2.0, b_std=0.0)
    k32 = nf.gram(x.astype(np.float32), net=net)
    k64 = nf.gram(x, net=net)
    for a, b in zip(k32, k64):
        assert a.dtype == np.float32 and np.isfinite(a).all()
        assert np.abs(a).max() > 1e32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
    with pytest.raises(nf.NonFiniteKernelError, match="float32|precision"):
        nf.gram(x.astype(np.float32), net=nf.MLP(130, "relu", W_std=2.0, b_std=0.0))
    assert np.isfinite(nf.gram(x, net=nf.MLP(130, "relu", W_std=2.0, b_std=0.0)).ntk).all()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_rectified_monomial_deep_is_finite(rng, degree):
    """neural-tangents is NaN here for depth >= 2; ntkfast is finite and matches the oracle."""
    x = rng.standard_normal((10, 5))
    x[3] = 0.0
    net = nf.MLP(4, nf.RectifiedMonomial(degree), W_std=1.2, b_std=0.1)
    k = nf.gram(x, net=net)
    for got, want in zip(k, numpy_reference.kernels(net, x)):
        assert np.isfinite(got).all()
        _compare(got, want, 1e-10)


def test_overflowing_kernel_is_a_clear_error(rng):
    x = 10 * rng.standard_normal((5, 4))
    net = nf.MLP(3, "exp", W_std=3.0, b_std=0.0)
    with pytest.raises(nf.NonFiniteKernelError, match=r"Exp\(\).*layer") as info:
        nf.gram(x, net=net)
    assert info.value.argument == "x1" and info.value.layer.startswith("Exp()")
    with pytest.raises(nf.NonFiniteKernelError, match=r"x2\[0\]"):
        nf.gram(np.zeros((3, 4)), x, net=nf.MLP(1, "exp", W_std=3.0, b_std=0.0))
    with pytest.raises(nf.NonFiniteKernelError):
        nf.diagonal(x, net=net)
    # Gaussian with b > 0 diverges once 4 b q >= 1
    with pytest.raises(nf.NonFiniteKernelError, match="Gaussian"):
        nf.gram(x, net=nf.MLP(1, nf.Gaussian(1.0, 0.5)))


@pytest.mark.parametrize("layer", ALL, ids=_ids)
def test_formulas_symmetric_to_the_last_bit(rng, layer):
    """K(x, y) = K(y, x)ᵀ exactly: a symmetric Gram mirrors (i, j) into (j, i), so a duplicate row
    equals its original only if every formula is symmetric in (q1, q2) in floating point too."""
    x = rng.standard_normal((13, 6))
    y = 0.7 * rng.standard_normal((9, 6))
    net = nf.serial(nf.Dense(W_std=1.3, b_std=0.1), layer, nf.Dense(W_std=1.1, b_std=0.2), layer,
                    nf.Dense(W_std=1.0, b_std=0.1))
    for a, b in zip(nf.gram(x, y, net=net), nf.gram(y, x, net=net)):
        assert np.array_equal(a, b.T)
