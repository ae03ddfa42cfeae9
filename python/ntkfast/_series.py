"""Activations without a closed form: the per-row Hermite coefficients of the engines' Series op.

For u = √q1 z1, v = √q2 z2 with corr(z1, z2) = ρ, Mehler's formula gives the dual kernels as
power series in ρ with per-row coefficients (e.g. O'Donnell, *Analysis of Boolean Functions*,
§11.2; Daniely et al. 2016):

    E[φ(u)φ(v)]   = Σ_k A_k(q1) A_k(q2) ρ^k,   A_k(q) = E[φ(√q z) He_k(z)] / √k!,
    E[φ'(u)φ'(v)] = Σ_k B_k(q1) B_k(q2) ρ^k,   B_k(q) likewise for φ'.

The coefficients are 1-D Gaussian integrals, computed here per row (never per entry) by composite
Gauss-Legendre quadrature, graded towards z = 0 where a scaled activation has its features and
the built-in ones their kinks; the engine sums the series per entry in C++. Rows are grouped by
octave of √q: the coefficients are interpolated in log √q from a few exactly computed ones (cached
per layer and octave), the interpolation checked against direct values, so the cost does not grow
with the rows and equal variances always get equal coefficients.
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np

from . import _core
from ._program import compiled_program

__all__ = ["SeriesInputs", "series_inputs", "table_rows"]

# The quadrature in z: panels of width _PANEL out to ±_Z_MAX (the integrands decay like
# e^{-z²/4} times φ's growth: below 1e-18 beyond 14), the first one split geometrically
# _GRADING times towards 0, each with _NODES Gauss-Legendre nodes.
_PANEL = 0.25
_Z_MAX = 14.0
_GRADING = 24
_NODES = 24
# Chebyshev interpolation in log2 √q: per octave, _CHEB nodes; checked at _CHECK_POINTS.
_CHEB = 16
_CHECK_POINTS = (-0.8314, -0.3120, 0.2741, 0.7529)


def table_rows(degree: int) -> int:
    """Rows of the series tables of one Series op (program.hpp series_table_rows)."""
    return 2 * degree + 4


@lru_cache(maxsize=1)
def _rule():
    """Nodes z and weights w·pdf(z) of the composite rule (both halves of the line)."""
    x, w = np.polynomial.legendre.leggauss(_NODES)
    edges = [0.0] + [_PANEL * 2.0 ** -j for j in range(_GRADING, 0, -1)]
    edges += list(np.arange(_PANEL, _Z_MAX + _PANEL / 2, _PANEL))
    nodes, weights = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        nodes.append((b - a) / 2 * x + (a + b) / 2)
        weights.append((b - a) / 2 * w)
    z = np.concatenate(nodes)
    wz = np.concatenate(weights) * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    z = np.concatenate([-z[::-1], z])
    wz = np.concatenate([wz[::-1], wz])
    return z, wz


@lru_cache(maxsize=8)
def _hermite_weights(degree: int):
    """(M, degree + 1): w(z)·He_k(z)/√k! at the rule's nodes (the normalised three-term recurrence,
    stable: |He_k(z)|/√k! <= 1.09 e^{z²/4})."""
    z, wz = _rule()
    h = np.empty((degree + 1, z.size))
    h[0] = 1.0
    if degree >= 1:
        h[1] = z
    for k in range(1, degree):
        h[k + 1] = (z * h[k] - math.sqrt(k) * h[k - 1]) / math.sqrt(k + 1)
    return np.ascontiguousarray((h * wz).T)


def _checked(name, fn, x):
    """fn(x) as a float64 array of x's shape, or an error naming the layer. x is passed read-only:
    a callable that wrote into its argument would change the nodes of later evaluations."""
    x.flags.writeable = False
    try:
        y = fn(x)
    except Exception as error:  # a user callable: say which layer failed and why
        message = (f"{name}: calling the activation on an array of shape {x.shape} failed "
                   f"({error}); it must be vectorised (NumPy ufuncs)")
        try:
            named = type(error)(message)
        except Exception:  # noqa: BLE001 - a class that takes other arguments: raise it as is
            raise error from None
        raise named from error
    y = np.asarray(y)
    if y.shape != x.shape:
        raise ValueError(f"{name}: the activation returned shape {y.shape} for input shape "
                         f"{x.shape}; it must be elementwise and vectorised")
    if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
        raise TypeError(f"{name}: the activation returned dtype {y.dtype}; expected real numbers")
    y = y.astype(np.float64, copy=False)
    if not np.all(np.isfinite(y)):
        bad = x[~np.isfinite(y)].ravel()[0]
        raise ValueError(f"{name}: the activation returned a non-finite value at x = {bad!r}")
    return y


def _derivative(name, fn, x):
    """φ'(x) by a 6th-order finite difference whose stencil stays on x's side of 0 (kinks at 0)."""
    h = 2.0 ** -12 * np.maximum(1.0, np.abs(x))
    central = np.abs(x) > 3.5 * h
    side = np.where(x >= 0, 1.0, -1.0)
    out = np.empty_like(x)
    # central: (-f(-3h) + 9f(-2h) - 45f(-h) + 45f(h) - 9f(2h) + f(3h)) / 60h
    c = [(-3, -1.0), (-2, 9.0), (-1, -45.0), (1, 45.0), (2, -9.0), (3, 1.0)]
    xc, hc = x[central], h[central]
    out[central] = sum(w * _checked(name, fn, xc + m * hc) for m, w in c) / (60 * hc)
    # one-sided (forward on x's side): coefficients of the 6th-order forward difference
    f = [(0, -49 / 20), (1, 6.0), (2, -15 / 2), (3, 20 / 3), (4, -15 / 4), (5, 6 / 5), (6, -1 / 6)]
    xs, hs = x[~central], (h * side)[~central]
    out[~central] = sum(w * _checked(name, fn, xs + m * hs) for m, w in f) / hs
    return out


def _direct(layer, s, degree):
    """(2·degree + 4, len(s)) tables at √q = s: E[φ²], E[φ'²], A_0..A_K, B_0..B_K."""
    z, wz = _rule()
    hw = _hermite_weights(degree)
    name = repr(layer)
    phi, dphi = layer._functions()
    out = np.empty((table_rows(degree), s.size))
    for start in range(0, s.size, 64):  # bounded temporaries
        block = s[start:start + 64]
        x = block[:, None] * z[None, :]
        f = _checked(name, phi, x)
        df = _checked(name, dphi, x) if dphi is not None else _derivative(name, phi, x)
        cols = slice(start, start + block.size)
        out[0, cols] = (f * f) @ wz
        out[1, cols] = (df * df) @ wz
        out[2:degree + 3, cols] = (f @ hw).T
        out[degree + 3:, cols] = (df @ hw).T
    return out


def derivative_mismatch(layer, terms=4, roots=(0.5, 1.0, 2.0)):
    """(worst relative difference, variance) between φ'’s first Hermite coefficients as the
    layer gives them (its df, or the finite difference) and as φ's own series implies them,
    E[φ'(z) He_k(z)] = √(k+1) E[φ(z) He_{k+1}(z)] / √q (Gaussian integration by parts), over a
    few variances q = root²; None where φ cannot be evaluated there. The engine takes
    E[φ'(x)φ'(y)] off the diagonal from φ's series and E[φ'²] on it from φ', so the two must
    agree, or the NTK is not a kernel."""
    roots = np.asarray(roots, dtype=np.float64)
    try:
        with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
            table = _direct(layer, roots, terms)
    except Exception:  # noqa: BLE001 - a user's φ failing here fails again, named, in gram
        return None
    a, given = table[2:terms + 3], table[terms + 3:terms + 3 + terms]
    implied = np.sqrt(np.arange(1.0, terms + 1))[:, None] * a[1:] / roots
    # relative to all of φ'’s energy, E[φ'²] = Σ_k B_k²: an oscillating φ (sin 50x) keeps
    # almost none of it in the first terms, whose quadrature noise is then no mismatch
    scale = np.maximum.reduce([np.sqrt(np.maximum(table[1], 0.0)),
                               np.linalg.norm(given, axis=0), np.linalg.norm(implied, axis=0)])
    relative = np.where(scale > 0, np.linalg.norm(given - implied, axis=0) / np.where(
        scale > 0, scale, 1.0), 0.0)
    worst = int(np.argmax(relative))
    return float(relative[worst]), float(roots[worst] ** 2)


def _cheb_nodes():
    k = np.arange(_CHEB)
    return np.cos((2 * k + 1) * np.pi / (2 * _CHEB))


def _barycentric_weights(t_nodes, t):
    """(len(t), len(t_nodes)): the Lagrange basis of the nodes at t (barycentric formula with
    first-kind Chebyshev weights), exact at the nodes."""
    k = np.arange(t_nodes.size)
    w = (-1.0) ** k * np.sin((2 * k + 1) * np.pi / (2 * t_nodes.size))
    diff = t[:, None] - t_nodes[None, :]
    exact = diff == 0
    diff[exact] = 1.0
    kernel = w / diff
    kernel /= kernel.sum(axis=1)[:, None]
    hit = exact.any(axis=1)
    if hit.any():
        kernel[hit] = exact[hit]
    return kernel


# Accepted interpolation error, relative to the scale of each row (see _octave).
_INTERPOLATION_RTOL = 4e-15
# Interpolated rows' tails are bounded per bin of their position in the octave (_coefficients).
_TAIL_BINS = 256


@lru_cache(maxsize=512)
def _octave(layer, degree, octave):
    """The interpolant of the tables over √q in [2^octave, 2^(octave+1)): (Chebyshev values at
    _CHEB nodes in log2 √q, the square roots of the nodes' tails of A and of B, (_CHEB,
    degree + 2) each), or None where it misses direct
    values at the check points by more than _INTERPOLATION_RTOL of the scale (then rows are
    computed one by one). Cached per layer and octave."""
    t_nodes = _cheb_nodes()
    checks = np.asarray(_CHECK_POINTS)
    anchors = _direct(layer, 2.0 ** (octave + (np.concatenate([t_nodes, checks]) + 1) / 2), degree)
    values, expected = anchors[:, :_CHEB], anchors[:, _CHEB:]
    error = np.abs(values @ _barycentric_weights(t_nodes, checks).T - expected)
    # Scales: E[φ²], E[φ'²] for themselves, √E[φ²] for the A_k, √E[φ'²] for the B_k.
    m0, m1 = (max(np.abs(values[r]).max(), 1e-300) for r in (0, 1))
    tol = _INTERPOLATION_RTOL
    ok = (error[0].max() <= tol * m0 and error[1].max() <= tol * m1
          and error[2:degree + 3].max() <= tol * math.sqrt(m0)
          and error[degree + 3:].max() <= tol * math.sqrt(m1))
    if not ok:
        return None
    tail_a, tail_b = _tails(values, degree)
    return values, np.sqrt(tail_a.T), np.sqrt(tail_b.T)


def _kept_rows(degree, kept):
    """Rows of a degree-``degree`` table that form its degree-``kept`` table."""
    return np.r_[0:kept + 3, degree + 3:degree + 4 + kept]


def _coefficients(layer, q, degree, choose_degree=None):
    """(tables for the variances q, (table_rows(kept), len(q)), and bounds on the rows' tails
    of A and of B: arrays of degree + 2), where kept = choose_degree(tail_a, tail_b, largest
    E[φ²], largest E[φ'²]) <= degree (default: degree). Rows with equal variances get bitwise
    equal columns, which the engine's exact duplicate rows rely on.

    Interpolated rows: one product of every octave's node values with the rows' barycentric
    weights L_j (zero outside the row's octave). Their tails are bounded through the interpolant
    (the triangle inequality on the tail's coefficients): √tail(k) <= Σ_j |L_j|·√tail_j(k) +
    √(degree + 1)·(interpolation error), with |L_j| maximised over bins of the rows."""
    s = np.sqrt(np.maximum(q, 0.0))
    rows_total = table_rows(degree)
    out = np.empty((rows_total, s.size))
    tails = [np.zeros(degree + 2), np.zeros(degree + 2)]

    def exact(rows, values):
        out[:, rows] = values
        for t, part in zip(tails, _tails(values, degree)):
            np.maximum(t, part.max(axis=1), out=t)

    zero = s == 0
    if zero.any():  # φ(0) and φ'(0): the constant terms only
        exact(np.flatnonzero(zero), np.repeat(_direct(layer, np.zeros(1), degree), zero.sum(), 1))
    rest = np.flatnonzero(~zero)
    octave = np.floor(np.log2(s[rest])) if rest.size else np.zeros(0)
    t_nodes = _cheb_nodes()
    node_values, weights, slack = [], [], math.sqrt(degree + 1) * _INTERPOLATION_RTOL
    interpolated = np.zeros(s.size, dtype=bool)
    for g in np.unique(octave):
        rows = rest[octave == g]
        cached = _octave(layer, degree, int(g))
        if cached is None:  # not smooth enough in q at this resolution: per row
            exact(rows, _direct(layer, s[rows], degree))
            continue
        values, root_tail_a, root_tail_b = cached
        t = 2 * (np.log2(s[rows]) - g) - 1
        w = np.zeros((s.size, _CHEB))
        w[rows] = _barycentric_weights(t_nodes, t)
        node_values.append(values)
        weights.append(w)
        interpolated[rows] = True
        # The rows' |L_j|, maximised per node over bins of t: a bound for every row in the bin,
        # nearly as tight as the rows' own, at the cost of a few products instead of N.
        bins = np.minimum(((t + 1) / 2 * _TAIL_BINS).astype(np.int64), _TAIL_BINS - 1)
        order = np.argsort(bins, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(bins[order]) != 0])
        magnitude = np.maximum.reduceat(np.abs(w[rows][order]), starts, axis=0)
        for tail, root_tail, m in ((tails[0], root_tail_a, values[0]),
                                   (tails[1], root_tail_b, values[1])):
            bound = (magnitude @ root_tail).max(axis=0) + slack * math.sqrt(np.abs(m).max())
            np.maximum(tail, bound ** 2, out=tail)
    kept = degree
    if choose_degree is not None:
        # The layer's scales, the largest E[φ²] and E[φ'²] (the first two rows), decide with the
        # tails how many terms to keep.
        scales = [np.abs(out[r, ~interpolated]).max() if not interpolated.all() else 0.0
                  for r in (0, 1)]
        if node_values:
            head = np.concatenate([v[:2] for v in node_values], axis=1) @ \
                np.concatenate(weights, axis=1)[interpolated].T
            scales = [max(scales[r], np.abs(head[r]).max()) for r in (0, 1)]
        kept = choose_degree(tails[0], tails[1], *scales)
        out = out[_kept_rows(degree, kept)]
    if node_values:
        nodes = np.concatenate(node_values, axis=1)
        if kept != degree:  # only the rows kept: the product is most of the cost
            nodes = nodes[_kept_rows(degree, kept)]
        block = nodes @ np.concatenate(weights, axis=1).T
        if interpolated.all():
            out = block
        else:
            out[:, interpolated] = block[:, interpolated]
        # Equal variances, equal columns, whatever the BLAS does at different positions.
        _, first, inverse = np.unique(q, return_index=True, return_inverse=True)
        copies = np.flatnonzero(first[inverse.ravel()] != np.arange(q.size))
        if copies.size:
            out[:, copies] = out[:, first[inverse.ravel()][copies]]
    return out, tails[0], tails[1]


# The 2-D quadrature fallback's interpolants of φ and φ' (series_fallback.hpp): per side of 0,
# Chebyshev panels of _FALLBACK_POINTS coefficients, of width h out to |y| = _FALLBACK_UNIFORM
# (where the built-in activations have become linear or constant to the last bit), then doubling
# out to the largest argument the quadrature reaches (|x|, |z| <= 10: 21·√q). Checked between
# the nodes against φ itself; the first h in _FALLBACK_WIDTHS that passes is used.
_FALLBACK_POINTS = 20
_FALLBACK_UNIFORM = 48.0
_FALLBACK_WIDTHS = (0.25, 0.125, 0.0625)
_FALLBACK_CHECKS = (-0.9731, -0.5127, 0.1379, 0.6931, 0.9917)
_FALLBACK_RTOL = 2e-15       # of |φ(y)| + max(1, |y|)·max |φ| on [-4, 4]
_FALLBACK_RTOL_FD = 1e-11    # φ' from finite differences (no df): their own error is ~1e-12
_FALLBACK_ARGUMENT = 21.0    # the reach of the quadrature, in units of √q
_FALLBACK_MAX_PANELS = 16384  # per side, for the all-uniform layout


def _chebyshev_matrices():
    """(nodes t_j, (P, P) values -> coefficients, (checks, P) coefficients -> values at checks)."""
    p = _FALLBACK_POINTS
    j = np.arange(p)
    t = np.cos(np.pi * (j + 0.5) / p)
    to_coef = 2.0 / p * np.cos(np.pi * np.outer(j, j + 0.5) / p)
    to_coef[0] /= 2
    checks = np.asarray(_FALLBACK_CHECKS)
    at_checks = np.cos(np.outer(np.arccos(checks), j))
    return t, to_coef, at_checks


@lru_cache(maxsize=64)
def _fallback_record(layer, geometric):
    """The fallback record of ``layer`` for arguments up to |y| = _FALLBACK_UNIFORM·2^geometric
    (a float64 array), or None where no layout interpolates φ and φ' to the tolerance (then that
    op's near-parallel pairs keep the truncated series and its warning). Layouts tried: uniform
    panels out to _FALLBACK_UNIFORM then doubling ones, for each width in _FALLBACK_WIDTHS; then
    uniform panels all the way (for a φ still oscillating far out, e.g. sin), while that takes at
    most _FALLBACK_MAX_PANELS panels."""
    name = repr(layer)
    phi, dphi = layer._functions()
    t, to_coef, at_checks = _chebyshev_matrices()
    checks = np.asarray(_FALLBACK_CHECKS)
    rtol_dphi = _FALLBACK_RTOL if dphi is not None else _FALLBACK_RTOL_FD
    reach = _FALLBACK_UNIFORM * 2.0 ** geometric
    layouts = [(h, _FALLBACK_UNIFORM, geometric) for h in _FALLBACK_WIDTHS]
    layouts += [(h, reach, 1) for h in _FALLBACK_WIDTHS if reach / h <= _FALLBACK_MAX_PANELS]
    for h, uniform_to, doubling in layouts:
        uniform = int(round(uniform_to / h))
        far = uniform_to * 2.0 ** np.arange(doubling)
        lo = np.concatenate([np.arange(uniform) * h, far])
        width = np.concatenate([np.full(uniform, h), far])
        checked = lo < reach  # panels past the reach exist in the layout but are never used
        coefficients, ok = [], True
        for fn, rtol in ((phi, _FALLBACK_RTOL), (dphi, rtol_dphi)):
            sides = []
            for side in (1.0, -1.0):
                y = side * (lo[:, None] + (t[None, :] + 1) / 2 * width[:, None])
                y_check = side * (lo[checked, None]
                                  + (checks[None, :] + 1) / 2 * width[checked, None])
                if fn is None:
                    values, exact = _derivative(name, phi, y), _derivative(name, phi, y_check)
                else:
                    values, exact = _checked(name, fn, y), _checked(name, fn, y_check)
                coef = values @ to_coef.T
                error = np.abs(coef[checked] @ at_checks.T - exact)
                near = np.abs(y) <= 4.0
                scale = np.abs(values[near]).max() if near.any() else 0.0
                # The activations' own rounding grows with |y| (e.g. x·sigmoid(x) through tanh).
                allowed = rtol * (np.abs(exact) + scale * np.maximum(1.0, np.abs(y_check)))
                ok = ok and bool(np.all(error <= allowed))
                sides.append(coef)
            coefficients.append(np.concatenate(sides))
        if ok:
            header = [1.0 if layer._kinked_at_zero else 0.0, h, uniform * h, uniform, doubling,
                      _FALLBACK_POINTS]
            record = np.concatenate([header] + [c.ravel() for c in coefficients])
            record.flags.writeable = False
            return record
    return None


def _fallback(layer, max_q):
    """The fallback record of ``layer`` for rows with variances up to max_q, or None (also where
    φ is not finite out to the fallback's reach, 21·√q against the series' 14·√q: e.g. exp)."""
    reach = _FALLBACK_ARGUMENT * math.sqrt(max(max_q, 0.0))
    geometric = max(1, math.ceil(math.log2(max(reach, _FALLBACK_UNIFORM) / _FALLBACK_UNIFORM)))
    try:
        with np.errstate(all="ignore"):
            return _fallback_record(layer, geometric)
    except ValueError:  # _checked: a non-finite value (the series tables were fine)
        return None


def _tails(table, degree):
    """Per row, the tails Σ_{m>=k} A_m² and Σ_{m>=k} B_m² for k = 0..degree+1 (from the exact
    E[φ²], E[φ'²]; at least 8 ulps of them, the rounding of the difference)."""
    a2 = table[2:degree + 3] ** 2
    b2 = table[degree + 3:] ** 2
    zeros = np.zeros((1, table.shape[1]))
    tail_a = table[0] - np.concatenate([zeros, np.cumsum(a2, axis=0)])
    tail_b = table[1] - np.concatenate([zeros, np.cumsum(b2, axis=0)])
    eps = 8 * np.finfo(np.float64).eps
    return (np.maximum(tail_a, eps * np.abs(table[0])),
            np.maximum(tail_b, eps * np.abs(table[1])))


# warn_if_slow: more entries than both of these.
_SLOW_FALLBACK_PAIRS = 10_000
_SLOW_FALLBACK_SHARE = 0.1


class SeriesInputs:
    """What the engines need for a program with Series ops: the program itself (its Series
    ops keep the terms their rows need; ``ops``: the same as lowered ops, for the CUDA engine),
    the tables of both point sets, the tail profiles and fallback records (engine.hpp
    SeriesOptions) and, for messages, each op's layer."""

    def __init__(self, program, tables1, tables2, profiles, fallbacks, fallback_above, layers,
                 rtol, warn_rtol, ops=()):
        self.program = program  # the network's program with the Series ops' degrees as stored
        self.ops = ops
        self.tables1, self.tables2, self.profiles = tables1, tables2, profiles
        self.fallbacks, self.fallback_above = fallbacks, fallback_above
        self.layers, self.rtol, self.warn_rtol = layers, rtol, warn_rtol

    def engine_arguments(self):
        """The Series arguments of _core.gram, in order."""
        return (self.tables1, self.tables2, self.profiles, self.fallbacks, self.fallback_above)

    def warn_if_truncated(self, bound):
        """A RuntimeWarning when the engine's tail bound exceeds what the dtype promises."""
        if bound * self.rtol > self.warn_rtol:
            names = ", ".join(sorted({f"{l!r} (deg={l.deg})" for _, l in self.layers}))
            warnings.warn(
                f"{names}: the Hermite series was truncated with an error of up to "
                f"{bound * self.rtol:.1e} relative to the layer's largest value, at the most "
                "correlated pairs of inputs; a larger deg reduces it", RuntimeWarning,
                stacklevel=4)

    def warn_if_slow(self, fallback_pairs, entries):
        """A RuntimeWarning when the 2-D quadrature fallback computed a large share of the
        entries (exact, but 100-1500x slower per entry than the series)."""
        if fallback_pairs > max(_SLOW_FALLBACK_PAIRS, _SLOW_FALLBACK_SHARE * entries):
            names = ", ".join(sorted({f"{l!r} (deg={l.deg})" for _, l in self.layers}))
            warnings.warn(
                f"{names}: {fallback_pairs} of {entries} entries ({fallback_pairs / entries:.0%}) "
                "were computed by 2-D quadrature, 100-1500x slower per entry than the series: their "
                "inputs are nearly parallel (|ρ| near 1) at large variances, or deg is small "
                f"(a larger deg, up to {_core.MAX_SERIES_DEGREE}, sums more of them as a series)",
                RuntimeWarning, stacklevel=4)


def series_layers(ops, layers):
    """[(op index, layer)] of the Series ops of a lowered network, given its Series activations
    in program order (_layers.series_activations)."""
    found = [k for k, op in enumerate(ops) if op[0] == _core.OP_KINDS["Series"]]
    return list(zip(found, layers))


# The tables of one Series op (both point sets) are kept below this size: fewer terms, and more
# near-parallel pairs for the fallback, rather than gigabytes of coefficients.
_TABLE_BYTES = 512 * 2 ** 20


def _profile(tail_a, tail_b, scale_a, scale_b, rtol):
    """profile[k]: the largest tail from term k on, of either series, in units of the tolerated
    error (rtol of the layer's largest E[φ²], E[φ'²]); non-increasing in k."""
    bound = np.maximum(tail_a / max(scale_a * rtol, 1e-300), tail_b / max(scale_b * rtol, 1e-300))
    return np.maximum.accumulate(bound[::-1])[::-1]


def _tables(ops, pool, series, point_sets, num_threads, rtol, dual_kernels=None):
    """(the lowered ops with each Series op's degree and first row as stored, the series tables
    of each point set, the tail profiles, the fallback records) (SeriesOptions).

    Op by op: the variances entering a Series op are the diagonal of the network up to it (the
    same row recursion the engine runs, so the same bits), with the tables of the earlier Series
    ops; the coefficients of all point sets come from one call, so a row in both sets gets the
    same coefficients in both. Each op keeps only the terms its rows need even at |ρ| = 1 (its
    deg at most, within _TABLE_BYTES): beyond them its tail is below the tolerance."""
    points = sum(x.shape[0] for x in point_sets)
    budget = max(1, int(_TABLE_BYTES / (8 * max(points, 1)) - 4) // 2)  # terms per op
    most = sum(table_rows(min(layer.deg, budget)) for _, layer in series)
    # In the engine's padded layout (used in place); padding columns harmless: E[φ²] = E[φ'²] =
    # 1, coefficients 0.
    tables = [np.empty((most, _core.row_stride(x.shape[0]))) for x in point_sets]
    xs = [np.require(np.asarray(x, dtype=np.float64), requirements=["C", "A"]) for x in point_sets]
    profiles = np.zeros((len(series), max(layer.deg for _, layer in series) + 2))
    records, ops, row0 = [], list(ops), 0
    for s, (k, layer) in enumerate(series):
        program = compiled_program(tuple(ops[:k]), pool)
        qs = []
        for x, table in zip(xs, tables):
            q = np.empty(x.shape[0])
            # Only the earlier ops' rows (a contiguous view): nothing else is read or copied.
            _core.diagonal(program, x, q, None, num_threads, table[:row0] if row0 else None,
                           dual_kernels)
            qs.append(q)
        all_q = np.concatenate(qs)
        full = {}

        def choose_degree(tail_a, tail_b, scale_a, scale_b):
            full["profile"] = profile = _profile(tail_a, tail_b, scale_a, scale_b, rtol)
            # Enough: the tolerance, or within 2x of what all deg terms reach (the bound's own
            # rounding floor, ~1e-15 of the scale, keeps it from going lower).
            enough = np.flatnonzero(profile[:layer.deg + 1] <= max(1.0, 2.0 * profile[layer.deg]))
            return max(1, min(layer.deg, int(enough[0]) if enough.size else layer.deg, budget))

        values, _, _ = _coefficients(layer, all_q, layer.deg, choose_degree)
        degree = (values.shape[0] - 4) // 2
        records.append(_fallback(layer, float(all_q.max()) if all_q.size else 0.0))
        start = 0
        for q, table in zip(qs, tables):
            block = table[row0:row0 + table_rows(degree)]
            block[:, :q.size] = values[:, start:start + q.size]
            block[:2, q.size:] = 1.0
            block[2:, q.size:] = 0.0
            start += q.size
        profiles[s, :degree + 2] = full["profile"][:degree + 2]
        kind, _, offset, params = ops[k]
        ops[k] = (kind, degree, offset, (float(row0),) + tuple(params[1:]))
        row0 += table_rows(degree)
    # One row per op; an op without a record gets -1 (no fallback).
    fallbacks = np.zeros((len(series), max([1] + [r.size for r in records if r is not None])))
    for s, record in enumerate(records):
        if record is None:
            fallbacks[s, 0] = -1.0
        else:
            fallbacks[s, :record.size] = record
    return tuple(ops), [table[:row0] for table in tables], profiles, fallbacks


def series_inputs(layers, ops, pool, x1, x2, num_threads, dtype, dual_kernels=None):
    """SeriesInputs for a gram (x2 may be None) or a diagonal of the lowered network (ops, pool)
    whose Series activations are ``layers``, or None without Series ops; ``dual_kernels``: the
    engine's callback for its DualKernel layers, if any (_dual_kernels.py). The rows enter only
    through their variances ||x||²/d (the row recursion up to each Series op), so any rows with
    the same variances give the same inputs (the CUDA backend passes (n, 1) rows √(||x||²/d))."""
    series = series_layers(ops, layers)
    if not series:
        return None
    threads = 0 if num_threads is None else num_threads
    # Terms are summed to rtol of each layer's largest value; a bound above warn_rtol is reported.
    float64 = np.dtype(dtype) == np.float64
    # Entries whose bound exceeds fallback_rtol are computed by 2-D quadrature instead.
    rtol, fallback_rtol, warn_rtol = (1e-14, 1e-12, 1e-10) if float64 else (1e-8, 1e-7, 1e-6)
    # NumPy's default error state, whatever the caller's: products underflowing in the
    # quadrature are zeros, not errors, and non-finite values are checked explicitly (_checked),
    # so the tables do not depend on np.seterr or on which call built them first.
    with np.errstate(divide="warn", over="warn", under="ignore", invalid="warn"):
        ops, tables, profiles, fallbacks = _tables(ops, pool, series,
                                                   [x1] if x2 is None else [x1, x2], threads,
                                                   rtol, dual_kernels)
    tables1, tables2 = tables[0], (tables[1] if x2 is not None else None)
    return SeriesInputs(compiled_program(ops, pool), tables1, tables2, profiles, fallbacks,
                        fallback_rtol / rtol, series, rtol, warn_rtol, ops)
