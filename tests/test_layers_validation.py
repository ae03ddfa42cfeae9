"""Layer specs: overflowing parameters, Serial built directly, wrong network types, and the op
codes shared with the compiled extension."""
import importlib.util
import math
import sys
import types

import numpy as np
import pytest

import ntkfast as nf
from ntkfast import _core, _layers

BIG = 1e155  # finite, but its square is not


@pytest.mark.parametrize("make, match", [
    (lambda: nf.Dense(1, W_std=BIG),
     r"Dense: W_std\*\*2 = inf overflows; W_std must be below 1.3e\+154"),
    (lambda: nf.Dense(1, b_std=BIG), r"Dense: b_std\*\*2 = inf overflows"),
    (lambda: nf.Erf(a=BIG), r"Erf: a\*\*2 = inf overflows"),
    (lambda: nf.Erf(b=-BIG), r"Erf: b\*\*2 = inf overflows"),
    (lambda: nf.Erf(c=BIG), r"Erf: c\*\*2 = inf overflows"),
    (lambda: nf.Sin(a=BIG), r"Sin: a\*\*2 = inf overflows"),
    (lambda: nf.Sin(b=BIG), r"Sin: b\*\*2 = inf overflows"),
    (lambda: nf.Sin(c=1e308), r"Sin: 2\*c = inf overflows; \|c\| must be below"),
    (lambda: nf.Cos(b=BIG), r"Cos: b\*\*2 = inf overflows"),
    (lambda: nf.Cos(c=-1e308), r"Cos: 2\*c = -inf overflows"),
    (lambda: nf.Exp(a=BIG), r"Exp: a\*\*2 = inf overflows"),
    (lambda: nf.Exp(b=BIG), r"Exp: b\*\*2 = inf overflows"),
    (lambda: nf.Gaussian(a=BIG), r"Gaussian: a\*\*2 = inf overflows"),
    (lambda: nf.ABRelu(BIG, 0.0), r"ABRelu: \(a - b\)\*\*2 = inf overflows"),
    (lambda: nf.ABRelu(1e154, -1e154), r"ABRelu: \(a - b\)\*\*2 = inf overflows"),
    (lambda: nf.LeakyRelu(BIG), r"LeakyRelu: \(alpha - 1\)\*\*2 = inf overflows"),
    (lambda: nf.Polynomial((0.0,) * 20 + (1e300,)), r"Polynomial: the Hermite expansion of coef "
                                                    r"overflows.*coef\[20\] = 1e\+300"),
    (lambda: nf.MLP(2, W_std=BIG), r"Dense: W_std\*\*2 = inf"),
    (lambda: nf.MLP(2, "erf", a=BIG), r"Erf: a\*\*2 = inf"),
])
def test_overflowing_parameters_name_layer_and_parameter(make, match):
    with pytest.raises(ValueError, match=match):  # before: a bare OverflowError at gram time
        make()


def test_overflow_is_caught_before_the_engine(rng):
    x = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"Dense: W_std\*\*2"):
        nf.gram(x, net=nf.serial(nf.Dense(1, W_std=1e200)))


def test_large_but_representable_parameters_still_build():
    # the boundary is the square's overflow, nothing tighter
    big = 1e154
    assert nf.Dense(1, W_std=big).W_std == big
    assert nf.Erf(a=big, b=big, c=big).a == big
    assert nf.Gaussian(a=big, b=1e300).b == 1e300  # b enters unsquared
    assert nf.Rbf(1e300).gamma == 1e300
    assert nf.ExpNormalized(gamma=1e300, shift=-1e300).gamma == 1e300
    assert nf.Sin(c=1e307).c == 1e307
    ops, _, _ = _layers.lower(nf.serial(nf.Dense(1, big), nf.Erf(a=big)), 3)
    assert all(math.isfinite(p) for op in ops for p in op[3])


# ----------------------------------------------------------------------------------------------
# Serial built directly

def test_serial_direct_accepts_a_list_and_is_hashable():
    layers = [nf.Dense(8), nf.Relu(), nf.Dense(1)]
    net = _layers.Serial(layers)
    assert net.layers == tuple(layers) and isinstance(net.layers, tuple)
    assert net == nf.serial(*layers) and hash(net) == hash(nf.serial(*layers))
    x = np.random.default_rng(0).standard_normal((5, 3))
    np.testing.assert_array_equal(nf.gram(x, net=net).ntk, nf.gram(x, net=nf.serial(*layers)).ntk)


def test_serial_direct_flattens_nested_serials():
    inner = nf.serial(nf.Dense(8), nf.Relu())
    assert _layers.Serial((inner, nf.Dense(1))) == nf.serial(inner, nf.Dense(1))


@pytest.mark.parametrize("layers, error, match", [
    (nf.Relu(), TypeError, r"Serial: layers must be a tuple \(or list\) of ntkfast layers, got "
                           r"Relu"),
    ("relu", TypeError, r"Serial: layers must be a tuple .* got str"),
    (None, TypeError, r"Serial: layers must be a tuple .* got NoneType"),
    ((nf.Dense(1), "relu"), TypeError, r"Serial: layers\[1\] is not an ntkfast layer: 'relu'"),
    ((nf.Dense(1), nf.Relu), TypeError, r"layers\[1\] .*\(a class: instantiate it, Relu"),
    ((nf.Relu(), nf.Dense(1)), ValueError, r"Serial: Relu\(\) at position 0 needs a Gaussian"),
    ((nf.Dense(None), nf.Relu(), nf.Dense(1, parameterization="standard")), ValueError,
     r"Serial: .* 'standard' parameterization"),
])
def test_serial_direct_validates_its_fields(layers, error, match):
    with pytest.raises(error, match=match):  # before: AttributeError / unhashable type at gram
        _layers.Serial(layers)


def test_serial_function_names_classes():
    with pytest.raises(TypeError, match=r"serial: argument 1 .*\(a class: instantiate it"):
        nf.serial(nf.Dense(1), nf.Relu)


@pytest.mark.parametrize("net, match", [
    ([nf.Dense(1), nf.Relu(), nf.Dense(1)], r"got a list of layers: compose them with "
                                            r"ntkfast.serial\(\*layers\)"),
    ((nf.Dense(1),), r"got a tuple of layers"),
    (nf.Relu, r"got the class Relu: instantiate it"),
    ("relu", r"got the string 'relu'.*ntkfast.MLP\(depth, 'relu'\)"),
    (3, r"net must be an ntkfast network .* got int"),
    (None, r"got NoneType"),
])
def test_wrong_network_types(net, match):
    with pytest.raises(TypeError, match=match):
        _layers.as_network(net)
    with pytest.raises(TypeError, match=r"net must be an ntkfast network"):
        nf.gram(np.ones((2, 2)), net=net)


# ----------------------------------------------------------------------------------------------
# Op codes: from the extension, never hand-copied (needs an extension that exports OP_KINDS)

def test_op_codes_and_max_degree_come_from_the_extension():
    assert _layers._OP_CODES == {name: _core.OP_KINDS[name] for name in _layers._OP_NAMES}
    assert _layers.MAX_DEGREE == _core.MAX_DEGREE
    assert set(_layers._OP_NAMES) <= set(_core.OP_KINDS)
    ops, _, _ = _layers.lower(nf.serial(nf.Dense(1), nf.Erf(), nf.Dense(1), nf.Hermite(2),
                                        nf.Dense(1)), 2)
    assert [op[0] for op in ops] == [_core.OP_KINDS[k] for k in
                                     ("Dense", "Erf", "Dense", "Hermite", "Dense")]
    with pytest.raises(ValueError, match=rf"degree must be in \[0, {_core.MAX_DEGREE}\]"):
        nf.Hermite(_core.MAX_DEGREE + 1)


def _fake_core(**attrs):
    core = types.ModuleType("ntkfast._core")
    core.__file__ = "/fake/_core.so"
    for name, value in attrs.items():
        setattr(core, name, value)
    return core


@pytest.mark.parametrize("attrs, match", [
    ({}, r"exports no OP_KINDS dict and MAX_DEGREE int"),
    ({"OP_KINDS": {}}, r"exports no OP_KINDS"),
    ({"OP_KINDS": {k: i for i, k in enumerate(_layers._OP_NAMES) if k != "Hermite"},
      "MAX_DEGREE": 24}, r"its OP_KINDS lacks Hermite"),
])
def test_out_of_sync_extension_is_an_import_error(monkeypatch, attrs, match):
    with pytest.raises(ImportError, match=r"/fake/_core.so does not match the ntkfast Python "
                                          r"package.*" + match):
        _layers._op_codes(_fake_core(**attrs))
    # the same at import: load a fresh copy of _layers against the fake extension
    fake = _fake_core(**attrs)
    monkeypatch.setitem(sys.modules, "ntkfast._core", fake)
    monkeypatch.setattr(nf, "_core", fake)
    spec = importlib.util.spec_from_file_location("ntkfast._layers_probe", _layers.__file__)
    with pytest.raises(ImportError, match=match):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_renumbered_extension_is_followed(monkeypatch):
    kinds = {k: 14 - i for i, k in enumerate(_layers._OP_NAMES)}
    codes, max_degree = _layers._op_codes(_fake_core(OP_KINDS=kinds, MAX_DEGREE=30))
    assert codes == kinds and max_degree == 30


# ----------------------------------------------------------------------------------------------
# Depth: bounded up front by the engine's op limit, with errors that name it.

def test_op_limit_is_the_engines():
    dense = (_core.OP_KINDS["Dense"], 0, 0, [1.0, 0.0, 0.0, 0.0, 1.0])
    assert _core.Program([dense] * _layers.MAX_OPS, []).n_ops == _layers.MAX_OPS
    with pytest.raises(ValueError, match="too many layers"):
        _core.Program([dense] * (_layers.MAX_OPS + 1), [])
    assert 2 * _layers.MAX_MLP_DEPTH + 1 <= _layers.MAX_OPS < 2 * _layers.MAX_MLP_DEPTH + 3


@pytest.mark.parametrize("depth", [_layers.MAX_MLP_DEPTH + 1, 10**6, 10**9, 10**20])
def test_mlp_too_deep_names_depth_and_the_limit(depth):
    # before: 10**20 was an OverflowError, 10**9 a 2e9-element list, 10**6 a late "program: too
    # many layers" after ~25 s
    with pytest.raises(ValueError, match=rf"MLP: depth must be <= {_layers.MAX_MLP_DEPTH} "
                                         rf"\(the engine runs at most {_layers.MAX_OPS} .*"
                                         rf"got {depth}$"):
        nf.MLP(depth)


def test_serial_and_lowering_refuse_more_layers_than_the_engine_runs(monkeypatch):
    net = nf.MLP(5, W_std=1.2345)  # built under the real limit: 11 layers
    monkeypatch.setattr(_layers, "MAX_OPS", 10)
    with pytest.raises(ValueError, match=r"serial: a network has at most 10 layers .* got 11"):
        nf.serial(*net.layers)
    with pytest.raises(ValueError, match=r"Serial: a network has at most 10 layers"):
        nf.Serial(net.layers)
    with pytest.raises(ValueError, match=r"^net: 11 layers, more than the 10 ops the engine"):
        _layers.lower(net, 3)
    with pytest.raises(ValueError, match=r"^net: 11 layers"):
        nf.gram(np.eye(3), net=net)


@pytest.mark.parametrize("make, error, message", [
    (lambda: nf.Dense(W_std=10**400), ValueError, "Dense: W_std must be finite, got an integer"),
    (lambda: nf.Erf(a=10**400), ValueError, "Erf: a must be finite, got an integer"),
    (lambda: nf.Polynomial([10**400]), ValueError, r"Polynomial: coef\[0\] must be finite"),
    (lambda: nf.Dense(out_dim=10**400), ValueError, "out_dim must be a positive integer up to "
                                                    "2\\*\\*53 .* got an integer of 1329 bits"),
    (lambda: nf.Polynomial({1: 2.0}), TypeError, "coef must be a sequence .* got a dict"),
    (lambda: nf.Polynomial({3.0, 1.0}), TypeError, "coef must be a sequence .* got a set"),
    (lambda: nf.MLP(2, nf.Dense()), TypeError, "MLP: activation must be an activation layer"),
])
def test_parameters_beyond_floats_and_unordered_coefficients_are_named(make, error, message):
    """A bare OverflowError (int too large to convert to float), a dict's keys taken as the
    coefficients, a Dense accepted as MLP's activation."""
    with pytest.raises(error, match=message):
        make()


def test_an_activation_error_of_any_class_reaches_the_caller():
    """The wrapper rebuilt the error as type(error)(message), which for an exception class
    with other constructor arguments raised an unrelated TypeError instead."""
    class DeviceDown(Exception):
        def __init__(self, code, detail):
            super().__init__(f"{code}: {detail}")

    def failing(v):
        raise DeviceDown(42, "down")

    with pytest.raises(DeviceDown, match="42: down"):
        nf.gram(np.ones((3, 2)), net=nf.MLP(1, nf.ElementwiseNumerical(failing)))
    with pytest.raises(ValueError, match=r"ElementwiseNumerical\(.*\): calling the activation "
                                         r"on an array of shape .* failed \(boom\)"):
        nf.gram(np.ones((3, 2)), net=nf.MLP(1, nf.ElementwiseNumerical(
            lambda v: (_ for _ in ()).throw(ValueError("boom")))))
