"""Network specs: neural-tangents' names, immutable, hashable, readable, validated when built."""
import dataclasses

import numpy as np
import pytest

import ntkfast as nf


def test_mlp_is_the_documented_serial():
    net = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)
    hidden = nf.Dense(None, 1.5, 0.05)
    assert net == nf.serial(*[hidden, nf.Relu()] * 3, nf.Dense(1, 1.5, 0.05))
    assert net.depth == 3
    assert nf.MLP(0) == nf.serial(nf.Dense(1, 1.0, 0.0))
    assert nf.MLP(2, "leaky_relu", alpha=0.2) == nf.MLP(2, nf.LeakyRelu(0.2))
    assert nf.MLP(1, "Leaky-ReLU", alpha=0.2) == nf.MLP(1, "leakyrelu", alpha=0.2)
    assert nf.MLP(2, "erf", a=2.0, b=0.5, c=0.3).layers[1] == nf.Erf(2.0, 0.5, 0.3)


def test_specs_are_immutable_hashable_and_readable():
    net = nf.MLP(2, "erf", W_std=1.2, b_std=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        net.layers[0].W_std = 2.0
    assert hash(net) == hash(nf.MLP(2, "erf", W_std=1.2, b_std=0.1))
    assert len({net, nf.MLP(2, "erf", W_std=1.2, b_std=0.1), nf.MLP(3, "erf")}) == 2
    assert repr(net) == ("serial(Dense(W_std=1.2, b_std=0.1), Erf(), Dense(W_std=1.2, b_std=0.1), "
                         "Erf(), Dense(out_dim=1, W_std=1.2, b_std=0.1))")
    assert repr(nf.LeakyRelu(0.1)) == "LeakyRelu(0.1)"
    assert repr(nf.Polynomial([1, 2])) == "Polynomial((1.0, 2.0))"
    assert nf.Sin() != nf.Cos()
    assert nf.serial(nf.serial(nf.Dense(), nf.Relu()), nf.Dense()) == nf.serial(nf.Dense(), nf.Relu(), nf.Dense())


@pytest.mark.parametrize("make,error,match", [
    (lambda: nf.Dense(W_std=-1.0), ValueError, "Dense: W_std must be >= 0"),
    (lambda: nf.Dense(W_std=float("nan")), ValueError, "Dense: W_std must be finite"),
    (lambda: nf.Dense(b_std=float("inf")), ValueError, "Dense: b_std must be finite"),
    (lambda: nf.Dense(b_std=-0.1), ValueError, "Dense: b_std must be >= 0"),
    (lambda: nf.Dense(W_std="big"), TypeError, "Dense: W_std must be a real number"),
    (lambda: nf.Dense(out_dim=0), ValueError, "out_dim must be a positive integer"),
    (lambda: nf.Dense(out_dim=2.5), ValueError, "out_dim must be a positive integer"),
    (lambda: nf.Dense(parameterization="mup"), ValueError, "parameterization must be 'ntk' or 'standard'"),
    (lambda: nf.MLP(-1), ValueError, "MLP: depth must be >= 0"),
    (lambda: nf.MLP(2.0), TypeError, "MLP: depth must be an integer"),
    (lambda: nf.MLP(2, "softsign"), ValueError, r"unknown activation 'softsign'; known: abrelu, abs, cos"),
    (lambda: nf.MLP(2, "relu", W_std=-2), ValueError, "W_std must be >= 0"),
    (lambda: nf.MLP(2, "leaky_relu", slope=0.1), TypeError, "activation 'leaky_relu'"),
    (lambda: nf.MLP(2, nf.Relu(), alpha=0.1), TypeError, "activation parameters given"),
    (lambda: nf.MLP(2, parameterization="standard"), ValueError, "needs the hidden width"),
    (lambda: nf.serial(nf.Dense(None), nf.Relu(), nf.Dense(1, parameterization="standard")),
     ValueError, "give every hidden Dense its width"),
    (lambda: nf.serial(nf.Relu(), nf.Dense()), ValueError, "needs a Gaussian input"),
    (lambda: nf.serial(nf.Dense(), nf.Relu(), nf.Erf()), ValueError, "needs a Gaussian input"),
    (lambda: nf.serial(nf.Dense(), "relu"), TypeError, "argument 1 is not an ntkfast layer"),
    (lambda: nf.Monomial(-1), ValueError, r"degree must be in \[0, 24\]"),
    (lambda: nf.RectifiedMonomial(25), ValueError, "degree must be in"),
    (lambda: nf.Hermite(1.5), TypeError, "degree must be an integer"),
    (lambda: nf.Polynomial([]), ValueError, "coef must not be empty"),
    (lambda: nf.Polynomial([1.0, float("nan")]), ValueError, r"coef\[1\] must be finite"),
    (lambda: nf.Rbf(gamma=-1.0), ValueError, "gamma must be >= 0"),
    (lambda: nf.Erf(a=float("inf")), ValueError, "Erf: a must be finite"),
    (lambda: nf.ExpNormalized(do_clip=2), TypeError, "do_clip must be True or False"),
])
def test_validation_when_built(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_standard_parameterization_uses_widths():
    x = np.random.default_rng(0).standard_normal((5, 4))
    wide = nf.gram(x, net=nf.MLP(2, "relu", parameterization="standard", width=512), get="ntk")
    narrow = nf.gram(x, net=nf.MLP(2, "relu", parameterization="standard", width=64), get="ntk")
    assert not np.allclose(wide, narrow)  # the NTK grows with the width under 'standard'
    same = nf.gram(x, net=nf.MLP(2, "relu", parameterization="standard", width=64), get="nngp")
    np.testing.assert_allclose(same, nf.gram(x, net=nf.MLP(2, "relu"), get="nngp"), rtol=1e-14)
    # the first Dense takes its fan-in from the data
    net = nf.serial(nf.Dense(8, parameterization="standard", b_std=None), nf.Relu(),
                    nf.Dense(1, parameterization="standard", b_std=None))
    assert nf.gram(x, net=net, get="ntk").shape == (5, 5)


def test_all_neural_tangents_activations_exist():
    for name in ("Relu", "LeakyRelu", "ABRelu", "Abs", "Erf", "Sigmoid_like", "Gelu", "Sin", "Cos",
                 "Rbf", "Exp", "ExpNormalized", "Gaussian", "Gabor", "Sign", "Monomial",
                 "RectifiedMonomial", "Polynomial", "Hermite", "Identity"):
        assert name in nf.__all__
    assert set(nf.ACTIVATIONS) >= {"relu", "erf", "gelu", "sign", "polynomial"}
