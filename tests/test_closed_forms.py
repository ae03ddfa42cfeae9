"""Every closed-form dual activation against 2-D quadrature and Monte-Carlo sampling of the
activation itself (oracles independent of every formula in the engine).

Tolerances: quadrature is exponentially accurate here (Gauss-Hermite for smooth φ, Gauss-Legendre
split at the kinks otherwise), so the engine must agree to 1e-9 of the kernel's scale; Monte-Carlo
with 4e5 samples must agree within 5 standard errors.
"""
import math

import numpy as np
import pytest

import ntkfast as nf
from oracles import functions, monte_carlo, ntkfast_dual, quadrature

ACTIVATIONS = [
    nf.Relu(), nf.LeakyRelu(0.1), nf.ABRelu(-0.5, 2.0), nf.Abs(), nf.Erf(), nf.Erf(2.0, 0.5, 0.3),
    nf.Sigmoid_like(), nf.Gelu(), nf.Sin(), nf.Sin(1.5, 0.7, 0.2), nf.Cos(), nf.Cos(0.8, 1.3, -0.4),
    nf.Rbf(), nf.Rbf(0.3), nf.Exp(1.0, 0.5), nf.Exp(0.7, -0.4), nf.Gaussian(), nf.Gaussian(2.0, -0.3),
    nf.Gabor(), nf.Sign(), nf.RectifiedMonomial(0), nf.RectifiedMonomial(1), nf.RectifiedMonomial(2),
    nf.RectifiedMonomial(3), nf.RectifiedMonomial(5), nf.Monomial(0), nf.Monomial(1), nf.Monomial(2),
    nf.Monomial(3), nf.Monomial(5), nf.Polynomial([0.1, 1.0, 0.5]), nf.Polynomial([0.3, -1.0, 0.2, 0.1, -0.05]),
]

# (q1, q2, ρ): equal and unequal variances, positive, negative, strong and near-perfect correlation.
POINTS = [(1.0, 1.0, 0.3), (0.5, 2.0, -0.7), (2.0, 0.7, 0.9), (0.3, 0.3, 0.999), (1.7, 0.4, -0.2),
          (6.0, 4.0, 0.95), (9.0, 0.05, -0.5)]


def _case_id(value):
    return repr(value) if isinstance(value, nf.Layer) else None


@pytest.mark.parametrize("q1,q2,rho", POINTS)
@pytest.mark.parametrize("layer", ACTIVATIONS, ids=_case_id)
def test_dual_against_quadrature(layer, q1, q2, rho):
    e, de, (q1, q2, c) = ntkfast_dual(layer, q1, q2, rho * math.sqrt(q1 * q2))
    phi, dphi, kinked = functions(layer)
    e_quad = quadrature(phi, phi, q1, q2, c, kinked)
    de_quad = quadrature(dphi, dphi, q1, q2, c, kinked)
    scale = math.sqrt(quadrature(phi, phi, q1, q1, q1, kinked) * quadrature(phi, phi, q2, q2, q2, kinked))
    dscale = math.sqrt(abs(quadrature(dphi, dphi, q1, q1, q1, kinked)
                           * quadrature(dphi, dphi, q2, q2, q2, kinked)))
    assert abs(e - e_quad) <= 1e-9 * max(scale, 1e-300)
    if isinstance(layer, nf.Sign) or layer in (nf.RectifiedMonomial(0), nf.Monomial(0)):
        assert de == 0.0  # derivative 0 a.e.: the NTK stops at this layer
    else:
        assert abs(de - de_quad) <= 1e-9 * max(dscale, 1e-300)


@pytest.mark.parametrize("q1,q2,rho", POINTS[:3])
@pytest.mark.parametrize("layer", ACTIVATIONS, ids=_case_id)
def test_dual_against_monte_carlo(layer, q1, q2, rho):
    e, de, (q1, q2, c) = ntkfast_dual(layer, q1, q2, rho * math.sqrt(q1 * q2))
    phi, dphi, _ = functions(layer)
    mean, se = monte_carlo(phi, phi, q1, q2, c, seed=1)
    assert abs(e - mean) <= 5 * se + 1e-12 * abs(mean)
    dmean, dse = monte_carlo(dphi, dphi, q1, q2, c, seed=2)
    assert abs(de - dmean) <= 5 * dse + 1e-12 * abs(dmean)


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("rho", [0.3, -0.6, 0.95])
def test_hermite_at_unit_variance(degree, rho):
    """Hermite(n) follows neural-tangents: exact for unit-variance pre-activations only."""
    layer = nf.Hermite(degree)
    e, de, (q1, q2, c) = ntkfast_dual(layer, 1.0, 1.0, rho)
    phi, dphi, _ = functions(layer)
    assert e == pytest.approx(quadrature(phi, phi, q1, q2, c, False), abs=1e-9)
    if degree:
        assert de == pytest.approx(quadrature(dphi, dphi, q1, q2, c, False), abs=1e-9)


def test_rectified_monomial_one_equals_relu():
    x = np.random.default_rng(3).standard_normal((31, 7))
    x[4] = 0.0
    x[9] = x[2]
    for depth in (1, 2, 5):
        a = nf.gram(x, net=nf.MLP(depth, nf.RectifiedMonomial(1), W_std=1.4, b_std=0.1))
        b = nf.gram(x, net=nf.MLP(depth, "relu", W_std=1.4, b_std=0.1))
        # different formulas (Cho & Saul's g_1 vs the arc-cosine form): agree to rounding
        np.testing.assert_allclose(a.nngp, b.nngp, rtol=0, atol=1e-13 * np.abs(b.nngp).max())
        np.testing.assert_allclose(a.ntk, b.ntk, rtol=0, atol=1e-13 * np.abs(b.ntk).max())


@pytest.mark.parametrize("q", [1e20, 1e31, 1e60, 1e79, 1e104, 1e140])
def test_gelu_at_huge_variances_against_mpmath(q):
    """GELU's closed form lost ~ε·√q of E[φ'²] to cancellation (9 % at q = 1e31, up to 1e22x
    beyond) and overflowed its intermediate q1·q2·δ² from q ~ 1e77 (a silent inf off the
    diagonal; 'variance is inf' from q ~ 5e102). Against 40-digit quadrature (the diagonal) and
    the closed form in 40 digits (a pair at ρ = cos 0.3)."""
    mp = pytest.importorskip("mpmath")
    net = nf.serial(nf.Dense(), nf.Gelu())  # one Dense of W_std 1: q = |x|²/2, Θ_in = q
    x = np.array([[math.sqrt(2 * q), 0.0], [math.sqrt(2 * q) * math.cos(0.3),
                                             math.sqrt(2 * q) * math.sin(0.3)]])
    k = nf.gram(x, net=net)
    with mp.workdps(40):
        s = mp.sqrt(mp.mpf(q))
        phi = lambda z: z * mp.ncdf(z)  # noqa: E731
        dphi = lambda z: mp.ncdf(z) + z * mp.npdf(z)  # noqa: E731
        e_phi2 = mp.quad(lambda u: phi(s * u) ** 2 * mp.npdf(u), [-mp.inf, 0, mp.inf])
        e_dphi2 = mp.quad(lambda u: dphi(s * u) ** 2 * mp.npdf(u), [-mp.inf, 0, mp.inf])
        c = mp.mpf(float(x[0] @ x[1])) / 2  # the pair's covariance; both variances q
        p = (1 + mp.mpf(q)) ** 2
        delta = mp.sqrt(p - c ** 2)
        ang = mp.atan2(c, delta)
        e_pair = ((c ** 2 + mp.mpf(q) ** 2 * delta ** 2) / (p * delta) + c * ang) / (2 * mp.pi) \
            + c / 4
        e_dpair = (1 / delta ** 2 + (2 + 2 * mp.mpf(q)) / p) * c / (2 * mp.pi * delta) + \
            mp.mpf(1) / 4 + ang / (2 * mp.pi)
        expected = [float(e_phi2), float(e_dphi2 * q), float(e_pair), float(e_dpair * c)]
    np.testing.assert_allclose(np.diag(k.nngp), expected[0], rtol=1e-14)
    np.testing.assert_allclose(np.diag(k.ntk), expected[1], rtol=1e-14)
    np.testing.assert_allclose(k.nngp[0, 1], expected[2], rtol=1e-13)
    np.testing.assert_allclose(k.ntk[0, 1], expected[3], rtol=1e-13)
