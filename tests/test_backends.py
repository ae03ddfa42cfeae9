"""The properties every backend must have, run on each (the `backend` fixture: CPU always, CUDA
where a GPU is usable): every activation against the NumPy oracle, symmetric and cross; exact
symmetry, duplicate rows and the diagonal; get variants; bad and non-finite inputs; variances far
outside the double range computed exactly. Tolerances as in test_reference.py / test_numerics.py:
float64 rtol 1e-11 with an absolute floor of 1e-12·max|K| (cancellations of odd activations near
ρ = 0), float32 1e-5·max|K|."""
import numpy as np
import pytest

import ntkfast as nf
from numpy_reference import kernels as oracle
from test_numerics import ALL


def _net(layer):
    return nf.serial(nf.Dense(W_std=1.3, b_std=0.1), layer, nf.Dense(W_std=1.1, b_std=0.2), layer,
                     nf.Dense(W_std=1.0, b_std=0.1))


def _ids(value):
    return repr(value) if isinstance(value, nf.Layer) else None


@pytest.mark.parametrize("layer", ALL, ids=_ids)
def test_every_activation_against_the_oracle(backend, rng, layer):
    net = _net(layer)
    x, y = rng.standard_normal((37, 9)), rng.standard_normal((23, 9))
    for a, b in ((x, None), (x, y)):
        got = nf.gram(backend.asarray(a), backend.asarray(b), net=net, tile_size=16)
        want = oracle(net, a, b)
        for value, expected in zip(got, want):
            value = backend.asnumpy(value)
            assert value.dtype == np.float64
            np.testing.assert_allclose(value, expected, rtol=1e-11,
                                       atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_symmetry_duplicates_and_diagonal(backend, rng, dtype):
    net = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)
    x = rng.standard_normal((70, 8)).astype(dtype)
    x[9] = x[2]
    k = nf.gram(backend.asarray(x), net=net, tile_size=16)
    d = nf.diagonal(backend.asarray(x), net=net)
    for kernel, diag in zip(k, d):
        kernel, diag = backend.asnumpy(kernel), backend.asnumpy(diag)
        assert kernel.dtype == dtype
        assert np.array_equal(kernel, kernel.T)
        assert np.array_equal(np.diag(kernel), diag)
        assert np.array_equal(kernel[9], kernel[2])


@pytest.mark.parametrize("get", ["nngp", "ntk", ("ntk",), ("ntk", "nngp")])
def test_get_variants(backend, rng, get):
    net = nf.MLP(2, "erf", W_std=1.3, b_std=0.2)
    x = rng.standard_normal((20, 5))
    both = nf.gram(x, net=net, backend="cpu")
    got = nf.gram(backend.asarray(x), net=net, get=get)
    if isinstance(get, str):
        np.testing.assert_allclose(backend.asnumpy(got), getattr(both, get), rtol=1e-12)
        return
    for name in ("nngp", "ntk"):
        value = getattr(got, name)
        assert (value is None) == (name not in get)
        if value is not None:
            np.testing.assert_allclose(backend.asnumpy(value), getattr(both, name), rtol=1e-12)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_inputs(backend, rng, value):
    x = rng.standard_normal((6, 4))
    x[1, 2] = value
    with pytest.raises(ValueError, match=r"x1 contains 1 non-finite value.*x1\[1, 2\]"):
        nf.gram(backend.asarray(x), net=nf.MLP(1))
    with pytest.raises(nf.NonFiniteKernelError, match=r"x1\[1\]"):
        nf.gram(backend.asarray(x), net=nf.MLP(1), get="nngp", check_finite=False)


def test_bad_inputs(backend):
    with pytest.raises(ValueError, match="x1 must be 2-D"):
        nf.gram(backend.asarray(np.ones(4)), net=nf.MLP(1))
    with pytest.raises(TypeError, match="x1 is complex"):
        nf.gram(backend.asarray(np.ones((2, 2), complex)), net=nf.MLP(1))
    with pytest.raises(ValueError, match="same number of features"):
        nf.gram(backend.asarray(np.ones((2, 3))), backend.asarray(np.ones((2, 4))), net=nf.MLP(1))


@pytest.mark.parametrize("scale", [2.0 ** -300, 2.0 ** 280])
def test_variances_outside_the_double_range_are_exact(backend, rng, scale):
    """A bias-free ReLU network is positively homogeneous: K(s x) = s² K(x) exactly for a power of
    two s, although q1·q2 under- or overflows double precision at these scales."""
    net = nf.MLP(4, "relu", W_std=1.4, b_std=0.0)
    x = rng.standard_normal((15, 6))
    # against the same backend: the engines sum ||x||² in different orders (last-bit differences)
    base = nf.gram(backend.asarray(x), net=net)
    scaled = nf.gram(backend.asarray(x * scale), net=net)
    for a, b in zip(scaled, base):
        assert np.array_equal(backend.asnumpy(a), backend.asnumpy(b) * scale ** 2)
