"""Structural properties of the Gram engine: symmetry, PSD, diagonal, invariance to tiling,
threads, memory layout and CPU kernel variant, dtype policy, out=."""
import numpy as np
import pytest

import ntkfast as nf
from ntkfast import _core

NETS = {
    "relu": nf.MLP(3, "relu", W_std=1.5, b_std=0.05),
    "erf": nf.MLP(2, "erf", W_std=1.3, b_std=0.2),
    "gelu": nf.MLP(2, "gelu", W_std=1.2, b_std=0.1),
    "sin": nf.MLP(2, "sin", W_std=1.0, b_std=0.3),
    "mixed": nf.serial(nf.Dense(64, 1.4, 0.1), nf.LeakyRelu(0.2), nf.Dense(64, 1.1, 0.3), nf.Erf(),
                       nf.Dense(64, 1.2, None), nf.Polynomial([0.2, 1.0, 0.3]), nf.Dense(1, 1.0, 0.1)),
}


@pytest.fixture(params=_core.build_info()["supported_cpu_kernels"])
def kernels_variant(request):
    """Runs a test once per CPU kernel variant this machine supports."""
    before = _core.build_info()["cpu_kernels"]
    _core.select_cpu_kernels(request.param)
    yield request.param
    _core.select_cpu_kernels(before)


def _points(rng, n, d=11, dtype=np.float64):
    x = rng.standard_normal((n, d)).astype(dtype)
    return x


@pytest.mark.parametrize("name", list(NETS))
def test_symmetric_exactly_and_diagonal_equals_diagonal(rng, name, kernels_variant):
    x = _points(rng, 131)
    x[7] = x[3]  # a duplicate row
    net = NETS[name]
    k = nf.gram(x, net=net, tile_size=32)
    d = nf.diagonal(x, net=net)
    for kernel, diag in ((k.nngp, d.nngp), (k.ntk, d.ntk)):
        assert np.array_equal(kernel, kernel.T)
        assert np.array_equal(np.diag(kernel), diag)
        # a duplicated row has the same kernel values as the original, to the last bit
        assert np.array_equal(kernel[7], kernel[3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_diagonal_equals_gram_diagonal_float32_and_cross(rng, dtype):
    x = _points(rng, 50, dtype=dtype)
    net = NETS["mixed"]
    k = nf.gram(x, x[::-1].copy(), net=net)
    d = nf.diagonal(x, net=net)
    assert d.nngp.dtype == dtype
    # cross Gram of x with its reverse: the anti-diagonal pairs each point with itself
    assert np.array_equal(np.diag(k.nngp[:, ::-1]), d.nngp)
    assert np.array_equal(np.diag(k.ntk[:, ::-1]), d.ntk)


@pytest.mark.parametrize("name", ["relu", "erf", "mixed"])
def test_positive_semidefinite(rng, name):
    x = _points(rng, 200)
    k = nf.gram(x, net=NETS[name])
    for kernel in k:
        lam = np.linalg.eigvalsh(kernel)
        # float64 rounding of a 200 x 200 Gram: eigenvalues >= -1e-12 max|K| (stated tolerance)
        assert lam.min() >= -1e-12 * np.abs(kernel).max()


@pytest.mark.parametrize("n", [1, 2, 37, 100])
def test_tile_size_invariance(rng, n):
    x = _points(rng, n)
    net = NETS["mixed"]
    base = nf.gram(x, net=net, tile_size=n)
    for tile in (1, 7, 16, 64, 256):
        k = nf.gram(x, net=net, tile_size=tile)
        for a, b in zip(k, base):
            # the GEMM of a different tile shape may round differently in the last bit
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15 * np.abs(b).max())


def test_thread_count_invariance(rng):
    x = _points(rng, 300)
    net = NETS["relu"]
    base = nf.gram(x, net=net, num_threads=1, tile_size=64)
    for threads in (2, 3, 5):
        k = nf.gram(x, net=net, num_threads=threads, tile_size=64)
        assert np.array_equal(k.nngp, base.nngp) and np.array_equal(k.ntk, base.ntk)


def test_memory_layout_and_input_types(rng):
    x = _points(rng, 40, d=12)
    net = NETS["erf"]
    base = nf.gram(x, net=net)
    variants = [np.asfortranarray(x), x.tolist(), np.concatenate([x, x], axis=1)[:, :12],
                np.repeat(x, 2, axis=0)[::2]]
    for v in variants:
        k = nf.gram(v, net=net)
        assert np.array_equal(k.nngp, base.nngp) and np.array_equal(k.ntk, base.ntk)
    xi = rng.integers(-3, 4, size=(20, 5))
    k = nf.gram(xi, net=net)
    assert k.nngp.dtype == np.float64
    assert np.array_equal(k.nngp, nf.gram(xi.astype(np.float64), net=net).nngp)
    xb = rng.integers(0, 2, size=(10, 6)).astype(bool)
    assert np.array_equal(nf.gram(xb, net=net, get="ntk"), nf.gram(xb.astype(float), net=net, get="ntk"))


def test_x2_none_equals_x1_twice_and_transpose(rng):
    x = _points(rng, 70)
    y = _points(rng, 45)
    net = NETS["mixed"]
    sym = nf.gram(x, net=net)
    cross = nf.gram(x, x, net=net)
    for a, b in zip(sym, cross):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=0)
    xy, yx = nf.gram(x, y, net=net), nf.gram(y, x, net=net)
    for a, b in zip(xy, yx):
        np.testing.assert_allclose(a, b.T, rtol=1e-14, atol=0)


def test_cpu_kernel_variants_agree(rng):
    x = _points(rng, 90)
    x[5] = 0.0
    supported = _core.build_info()["supported_cpu_kernels"]
    before = _core.build_info()["cpu_kernels"]
    results = {}
    try:
        for name in supported:
            _core.select_cpu_kernels(name)
            results[name] = [nf.gram(x, net=net) for net in NETS.values()]
    finally:
        _core.select_cpu_kernels(before)
    base = results["generic"]
    for name, res in results.items():
        for ka, kb in zip(res, base):
            for a, b in zip(ka, kb):
                # FMA contraction differs between variants: agreement to a few ulps
                np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15 * np.abs(b).max())


def test_get_variants_and_dtype_policy(rng):
    x = _points(rng, 20)
    net = NETS["relu"]
    both = nf.gram(x, net=net)
    assert isinstance(both, nf.Kernels)
    assert np.array_equal(nf.gram(x, net=net, get="nngp"), both.nngp)
    only = nf.gram(x, net=net, get=("ntk",))
    assert only.nngp is None and np.array_equal(only.ntk, both.ntk)
    assert nf.gram(x.astype(np.float32), net=net, get="ntk").dtype == np.float32
    assert nf.gram(x.astype(np.float16), net=net, get="ntk").dtype == np.float64
    assert nf.gram(x.astype(np.float32), x, net=net, get="ntk").dtype == np.float64
    assert nf.gram(x, net=net, get="ntk", dtype=np.float32).dtype == np.float32
    assert nf.gram(x.astype(np.float32), net=net, get="ntk", dtype="float64").dtype == np.float64


def test_out_arrays_including_memmap(rng, tmp_path):
    x = _points(rng, 33)
    y = _points(rng, 21)
    net = NETS["gelu"]
    want = nf.gram(x, y, net=net)
    mm = np.lib.format.open_memmap(tmp_path / "ntk.npy", mode="w+", dtype=np.float64, shape=(33, 21))
    plain = np.empty((33, 21))
    got = nf.gram(x, y, net=net, out=nf.Kernels(nngp=plain, ntk=mm))
    assert got.nngp is plain and got.ntk is mm
    mm.flush()
    assert np.array_equal(np.load(tmp_path / "ntk.npy"), want.ntk)
    single = np.empty((33, 21))
    assert nf.gram(x, y, net=net, get="nngp", out=single) is single
    assert np.array_equal(single, want.nngp)
    as_dict = nf.gram(x, y, net=net, out={"ntk": np.empty((33, 21))})
    assert np.array_equal(as_dict.ntk, want.ntk) and np.array_equal(as_dict.nngp, want.nngp)


def _memmap(tmp_path, name, shape, dtype, offset=0):
    return np.memmap(tmp_path / name, dtype=dtype, mode="w+", shape=shape, offset=offset)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("threads", [1, 3])
def test_memmap_outputs_written_by_row_panels_equal_ram_outputs(rng, tmp_path, dtype, cross,
                                                                  threads):
    """File-backed outputs are written a row panel at a time (engine.hpp panel_writes); the result
    is the same bits as tile by tile into RAM: ragged last panel, the mirrored left part of a
    symmetric Gram read back from the rows above, one output or both."""
    x = _points(rng, 101, dtype=dtype)
    y = _points(rng, 45, dtype=dtype) if cross else None
    n2 = 45 if cross else 101
    net = NETS["mixed"]
    from ntkfast._validation import check_host_output

    for get in (("nngp", "ntk"), "ntk"):
        want = nf.gram(x, y, net=net, get=get, tile_size=16, num_threads=threads)
        names = (get,) if isinstance(get, str) else get
        outs = [_memmap(tmp_path, f"{get}{k}", (101, n2), dtype) for k in names]
        assert all(check_host_output(o, "out", o.shape, o.dtype, []) for o in outs)
        assert not check_host_output(np.empty(3), "out", (3,), np.float64, [])
        nf.gram(x, y, net=net, get=get, tile_size=16, num_threads=threads,
                out=outs[0] if isinstance(get, str) else tuple(outs))
        for out, ref in zip(outs, [want] if isinstance(get, str) else want):
            assert np.array_equal(out, ref)
            if not cross:
                assert np.array_equal(out, out.T)


def test_memmap_outputs_with_user_functions_series_and_odd_offsets(rng, tmp_path):
    """Row panels with a DualKernel (segments), a Series activation, a misaligned file offset
    (plain stores instead of streaming ones) and a memmap large enough for streaming stores."""
    x = _points(rng, 67)
    relu_numpy = nf.DualKernel(
        lambda c, q1, q2: (np.sqrt(np.maximum(q1 * q2 - c * c, 0)) + (np.pi - np.arccos(
            np.clip(c / np.sqrt(q1 * q2), -1, 1))) * c) / (2 * np.pi),
        d_nngp_fn=lambda c, q1, q2: (np.pi - np.arccos(np.clip(c / np.sqrt(q1 * q2), -1, 1)))
        / (2 * np.pi))
    for i, net in enumerate([nf.MLP(2, relu_numpy), nf.MLP(2, "tanh")]):
        want = nf.gram(x, net=net, tile_size=16)
        out = (_memmap(tmp_path, f"a{i}", (67, 67), np.float64, offset=4),
               _memmap(tmp_path, f"b{i}", (67, 67), np.float64))
        nf.gram(x, net=net, tile_size=16, out=out)
        assert np.array_equal(out[0], want.nngp) and np.array_equal(out[1], want.ntk)
    big = _points(rng, 3001, d=6, dtype=np.float32)  # 36 MB per output: streaming stores
    want = nf.gram(big, net=NETS["relu"], tile_size=256)
    out = (_memmap(tmp_path, "n", (3001, 3001), np.float32),
           _memmap(tmp_path, "t", (3001, 3001), np.float32))
    nf.gram(big, net=NETS["relu"], tile_size=256, out=out)
    assert np.array_equal(out[0], want.nngp) and np.array_equal(out[1], want.ntk)


def test_memmap_outputs_progress_and_cancel(rng, tmp_path):
    x = _points(rng, 300)
    seen = []
    out = _memmap(tmp_path, "k", (300, 300), np.float64)
    nf.gram(x, net=NETS["relu"], get="ntk", tile_size=32, num_threads=2, out=out,
            progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (55, 55) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))

    def cancel(done, total):
        if done >= 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nf.gram(x, net=NETS["relu"], get="ntk", tile_size=32, num_threads=2, out=out,
                progress=cancel)


def test_empty_inputs():
    net = NETS["relu"]
    k = nf.gram(np.zeros((0, 5)), net=net)
    assert k.nngp.shape == (0, 0) and k.ntk.shape == (0, 0)
    k = nf.gram(np.zeros((0, 5)), np.ones((3, 5)), net=net, get="ntk")
    assert k.shape == (0, 3)
    assert nf.diagonal(np.zeros((0, 4)), net=net, get="nngp").shape == (0,)
    k = nf.gram(np.ones((2, 0)), net=net)  # no features: x·x'/d is taken as 0
    assert np.isfinite(k.ntk).all()


@pytest.mark.parametrize("n,dtype", [(2101, np.float64), (4099, np.float32)])
def test_large_outputs_streamed_to_memory(rng, n, dtype):
    """Outputs above 64 MB take the streaming-store path (odd N: rows start unaligned)."""
    x = _points(rng, n, d=8, dtype=dtype)
    net = NETS["relu"]
    k = nf.gram(x, net=net, tile_size=256)
    small = nf.gram(x[:40], x, net=net)
    diag = nf.diagonal(x, net=net)
    for big, part, d in zip(k, small, diag):
        assert np.array_equal(big, big.T)
        assert np.array_equal(np.diag(big), d)
        np.testing.assert_allclose(big[:40], part, rtol=1e-14 if dtype == np.float64 else 1e-6,
                                   atol=0)
