"""Near-parallel inputs (|ρ| -> 1): the non-smooth closed forms against a high-precision reference.

The reference recomputes each network kernel in mpmath (60 digits) from the exact float64 inputs,
by the closed forms in their textbook shape, independent of the engine's formulas: the arc-cosine
kernels of Cho & Saul (2009) for max(0, x)^n (J_0 ... J_3 written out) and for
a·min(x, 0) + b·max(x, 0) (b² + a² times the ReLU kernel, minus 2ab times that of the reflected
pair), (2/π) arcsin ρ for Sign, neural-tangents' Dense (x·x'/d, NTK parameterization).

Pairs: x and x + ε·noise for ε = 1e-4, 1e-7, 1e-10 and 0 (a duplicate), scaled copies (2.5·x, and
0.5·x, exact) and negated ones, with and without bias, depth 1-10 (RectifiedMonomial(2, 3): the
depths whose variances stay finite; no negated pairs, see exact_pair.hpp). float64 must match to
1e-13 relative to the entry (measured: ≤ 2e-14; before the exact near-parallel path the ReLU NTK
was off by 4e-8 at depth 3 and 1.5e-7 at depth 10, Sign by 1.4e-2 at depth 3, anti-parallel ReLU
entries without bias by 100 %); float32 inputs keep the documented float32 bound (one float32
rounding of a float64 result, test_float32_bounds.py).
"""
import math

import mpmath
import numpy as np
import pytest

import ntkfast as nf

mp = mpmath.mp
RTOL64 = 1e-13
RTOL32 = 1.2e-7  # test_float32_bounds.GENERIC_BOUND: the result is rounded to float32 once
DEPTHS = range(1, 11)
ROWS = 2  # pairs of each kind

ACTIVATIONS = [nf.Relu(), nf.LeakyRelu(0.1), nf.Abs(), nf.ABRelu(-0.4, 1.3), nf.Sign(),
               nf.RectifiedMonomial(0), nf.RectifiedMonomial(1), nf.RectifiedMonomial(2),
               nf.RectifiedMonomial(3)]


# ------------------------------------------------------------------------------------------------
# The reference, in mpmath.

def _j(n, th):
    """Cho & Saul's J_n(θ) (their eq. for n = 0, 1, 2; n = 3 from the definition
    J_n = (-1)^n sin^{2n+1}θ (1/sinθ ∂/∂θ)^n ((π - θ)/sinθ))."""
    s, c, rest = mp.sin(th), mp.cos(th), mp.pi - th
    if n == 0:
        return rest
    if n == 1:
        return s + rest * c
    if n == 2:
        return 3 * s * c + rest * (1 + 2 * c * c)
    if n == 3:
        return 4 * s ** 3 + 15 * s * c * c + rest * (9 * s * s * c + 15 * c ** 3)
    raise ValueError(n)


def _slopes(layer):
    if isinstance(layer, nf.Relu):
        return mp.mpf(0), mp.mpf(1)
    if isinstance(layer, nf.LeakyRelu):
        return mp.mpf(layer.alpha), mp.mpf(1)
    if isinstance(layer, nf.Abs):
        return mp.mpf(-1), mp.mpf(1)
    return mp.mpf(layer.a), mp.mpf(layer.b)


def _dual(layer, q1, q2, c):
    """(E[φ(u)φ(v)], E[φ'(u)φ'(v)]) for (u, v) ~ N(0, [[q1, c], [c, q2]])."""
    s = mp.sqrt(q1 * q2)
    rho = max(min(c / s, mp.mpf(1)), mp.mpf(-1))
    th = mp.acos(rho)
    if isinstance(layer, nf.Sign):
        return 2 / mp.pi * mp.asin(rho), mp.mpf(0)
    if isinstance(layer, nf.RectifiedMonomial):
        n = layer.degree
        e = s ** n * _j(n, th) / (2 * mp.pi)
        de = n * n * s ** (n - 1) * _j(n - 1, th) / (2 * mp.pi) if n else mp.mpf(0)
        return e, de
    # a·min(x,0) + b·max(x,0) = b relu(x) - a relu(-x)
    a, b = _slopes(layer)
    same = s * (mp.sin(th) + (mp.pi - th) * mp.cos(th)) / (2 * mp.pi)   # E relu(u) relu(v)
    cross = s * (mp.sin(th) - th * mp.cos(th)) / (2 * mp.pi)            # E relu(u) relu(-v)
    e = (a * a + b * b) * same - 2 * a * b * cross
    de = ((a * a + b * b) * (mp.pi - th) + 2 * a * b * th) / (2 * mp.pi)
    return e, de


def reference(net, x1, x2):
    """(NNGP, NTK) of one pair, in mpmath from the exact inputs."""
    with mp.workdps(60):
        u = [mp.mpf(float(v)) for v in x1]
        v = [mp.mpf(float(w)) for w in x2]
        d = len(u)
        q1 = mp.fsum(a * a for a in u) / d
        q2 = mp.fsum(b * b for b in v) / d
        c = mp.fsum(a * b for a, b in zip(u, v)) / d
        t = t1 = t2 = mp.mpf(0)
        for layer in net.layers:
            if isinstance(layer, nf.Dense):
                w2 = mp.mpf(layer.W_std) ** 2
                b2 = mp.mpf(layer.b_std or 0.0) ** 2
                c, q1, q2 = w2 * c + b2, w2 * q1 + b2, w2 * q2 + b2
                t, t1, t2 = c + w2 * t, q1 + w2 * t1, q2 + w2 * t2
            else:
                (c, dc), (e1, d1), (e2, d2) = (_dual(layer, q1, q2, c), _dual(layer, q1, q1, q1),
                                               _dual(layer, q2, q2, q2))
                t, t1, t2 = dc * t, d1 * t1, d2 * t2
                c, q1, q2 = c, e1, e2
        return c, t


# ------------------------------------------------------------------------------------------------
# Pairs.

def _pairs(rng, d=40):
    """(name, x1, x2) rows: near-parallel, duplicate, scaled, negated."""
    x = rng.standard_normal((ROWS, d))
    noise = rng.standard_normal((ROWS, d))
    pairs = []
    for eps in (1e-4, 1e-7, 1e-10):
        pairs.append((f"eps={eps:g}", x, x + eps * noise))
    pairs.append(("duplicate", x, x.copy()))
    pairs.append(("2.5x", x, 2.5 * x))
    pairs.append(("0.5x", x, 0.5 * x))  # exactly parallel
    pairs.append(("-x+1e-7", x, -x + 1e-7 * noise))
    return pairs


def _rel_err(got, want):
    return abs(float(mp.mpf(float(got)) - want) / float(abs(want))) if want != 0 else abs(float(got))


def _net(layer, depth, b_std):
    return nf.MLP(depth, layer, W_std=_w_std(layer), b_std=b_std)


def _w_std(layer):
    # max(0, x)^n, n ≥ 2, squares (cubes) the variance per layer: W = 1 and few layers keep it finite
    return 1.0 if isinstance(layer, nf.RectifiedMonomial) and layer.degree >= 2 else 1.4


def _depths(layer):
    if isinstance(layer, nf.RectifiedMonomial) and layer.degree >= 2:
        return range(1, 6 if layer.degree == 2 else 4)
    return DEPTHS


def _pairs_for(layer, pairs):
    # max(0, x)^n, n ≥ 2, near ρ = -1: E ~ φ^(2n+1) is a cancellation of its recursion, which the
    # engine computes with the usual absolute accuracy only (exact_pair.hpp)
    if isinstance(layer, nf.RectifiedMonomial) and layer.degree >= 2:
        return [p for p in pairs if not p[0].startswith("-x")]
    return pairs


def _worst(layer, depth, b_std, pairs, dtype=np.float64):
    net = _net(layer, depth, b_std)
    worst = 0.0
    for name, x1, x2 in pairs:
        a, b = x1.astype(dtype), x2.astype(dtype)
        k = nf.gram(a, b, net=net)
        ks = nf.gram(np.concatenate([a, b]), net=net)  # the symmetric Gram: the same entries
        n = len(a)
        for i in range(n):
            want = reference(net, a[i], b[i])
            for kern, w in zip((k, ks), (0, 1)):
                nngp, ntk = (kern.nngp[i, i], kern.ntk[i, i]) if w == 0 else \
                    (kern.nngp[i, n + i], kern.ntk[i, n + i])
                for got, ref, what in ((nngp, want[0], "nngp"), (ntk, want[1], "ntk")):
                    if what == "ntk" and ref == 0:
                        assert got == 0
                        continue
                    err = _rel_err(got, ref)
                    worst = max(worst, err)
                    assert err <= (RTOL64 if dtype == np.float64 else RTOL32), \
                        f"{layer!r} depth {depth} b_std {b_std} {name} row {i} {what}: " \
                        f"{float(got)!r} vs {mp.nstr(ref, 20)} (rel {err:.2e})"
    return worst


@pytest.mark.parametrize("layer", ACTIVATIONS, ids=repr)
@pytest.mark.parametrize("b_std", [0.0, 0.1])
def test_near_parallel_float64(rng, layer, b_std):
    pairs = _pairs_for(layer, _pairs(rng))
    for depth in _depths(layer):
        _worst(layer, depth, b_std, pairs)


@pytest.mark.parametrize("layer", [nf.Relu(), nf.Sign(), nf.RectifiedMonomial(0), nf.Abs()], ids=repr)
def test_near_parallel_float32(rng, layer):
    pairs = [(n, a.astype(np.float32), b.astype(np.float32)) for n, a, b in _pairs(rng)]
    for depth in (1, 3, 10):
        _worst(layer, depth, 0.1, pairs, dtype=np.float32)


def test_scaled_copy_through_sign_without_bias():
    """x3 = 2.5·x2 through bias-free Dense + Sign: the correlation stays exactly 1 (it was re-rounded
    away from 1 after each Dense: 1.9442 instead of 1.96)."""
    x = np.array([[1.0, -2.0, 0.5, 3.0], [0.25, 1.0, -1.0, 2.0]])
    x = np.concatenate([x, 2.5 * x[1:]])
    k = nf.gram(x, net=nf.MLP(3, "sign", 1.4, 0.0), get="nngp")
    assert k[1, 2] == k[2, 1] == k[1, 1] == k[2, 2]
    assert abs(k[1, 2] - 1.96) <= 1e-15


def test_symmetric_and_duplicates_to_the_last_bit(rng):
    """The exact path keeps the invariants: K(x, y) = K(y, x)ᵀ, a duplicate row equals the
    diagonal, and the diagonal is diagonal()'s."""
    x = rng.standard_normal((6, 30))
    y = np.concatenate([x[:3] + 1e-9 * rng.standard_normal((3, 30)), -x[3:5], x[5:]])
    z = np.concatenate([x, y])
    for net in (nf.MLP(4, "relu", 1.4, 0.1), nf.MLP(3, "sign", 1.3, 0.2), nf.MLP(3, nf.RectifiedMonomial(2))):
        for a, b in zip(nf.gram(x, y, net=net), nf.gram(y, x, net=net)):
            assert np.array_equal(a, b.T)
        k = nf.gram(z, net=net)
        diag = nf.diagonal(z, net=net)
        for kern, dg in zip(k, diag):
            assert np.array_equal(kern, kern.T)
            assert np.array_equal(np.diag(kern), dg)
            assert kern[5, 6 + 5] == dg[5]  # a duplicate


@pytest.mark.parametrize("layer", [nf.Relu(), nf.Sign(), nf.Abs(), nf.RectifiedMonomial(0)], ids=repr)
def test_near_parallel_backends(backend, rng, layer):
    """The same on each backend (the CUDA engine's near_parallel_kernel runs exact_pair.hpp too),
    with tiles smaller than the Gram (symmetric: diagonal and off-diagonal tiles, mirrors)."""
    pairs = _pairs(rng)
    x = np.concatenate([np.concatenate([a, b]) for _, a, b in pairs])
    for depth in (3, 10):
        net = _net(layer, depth, 0.1)
        k = nf.gram(backend.asarray(x), net=net, tile_size=16)
        nngp, ntk = backend.asnumpy(k.nngp), backend.asnumpy(k.ntk)
        assert np.array_equal(nngp, nngp.T) and np.array_equal(ntk, ntk.T)
        for p in range(len(pairs)):
            for i in range(ROWS):
                r, c = 2 * ROWS * p + i, 2 * ROWS * p + ROWS + i
                want = reference(net, x[r], x[c])
                for got, ref in ((nngp[r, c], want[0]), (ntk[r, c], want[1])):
                    assert (got == 0) if ref == 0 else _rel_err(got, ref) <= RTOL64, (p, i, got)
