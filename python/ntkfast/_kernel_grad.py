"""Exact derivatives of the NNGP and NTK Gram matrices of an MLP with respect to log σw and log σb.

Used by the scikit-learn kernels (``ntkfast.sklearn.NNGPKernel`` / ``NTKKernel``), whose
``eval_gradient=True`` a ``GaussianProcessRegressor`` needs to fit σw and σb by maximising the
marginal likelihood. The values come from the engine (:func:`ntkfast.gram`); this module carries
the tangents through the same layer recursion (Lee et al. 2018 for the NNGP, Jacot et al. 2018
and Arora et al. 2019 for the NTK), forward mode, in float64 NumPy:

* Dense, with w = σw², b = σb²:  c' = w·c + b,  Θ' = c' + w·Θ (NTK parameterisation) or
  Θ' = n_in·c + w·Θ + [bias] ('standard'), so ∂c'/∂log σw = 2w·c + w·∂c, ∂c'/∂log σb = 2b + w·∂c.
* Activation: c' = E(c, q1, q2), Θ' = Ė(c, q1, q2)·Θ, with E = E[φ(u)φ(v)] and Ė the kernel of
  φ' over (u, v) ~ N(0, [[q1, c], [c, q2]]); q1, q2 are the points' own variances, carried by
  the same recursion with c = q1 = q2. The tangent is ∂E/∂c·dc + ∂E/∂q1·dq1 + ∂E/∂q2·dq2.

How each activation's partial derivatives are obtained:

* The arc-cosine family (ReLU, LeakyReLU, Abs, ABReLU, RectifiedMonomial, Sign) and
  ExpNormalized depend on (q1, q2) only through s = √(q1q2) and the correlation ρ = c/s:
  E = s^k F(ρ) with k the degree of positive homogeneity, so ∂E/∂q_i at fixed ρ is k·E/(2q_i)
  (Euler's identity, k·E = c∂E/∂c + q1∂E/∂q1 + q2∂E/∂q2, in the coordinates (s, ρ)) and
  ∂E/∂ρ = s·∂E/∂c, which for a weakly differentiable φ is s times the derivative kernel
  (Price's theorem: ∂E/∂c = E[φ'(u)φ'(v)]; for ReLU ∂/∂ρ[s(sin θ + (π−θ)cos θ)/(2π)] =
  s(π−θ)/(2π)); d/dρ of the arc-cosine integrals J_n is n²J_{n−1} (Cho & Saul 2009), and
  d/dρ J_0 = 1/sin θ. The derivative kernels (and Sign's, step's E) have a 1/sin θ singularity
  at ρ = ±1; there ρ stays ±1 under any change of σw, σb (duplicate points, or parallel ones
  without bias), so the ρ-term vanishes and is dropped (|ρ| within 1e-14 of 1; the neglected
  term is O(√(1 − |ρ|))).
* The smooth activations (Erf, Gelu, Sin/Cos, Rbf, Exp, Gaussian, Gabor, Polynomial/Monomial,
  Hermite) are written once as closed forms in (c, q1, q2) and differentiated by forward-mode
  dual numbers (:class:`_Dual`): exact derivatives of the closed forms, not finite differences.
  Erf, for instance: E = (2/π)·arcsin(2c/√((1+2q1)(1+2q2))) and Ė = (4/π)/√((1+2q1)(1+2q2) − 4c²)
  (Williams 1997); Polynomial uses its Hermite expansion E = Σ_l l!·c^l·A_l(q1)·A_l(q2).

Memory: rows are processed in blocks (values and tangents of one block at a time), so the
working set is a few blocks besides the (n, n, n_params) result.
"""
from __future__ import annotations

import math
import os

import numpy as np

from . import _core
from . import _layers as L

__all__ = ["PARAMETERS", "kernel_and_gradient", "check_supported"]

#: The hyperparameters this module differentiates by (as their logarithms).
PARAMETERS = ("W_std", "b_std")

#: |ρ| closer to 1 than this counts as parallel: the ρ-derivative term is dropped there.
_PARALLEL = 1e-14

#: Row-block size: ~ _BLOCK_ENTRIES entries per block array.
_BLOCK_ENTRIES = 1 << 18


# ----------------------------------------------------------------------------------------------
# Forward-mode dual numbers: a value and its tangents, one per parameter on a leading axis.

class _Dual:
    """v + Σ_p d[p]·ε_p. ``v`` is an array (or float), ``d`` an array whose leading axis runs
    over the parameters and whose other axes broadcast against ``v`` (or the scalar 0.0)."""

    __slots__ = ("v", "d")
    __array_ufunc__ = None  # NumPy defers to the reflected operators (array * dual -> dual)

    def __init__(self, v, d=0.0):
        self.v, self.d = v, d

    def __add__(self, other):
        if isinstance(other, _Dual):
            return _Dual(self.v + other.v, self.d + other.d)
        return _Dual(self.v + other, self.d)

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, _Dual):
            return _Dual(self.v - other.v, self.d - other.d)
        return _Dual(self.v - other, self.d)

    def __rsub__(self, other):
        return _Dual(other - self.v, -self.d)

    def __neg__(self):
        return _Dual(-self.v, -self.d)

    def __mul__(self, other):
        if isinstance(other, _Dual):
            return _Dual(self.v * other.v, self.d * other.v + self.v * other.d)
        return _Dual(self.v * other, self.d * other)

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, _Dual):
            inv = 1.0 / other.v
            value = self.v * inv
            return _Dual(value, (self.d - value * other.d) * inv)
        return _Dual(self.v / other, self.d / other)

    def __rtruediv__(self, other):
        inv = 1.0 / self.v
        value = other * inv
        return _Dual(value, -value * inv * self.d)

    def __pow__(self, n):
        if not isinstance(n, int) or n < 0:  # pragma: no cover - internal use only
            raise TypeError("only non-negative integer powers")
        if n == 0:
            return _Dual(np.ones_like(self.v) if isinstance(self.v, np.ndarray) else 1.0)
        return _Dual(self.v ** n, n * self.v ** (n - 1) * self.d)


def _sqrt(x):
    root = np.sqrt(x.v)
    return _Dual(root, x.d / (2.0 * root))


def _exp(x):
    e = np.exp(x.v)
    return _Dual(e, e * x.d)


def _arcsin(x):
    return _Dual(np.arcsin(np.clip(x.v, -1.0, 1.0)), x.d / np.sqrt(1.0 - x.v * x.v))


def _arctan2(y, x):
    r2 = x.v * x.v + y.v * y.v
    return _Dual(np.arctan2(y.v, x.v), (x.v * y.d - y.v * x.d) / r2)


def _constant(value):
    return _Dual(value, 0.0)


# ----------------------------------------------------------------------------------------------
# The arc-cosine family and ExpNormalized, in the coordinates (s = √(q1q2), ρ = c/s).

class _Polar:
    """s, ρ, θ = arccos ρ, 1/sin θ and the tangents ds, dρ of one (c, q1, q2) dual triple.

    The guards are the engine's (layer_math.hpp): s = q1 when q1 == q2 (a duplicate point has
    ρ = 1 exactly), θ = atan2(√(q1q2 − c²), c), and θ = π/2, ρ = 0 where a variance is 0."""

    def __init__(self, c, q1, q2):
        s = np.where(q1.v == q2.v, q1.v, np.sqrt(q1.v) * np.sqrt(q2.v))
        positive = s > 0
        everywhere = bool(positive.all())
        safe = s if everywhere else np.where(positive, s, 1.0)
        rho = c.v / safe
        if not everywhere:
            rho[~positive] = 0.0
        np.clip(rho, -1.0, 1.0, out=rho)
        r = np.sqrt(np.maximum(q1.v * q2.v - c.v * c.v, 0.0))
        self.theta = np.arctan2(r, c.v)
        if not everywhere:
            self.theta[~positive] = np.pi / 2
        # ds = (q2 dq1 + q1 dq2)/(2s) = s (u1 + u2) with u = dq/(2q) per point; a zero variance
        # stays zero for every σw, σb (no bias reaches it), so u = 0 there.
        u = _half_log_tangent(q1) + _half_log_tangent(q2)
        ds = s * u
        self.interior = positive & (np.abs(rho) < 1.0 - _PARALLEL) & (r > 0)
        # c = sρ  =>  dρ = dc/s − ρ (u1 + u2), kept where |ρ| < 1 only
        drho = c.d / safe
        drho -= rho * u
        drho *= self.interior
        self.drho = drho
        self.s, self.ds, self.rho = s, ds, rho
        # 1/sin θ = s/r where it is used (interior only); elsewhere its product with dρ = 0 is
        # dropped
        self.inv_sin = np.where(self.interior, safe / np.where(self.interior, r, 1.0), 0.0)

    def homogeneous(self, k, f, df):
        """E = s^k F(ρ) and its tangent, given F and F' (F' only needed where |ρ| < 1)."""
        s, ds = self.s, self.ds
        if k == 0:
            return _Dual(f, df * self.drho)
        sk1 = s ** (k - 1)
        return _Dual(sk1 * s * f, sk1 * (k * f * ds + s * df * self.drho))


def _half_log_tangent(q):
    """dq/(2q) of a per-point variance dual (0 where q = 0)."""
    if not isinstance(q.d, np.ndarray):
        return 0.0
    positive = q.v > 0
    return q.d / (2.0 * np.where(positive, q.v, 1.0)) * positive


def _arccos_integrals(theta, n):
    """[J_0, …, J_n] of Cho & Saul (2009): J_0 = π − θ, J_1 = sin θ + (π − θ) cos θ,
    J_m = (2m − 1) cos θ J_{m−1} + (m − 1)² sin²θ J_{m−2}."""
    cos, sin = np.cos(theta), np.sin(theta)
    j = [np.pi - theta]
    if n >= 1:
        j.append(sin + (np.pi - theta) * cos)
    for m in range(2, n + 1):
        j.append((2 * m - 1) * cos * j[m - 1] + (m - 1) ** 2 * sin * sin * j[m - 2])
    return j


def _abrelu(a, b, polar):
    """a·min(x,0) + b·max(x,0): E = s[A(sin θ − θρ) + Bρ], Ė = B − Aθ = ∂E/∂c,
    A = (a−b)²/(2π), B = (a²+b²)/2; dĖ/dρ = A / sin θ."""
    big_a, big_b = (a - b) ** 2 / (2 * np.pi), (a * a + b * b) / 2
    theta, rho = polar.theta, polar.rho
    g = big_b - big_a * theta
    e = polar.homogeneous(1, big_a * (np.sin(theta) - theta * rho) + big_b * rho, g)
    edot = _Dual(g, big_a * polar.inv_sin * polar.drho)
    return e, edot


def _rectified_monomial(n, polar):
    """max(x,0)^n: E = s^n J_n/(2π), Ė = n² s^(n−1) J_{n−1}/(2π) (0 for n = 0, as the engine);
    dJ_m/dρ = m² J_{m−1} (m ≥ 1), dJ_0/dρ = 1/sin θ."""
    j = _arccos_integrals(polar.theta, n)

    def dj(m):
        return m * m * j[m - 1] if m >= 1 else polar.inv_sin

    two_pi = 2 * np.pi
    e = polar.homogeneous(n, j[n] / two_pi, dj(n) / two_pi)
    if n == 0:
        return e, _constant(0.0)
    edot = polar.homogeneous(n - 1, n * n * j[n - 1] / two_pi, n * n * dj(n - 1) / two_pi)
    return e, edot


def _sign(polar):
    """sign(x): E = (2/π) arcsin ρ = 1 − 2θ/π, dE/dρ = (2/π)/sin θ; Ė = 0 (as the engine)."""
    return (polar.homogeneous(0, 1.0 - 2.0 * polar.theta / np.pi, 2.0 / np.pi * polar.inv_sin),
            _constant(0.0))


def _exp_normalized(layer, c, q1, q2):
    """E = s·exp(γ(ρ + shift)), Ė = γ·exp(γ(ρ + shift)) (ρ = 0 where s = 0, as the engine)."""
    polar = _Polar(c, q1, q2)
    s = polar.s
    positive = s > 0
    rho = np.where(positive, c.v / np.where(positive, s, 1.0), 0.0)
    if layer.do_clip:
        rho = np.clip(rho, -1.0, 1.0)
    f = np.exp(layer.gamma * (rho + layer.shift))
    e = polar.homogeneous(1, f, layer.gamma * f)
    edot = _Dual(layer.gamma * f, layer.gamma ** 2 * f * polar.drho)
    return e, edot


# ----------------------------------------------------------------------------------------------
# Smooth activations: closed forms in (c, q1, q2), differentiated as dual numbers.

def _erf(a, b, offset, c, q1, q2):
    """a·erf(b·x) + offset (Williams 1997), on the variances scaled by b²."""
    b2 = b * b
    cc, p1, p2 = c * b2, 1.0 + 2.0 * b2 * q1, 1.0 + 2.0 * b2 * q2
    prod = p1 * p2
    e = (2 * a * a / np.pi) * _arcsin(2.0 * cc / _sqrt(prod)) + offset * offset
    edot = (4 * a * a * b2 / np.pi) / _sqrt(prod - 4.0 * cc * cc)
    return e, edot


def _gelu(c, q1, q2):
    """x·Φ(x): neural-tangents' closed form."""
    pp1 = (1.0 + q1) * (1.0 + q2)
    d2 = pp1 - c * c
    d = _sqrt(d2)
    angle = _arctan2(c, d)
    qq = q1 * q2
    e = ((c * c + qq * d2) / (pp1 * d) + c * angle) / (2 * np.pi) + c * 0.25
    edot = (c / d) / (2 * np.pi) * (1.0 / d2 + (1.0 - qq) / pp1 + 1.0) + 0.25 + angle / (2 * np.pi)
    return e, edot


def _sin(a, b, phase, c, q1, q2):
    """a·sin(b·x + phase): E = a²/2·e^{−b²(q1+q2)/2}(e^{b²c} − cos 2β·e^{−b²c}), Ė with +."""
    b2 = b * b
    half = (q1 + q2) * (b2 / 2)
    up, down = _exp(c * b2 - half), math.cos(2 * phase) * _exp(-(c * b2) - half)
    return (a * a / 2) * (up - down), (a * a * b2 / 2) * (up + down)


def _rbf(gamma, c, q1, q2):
    e = _exp((q1 + q2 - 2.0 * c) * (-gamma))
    return e, (2 * gamma) * e


def _exp_activation(a, b, c, q1, q2):
    e = _exp(((q1 + q2) * 0.5 + c) * (b * b))
    return (a * a) * e, (a * a * b * b) * e


def _gaussian(a, b, c, q1, q2):
    """a·exp(b·x²): E = a²/√D, Ė = 4a²b²c/D^{3/2}, D = (1−2bq1)(1−2bq2) − 4b²c²."""
    det = _sqrt((1.0 - 2.0 * b * q1) * (1.0 - 2.0 * b * q2) - 4.0 * b * b * c * c)
    return (a * a) / det, (4 * a * a * b * b) * c / (det * det * det)


def _gabor(c, q1, q2):
    """exp(−x²)·sin x = Im exp(−x² + ix): with Λ the covariance and k = (1, ∓1),
    E[e^{−u²−v²} e^{i kᵀ(u,v)}] = |I + 2Λ|^{−1/2} exp(−½ kᵀΛ(I + 2Λ)^{−1}k), so
    E = ½|I+2Λ|^{−1/2}(g(1,−1) − g(1,1)); Ė = ∂E/∂c (Price's theorem), written out below."""
    det = (1.0 + 2.0 * q1) * (1.0 + 2.0 * q2) - 4.0 * c * c
    root = _sqrt(det)
    e = edot = None
    for sign, (k1, k2) in ((1.0, (1, -1)), (-1.0, (1, 1))):
        num = (1.0 + 2.0 * q2) * (k1 * k1) + (1.0 + 2.0 * q1) * (k2 * k2) - c * (4 * k1 * k2)
        inv = num / det
        g = _exp((inv - (k1 * k1 + k2 * k2)) * 0.25)  # exp(−quad/2), quad = (|k|² − inv)/2
        # ∂/∂c: ∂det = −8c, ∂num = −4k1k2, ∂inv = (∂num − inv·∂det)/det, ∂g = g·∂inv/4
        dinv = (c * (8.0) * inv - 4.0 * k1 * k2) / det
        term = 0.5 * g / root
        dterm = 0.5 * (g * dinv * 0.25 / root + g * c * 4.0 / (root * det))
        e = term * sign if e is None else e + term * sign
        edot = dterm * sign if edot is None else edot + dterm * sign
    return e, edot


def _polynomial_expectation(coef, c, q1, q2):
    """E[p(u)p(v)] = Σ_l l!·c^l·A_l(q1)·A_l(q2), A_l(q) = Σ_i a_{2i+l}(2i+l)!/(2^i i! l!) q^i
    (the Hermite expansion of p; Isserlis' theorem term by term)."""
    n = len(coef) - 1
    total = None
    power = _constant(1.0)
    for l in range(n + 1):
        terms = [coef[2 * i + l] * math.factorial(2 * i + l)
                 / (2 ** i * math.factorial(i) * math.factorial(l))
                 for i in range((n - l) // 2 + 1)]
        if any(terms):
            a1 = a2 = _constant(0.0)
            for t in reversed(terms):  # Horner in q
                a1, a2 = a1 * q1 + t, a2 * q2 + t
            term = power * a1 * a2 * float(math.factorial(l))
            total = term if total is None else total + term
        power = power * c
    return total if total is not None else c * 0.0


def _polynomial(coef, c, q1, q2):
    coef = list(coef)
    derivative = [k * coef[k] for k in range(1, len(coef))] or [0.0]
    return (_polynomial_expectation(coef, c, q1, q2),
            _polynomial_expectation(derivative, c, q1, q2))


def _hermite(n, c):
    """neural-tangents' normalised Hermite map: Σ -> Σ^n, Θ -> n Σ^(n−1) Θ."""
    if n == 0:
        return c ** 0, _constant(0.0)
    return c ** n, (c ** (n - 1)) * float(n)


# ----------------------------------------------------------------------------------------------
# Dispatch.

_ARC_COSINE = (L.Relu, L.LeakyRelu, L.Abs, L.ABRelu, L.RectifiedMonomial, L.Sign)
_SUPPORTED = _ARC_COSINE + (L.ExpNormalized, L.Erf, L.Sigmoid_like, L.Gelu, L.Sin, L.Rbf, L.Exp,
                            L.Gaussian, L.Gabor, L.Polynomial, L.Monomial, L.Hermite, L.Identity)


def check_supported(net):
    """A NotImplementedError naming the first layer whose derivatives are not implemented."""
    for layer in net.layers:
        if not isinstance(layer, (L.Dense,) + _SUPPORTED):
            raise NotImplementedError(
                f"the σw/σb gradient of the activation {type(layer).__name__} ({layer!r}) is not "
                "implemented (no closed form for its derivatives here); fix the hyperparameters "
                "(W_std_bounds='fixed', b_std_bounds='fixed') or use another activation")


def _activation(layer, c, q1, q2):
    """(E, Ė) as duals for the pair covariances (c; q1, q2)."""
    if isinstance(layer, _ARC_COSINE):
        polar = _Polar(c, q1, q2)
        if isinstance(layer, L.Relu):
            return _abrelu(0.0, 1.0, polar)
        if isinstance(layer, L.LeakyRelu):
            return _abrelu(layer.alpha, 1.0, polar)
        if isinstance(layer, L.Abs):
            return _abrelu(-1.0, 1.0, polar)
        if isinstance(layer, L.ABRelu):
            return _abrelu(layer.a, layer.b, polar)
        if isinstance(layer, L.RectifiedMonomial):
            return _rectified_monomial(layer.degree, polar)
        return _sign(polar)
    if isinstance(layer, L.ExpNormalized):
        return _exp_normalized(layer, c, q1, q2)
    if isinstance(layer, L.Sigmoid_like):
        return _erf(0.5, 1 / 2.4020563531719796, 0.5, c, q1, q2)
    if isinstance(layer, L.Erf):
        return _erf(layer.a, layer.b, layer.c, c, q1, q2)
    if isinstance(layer, L.Gelu):
        return _gelu(c, q1, q2)
    if isinstance(layer, L.Cos):
        return _sin(layer.a, layer.b, layer.c + math.pi / 2, c, q1, q2)
    if isinstance(layer, L.Sin):
        return _sin(layer.a, layer.b, layer.c, c, q1, q2)
    if isinstance(layer, L.Rbf):
        return _rbf(layer.gamma, c, q1, q2)
    if isinstance(layer, L.Exp):
        return _exp_activation(layer.a, layer.b, c, q1, q2)
    if isinstance(layer, L.Gaussian):
        return _gaussian(layer.a, layer.b, c, q1, q2)
    if isinstance(layer, L.Gabor):
        return _gabor(c, q1, q2)
    if isinstance(layer, L.Monomial):
        return _polynomial((0.0,) * layer.degree + (1.0,), c, q1, q2)
    if isinstance(layer, L.Polynomial):
        return _polynomial(layer.coef, c, q1, q2)
    if isinstance(layer, L.Hermite):
        return _hermite(layer.degree, c)
    raise NotImplementedError(type(layer).__name__)  # pragma: no cover - check_supported first


def _dense_duals(layer, wrt, ndim):
    """σw², σb² as duals (tangents w.r.t. log σw, log σb on the leading axis), and the bias flag."""
    w2 = layer.W_std ** 2
    b2 = 0.0 if layer.b_std is None else layer.b_std ** 2
    shape = (len(wrt),) + (1,) * ndim
    dw = np.array([2.0 * w2 if p == "W_std" else 0.0 for p in wrt]).reshape(shape)
    db = np.array([2.0 * b2 if p == "b_std" else 0.0 for p in wrt]).reshape(shape)
    return _Dual(w2, dw), _Dual(b2, db), 0.0 if layer.b_std is None else 1.0


def _run(layers, c, q1, q2, n_features, wrt, ndim, record=None, variances=None, with_ntk=True):
    """The layer recursion on duals. ``record`` (a list) collects each activation's input
    variance duals (the per-point pass); ``variances`` replays them for the pairs."""
    ntk = _constant(0.0)
    fan_in = n_features
    position = 0
    for layer in layers:
        if isinstance(layer, L.Dense):
            w2, b2, bias = _dense_duals(layer, wrt, ndim)
            c_new = w2 * c + b2
            if not with_ntk:
                pass
            elif layer.parameterization == "ntk":
                ntk = c_new + w2 * ntk
            else:
                ntk = c * float(fan_in) + w2 * ntk + bias
            c = c_new
            if q1 is not None:
                q1, q2 = w2 * q1 + b2, w2 * q2 + b2
            fan_in = layer.out_dim
        elif isinstance(layer, L.Identity):
            continue
        else:
            if record is not None:
                record.append(c)
                q1 = q2 = c
            else:
                q1, q2 = variances[position]
            position += 1
            e, edot = _activation(layer, c, q1, q2)
            if with_ntk:
                ntk = edot * ntk
            c = e
    return c, ntk


def _snap(c, q1, q2, n_features):
    """The engine's snap of the input Gram: correlations within a few ulps of ±1 (a duplicate,
    scaled or negated point, rounded differently by the GEMM and the norms) become ±1 exactly;
    otherwise θ ≈ √(2(1 − |ρ|)) would turn a rounding of ε into an error of √ε."""
    snap = getattr(_core, "snap_tolerance", None)
    tol = snap("float64", n_features) if snap is not None else 16 * math.sqrt(n_features) * 2.2e-16
    s = np.where(q1 == q2, q1, np.sqrt(q1) * np.sqrt(q2))
    return np.where(np.abs(c) >= (1.0 - tol) * s, np.where(c < 0, -s, s), c)


def kernel_and_gradient(x, net, get, wrt=PARAMETERS, num_threads=None):
    """(K, dK) of an MLP ``net`` on the points ``x``: K (n, n) from this module's recursion (the
    engine's :func:`ntkfast.gram` is the reference for values) and dK (n, n, len(wrt)) with
    dK[..., p] = ∂K/∂log(wrt[p]), every Dense layer's W_std (or b_std) being that one parameter.

    The upper triangle is computed in blocks of rows (each block: its rows against the columns
    from its first row on), mirrored, in a pool of ``num_threads`` threads (default: the
    engine's OpenMP thread count; NumPy releases the GIL in its array loops).

    Parameters
    ----------
    x : ndarray, shape (n, n_features), float64
    net : Serial
        An ``ntkfast.MLP`` (every Dense with the same W_std and b_std).
    get : {'nngp', 'ntk'}
    wrt : sequence of {'W_std', 'b_std'}
    num_threads : int, optional
    """
    check_supported(net)
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    wrt = tuple(wrt)
    n_params = len(wrt)
    layers = net.layers
    # per-point pass: the variances q_l and their tangents at every activation's input
    q0 = np.einsum("ij,ij->i", x, x) / d
    record = []
    _run(layers, _constant(q0), None, None, d, wrt, 1, record=record, with_ntk=False)
    record = [(q.v, q.d if isinstance(q.d, np.ndarray) else np.zeros((n_params, n)))
              for q in record]

    value = np.empty((n, n))
    grad = np.empty((n_params, n, n))  # one plane per parameter; returned as (n, n, n_params)

    def block(start, stop):
        rows, cols = slice(start, stop), slice(start, n)
        c0 = _snap(x[rows] @ x[cols].T / d, q0[rows, None], q0[None, cols], d)
        variances = [(_Dual(v[rows, None], dv[:, rows, None]),
                      _Dual(v[None, cols], dv[:, None, cols])) for v, dv in record]
        nngp, ntk = _run(layers, _constant(c0), None, None, d, wrt, 2, variances=variances,
                         with_ntk=get == "ntk")
        out = nngp if get == "nngp" else ntk
        tangent = np.broadcast_to(out.d, (n_params,) + out.v.shape)
        size = stop - start
        upper = np.triu_indices(size, 1)
        square_v, square_g = out.v[:, :size].copy(), tangent[:, :, :size].copy()
        square_v[upper[1], upper[0]] = square_v[upper]  # exactly symmetric
        square_g[:, upper[1], upper[0]] = square_g[:, upper[0], upper[1]]
        value[rows, rows], grad[:, rows, rows] = square_v, square_g
        value[rows, stop:], grad[:, rows, stop:] = out.v[:, size:], tangent[:, :, size:]
        value[stop:, rows] = out.v[:, size:].T
        grad[:, stop:, rows] = tangent[:, :, size:].transpose(0, 2, 1)

    # blocks of about _BLOCK_ENTRIES entries (the first, widest, sets the height)
    height = max(1, min(n, _BLOCK_ENTRIES // max(n, 1)))
    starts = list(range(0, n, height))
    if num_threads is None:
        num_threads = _core_threads()
    workers = max(1, min(int(num_threads), len(starts)))
    if workers == 1:
        for start in starts:
            block(start, min(n, start + height))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(block, start, min(n, start + height)) for start in starts]:
                future.result()
    return value, np.moveaxis(grad, 0, -1)


def _core_threads():
    """The engine's OpenMP thread count (OMP_NUM_THREADS, or the cores), as ntkfast.gram uses."""
    try:
        from ._config import get_config

        return int(get_config()["cpu"]["threads"])
    except Exception:  # pragma: no cover - a build without the configuration report
        return os.cpu_count() or 1
