"""Property-based tests (hypothesis): for any input, ntkfast gives a correct result or a clear error.

Each example draws a network (depth 0..5, every activation of ntkfast.ACTIVATIONS plus some with
parameters, W_std/b_std including 0, both parameterizations), inputs (n1, n2 in 0..24, 0..12
features; float64, float32, int32, bool, float16; C, Fortran, strided, negative-stride and
misaligned read-only layouts; zero, duplicate, negated and power-of-two-scaled rows; per-row and
global scales 2^-1000..2^1000 ≈ 1e-300..1e300; NaN/Inf rows), get ('nngp', 'ntk' or both),
dtype, check_finite, symmetric (x2=None) or cross. The call must either

* return finite arrays of the right type, shape and dtype that match the float64 NumPy oracle
  (tests/numpy_reference.py) where that oracle is itself accurate (below), are exactly symmetric
  when x2 is None, and whose diagonal is exactly ``ntkfast.diagonal``; or
* raise ValueError, TypeError, MemoryError, NonFiniteKernelError or KernelUnderflowError with a
  non-empty message.

With check_finite=True, NaN/Inf inputs must raise ValueError. With check_finite=False they must
raise, or every entry that involves a non-finite row must be non-finite (never finite garbage),
and every other entry must be correct.

Where the oracle is compared (and why elsewhere it is not):

* Positively homogeneous networks (only ReLU-family activations and Identity, no bias term:
  b_std=0/None under 'ntk', None under 'standard') satisfy K(a x, b x') = a b K(x, x') exactly.
  Each input row is split into a power of two 2^e times a row of max-norm ~1 (exact in binary),
  the oracle runs on the normalised rows and the expected kernel is K·2^(e_i+e_j). This checks
  every scale 1e-300..1e300, also where the oracle itself would over/underflow on the raw input.
* Other networks: the oracle runs on the raw input (float64) with every floating-point exception
  trapped (np.errstate(all='raise')); if it over/underflows, divides by zero or makes a NaN it
  is not accurate there and only the structural checks run. Comparison also needs every
  per-point variance at every layer of the oracle <= 1e3: exp-type duals (Sin, Cos, Rbf, Exp,
  Gaussian, Gabor) are exp(O(q)), so the rounding of q (relative 1e-16) becomes an error
  1e-16·q in their exponent; above ~1e3 that conditioning, not the engine, would decide.
* Networks with Hermite-series activations (Tanh, Softplus, ...; no closed form for this
  oracle): the structural checks only; their values are checked in test_series.py.

Tolerances (per entry, scale S_ij = max(sqrt(K_ii K_jj), |K_ij|), the Cauchy-Schwarz bound of a
PSD kernel, so that rows of very different norms are each checked at their own scale):
float64 results |got - want| <= 1e-8 S_ij (near |ρ| = 1 the arccos-type duals amplify input
rounding to sqrt(eps) ~ 1e-8, as in test_numerics' parallel-row tolerance); float32 results
<= 2e-4 S_ij (float32 arithmetic: ρ to ~1e-6, amplified near |ρ| = 1). Both plus the smallest
normal number of the result dtype (entries whose true value underflows may be 0/subnormal).

Settings: derandomize=True (deterministic in CI), deadline=None, max_examples chosen so the file
runs in well under a minute on 2 cores.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ntkfast as nf  # noqa: E402
from ntkfast._layers import series_activations  # noqa: E402
import numpy_reference  # noqa: E402

KernelUnderflowError = getattr(nf, "KernelUnderflowError", nf.NonFiniteKernelError)
CLEAR_ERRORS = (ValueError, TypeError, MemoryError, nf.NonFiniteKernelError, KernelUnderflowError)

# NTKFAST_HYPOTHESIS_SCALE=0.3 (tools/sanitize.sh) runs 30% of the examples.
_SCALE = float(os.environ.get("NTKFAST_HYPOTHESIS_SCALE", "1"))


def _examples(n):
    return max(5, int(n * _SCALE))


SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

RTOL = {np.dtype(np.float64): 1e-8, np.dtype(np.float32): 2e-4}
Q_MAX = 1e3  # largest per-point variance at which the oracle of a non-homogeneous net is compared

# ----------------------------------------------------------------------------------------------
# Networks.

# Every activation of ntkfast.ACTIVATIONS: with its default parameters where it has them, else
# with typical ones; then a few with other parameters (including a divergent Gaussian, b > 0).
_REQUIRED = {"leaky_relu": dict(alpha=0.1), "abrelu": dict(a=-0.5, b=2.0),
             "monomial": dict(degree=2), "rectified_monomial": dict(degree=2),
             "polynomial": dict(coef=(0.1, 1.0, 0.5)), "hermite": dict(degree=2)}
DEFAULT_ACTIVATIONS = [cls(**_REQUIRED.get(name, {})) for name, cls in nf.ACTIVATIONS.items()]
PARAMETERISED = [
    nf.LeakyRelu(-0.3), nf.ABRelu(2.0, -1.0), nf.Erf(2.0, 0.5, 0.3), nf.Sin(1.5, 0.7, 0.2),
    nf.Cos(0.8, 1.3, -0.4), nf.Rbf(0.3), nf.Exp(0.7, -0.4), nf.Gaussian(2.0, -0.3),
    nf.Gaussian(1.0, 0.1), nf.ExpNormalized(do_clip=True), nf.ExpNormalized(0.5, 0.0),
    nf.RectifiedMonomial(0), nf.RectifiedMonomial(1), nf.RectifiedMonomial(3), nf.Monomial(0),
    nf.Monomial(1), nf.Monomial(3), nf.Hermite(0), nf.Hermite(1), nf.Hermite(3),
    nf.Polynomial([0.3, -1.0, 0.2, 0.1, -0.05]), nf.Polynomial([1.0]),
]
ALL_ACTIVATIONS = DEFAULT_ACTIVATIONS + PARAMETERISED
HOMOGENEOUS = (nf.Relu, nf.LeakyRelu, nf.Abs, nf.ABRelu, nf.Identity)

stds = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0 ** 0.5, 2.0]),
                 st.floats(0.0, 3.0, allow_nan=False))
biases = st.one_of(st.sampled_from([None, 0.0, 0.05, 0.1, 1.0]), st.floats(0.0, 2.0))


@st.composite
def networks(draw):
    depth = draw(st.integers(0, 5))
    parameterization = draw(st.sampled_from(["ntk", "standard"]))
    homogeneous = draw(st.booleans())  # bias-free ReLU family: checked at every input scale
    if homogeneous:
        acts = st.sampled_from([a for a in ALL_ACTIVATIONS if isinstance(a, HOMOGENEOUS)])
        bias = st.just(None) if parameterization == "standard" else st.sampled_from([None, 0.0])
    else:
        acts, bias = st.sampled_from(ALL_ACTIVATIONS), biases
    same = draw(st.booleans())
    first = draw(acts)
    layers = []
    for i in range(depth + 1):
        width = draw(st.integers(1, 512)) if (parameterization == "standard" and i < depth) else None
        layers.append(nf.Dense(1 if i == depth else width, draw(stds), draw(bias), parameterization))
        if i < depth:
            layers.append(first if same else draw(acts))
    return nf.serial(*layers)


def is_homogeneous(net):
    for layer in net.layers:
        if isinstance(layer, nf.Dense):
            if layer.parameterization == "standard" and layer.b_std is not None:
                return False
            if layer.b_std not in (None, 0.0):
                return False
        elif isinstance(layer, nf.RectifiedMonomial):
            if layer.degree != 1:
                return False
        elif not isinstance(layer, HOMOGENEOUS):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Inputs.

DTYPES = ["float64", "float32", "int32", "bool", "float16"]
LAYOUTS = ["C", "F", "strided", "negative", "misaligned"]
exponents = st.one_of(st.just(0), st.integers(-30, 30), st.integers(-1000, 1000),
                      st.sampled_from([-1074, -1060, -1022, -600, -520, -511, -300, -126, -64, 60,
                                       63, 64, 120, 126, 500, 511, 1000, 1023]))


@st.composite
def point_sets(draw, n, d, dtype):
    """An (n, d) array of ``dtype``: Gaussian rows from a drawn seed, then special rows and
    per-row / global power-of-two scales, NaN/Inf rows; the values are what the cast gives."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.standard_normal((n, d))
    if dtype == "int32":
        x = np.round(3 * x)
    elif dtype == "bool":
        x = (x > 0).astype(np.float64)
    for i in range(n):
        kind = draw(st.sampled_from(["plain"] * 4 + ["zero", "copy", "neg", "scaled"]))
        if kind == "zero":
            x[i] = 0.0
        elif kind in ("copy", "neg", "scaled") and i > 0:
            j = draw(st.integers(0, i - 1))
            x[i] = {"copy": 1.0, "neg": -1.0, "scaled": 2.0 ** draw(st.integers(-8, 8))}[kind] * x[j]
    if dtype in ("float64", "float32", "float16"):
        with np.errstate(over="ignore", under="ignore"):  # ±inf / 0 are inputs like any other
            if draw(st.booleans()):
                x = np.ldexp(x, np.array([draw(exponents) for _ in range(n)], dtype=int)[:, None])
            x = np.ldexp(x, draw(exponents))
        if n and d and draw(st.integers(0, 9)) == 0:
            x[draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf]))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return x.astype(dtype)


def with_layout(x, layout, offset):
    """The same values in another memory layout (misaligned: a read-only view of a bytes buffer
    at a byte offset 1..7)."""
    n, d = x.shape
    if layout == "F":
        return np.asfortranarray(x)
    if layout == "strided":
        big = np.zeros((2 * n + 1, 3 * d + 2), dtype=x.dtype)
        big[1::2, 2::3] = x
        return big[1::2, 2::3]
    if layout == "negative":
        return np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]
    if layout == "misaligned" and x.size:
        buf = bytes(offset) + np.ascontiguousarray(x).tobytes()
        view = np.frombuffer(buf, dtype=x.dtype, count=x.size, offset=offset).reshape(n, d)
        assert not view.flags.writeable
        return view
    return np.ascontiguousarray(x)


# ----------------------------------------------------------------------------------------------
# The oracle.

def _as_float64(x):
    x = np.asarray(x, dtype=np.float64)
    if x.shape[1] == 0:  # no features: x·x'/d is taken as 0 (the oracle would divide 0 by 0)
        x = np.zeros((x.shape[0], 1))
    return x


def _flush(x):
    """Entries below 2^-600 of their row's largest: their share of x·x' is < 2^-1200 relative,
    but their squares would trip the oracle's underflow trap."""
    top = np.abs(x).max(axis=1, keepdims=True)
    return np.where(np.abs(x) < np.ldexp(top, -600), 0.0, x)


def _oracle_joint(net, x):
    """(nngp, ntk) of the oracle on all rows x (n, n), FP exceptions trapped."""
    with np.errstate(all="raise"):
        return numpy_reference.kernels(net, x)


def _activation_input_variances(net, x):
    """The oracle's per-point NNGP variances entering each activation (FP exceptions trapped)."""
    out = []
    for k in range(1, len(net.layers)):
        if isinstance(net.layers[k - 1], nf.Dense) and not isinstance(net.layers[k], nf.Dense):
            with np.errstate(all="raise"):
                out.append(np.diag(numpy_reference.kernels(nf.serial(*net.layers[:k]), x)[0]))
    return out


def expected(net, X1, X2):
    """(want_nngp, want_ntk, scale_nngp, scale_ntk, log2_factor) for the rows X1 (n1) x X2 (n2),
    or None where the oracle is not accurate; want_ntk is None where the NTK is a convention (a
    zero-variance pre-activation with a nonzero NTK, possible only under 'standard': φ' at a
    point mass, see test_zero_variance_pre_activation_convention). want/scale are of the
    normalised kernels: the true kernel is want · 2^log2_factor (an (n1, n2) integer array)."""
    n1 = X1.shape[0]
    if series_activations(net):
        # Hermite-series activations have no closed form for the plain NumPy oracle; they are
        # checked against quadrature and mpmath in test_series.py (here: the structural checks).
        return None
    X = np.concatenate([X1, X2])
    homogeneous = is_homogeneous(net)
    if homogeneous:
        top = np.abs(X).max(axis=1) if X.size else np.zeros(0)
        e = np.where(top > 0, np.frexp(np.where(top > 0, top, 1.0))[1], 0)
        X = np.ldexp(X, -e[:, None])
        factor = e[:n1, None] + e[None, n1:]
    else:
        factor = np.zeros((n1, X.shape[0] - n1), dtype=int)
    X = _flush(X)
    try:
        kernels = _oracle_joint(net, X)
        variances = _activation_input_variances(net, X)
    except FloatingPointError:
        return None
    if not homogeneous and any(np.abs(q).max(initial=0.0) > Q_MAX for q in variances):
        return None
    ntk_convention = (any(l.parameterization == "standard" for l in net.layers if isinstance(l, nf.Dense))
                      and any((q == 0).any() for q in variances))
    out = []
    for k in kernels:
        d = np.sqrt(np.abs(np.diag(k)))
        scale = np.maximum(np.outer(d[:n1], d[n1:]), np.abs(k[:n1, n1:]))
        out.append((k[:n1, n1:], scale))
    return (out[0][0], None if ntk_convention else out[1][0], out[0][1], out[1][1], factor)


def assert_matches(name, got, want, scale, factor):
    dt = got.dtype
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        # got / 2^factor (two steps: each intermediate stays in range), in float64
        g = np.ldexp(np.ldexp(got.astype(np.float64), -(factor // 2)), -(factor - factor // 2))
        tiny = np.ldexp(np.finfo(dt).tiny * 4, -factor)  # may be inf: below the dtype's range
    err = np.abs(g - want)
    bound = RTOL[dt] * scale + tiny
    bad = ~(err <= bound)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise AssertionError(
            f"{name}[{i}, {j}] = {got[i, j]!r} (normalised {g[i, j]!r}), oracle {want[i, j]!r} x 2^"
            f"{factor[i, j]}, error {err[i, j]:.3g} > bound {bound[i, j]:.3g} (scale {scale[i, j]:.3g}); "
            f"{bad.sum()} bad entries of {bad.size}")


# ----------------------------------------------------------------------------------------------
# The property.

def _result_dtype(dtype, inputs):
    if dtype is not None:
        return np.dtype(dtype)
    return np.dtype(np.float32) if all(a.dtype == np.float32 for a in inputs) else np.dtype(np.float64)


@st.composite
def cases(draw):
    net = draw(networks())
    symmetric = draw(st.booleans())
    d = draw(st.integers(0, 12))
    n1 = draw(st.integers(0, 24))
    dt1 = draw(st.sampled_from(DTYPES))
    x1 = draw(point_sets(n1, d, dt1))
    x2 = None
    if not symmetric:
        n2 = draw(st.integers(0, 24))
        x2 = draw(point_sets(n2, d, draw(st.one_of(st.just(dt1), st.sampled_from(DTYPES)))))
    layout = lambda: (draw(st.sampled_from(LAYOUTS)), draw(st.integers(1, 7)))  # noqa: E731
    v1 = with_layout(x1, *layout())
    v2 = None if x2 is None else with_layout(x2, *layout())
    get = draw(st.sampled_from(["nngp", "ntk", ("nngp", "ntk"), ("ntk",), ("ntk", "nngp")]))
    dtype = draw(st.sampled_from([None, None, None, "float32", np.float64]))
    check_finite = draw(st.booleans())
    return net, x1, x2, v1, v2, get, dtype, check_finite


def _non_finite_rows(x):
    if x.dtype.kind != "f" or x.size == 0:
        return np.zeros(x.shape[0], dtype=bool)
    return ~np.isfinite(x).all(axis=1)


@settings(max_examples=_examples(300), **SETTINGS)
@given(cases())
@pytest.mark.filterwarnings("ignore:.*Hermite series was truncated:RuntimeWarning")
def test_gram_correct_or_clear_error(case):
    net, x1, x2, v1, v2, get, dtype, check_finite = case
    note(f"net={net!r}")
    note(f"x1 {x1.dtype} {x1.shape} layout {v1.strides}, x2 "
         f"{None if x2 is None else (x2.dtype, x2.shape, v2.strides)}, get={get!r}, dtype={dtype!r}, "
         f"check_finite={check_finite}")
    note(f"x1={x1.tolist()!r}")
    if x2 is not None:
        note(f"x2={x2.tolist()!r}")
    bad1 = _non_finite_rows(x1)
    bad2 = bad1 if x2 is None else _non_finite_rows(x2)
    non_finite_input = bad1.any() or bad2.any()
    try:
        result = nf.gram(v1, v2, net=net, get=get, dtype=dtype, check_finite=check_finite)
    except CLEAR_ERRORS as error:
        assert str(error).strip(), f"{type(error).__name__} without a message"
        note(f"raised {type(error).__name__}: {error}")
        return
    assert not (check_finite and non_finite_input), "NaN/Inf input accepted with check_finite=True"

    names = (get,) if isinstance(get, str) else tuple(get)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    want_dtype = _result_dtype(dtype, [x1] if x2 is None else [x1, x2])
    if isinstance(get, str):
        assert isinstance(result, np.ndarray)
        values = {get: result}
    else:
        assert isinstance(result, nf.Kernels)
        values = {name: getattr(result, name) for name in names}
        for name in set(nf.Kernels._fields) - set(names):
            assert getattr(result, name) is None
    ok = np.outer(~bad1, ~bad2)  # entries whose two rows are finite
    for name, k in values.items():
        assert isinstance(k, np.ndarray) and k.shape == (n1, n2) and k.dtype == want_dtype, \
            (name, type(k), getattr(k, "shape", None), getattr(k, "dtype", None))
        assert np.isfinite(k[ok]).all(), f"{name}: non-finite entries for finite inputs"
        # NaN/Inf rows (check_finite=False): their entries must not be finite garbage
        assert not np.isfinite(k[~ok]).any(), f"{name}: finite values for a NaN/Inf input row"
    if x2 is None:
        for name, k in values.items():
            assert np.array_equal(k, k.T, equal_nan=True), f"{name} not exactly symmetric"
        diag = nf.diagonal(v1, net=net, get=get, dtype=dtype, check_finite=check_finite)
        diag = {get: diag} if isinstance(get, str) else {n: getattr(diag, n) for n in names}
        for name, k in values.items():
            assert diag[name].dtype == want_dtype
            assert np.array_equal(np.diag(k), diag[name], equal_nan=True), \
                f"{name}: diagonal differs from ntkfast.diagonal"

    # the oracle, on the finite rows
    X1 = _as_float64(x1)[~bad1]
    X2 = X1 if x2 is None else _as_float64(x2)[~bad2]
    ref = expected(net, X1, X2)
    note(f"oracle compared: {ref is not None} (homogeneous: {is_homogeneous(net)})")
    if ref is None:
        return
    want_nngp, want_ntk, s_nngp, s_ntk, factor = ref
    sub = np.ix_(~bad1, ~bad2)
    for name, k in values.items():
        want, scale = (want_nngp, s_nngp) if name == "nngp" else (want_ntk, s_ntk)
        if want is not None:
            assert_matches(name, k[sub], want, scale, factor)


def test_zero_variance_pre_activation_convention():
    """A zero-variance pre-activation (here W_std=0 under 'standard', whose NTK is nonzero there)
    takes the uncorrelated limit θ = π/2 (README; Cho & Saul 2009; the oracle): ReLU's E[φ'φ'] = 1/4
    for every pair, the point with itself included."""
    x = np.array([[0.3, 1.0], [0.3, 1.0], [1.0, -0.2]])
    net = nf.serial(nf.Dense(4, 0.0, None, "standard"), nf.Relu(), nf.Dense(4, 0.5, None, "standard"),
                    nf.Relu(), nf.Dense(1, 0.5, None, "standard"))
    want = numpy_reference.kernels(net, x)[1]  # (x·x') (1/4)² / 4²: two ReLUs at θ = π/2
    np.testing.assert_allclose(want, x @ x.T / 256, rtol=1e-15)
    got = nf.gram(x, net=net, get="ntk")
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(nf.diagonal(x, net=net, get="ntk"), np.diag(want), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# ntkfast.predict on small random PSD kernels: finite outputs or a clear error.

@st.composite
def psd_kernels(draw, n):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    rank = draw(st.integers(0, n))
    a = rng.standard_normal((n, rank))
    k = a @ a.T * 2.0 ** draw(st.integers(-40, 40))
    if draw(st.booleans()):  # duplicate rows/columns: exactly singular
        j = draw(st.integers(0, n - 1))
        k[:, 0], k[0, :] = k[:, j], k[j, :]
        k[0, 0] = k[j, j]
    return (k + k.T) / 2


@st.composite
def predict_cases(draw):
    n = draw(st.integers(1, 10))
    m = draw(st.integers(0, 6))
    n_out = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    # a joint PSD kernel over train + test points, then split
    nngp = draw(psd_kernels(n + m))
    ntk = nngp + draw(psd_kernels(n + m))
    y = rng.standard_normal((n, n_out)) if draw(st.booleans()) else rng.standard_normal(n)
    diag_reg = draw(st.sampled_from([0.0, 1e-12, 1e-6, 0.1, 1.0]))
    t = draw(st.sampled_from([None, 0.0, 1.0, 1e3, 1e12, np.inf, [0.0, 1.0, 1e6]]))
    get = draw(st.sampled_from(["nngp", "ntk", ("nngp", "ntk")]))
    return nngp, ntk, n, y, diag_reg, t, get


def _all_finite(value):
    if value is None:
        return True
    if isinstance(value, np.ndarray):
        return bool(np.isfinite(value).all())
    if isinstance(value, tuple):
        return all(_all_finite(v) for v in value)
    return bool(np.isfinite(np.asarray(value)).all())


@settings(max_examples=_examples(60), **SETTINGS)
@given(predict_cases())
def test_gp_inference_finite_or_clear_error(case):
    nngp, ntk, n, y, diag_reg, _, get = case
    train = nf.Kernels(nngp=nngp[:n, :n], ntk=ntk[:n, :n])
    test_train = nf.Kernels(nngp=nngp[n:, :n], ntk=ntk[n:, :n])
    test_test = nf.Kernels(nngp=nngp[n:, n:], ntk=ntk[n:, n:])
    try:
        fn = nf.predict.gp_inference(train, y, diag_reg=diag_reg)
        out = fn(get=get, k_test_train=test_train, k_test_test=test_test)
        train_out = fn(get=get)
    except CLEAR_ERRORS as error:
        assert str(error).strip()
        return
    assert _all_finite(out) and _all_finite(train_out), out
    for value in (out if isinstance(out, tuple) and not isinstance(out, nf.predict.Gaussian)
                  else (out,)):
        assert value.mean.shape == (nngp.shape[0] - n,) + y.shape[1:]
        cov = value.covariance
        assert cov.shape == (nngp.shape[0] - n,) * 2
        assert np.allclose(cov, cov.T, rtol=1e-8, atol=1e-8 * max(1.0, np.abs(cov).max(initial=0.0)))


@settings(max_examples=_examples(40), **SETTINGS)
@given(predict_cases(), st.sampled_from([nf.MLP(2, "relu", W_std=1.5, b_std=0.1),
                                         nf.MLP(1, "erf", W_std=1.2, b_std=0.0),
                                         nf.MLP(3, "sign", W_std=1.0, b_std=0.05)]),
       st.integers(0, 2 ** 32 - 1), st.sampled_from([None, 1e-3, 1.0, 10.0]))
def test_gradient_descent_mse_ensemble_finite_or_clear_error(case, net, seed, lr):
    _, _, n, y, diag_reg, t, get = case
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 6))
    x = rng.standard_normal((n, d))
    if n > 1 and rng.random() < 0.3:
        x[1] = x[0]  # a duplicate training point: a singular kernel
    x_test = rng.standard_normal((int(rng.integers(0, 5)), d))
    kwargs = {} if lr is None else {"learning_rate": lr}
    try:
        fn = nf.predict.gradient_descent_mse_ensemble(net, x, y, diag_reg=diag_reg, **kwargs)
        mean = fn(t=t, x_test=x_test, get=get)
        cov = fn(t=t, x_test=x_test, get=get, compute_cov=True)
        train = fn(t=t, get=get)
    except CLEAR_ERRORS as error:
        assert str(error).strip()
        return
    assert _all_finite(mean) and _all_finite(cov) and _all_finite(train)
