"""The analytic kernels against explicit finite-width networks in NumPy (the infinite-width
limits of Lee et al. 2018 / Matthews et al. 2018 for the NNGP and Jacot et al. 2018 for the NTK).

For each draw of a width-n network: the NNGP estimate is the readout's conditional covariance
σw²/n a^L(x)·a^L(x') + σb² (the readout weights integrated out exactly), and the NTK estimate is
Σ_params ∂f(x)/∂θ · ∂f(x')/∂θ from an explicit backward pass. Both converge to the limits with
fluctuations O(1/√n) and a bias O(1/n); the test takes several independent draws and requires the
mean within 5 standard errors plus 3/n of the kernel's scale.
"""
import numpy as np
import pytest
from scipy import special

import ntkfast as nf

WIDTH = 2048
DRAWS = 6


def _phi(layer):
    if isinstance(layer, nf.Relu):
        return lambda h: np.maximum(h, 0), lambda h: (h > 0).astype(float)
    if isinstance(layer, nf.LeakyRelu):
        a = layer.alpha
        return lambda h: np.where(h > 0, h, a * h), lambda h: np.where(h > 0, 1.0, a)
    if isinstance(layer, nf.Abs):
        return np.abs, np.sign
    if isinstance(layer, nf.Erf):
        a, b, c = layer.a, layer.b, layer.c
        return (lambda h: a * special.erf(b * h) + c,
                lambda h: a * b * 2 / np.sqrt(np.pi) * np.exp(-(b * h) ** 2))
    if isinstance(layer, nf.Gelu):
        return (lambda h: h * special.ndtr(h),
                lambda h: special.ndtr(h) + h * np.exp(-h * h / 2) / np.sqrt(2 * np.pi))
    if isinstance(layer, nf.Sin):
        a, b, c = layer.a, layer.b, layer.c
        return lambda h: a * np.sin(b * h + c), lambda h: a * b * np.cos(b * h + c)
    if isinstance(layer, nf.RectifiedMonomial):
        n = layer.degree
        return lambda h: np.maximum(h, 0) ** n, lambda h: n * np.maximum(h, 0) ** (n - 1)
    if isinstance(layer, nf.Polynomial):
        p = np.polynomial.Polynomial(layer.coef)
        return p, p.deriv()
    if isinstance(layer, nf.Tanh):
        return np.tanh, lambda h: 1 / np.cosh(h) ** 2
    if isinstance(layer, nf.Silu):
        return (lambda h: h * special.expit(h),
                lambda h: special.expit(h) * (1 + h * special.expit(-h)))
    if isinstance(layer, nf.Elu):
        a = layer.alpha
        return (lambda h: np.where(h > 0, h, a * np.expm1(np.minimum(h, 0))),
                lambda h: np.where(h > 0, 1.0, a * np.exp(np.minimum(h, 0))))
    raise NotImplementedError(layer)


def empirical_kernels(x, act, depth, w_std, b_std, parameterization, width, rng):
    """(nngp_hat, ntk_hat) of one random network of the given width (readout width 1)."""
    phi, dphi = _phi(act)
    b2 = b_std ** 2
    widths = [x.shape[1]] + [width] * depth
    a = x
    acts, pre, weights = [x], [], []
    for l in range(depth):
        n_in = widths[l]
        if parameterization == "ntk":
            w = rng.standard_normal((n_in, width))
            h = w_std / np.sqrt(n_in) * a @ w + b_std * rng.standard_normal(width)
        else:
            w = rng.standard_normal((n_in, width)) * (w_std / np.sqrt(n_in))
            h = a @ w + b_std * rng.standard_normal(width)
        weights.append(w)
        pre.append(h)
        a = phi(h)
        acts.append(a)
    n_last = widths[-1]
    readout = rng.standard_normal(n_last)
    if parameterization == "standard":
        readout = readout * (w_std / np.sqrt(n_last))
    nngp = w_std ** 2 / n_last * acts[-1] @ acts[-1].T + b2
    # NTK: sum over layers of (δ δᵀ) ⊙ (input Gram term), δ = ∂f/∂h backpropagated per input.
    delta = np.ones((x.shape[0], 1))
    w_next = readout[:, None]
    ntk = np.zeros((x.shape[0], x.shape[0]))
    for l in range(depth, -1, -1):  # layer l+1's parameters; its input is acts[l]
        a_in, n_in = acts[l], widths[l]
        if parameterization == "ntk":
            ntk += (delta @ delta.T) * (w_std ** 2 / n_in * a_in @ a_in.T + b2)
        else:
            ntk += (delta @ delta.T) * (a_in @ a_in.T + 1.0)
        if l == 0:
            break
        scale = w_std / np.sqrt(n_in) if parameterization == "ntk" else 1.0
        # h^{l+1} = scale * a^l @ W + ...; a^l = φ(h^l)
        delta = dphi(pre[l - 1]) * (scale * delta @ w_next.T)
        w_next = weights[l - 1]
    return nngp, ntk


CASES = [
    (nf.Tanh(), 2, 1.5, 0.1, "ntk"),
    (nf.Silu(), 2, 1.4, 0.1, "ntk"),
    (nf.Elu(), 2, 1.3, 0.2, "ntk"),
    (nf.Tanh(), 2, 1.5, 0.1, "standard"),
    (nf.Relu(), 2, 1.5, 0.1, "ntk"),
    (nf.LeakyRelu(0.2), 3, 1.3, 0.2, "ntk"),
    (nf.Erf(), 2, 1.6, 0.3, "ntk"),
    (nf.Erf(2.0, 0.5, 0.3), 1, 1.2, 0.1, "ntk"),
    (nf.Gelu(), 2, 1.4, 0.1, "ntk"),
    (nf.Sin(1.5, 0.7, 0.2), 2, 1.2, 0.2, "ntk"),
    (nf.Abs(), 2, 1.0, 0.4, "ntk"),
    (nf.RectifiedMonomial(2), 2, 1.0, 0.2, "ntk"),
    (nf.Polynomial([0.1, 1.0, 0.3]), 2, 1.0, 0.2, "ntk"),
    (nf.Relu(), 2, 1.5, 0.1, "standard"),
    (nf.Erf(), 2, 1.3, 0.2, "standard"),
]


@pytest.mark.parametrize("act,depth,w_std,b_std,parameterization", CASES,
                         ids=[f"{c[0]!r}-L{c[1]}-{c[4]}" for c in CASES])
def test_matches_finite_width_networks(act, depth, w_std, b_std, parameterization):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 10))
    x[5] = -0.5 * x[0]  # an antiparallel pair
    draws = [empirical_kernels(x, act, depth, w_std, b_std, parameterization, WIDTH, rng)
             for _ in range(DRAWS)]
    width_spec = WIDTH if parameterization == "standard" else None
    net = nf.MLP(depth, act, W_std=w_std, b_std=b_std, parameterization=parameterization,
                 width=width_spec)
    analytic = nf.gram(x, net=net)
    for k, name in enumerate(("nngp", "ntk")):
        samples = np.stack([d[k] for d in draws])
        mean = samples.mean(axis=0)
        se = samples.std(axis=0, ddof=1) / np.sqrt(DRAWS)
        want = getattr(analytic, name)
        scale = np.abs(want).max()
        bound = 5 * se + 3 / WIDTH * scale
        assert np.all(np.abs(mean - want) <= bound), (
            f"{name}: worst deviation {np.max(np.abs(mean - want) / (se + 1e-300)):.1f} SE")
        # and the estimate is informative: the fluctuations are small against the kernel itself
        assert se.max() < 0.1 * scale
