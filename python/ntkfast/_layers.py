"""Network specifications with neural-tangents' names, and their lowering to a layer program.

A network is an immutable, hashable value (``serial(Dense(...), Relu(), ...)``); the compute
engines never see it: :func:`lower` turns it into the flat op list of
``src/common/ntkfast/program.hpp``.
Parameters mean what they mean in ``neural_tangents.stax`` (``W_std``, ``b_std``, ``parameterization``;
inputs enter as ``x·x'/n_features``), so kernels can be cross-checked against it.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import warnings
from functools import lru_cache, wraps
from typing import Optional, Tuple

import numpy as np

from . import _core
from ._series import derivative_mismatch, table_rows

__all__ = [
    "Layer", "Serial", "serial", "Dense", "MLP", "ACTIVATIONS",
    "Relu", "LeakyRelu", "ABRelu", "Abs", "Erf", "Sigmoid_like", "Gelu", "Sin", "Cos", "Rbf",
    "Exp", "ExpNormalized", "Gaussian", "Gabor", "Sign", "Monomial", "RectifiedMonomial",
    "Polynomial", "Hermite", "Identity", "Tanh", "Sigmoid", "Softplus", "Silu", "Elu", "Selu",
    "Mish", "ElementwiseNumerical", "Elementwise", "DualKernel",
]

#: The engine's op kinds this module emits, by their names in program.hpp's NTKFAST_OP_KINDS.
_OP_NAMES = ("Dense", "Identity", "ABRelu", "Erf", "Gelu", "Sin", "Rbf", "Exp", "ExpNormalized",
             "Gaussian", "Gabor", "Sign", "RectifiedMonomial", "Polynomial", "Hermite", "Series",
             "Callback")


def _op_codes(core):
    """({name: code} for _OP_NAMES, max degree) as the compiled extension defines them.

    The codes are read from the extension, never copied here, so the two cannot drift apart;
    an extension that lacks a kind (built from other sources than this package) is an
    ImportError now rather than wrong kernels later.
    """
    kinds = getattr(core, "OP_KINDS", None)
    max_degree = getattr(core, "MAX_DEGREE", None)
    where = getattr(core, "__file__", core.__name__)
    rebuild = "rebuild and reinstall ntkfast (pip install .) so the two come from one source tree"
    mismatch = f"the compiled extension {where} does not match the ntkfast Python package"
    if (not isinstance(kinds, dict) or isinstance(max_degree, bool)
            or not isinstance(max_degree, int)):
        raise ImportError(f"{mismatch}: it exports no OP_KINDS dict and MAX_DEGREE int; {rebuild}")
    missing = [name for name in _OP_NAMES if not isinstance(kinds.get(name), int)]
    if missing:
        raise ImportError(f"{mismatch}: its OP_KINDS lacks {', '.join(missing)}; {rebuild}")
    return {name: kinds[name] for name in _OP_NAMES}, max_degree


#: MAX_DEGREE: highest degree for Monomial, RectifiedMonomial, Polynomial and Hermite (the
#: engine's kMaxDegree).
_OP_CODES, MAX_DEGREE = _op_codes(_core)
_DENSE, _IDENTITY, _ABRELU, _ERF, _GELU, _SIN, _RBF, _EXP, _EXP_NORMALIZED, _GAUSSIAN, _GABOR, \
    _SIGN, _RECTIFIED_MONOMIAL, _POLYNOMIAL, _HERMITE, _SERIES, _CALLBACK = (
        _OP_CODES[name] for name in _OP_NAMES)
#: Highest degree of a Hermite-series activation (deg=), the engine's kMaxSeriesDegree.
MAX_SERIES_DEGREE = int(getattr(_core, "MAX_SERIES_DEGREE", 0))
#: Most ops in one program (the engine's Program refuses more). Every layer lowers to at most
#: one op, so this is also the most layers in a network.
MAX_OPS = int(_core.MAX_OPS)
#: Deepest MLP: depth hidden [Dense, activation] pairs and a readout Dense are 2·depth + 1 ops.
MAX_MLP_DEPTH = (MAX_OPS - 1) // 2


# ----------------------------------------------------------------------------------------------
# Parameter checks: every spec validates when it is built, naming the parameter.

def _real(owner: str, name: str, value, *, minimum=None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond the float range, e.g. 10**400
        raise ValueError(f"{owner}: {name} must be finite, got an integer of "
                         f"{int(value).bit_length()} bits") from None
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value!r}")
    return value


def _degree(owner: str, value, *, maximum=MAX_DEGREE):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: degree must be an integer, got {value!r}")
    if not 0 <= int(value) <= maximum:
        raise ValueError(f"{owner}: degree must be in [0, {maximum}], got {value!r}")
    return int(value)


#: Widest Dense layer: every integer up to it is exact in float64.
_MAX_WIDTH = 2**53
#: Largest magnitude whose square is a finite double (≈ 1.34e154).
_SQRT_MAX = math.sqrt(sys.float_info.max)


def _square(owner: str, name: str, value: float) -> float:
    """value², or a ValueError naming the parameter where it overflows: the engines get the
    squared parameters, and an inf there would turn every kernel entry into inf or NaN."""
    squared = value * value  # (a float's ** 2 raises a bare OverflowError instead)
    if not math.isfinite(squared):
        raise ValueError(f"{owner}: {name}**2 = inf overflows; {name} must be below "
                         f"{_SQRT_MAX:.2g} in magnitude, got {value!r}")
    return squared


def _finite(owner: str, expression: str, value: float, hint: str) -> float:
    """A derived parameter, or a ValueError naming it and the parameters it comes from."""
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {expression} = {value!r} overflows; {hint}")
    return value


def _flag(owner: str, name: str, value):
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


class Layer:
    """Base class of all layer specs.

    Layers are frozen dataclasses: immutable, hashable and compared by value, validated when
    they are built (a ``TypeError`` or ``ValueError`` naming the parameter). Compose them with
    :func:`serial`; pass the result as ``net`` to :func:`ntkfast.gram`.

    Examples
    --------
    >>> import ntkfast
    >>> isinstance(ntkfast.Relu(), ntkfast.Layer)
    True
    >>> ntkfast.Dense(512, 1.5) == ntkfast.Dense(512, W_std=1.5)
    True
    """

    __slots__ = ()

    def __repr__(self) -> str:
        # Required parameters positionally, the others only where they differ from the default.
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING:
                parts.append(repr(value))
            elif value != f.default:
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # Lowering: a list of (kind, degree, params) and optional polynomial tables.
    def _ops(self, ctx: "_Lowering") -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


class _Activation(Layer):
    """An elementwise nonlinearity: its input must be Gaussian (right after a Dense)."""

    __slots__ = ()


def _frozen(cls):
    return dataclasses.dataclass(frozen=True, repr=False, eq=True)(cls)


# ----------------------------------------------------------------------------------------------
# Dense and serial.

@_frozen
class Dense(Layer):
    """Fully-connected layer, as ``neural_tangents.stax.Dense``.

    Parameters
    ----------
    out_dim : int or None
        Width. Ignored by the kernels under the 'ntk' parameterization; under 'standard' the width
        of a hidden Dense is the next Dense's fan-in and scales its NTK contribution.
    W_std : float
        Weight standard deviation σw >= 0 (weights ~ N(0, σw²/fan_in)).
    b_std : float or None
        Bias standard deviation σb >= 0; None means no bias parameter (differs from 0.0 only for
        the NTK under 'standard', where a bias adds 1 per layer).
    parameterization : {'ntk', 'standard'}
        'ntk': h = σw W x/√n + σb b (the NTK parameterisation of Jacot et al. 2018).
        'standard': h = W x + b with W ~ N(0, σw²/n); same NNGP, NTK as neural-tangents'
        ``parameterization='standard'`` (Sohl-Dickstein et al. 2020, "On the infinite width
        limit of neural networks with a standard parameterization").

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range (negative ``W_std``, an unknown
        ``parameterization``, ...).

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.Dense(512, W_std=1.5, b_std=0.05)
    Dense(out_dim=512, W_std=1.5, b_std=0.05)
    >>> net = ntkfast.serial(ntkfast.Dense(512, 1.5, 0.05), ntkfast.Relu(), ntkfast.Dense(1, 1.5, 0.05))
    """

    out_dim: Optional[int] = None
    W_std: float = 1.0
    b_std: Optional[float] = None
    parameterization: str = "ntk"

    def __post_init__(self):
        if self.out_dim is not None and (isinstance(self.out_dim, bool)
                                         or not isinstance(self.out_dim, numbers.Integral)
                                         or not 1 <= self.out_dim <= _MAX_WIDTH):
            shown = (f"an integer of {int(self.out_dim).bit_length()} bits"
                     if isinstance(self.out_dim, numbers.Integral) and self.out_dim > _MAX_WIDTH
                     else repr(self.out_dim))
            raise ValueError(f"Dense: out_dim must be a positive integer up to 2**53 (a width "
                             f"the standard parameterization divides by exactly), or None, got "
                             f"{shown}")
        object.__setattr__(self, "out_dim", None if self.out_dim is None else int(self.out_dim))
        object.__setattr__(self, "W_std", _real("Dense", "W_std", self.W_std, minimum=0.0))
        object.__setattr__(self, "b_std", _real("Dense", "b_std", self.b_std, minimum=0.0,
                                                allow_none=True))
        if self.parameterization not in ("ntk", "standard"):
            raise ValueError("Dense: parameterization must be 'ntk' or 'standard', "
                             f"got {self.parameterization!r}")
        self._squares()

    def _squares(self):
        w2 = _square("Dense", "W_std", self.W_std)
        b2 = 0.0 if self.b_std is None else _square("Dense", "b_std", self.b_std)
        return w2, b2

    def _ops(self, ctx):
        w2, b2 = self._squares()
        if self.parameterization == "ntk":
            ctx.emit(_DENSE, (w2, b2, 0.0, 0.0, 1.0))
        else:
            fan_in = ctx.fan_in
            if fan_in is None:
                raise ValueError(
                    f"{self!r} uses the 'standard' parameterization, whose NTK depends on the "
                    "fan-in, but the Dense before it has out_dim=None: give every hidden Dense "
                    "its width (out_dim=...)")
            ctx.emit(_DENSE, (w2, b2, float(fan_in), 0.0 if self.b_std is None else 1.0, 0.0))
        ctx.fan_in = self.out_dim


@dataclasses.dataclass(frozen=True, repr=False)
class Serial(Layer):
    """A sequence of layers applied in order (``neural_tangents.stax.serial``).

    Built by :func:`serial` (which flattens nested networks); ``Serial(layers)`` with a tuple of
    layers is the same.

    Parameters
    ----------
    layers : tuple of Layer
        The layers, first to last.

    Raises
    ------
    TypeError
        ``layers`` is not a tuple (or list) of layers.
    ValueError
        An activation does not follow a Dense layer, or a 'standard' Dense lacks its fan-in.

    Examples
    --------
    >>> import ntkfast
    >>> net = ntkfast.MLP(2)
    >>> net.depth, len(net.layers)
    (2, 5)
    >>> ntkfast.Serial(net.layers) == net
    True
    """

    layers: Tuple[Layer, ...] = ()

    def __post_init__(self):
        # Serial(...) built directly must be as valid (and hashable) as serial(...)'s result
        layers = self.layers
        if isinstance(layers, list):
            layers = tuple(layers)
        if not isinstance(layers, tuple):
            raise TypeError(f"Serial: layers must be a tuple (or list) of ntkfast layers, got "
                            f"{type(layers).__name__}: {layers!r}; compose layers with "
                            "ntkfast.serial(layer, ...)")
        for position, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Serial: layers[{position}] is not an ntkfast layer: {layer!r}"
                                + (f" (a class: instantiate it, {layer.__name__}(...))"
                                   if isinstance(layer, type) and issubclass(layer, Layer) else ""))
        object.__setattr__(self, "layers", _check_structure("Serial", layers))

    def __repr__(self) -> str:
        return "serial(" + ", ".join(repr(layer) for layer in self.layers) + ")"

    def _ops(self, ctx):
        for position, layer in enumerate(self.layers):
            ctx.source = f"{layer!r} (layer {position})"
            layer._ops(ctx)

    @property
    def depth(self) -> int:
        """Number of activation layers.

        Examples
        --------
        >>> import ntkfast
        >>> ntkfast.MLP(3, "erf").depth
        3
        """
        return sum(isinstance(layer, _Activation) for layer in self.layers)


def serial(*layers: Layer) -> Serial:
    """Compose layers: ``serial(Dense(512, 1.5, 0.05), Relu(), Dense(1, 1.5, 0.05))``.

    As ``neural_tangents.stax.serial``, but the result is a network value (a :class:`Serial`),
    not an ``(init_fn, apply_fn, kernel_fn)`` triple. Nested ``serial`` calls are flattened.

    Parameters
    ----------
    *layers : Layer
        The layers, first to last.

    Returns
    -------
    Serial

    Raises
    ------
    TypeError
        An argument is not a layer (e.g. a layer class instead of an instance).
    ValueError
        An activation does not follow a Dense layer (its input must be Gaussian, as in
        neural-tangents), or a 'standard' Dense follows a Dense without ``out_dim``.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> net = ntkfast.serial(ntkfast.Dense(512, 1.5, 0.05), ntkfast.Erf(),
    ...                      ntkfast.Dense(1, 1.5, 0.05))
    >>> net.depth
    1
    >>> ntkfast.gram(np.eye(3), net=net, get="nngp").shape
    (3, 3)
    """
    for position, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {position} is not an ntkfast layer: {layer!r}"
                            + (f" (a class: instantiate it, {layer.__name__}(...))"
                               if isinstance(layer, type) and issubclass(layer, Layer) else ""))
    return Serial(_check_structure("serial", layers))


def _check_structure(owner, layers):
    """The layers with nested Serials flattened, checked: an activation needs a Gaussian input
    (a Dense before it) and a 'standard' Dense needs its fan-in (the previous Dense's out_dim)."""
    flat = []
    for layer in layers:
        flat.extend(layer.layers if isinstance(layer, Serial) else (layer,))
    if len(flat) > MAX_OPS:
        raise ValueError(f"{owner}: a network has at most {MAX_OPS} layers (the engine's limit), "
                         f"got {len(flat)}")
    gaussian = False
    previous_dense = None
    for position, layer in enumerate(flat):
        if isinstance(layer, Dense):
            if (layer.parameterization == "standard" and previous_dense is not None
                    and previous_dense.out_dim is None):
                raise ValueError(
                    f"{owner}: {layer!r} at position {position} uses the 'standard' "
                    "parameterization, whose NTK depends on its fan-in, but the Dense before it "
                    f"({previous_dense!r}) has no out_dim: give every hidden Dense its width")
            previous_dense = layer
            gaussian = True
        elif isinstance(layer, _Activation):
            if not gaussian:
                raise ValueError(
                    f"{owner}: {layer!r} at position {position} needs a Gaussian input: put a "
                    "Dense layer before every activation")
            gaussian = False
    return tuple(flat)


# ----------------------------------------------------------------------------------------------
# Activations (each docstring gives the function and the dual it lowers to).

@_frozen
class ABRelu(_Activation):
    """``a·min(x, 0) + b·max(x, 0)``; the arc-cosine kernel of order 1.

    Parameters
    ----------
    a, b : float
        Slopes for negative and positive inputs.
    do_stabilize : bool
        Accepted for neural-tangents compatibility and without effect: ntkfast's formulas do not
        lose precision in deep networks.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.MLP(2, ntkfast.ABRelu(-0.5, 1.0)) == ntkfast.MLP(2, "abrelu", a=-0.5, b=1.0)
    True
    """

    a: float
    b: float
    do_stabilize: bool = False

    def __post_init__(self):
        object.__setattr__(self, "a", _real("ABRelu", "a", self.a))
        object.__setattr__(self, "b", _real("ABRelu", "b", self.b))
        object.__setattr__(self, "do_stabilize", _flag("ABRelu", "do_stabilize", self.do_stabilize))
        self._params()

    def _params(self):
        return _abrelu_params("ABRelu", self.a, self.b, "a", "b")

    def _ops(self, ctx):
        ctx.emit(_ABRELU, self._params())


def _abrelu_params(owner, a, b, a_name, b_name):
    """((a-b)²/(2π), (a²+b²)/2, a·b), each finite or a ValueError naming the parameters (a·b: the
    exact constant (a²+b²)/2 - π·(a-b)²/(2π) of the map near ρ = -1, for the engines' exact path)."""
    hint = f"|{a_name}| and |{b_name}| must be below {_SQRT_MAX / 2:.2g}"
    diff = _finite(owner, f"({a_name} - {b_name})**2", (a - b) * (a - b), hint)
    total = _finite(owner, f"{a_name}**2 + {b_name}**2", a * a + b * b, hint)
    return diff / (2 * math.pi), total / 2, a * b


@_frozen
class Relu(_Activation):
    """``max(x, 0)`` (ABRelu(0, 1)): the arc-cosine kernel of order 1 (Cho & Saul 2009).

    Parameters
    ----------
    do_stabilize : bool
        Accepted for neural-tangents compatibility; no effect.

    Examples
    --------
    The NNGP of one ReLU layer on orthogonal inputs of variance q is q/(2π):

    >>> import numpy as np, ntkfast
    >>> net = ntkfast.serial(ntkfast.Dense(1), ntkfast.Relu(), ntkfast.Dense(1))
    >>> k = ntkfast.gram(np.eye(2), net=net, get="nngp")    # q = x·x/d = 1/2
    >>> np.allclose(k, [[1 / 4, 1 / (4 * np.pi)], [1 / (4 * np.pi), 1 / 4]])
    True
    """

    do_stabilize: bool = False

    def __post_init__(self):
        object.__setattr__(self, "do_stabilize", _flag("Relu", "do_stabilize", self.do_stabilize))

    def _ops(self, ctx):
        ctx.emit(_ABRELU, _abrelu_params("Relu", 0.0, 1.0, "a", "b"))


@_frozen
class LeakyRelu(_Activation):
    """``alpha·min(x, 0) + max(x, 0)`` (ABRelu(alpha, 1)).

    Parameters
    ----------
    alpha : float
        Slope for negative inputs.
    do_stabilize : bool
        Accepted for neural-tangents compatibility; no effect.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.LeakyRelu(0.1)
    LeakyRelu(0.1)
    """

    alpha: float
    do_stabilize: bool = False

    def __post_init__(self):
        object.__setattr__(self, "alpha", _real("LeakyRelu", "alpha", self.alpha))
        object.__setattr__(self, "do_stabilize", _flag("LeakyRelu", "do_stabilize", self.do_stabilize))
        self._params()

    def _params(self):
        return _abrelu_params("LeakyRelu", self.alpha, 1.0, "alpha", "1")

    def _ops(self, ctx):
        ctx.emit(_ABRELU, self._params())


@_frozen
class Abs(_Activation):
    """``|x|`` (ABRelu(-1, 1)).

    Parameters
    ----------
    do_stabilize : bool
        Accepted for neural-tangents compatibility; no effect.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.MLP(1, "abs")
    serial(Dense(b_std=0.0), Abs(), Dense(out_dim=1, b_std=0.0))
    """

    do_stabilize: bool = False

    def __post_init__(self):
        object.__setattr__(self, "do_stabilize", _flag("Abs", "do_stabilize", self.do_stabilize))

    def _ops(self, ctx):
        ctx.emit(_ABRELU, _abrelu_params("Abs", -1.0, 1.0, "a", "b"))


@_frozen
class Erf(_Activation):
    """``a·erf(b·x) + c``; NNGP ``(2/π) arcsin(2Σ/√((1+2q1)(1+2q2)))`` after scaling by b².

    Parameters
    ----------
    a, b, c : float
        Scale, input scale and offset.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.Erf(b=2.0)
    Erf(b=2.0)
    """

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    def __post_init__(self):
        for name in ("a", "b", "c"):
            object.__setattr__(self, name, _real("Erf", name, getattr(self, name)))
        self._params()

    def _params(self):
        return tuple(_square(type(self).__name__, name, getattr(self, name)) for name in "abc")

    def _ops(self, ctx):
        ctx.emit(_ERF, self._params())


@_frozen
class Sigmoid_like(_Activation):  # noqa: N801 - neural-tangents' name
    """``0.5·erf(x/2.4020563531719796) + 0.5``, a sigmoid look-alike (Erf(0.5, 1/2.40…, 0.5)).

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((4, 3))
    >>> a = ntkfast.gram(x, net=ntkfast.MLP(2, "sigmoid_like"), get="ntk")
    >>> b = ntkfast.gram(x, net=ntkfast.MLP(2, ntkfast.Erf(0.5, 1 / 2.4020563531719796, 0.5)), get="ntk")
    >>> np.allclose(a, b)
    True
    """

    def _ops(self, ctx):
        ctx.emit(_ERF, Erf(0.5, 1 / 2.4020563531719796, 0.5)._params())


@_frozen
class Gelu(_Activation):
    """``x·Φ(x)`` (exact GELU); neural-tangents' closed form.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.MLP(2, "gelu", W_std=1.5).depth
    2
    """

    def _ops(self, ctx):
        ctx.emit(_GELU, ())


@_frozen
class Sin(_Activation):
    """``a·sin(b·x + c)``.

    Parameters
    ----------
    a, b, c : float
        Amplitude, frequency and phase.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.Sin(b=2.0, c=0.5)
    Sin(b=2.0, c=0.5)
    """

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    def __post_init__(self):
        for name in ("a", "b", "c"):
            object.__setattr__(self, name, _real(type(self).__name__, name, getattr(self, name)))
        self._params()

    def _phase(self):
        return self.c

    def _params(self):
        owner = type(self).__name__
        # cos(inf) raises a bare "math domain error": name the phase instead
        twice = _finite(owner, "2*c", 2 * self._phase(),
                        f"|c| must be below {sys.float_info.max / 2:.2g}")
        return (_square(owner, "a", self.a) / 2, _square(owner, "b", self.b), math.cos(twice))

    def _ops(self, ctx):
        ctx.emit(_SIN, self._params())


@_frozen
class Cos(Sin):
    """``a·cos(b·x + c)`` (Sin with phase c + π/2).

    Parameters
    ----------
    a, b, c : float
        Amplitude, frequency and phase.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((4, 3))
    >>> cos = ntkfast.gram(x, net=ntkfast.MLP(1, ntkfast.Cos()), get="nngp")
    >>> sin = ntkfast.gram(x, net=ntkfast.MLP(1, ntkfast.Sin(c=np.pi / 2)), get="nngp")
    >>> np.allclose(cos, sin)
    True
    """

    def _phase(self):
        return self.c + math.pi / 2


@_frozen
class Rbf(_Activation):
    """``√2·sin(√(2γ)·x + π/4)``, whose NNGP is ``exp(-γ(q1 + q2 - 2Σ))``.

    Parameters
    ----------
    gamma : float
        γ >= 0, the inverse length scale.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> k = ntkfast.gram(x, net=ntkfast.serial(ntkfast.Dense(1), ntkfast.Rbf(0.5)), get="nngp")
    >>> np.allclose(k, np.exp(-0.5 * np.array([[0.0, 1.0], [1.0, 0.0]])))   # |x - x'|²/d
    True
    """

    gamma: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "gamma", _real("Rbf", "gamma", self.gamma, minimum=0.0))

    def _ops(self, ctx):
        ctx.emit(_RBF, (self.gamma,))


@_frozen
class Exp(_Activation):
    """``a·exp(b·x)``.

    Parameters
    ----------
    a, b : float
        Scale and rate.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.Exp(b=0.5)
    Exp(b=0.5)
    """

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self):
        for name in ("a", "b"):
            object.__setattr__(self, name, _real("Exp", name, getattr(self, name)))
        self._params()

    def _params(self):
        return _square("Exp", "a", self.a), _square("Exp", "b", self.b)

    def _ops(self, ctx):
        ctx.emit(_EXP, self._params())


@_frozen
class ExpNormalized(_Activation):
    """Kernel-only "normalised Gaussian" map ``√(q1q2)·exp(γ(Σ/√(q1q2) + shift))``.

    As neural-tangents' ``ExpNormalized`` (no finite-width counterpart).

    Parameters
    ----------
    gamma : float
        γ, the rate.
    shift : float
        Added to the correlation before the exponential.
    do_clip : bool
        Clip the correlation to [-1, 1] first.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.ExpNormalized(gamma=2.0)
    ExpNormalized(gamma=2.0)
    """

    gamma: float = 1.0
    shift: float = -1.0
    do_clip: bool = False

    def __post_init__(self):
        object.__setattr__(self, "gamma", _real("ExpNormalized", "gamma", self.gamma))
        object.__setattr__(self, "shift", _real("ExpNormalized", "shift", self.shift))
        object.__setattr__(self, "do_clip", _flag("ExpNormalized", "do_clip", self.do_clip))

    def _ops(self, ctx):
        ctx.emit(_EXP_NORMALIZED, (self.gamma, self.shift), degree=int(self.do_clip))


@_frozen
class Gaussian(_Activation):
    """``a·exp(b·x²)``. For b > 0 the kernel diverges once 4·b·variance >= 1 (gram raises).

    Not to be confused with :class:`ntkfast.predict.Gaussian`, the ``(mean, covariance)`` pair.

    Parameters
    ----------
    a, b : float
        Scale and rate (b < 0 for a bump).

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.Gaussian(b=-0.5)
    Gaussian(b=-0.5)
    """

    a: float = 1.0
    b: float = -1.0

    def __post_init__(self):
        for name in ("a", "b"):
            object.__setattr__(self, name, _real("Gaussian", name, getattr(self, name)))
        self._params()

    def _params(self):
        return _square("Gaussian", "a", self.a), self.b

    def _ops(self, ctx):
        ctx.emit(_GAUSSIAN, self._params())


@_frozen
class Gabor(_Activation):
    """``exp(-x²)·sin(x)``.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.MLP(1, "gabor")
    serial(Dense(b_std=0.0), Gabor(), Dense(out_dim=1, b_std=0.0))
    """

    def _ops(self, ctx):
        ctx.emit(_GABOR, ())


@_frozen
class Sign(_Activation):
    """``sign(x)``: NNGP ``(2/π) arcsin ρ``; its derivative is 0 a.e., so the NTK stops here.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.array([[1.0, 0.0], [1.0, 1.0]])
    >>> k = ntkfast.gram(x, net=ntkfast.serial(ntkfast.Dense(1), ntkfast.Sign()), get="nngp")
    >>> np.allclose(k[0, 1], 2 / np.pi * np.arcsin(1 / np.sqrt(2)))
    True
    """

    def _ops(self, ctx):
        ctx.emit(_SIGN, ())


@_frozen
class RectifiedMonomial(_Activation):
    """``max(x, 0)^degree`` (Cho & Saul's arc-cosine kernel of that order; degree 1 is Relu).

    Parameters
    ----------
    degree : int
        0 (the step function) to the engine's maximum degree.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((4, 3))
    >>> a = ntkfast.gram(x, net=ntkfast.MLP(2, ntkfast.RectifiedMonomial(1)), get="ntk")
    >>> np.allclose(a, ntkfast.gram(x, net=ntkfast.MLP(2, "relu"), get="ntk"))
    True
    """

    degree: int

    def __post_init__(self):
        object.__setattr__(self, "degree", _degree("RectifiedMonomial", self.degree))

    def _ops(self, ctx):
        ctx.emit(_RECTIFIED_MONOMIAL, (), degree=self.degree)


@_frozen
class Polynomial(_Activation):
    """``coef[0] + coef[1]·x + … + coef[n]·x^n`` (numpy.polynomial order), via its Hermite expansion.

    Parameters
    ----------
    coef : sequence of float
        The coefficients, lowest degree first (at most the engine's maximum degree + 1).

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((4, 3))
    >>> a = ntkfast.gram(x, net=ntkfast.MLP(1, ntkfast.Polynomial([0.0, 0.0, 1.0])), get="ntk")
    >>> np.allclose(a, ntkfast.gram(x, net=ntkfast.MLP(1, ntkfast.Monomial(2)), get="ntk"))
    True
    """

    coef: Tuple[float, ...]

    def __post_init__(self):
        if isinstance(self.coef, (dict, set, frozenset, str, bytes)):  # no order of powers
            raise TypeError(f"Polynomial: coef must be a sequence of numbers (lowest degree "
                            f"first), got a {type(self.coef).__name__}")
        try:
            coef = tuple(self.coef)
        except TypeError:
            raise TypeError(f"Polynomial: coef must be a sequence of numbers, got {self.coef!r}") from None
        if not coef:
            raise ValueError("Polynomial: coef must not be empty")
        if len(coef) > MAX_DEGREE + 1:
            raise ValueError(f"Polynomial: at most {MAX_DEGREE + 1} coefficients, got {len(coef)}")
        object.__setattr__(self, "coef",
                           tuple(_real("Polynomial", f"coef[{i}]", c) for i, c in enumerate(coef)))
        self._tables()

    def _tables(self):
        """The Hermite tables of p (NNGP) and p' (NTK), every entry finite."""
        coef = list(self.coef)
        derivative = [k * coef[k] for k in range(1, len(coef))] or [0.0]
        tables = []
        for what, values in (("coef", coef), ("the derivative's coefficients", derivative)):
            table = _hermite_table(values)
            if not all(math.isfinite(v) for v in table):
                worst = max(range(len(coef)), key=lambda i: abs(coef[i]))
                raise ValueError(
                    f"Polynomial: the Hermite expansion of {what} overflows (an entry is inf, "
                    f"from terms coef[k]·k!/(2^i i! l!)); the coefficients must be smaller, the "
                    f"largest is coef[{worst}] = {coef[worst]!r}")
            tables.append(table)
        return tables

    def _ops(self, ctx):
        nngp_table, ntk_table = self._tables()
        nngp_offset = ctx.table(nngp_table)
        ntk_offset = ctx.table(ntk_table)
        ctx.emit(_POLYNOMIAL, (float(ntk_offset),), degree=len(self.coef) - 1, offset=nngp_offset)


@_frozen
class Monomial(_Activation):
    """``x^degree`` (a Polynomial).

    Parameters
    ----------
    degree : int
        0 to the engine's maximum degree.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.Monomial(3)
    Monomial(3)
    """

    degree: int

    def __post_init__(self):
        object.__setattr__(self, "degree", _degree("Monomial", self.degree))

    def _ops(self, ctx):
        Polynomial._ops(Polynomial((0.0,) * self.degree + (1.0,)), ctx)


@_frozen
class Hermite(_Activation):
    """neural-tangents' normalised Hermite polynomial He_n/√n!; exact only for unit-variance
    pre-activations (the kernel map is Σ -> Σ^n, Θ -> n Σ^(n-1) Θ, as in neural-tangents).

    Parameters
    ----------
    degree : int
        n, 0 to the engine's maximum degree.

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.Hermite(2)
    Hermite(2)
    """

    degree: int

    def __post_init__(self):
        object.__setattr__(self, "degree", _degree("Hermite", self.degree))

    def _ops(self, ctx):
        ctx.emit(_HERMITE, (), degree=self.degree)


@_frozen
class Identity(Layer):
    """The identity layer (no change to the kernels).

    Examples
    --------
    >>> import ntkfast
    >>> ntkfast.serial(ntkfast.Dense(1), ntkfast.Identity())
    serial(Dense(out_dim=1), Identity())
    """

    def _ops(self, ctx):
        pass


# ----------------------------------------------------------------------------------------------
# Activations without a closed form: Hermite series (Mehler's formula) with per-row coefficients
# computed by quadrature (_series.py); the engine sums the series per entry.

# The most terms by default: an op stores only the terms its rows need (_series._tables), so a
# large maximum costs nothing where the coefficients decay fast.
_DEFAULT_SERIES_DEGREE = MAX_SERIES_DEGREE


def _series_degree(owner, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: deg must be an integer, got {value!r}")
    if not 1 <= int(value) <= MAX_SERIES_DEGREE:  # 1: the derivative kernel needs A_1
        raise ValueError(f"{owner}: deg must be in [1, {MAX_SERIES_DEGREE}], got {value!r}")
    return int(value)


class _SeriesActivation(_Activation):
    """An activation whose dual kernels are Hermite series (Mehler's formula), exact to the
    tolerance of the output dtype: where ``deg`` terms cannot reach it (pairs of inputs with
    ``|ρ|`` near 1 at large variances, or a kink at 0) the engine computes the entry by 2-D
    quadrature instead."""

    __slots__ = ()
    # Whether φ' or φ'' may jump at 0: the near-parallel fallback then resolves the smoothed kink
    # (series_fallback.hpp).
    _kinked_at_zero = False

    def __post_init__(self):  # subclasses with parameters check them, then call this
        object.__setattr__(self, "deg", _series_degree(type(self).__name__, self.deg))

    def _functions(self):
        """(φ, φ' or None) as vectorised NumPy callables."""
        raise NotImplementedError  # pragma: no cover - every subclass overrides

    def _ops(self, ctx):
        ctx.emit(_SERIES, (ctx.series_rows, len(ctx.series_layers)), degree=self.deg)
        ctx.series_rows += table_rows(self.deg)
        ctx.series_layers.append(self)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _sech2(x):
    with np.errstate(over="ignore"):
        return 1.0 / np.cosh(x) ** 2


@_frozen
class Tanh(_SeriesActivation):
    """``tanh(x)``. Like every activation without a closed form (see the "Any activation" page
    of the docs), its dual kernels are Hermite series (Mehler's formula) whose per-row
    coefficients come from quadrature and whose terms the engine sums per entry, as many as the
    entry's correlation needs for float64 accuracy (1e-14 of the layer's largest value), up to
    ``deg``. Where ``deg`` terms cannot reach 1e-12 (pairs with ``|ρ|`` near 1 at large
    variances) the entry is computed by 2-D quadrature instead (100-1500x slower per entry; a
    RuntimeWarning says so when that is a large share of the Gram). Both backends; the CUDA
    engine's Series path has not yet run on a GPU (docs/cuda.md).

    Parameters
    ----------
    deg : int
        The most terms of the Hermite series (default and at most
        ``ntkfast.MAX_SERIES_DEGREE``, 1024). Each layer keeps only the terms its rows need, so
        the tables take (2·K + 4)·8 bytes per point and layer for K <= deg terms (K is smaller
        for small variances; at most 512 MiB per layer, fewer terms beyond).

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> k = ntkfast.gram(x, net=ntkfast.MLP(2, "tanh", W_std=1.5), get="ntk")
    >>> k.shape
    (5, 5)
    """

    deg: int = _DEFAULT_SERIES_DEGREE

    def _functions(self):
        return np.tanh, _sech2


@_frozen
class Sigmoid(_SeriesActivation):
    """The logistic function ``1 / (1 + e^{-x})`` (Hermite series of degree ``deg``; see
    :class:`Tanh`). Not :class:`Sigmoid_like`, neural-tangents' erf look-alike.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> ntkfast.gram(x, net=ntkfast.MLP(2, "sigmoid"), get="ntk").shape
    (5, 5)
    """

    deg: int = _DEFAULT_SERIES_DEGREE

    def _functions(self):
        return _sigmoid, lambda x: 0.25 * _sech2(0.5 * x)


@_frozen
class Softplus(_SeriesActivation):
    """Softplus, ``log(1 + e^{βx}) / β`` (Hermite series of degree ``deg``; see :class:`Tanh`).

    Parameters
    ----------
    beta : float
        Sharpness, > 0.
    deg : int
        Degree of the Hermite series.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> ntkfast.gram(x, net=ntkfast.MLP(2, ntkfast.Softplus(beta=2.0)), get="ntk").shape
    (5, 5)
    """

    beta: float = 1.0
    deg: int = _DEFAULT_SERIES_DEGREE

    def __post_init__(self):
        object.__setattr__(self, "beta", _real("Softplus", "beta", self.beta, minimum=0.0))
        if self.beta == 0:
            raise ValueError("Softplus: beta must be > 0, got 0.0")
        super().__post_init__()

    def _functions(self):
        beta = self.beta
        return (lambda x: np.logaddexp(0.0, beta * x) / beta), (lambda x: _sigmoid(beta * x))


@_frozen
class Silu(_SeriesActivation):
    """SiLU / swish, ``x · sigmoid(x)`` (Hermite series of degree ``deg``; see :class:`Tanh`).

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> ntkfast.gram(x, net=ntkfast.MLP(2, "silu"), get="ntk").shape
    (5, 5)
    """

    deg: int = _DEFAULT_SERIES_DEGREE

    def _functions(self):
        return (lambda x: x * _sigmoid(x)), (lambda x: _sigmoid(x) * (1.0 + x * _sigmoid(-x)))


@_frozen
class Elu(_SeriesActivation):
    """ELU, ``x`` for x > 0 and ``α(e^x − 1)`` otherwise (Hermite series of degree ``deg``; see
    :class:`Tanh`). Its kink at 0 (in φ'' for α = 1, in φ' otherwise) makes the series converge
    slowly for pairs with ``|ρ|`` near 1: those pairs take the 2-D quadrature.

    Parameters
    ----------
    alpha : float
        Scale of the negative part.
    deg : int
        Degree of the Hermite series.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> ntkfast.gram(x, net=ntkfast.MLP(2, ntkfast.Elu(alpha=0.5)), get="ntk").shape
    (5, 5)
    """

    _kinked_at_zero = True

    alpha: float = 1.0
    deg: int = _DEFAULT_SERIES_DEGREE

    def __post_init__(self):
        object.__setattr__(self, "alpha", _real("Elu", "alpha", self.alpha))
        super().__post_init__()

    def _functions(self):
        return _elu_functions(self.alpha, 1.0)


def _elu_functions(alpha, scale):
    def phi(x):
        return scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))

    def dphi(x):
        return scale * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))

    return phi, dphi


@_frozen
class Selu(_SeriesActivation):
    """SELU (Klambauer et al. 2017): ``λ·Elu(α)`` with their α ≈ 1.6733 and λ ≈ 1.0507
    (Hermite series of degree ``deg``; see :class:`Elu`).

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> ntkfast.gram(x, net=ntkfast.MLP(2, "selu"), get="ntk").shape
    (5, 5)
    """

    _kinked_at_zero = True

    deg: int = _DEFAULT_SERIES_DEGREE

    def _functions(self):
        return _elu_functions(1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


@_frozen
class Mish(_SeriesActivation):
    """Mish, ``x · tanh(softplus(x))`` (Hermite series of degree ``deg``; see :class:`Tanh`).

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> ntkfast.gram(x, net=ntkfast.MLP(2, "mish"), get="ntk").shape
    (5, 5)
    """

    deg: int = _DEFAULT_SERIES_DEGREE

    def _functions(self):
        def phi(x):
            return x * np.tanh(np.logaddexp(0.0, x))

        def dphi(x):
            sp = np.logaddexp(0.0, x)
            return np.tanh(sp) + x * _sech2(sp) * _sigmoid(x)

        return phi, dphi


def _user_function(owner, name, value, required=False):
    """A user's callable (or None where not required), or a TypeError naming it. Layers are
    hashable values, so the callable must be hashable too (a function, a frozen dataclass)."""
    if value is None and not required:
        return
    if not callable(value):
        raise TypeError(f"{owner}: {name} must be a callable{'' if required else ' or None'}, "
                        f"got {value!r}")
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"{owner}: {name} must be hashable (layers are hashable values), got an "
                        f"unhashable {type(value).__name__}: use a function, or make it a frozen "
                        "dataclass") from None


def holds_user_functions(net: Layer) -> bool:
    """Whether ``net`` has layers holding the user's callables (which may hold large data): such
    networks are not kept in the lowering caches."""
    layers = net.layers if isinstance(net, Serial) else (net,)
    return any(isinstance(layer, (ElementwiseNumerical, DualKernel)) for layer in layers)


#: Most relative difference between df's Hermite coefficients and those fn's series implies
#: that ElementwiseNumerical accepts: quadrature error stays ~1e-2 even for kinks away from 0,
#: while a df that is not fn's derivative (a step's 0, a rescaled φ') differs by O(1).
_DERIVATIVE_MISMATCH = 0.05
#: Below this the two agree to the quadrature's round-off (1e-14 for smooth φ and kinks at 0,
#: 1.5e-12 for tanh(50x)); above it a kink away from 0 limits the accuracy (|x - 1|: 6e-8,
#: max(x, 0.7): 7e-3), which ElementwiseNumerical warns of.
_QUADRATURE_ROUND_OFF = 1e-10


@_frozen
class ElementwiseNumerical(_SeriesActivation):
    """Any elementwise activation given as a vectorised callable, as
    ``neural_tangents.stax.ElementwiseNumerical``; its kernels are exact Hermite series here.

    ``fn`` is called on arrays of quadrature nodes per row and layer (never per Gram entry).

    Parameters
    ----------
    fn : callable
        φ, vectorised: ``fn(x)`` for a float64 array returns an array of its shape.
    deg : int
        The most terms of the Hermite series (default and at most ``MAX_SERIES_DEGREE``; see
        :class:`Tanh`). Unlike neural-tangents' quadrature degree, it does not set the accuracy:
        a smaller deg only sends more pairs with ``|ρ|`` near 1 to the slower 2-D quadrature.
    df : callable, optional
        φ', vectorised. Without it φ' comes from a 6th-order finite difference (relative error
        ~1e-12; kinks are allowed at 0 only). Either must be fn's derivative (in the weak sense:
        a step for a kink): the NTK takes E[φ'(x)φ'(y)] off the diagonal from fn's Hermite
        series, and the layer is refused (ValueError) when φ' and that series disagree, e.g.
        for a rescaled df or a function with jumps (a step or sign function: use
        ``ntkfast.Sign()`` or a :class:`DualKernel`).

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((6, 4))
    >>> a = ntkfast.gram(x, net=ntkfast.MLP(2, ntkfast.ElementwiseNumerical(np.tanh)), get="ntk")
    >>> b = ntkfast.gram(x, net=ntkfast.MLP(2, "tanh"), get="ntk")
    >>> bool(np.allclose(a, b, rtol=1e-10, atol=0))
    True
    """

    _kinked_at_zero = True

    fn: object
    deg: int = _DEFAULT_SERIES_DEGREE
    df: object = None

    def __post_init__(self):
        _user_function("ElementwiseNumerical", "fn", self.fn, required=True)
        _user_function("ElementwiseNumerical", "df", self.df)
        super().__post_init__()
        mismatch = derivative_mismatch(self)
        if mismatch is not None and mismatch[0] > _DERIVATIVE_MISMATCH:
            what = ("df is not the derivative of fn" if self.df is not None else
                    "fn has no derivative the NTK can use (a jump?)")
            raise ValueError(
                f"ElementwiseNumerical: {what}: at variance {mismatch[1]:g} the Hermite "
                f"coefficients of φ' and those fn's series implies differ by "
                f"{mismatch[0]:.0%}. The NTK takes E[φ'(x)φ'(y)] from fn's own series off the "
                "diagonal and from φ' on it, so they must agree (φ' in the weak sense: a step "
                "for a kink). A function with jumps (a step, sign) has no such derivative: use "
                "a layer with its own closed form (e.g. ntkfast.Sign()), or a DualKernel with "
                "both kernels")
        if mismatch is not None and mismatch[0] > _QUADRATURE_ROUND_OFF:
            warnings.warn(
                f"ElementwiseNumerical: fn is not smooth away from 0 (a kink at x != 0?): φ' "
                f"and the derivative fn's Hermite series implies differ by {mismatch[0]:.1e} "
                f"at variance {mismatch[1]:g}. The quadrature resolves kinks at 0 only; expect "
                "relative errors of about that size in E[φ'φ'] (the NTK) and smaller ones in "
                "E[φφ]", RuntimeWarning, stacklevel=3)

    def _functions(self):
        return self.fn, self.df


@_frozen
class DualKernel(_Activation):
    """An activation given by its dual kernels, as neural-tangents' ``stax.Elementwise(fn,
    nngp_fn, d_nngp_fn)``: for pre-activations (u, v) ~ N(0, [[var1, cov12], [cov12, var2]]),

    * ``nngp_fn(cov12, var1, var2)`` = E[φ(u)φ(v)], the next layer's covariance;
    * ``d_nngp_fn(cov12, var1, var2)`` = its derivative in cov12, E[φ'(u)φ'(v)] (Price's
      theorem), which multiplies the NTK. Only needed for the NTK.

    Both are called on NumPy arrays that broadcast against each other, a block of Gram entries
    at a time (``cov12`` of shape (rows, cols), ``var1`` (rows, 1), ``var2`` (1, cols); the
    points' own variances as (n, 1) arrays with cov12 = var1 = var2), from the engine's threads,
    one block at a time (``nngp_fn`` then ``d_nngp_fn``, so the second may reuse what the first
    computed) and under the caller's NumPy error state. They must be vectorised and return
    finite real arrays of cov12's shape (or one it broadcasts from elementwise); the inputs are
    read-only; they must be hashable (functions are), as layers are values. ntkfast evaluates them as
    given: their accuracy is the kernel's. Python runs once per tile of the Gram (~150,000
    entries), so a NumPy expression costs about what it costs on the whole matrix. CPU only
    (``backend='cuda'`` cannot run Python in its kernels); the near-parallel recomputation
    (``docs/activations.md``) only up to the first such layer; no scikit-learn hyperparameter
    gradients through it.

    Parameters
    ----------
    nngp_fn : callable
        ``(cov12, var1, var2) -> E[φ(u)φ(v)]``.
    d_nngp_fn : callable, optional
        ``(cov12, var1, var2) -> E[φ'(u)φ'(v)]``. Without it only the NNGP can be computed
        (neural-tangents differentiates ``nngp_fn`` with JAX; ntkfast does not differentiate
        Python functions).
    fn : callable, optional
        φ itself, for reference only (the kernels do not use it).

    Raises
    ------
    TypeError
        A non-callable argument.

    Examples
    --------
    The arc-sine kernel of ``erf`` (Williams 1997), by hand, against the built-in :class:`Erf`:

    >>> import numpy as np, ntkfast
    >>> def nngp(c, q1, q2):
    ...     return 2 / np.pi * np.arcsin(2 * c / np.sqrt((1 + 2 * q1) * (1 + 2 * q2)))
    >>> def d_nngp(c, q1, q2):
    ...     return 4 / np.pi / np.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * c**2)
    >>> x = np.random.default_rng(0).standard_normal((6, 4))
    >>> a = ntkfast.gram(x, net=ntkfast.MLP(2, ntkfast.DualKernel(nngp, d_nngp)), get="ntk")
    >>> b = ntkfast.gram(x, net=ntkfast.MLP(2, "erf"), get="ntk")
    >>> bool(np.allclose(a, b, rtol=1e-12, atol=0))
    True
    """

    nngp_fn: object
    d_nngp_fn: object = None
    fn: object = None

    def __post_init__(self):
        _user_function("DualKernel", "nngp_fn", self.nngp_fn, required=True)
        _user_function("DualKernel", "d_nngp_fn", self.d_nngp_fn)
        _user_function("DualKernel", "fn", self.fn)

    def _ops(self, ctx):
        ctx.emit(_CALLBACK, (len(ctx.callback_layers),))
        ctx.callback_layers.append(self)


def Elementwise(fn=None, nngp_fn=None, d_nngp_fn=None, *, deg=_DEFAULT_SERIES_DEGREE):
    """neural-tangents' ``stax.Elementwise``: with ``nngp_fn`` the user's dual kernels
    (:class:`DualKernel`), with ``fn`` alone its dual kernels computed exactly
    (:class:`ElementwiseNumerical`).

    Raises
    ------
    TypeError
        Neither ``fn`` nor ``nngp_fn`` given, or ``d_nngp_fn`` without ``nngp_fn``.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> ntkfast.Elementwise(np.tanh) == ntkfast.ElementwiseNumerical(np.tanh)
    True
    >>> ntkfast.Elementwise(nngp_fn=np.maximum)
    DualKernel(<ufunc 'maximum'>)
    """
    if nngp_fn is not None:
        return DualKernel(nngp_fn, d_nngp_fn, fn)
    if d_nngp_fn is not None:
        raise TypeError("Elementwise: d_nngp_fn needs nngp_fn (the dual kernel it differentiates)")
    if fn is None:
        raise TypeError("Elementwise: fn or nngp_fn is required")
    return ElementwiseNumerical(fn, deg=deg)


def _cached_unless_user_functions(function):
    """``function(net, ...)`` memoised (lru_cache, 256 entries), except for networks holding the
    user's callables, which the cache would keep alive (with whatever data they hold)."""
    cached = lru_cache(maxsize=256)(function)

    @wraps(function)
    def wrapper(net, *args):
        return (function if holds_user_functions(net) else cached)(net, *args)

    return wrapper


@_cached_unless_user_functions
def _engine_layers(net: Layer):
    ctx = _Lowering(1, repr(net))
    net._ops(ctx)
    return tuple(ctx.series_layers), tuple(ctx.callback_layers)


def series_activations(net: Layer):
    """The Series activation layers of ``net``, in program order."""
    return _engine_layers(net)[0]


def dual_kernel_layers(net: Layer):
    """The :class:`DualKernel` layers of ``net``, in program order (the Callback ops' p0)."""
    return _engine_layers(net)[1]


def _hermite_table(coef):
    """Pool record of p = Σ a_k x^k for layer_math.hpp's hermite_dual:
    [n, then for l = 0..n: m_l, l!, A_l's m_l coefficients in q], where
    E[p(u)p(v)] = Σ_l l! c^l A_l(q1) A_l(q2) and A_l(q) = Σ_i a_{2i+l} (2i+l)!/(2^i i! l!) q^i."""
    n = len(coef) - 1
    table = [float(n)]
    for l in range(n + 1):
        terms = [coef[2 * i + l] * math.factorial(2 * i + l)
                 / (2 ** i * math.factorial(i) * math.factorial(l))
                 for i in range((n - l) // 2 + 1)]
        table += [float(len(terms)), float(math.factorial(l))] + terms
    return table


# ----------------------------------------------------------------------------------------------
# The MLP shorthand and activation names.

#: Activation name -> layer class, for :func:`MLP` (``ntkfast.MLP(3, "erf")``).
ACTIVATIONS = {
    "relu": Relu, "leaky_relu": LeakyRelu, "abrelu": ABRelu, "abs": Abs, "erf": Erf,
    "sigmoid_like": Sigmoid_like, "gelu": Gelu, "sin": Sin, "cos": Cos, "rbf": Rbf, "exp": Exp,
    "exp_normalized": ExpNormalized, "gaussian": Gaussian, "gabor": Gabor, "sign": Sign,
    "monomial": Monomial, "rectified_monomial": RectifiedMonomial, "polynomial": Polynomial,
    "hermite": Hermite, "identity": Identity, "tanh": Tanh, "sigmoid": Sigmoid,
    "softplus": Softplus, "silu": Silu, "swish": Silu, "elu": Elu, "selu": Selu, "mish": Mish,
}


def activation_from_name(name: str, **params) -> Layer:
    """The activation layer called ``name`` (case, '-' and '_' ignored), built with ``params``."""
    if not isinstance(name, str):
        raise TypeError(f"activation must be a name or an activation layer, got {name!r}")
    key = name.lower().replace("-", "_")
    aliases = {"leakyrelu": "leaky_relu", "expnormalized": "exp_normalized",
               "rectifiedmonomial": "rectified_monomial", "sigmoidlike": "sigmoid_like"}
    key = aliases.get(key.replace("_", ""), key)
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    try:
        return ACTIVATIONS[key](**params)
    except TypeError as error:
        raise TypeError(f"activation {name!r}: {error}") from None


def MLP(depth: int, activation="relu", W_std: float = 1.0, b_std: Optional[float] = 0.0,
        parameterization: str = "ntk", width: Optional[int] = None, **activation_params) -> Serial:
    """The fully-connected network whose NNGP and NTK ntkfast computes.

    ``depth`` hidden Dense+activation blocks and a Dense readout, all with the same
    ``W_std``/``b_std`` (NNGP: Lee et al. 2018, Matthews et al. 2018; NTK: Jacot et al. 2018,
    Arora et al. 2019)::

        serial(*[Dense(width, W_std, b_std, parameterization), act] * depth,
               Dense(1, W_std, b_std, parameterization))

    Parameters
    ----------
    depth : int
        Number of hidden layers, 0 (a linear model) to ``MAX_MLP_DEPTH`` (499,999: the engine
        runs at most 1,000,000 ops).
    activation : str or Layer
        A name from ``ntkfast.ACTIVATIONS`` (case, '-' and '_' ignored), built with
        ``activation_params``, or an activation layer.
    W_std, b_std : float
        Weight and bias standard deviations of every Dense layer (``b_std=None``: no bias).
    parameterization : {'ntk', 'standard'}
        As for :class:`Dense`.
    width : int, optional
        Hidden width; required (only) under 'standard'.
    **activation_params
        Parameters of the named activation, e.g. ``alpha=0.1`` for 'leaky_relu'.

    Returns
    -------
    Serial

    Raises
    ------
    TypeError, ValueError
        A bad depth, an unknown activation name or parameter, or 'standard' without ``width``.

    Examples
    --------
    >>> import ntkfast
    >>> net = ntkfast.MLP(2, "leaky_relu", W_std=1.5, b_std=0.05, alpha=0.1)
    >>> net.layers[:2]
    (Dense(W_std=1.5, b_std=0.05), LeakyRelu(0.1))
    >>> net.layers[-1]
    Dense(out_dim=1, W_std=1.5, b_std=0.05)
    """
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral):
        raise TypeError(f"MLP: depth must be an integer, got {depth!r}")
    if depth < 0:
        raise ValueError(f"MLP: depth must be >= 0, got {depth}")
    if depth > MAX_MLP_DEPTH:  # before building a list of 2·depth layers
        raise ValueError(f"MLP: depth must be <= {MAX_MLP_DEPTH} (the engine runs at most "
                         f"{MAX_OPS} layer ops, 2 per hidden layer and 1 for the readout), "
                         f"got {depth}")
    if isinstance(activation, Layer):
        if activation_params:
            raise TypeError("MLP: activation parameters given for an activation layer object")
        if not isinstance(activation, (_Activation, Identity)):
            raise TypeError(f"MLP: activation must be an activation layer (e.g. ntkfast.Relu()) "
                            f"or a name from ntkfast.ACTIVATIONS, got {activation!r}; build other "
                            "networks with ntkfast.serial")
        act = activation
    else:
        act = activation_from_name(activation, **activation_params)
    if parameterization == "standard" and depth > 0 and width is None:
        raise ValueError("MLP: the 'standard' parameterization needs the hidden width (width=...)")
    hidden = Dense(width, W_std, b_std, parameterization)
    return serial(*[hidden, act] * int(depth), Dense(1, W_std, b_std, parameterization))


# ----------------------------------------------------------------------------------------------
# Lowering.

class _Lowering:
    def __init__(self, n_features, source):
        self.ops = []
        self.pool = []
        self.sources = []  # the layer each op came from, for error messages
        self.source = source
        self.fan_in = n_features
        self.series_rows = 0      # rows of the Series tables so far (_series.py)
        self.series_layers = []   # the Series activations, in op order
        self.callback_layers = []  # the DualKernel layers, in op order

    def emit(self, kind, params, degree=0, offset=0):
        self.ops.append((kind, degree, offset, tuple(float(p) for p in params)))
        self.sources.append(self.source)

    def table(self, values):
        offset = len(self.pool)
        self.pool.extend(values)
        return offset


def as_network(net) -> Layer:
    """net if it is an ntkfast layer or network, else a TypeError saying what was expected."""
    if isinstance(net, Layer):
        return net
    expected = "net must be an ntkfast network (e.g. ntkfast.MLP(3) or ntkfast.serial(...))"
    if isinstance(net, type) and issubclass(net, Layer):
        raise TypeError(f"{expected}, got the class {net.__name__}: instantiate it "
                        f"({net.__name__}(...))")
    if isinstance(net, (list, tuple)) and net and all(isinstance(l, Layer) for l in net):
        raise TypeError(f"{expected}, got a {type(net).__name__} of layers: compose them with "
                        "ntkfast.serial(*layers)")
    if isinstance(net, str):
        raise TypeError(f"{expected}, got the string {net!r}: for an MLP by activation name use "
                        f"ntkfast.MLP(depth, {net!r})")
    raise TypeError(f"{expected}, got {type(net).__name__}")


def uses_standard(net: Layer) -> bool:
    layers = net.layers if isinstance(net, Serial) else (net,)
    return any(isinstance(l, Dense) and l.parameterization == "standard" for l in layers)


@_cached_unless_user_functions
def lower(net: Layer, n_features: int):
    """(ops, pool, sources) of ``net`` for inputs with ``n_features`` features (only 'standard'
    Dense layers depend on it); ``sources[k]`` describes the layer that op k came from."""
    n_layers = len(net.layers) if isinstance(net, Serial) else 1
    if n_layers > MAX_OPS:  # each layer is at most one op; checked before lowering any
        raise ValueError(f"net: {n_layers} layers, more than the {MAX_OPS} ops the engine runs "
                         "in one program")
    ctx = _Lowering(n_features, repr(net))
    net._ops(ctx)
    return tuple(ctx.ops), tuple(ctx.pool), tuple(ctx.sources)
