"""The CUDA backend on a GPU: against the CPU backend for every activation, symmetric and cross,
ragged tiles, exact symmetry and diagonal, CuPy in -> CuPy out on the same device, NumPy in ->
NumPy out, outputs streamed to host arrays and np.memmap, CuPy stream semantics, cuBLAS handle
state (stream, math mode) restored, scaled GEMM rows and rescaled variances, Ctrl-C, errors.

Skipped without CuPy or without a usable GPU (the reason is shown). The no-GPU side of the backend
is tested in test_cuda_build.py and test_cuda_driver.py; the properties every backend shares
(against the NumPy oracle, symmetry, get variants, errors, exact rescaling) in test_backends.py,
which runs each on the CPU and on the GPU.

Tolerances against the CPU backend: the per-entry math is the same code (layer_math.hpp) and
sqrt / division / fma are correctly rounded on both; what differs is the input Gram (cuBLAS and
OpenBLAS sum x·x' in different orders, ~√d ε relative to |x||x'|), the order of the per-row sums
||x||², and exp(), which CUDA computes within 1 ulp (glibc is correctly rounded in nearly all
cases). Through a few layers that stays far below float64 rtol 1e-12. Entries that are a
cancellation of O(max|K|) terms (odd activations: Erf, Sin, Sign, ... near ρ = 0) carry an
absolute error ~ε max|K| instead, hence the 1e-13 max|K| floor, as in test_numerics.py.
float32: both backends round the inputs to float32 and run a float32 GEMM; their results must
agree within 1e-5 of max|K|. The GEMMs' roundings (~√d float32 ε) are amplified by the layers
(up to 5x by one Monomial(5) layer): perturbing the float32 inputs by ~2 ulps moves the one-layer
kernels by at most 0.17e-5 max|K| on the CPU; two layers could reach the bound (see the test).
The float64 tolerances have ~50x headroom by the same experiment (inputs perturbed by ~2 ulps).
"""
import time

import numpy as np
import pytest

import ntkfast as nf
from ntkfast import _cuda_probe
from conftest import near_parallel_points
from test_numerics import ALL

cp = pytest.importorskip("cupy", reason="CuPy is not installed (pip install 'ntkfast[cuda]')")
_PROBLEM = _cuda_probe.device_problem()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_PROBLEM is not None, reason=f"no usable CUDA GPU: {_PROBLEM}"),
]

RELU = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)


def _net(layer):
    return nf.serial(nf.Dense(W_std=1.3, b_std=0.1), layer, nf.Dense(W_std=1.1, b_std=0.2), layer,
                     nf.Dense(W_std=1.0, b_std=0.1))


def _ids(value):
    return repr(value) if isinstance(value, nf.Layer) else None


def _host(a):
    assert isinstance(a, cp.ndarray), f"expected a CuPy array, got {type(a).__name__}"
    return a.get()


def _assert_close64(got, want, name=""):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13 * scale, err_msg=name)


def _assert_close32(got, want, name=""):
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=name)


def _points(rng, n, d=11, dtype=np.float64):
    return rng.standard_normal((n, d)).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Against the CPU backend.

@pytest.mark.parametrize("layer", ALL, ids=_ids)
def test_every_activation_float64_symmetric_and_cross(rng, layer):
    net = _net(layer)
    x, y = _points(rng, 67), _points(rng, 45)
    for a, b in ((x, None), (x, y)):
        want = nf.gram(a, b, net=net, backend="cpu")
        got = nf.gram(cp.asarray(a), None if b is None else cp.asarray(b), net=net, tile_size=32)
        for name in ("nngp", "ntk"):
            value = _host(getattr(got, name))
            assert value.dtype == np.float64
            _assert_close64(value, getattr(want, name), f"{layer!r} {name}")


@pytest.mark.parametrize("layer", ALL, ids=_ids)
def test_every_activation_float32(rng, layer):
    # One activation layer: two Monomial(5) layers make a degree-25 map, which amplifies the
    # float32 rounding of the input Gram 25-fold, to the order of the 1e-5 bound itself.
    net = nf.serial(nf.Dense(W_std=1.3, b_std=0.1), layer, nf.Dense(W_std=1.1, b_std=0.2))
    x = _points(rng, 50, dtype=np.float32)
    y = _points(rng, 23, dtype=np.float32)
    for a, b in ((x, None), (x, y)):
        want = nf.gram(a, b, net=net, backend="cpu")
        got = nf.gram(cp.asarray(a), None if b is None else cp.asarray(b), net=net)
        for name in ("nngp", "ntk"):
            _assert_close32(_host(getattr(got, name)), getattr(want, name), f"{layer!r} {name}")


@pytest.mark.parametrize("n1,n2,tile", [(203, None, 7), (203, None, 64), (203, None, 1000),
                                        (203, 57, 32), (1, None, 16), (1, 3, 16), (3, 1, 2)])
def test_ragged_tiles_and_tiny_inputs(rng, n1, n2, tile):
    x = _points(rng, n1, d=5)
    y = None if n2 is None else _points(rng, n2, d=5)
    want = nf.gram(x, y, net=RELU, backend="cpu")
    got = nf.gram(cp.asarray(x), None if y is None else cp.asarray(y), net=RELU, tile_size=tile)
    for name in ("nngp", "ntk"):
        _assert_close64(_host(getattr(got, name)), getattr(want, name), name)


def test_several_default_tiles(rng):
    """N above the default tile edge (8192): ragged default tiles, checked on a band of rows."""
    n = 9000
    x = _points(rng, n, d=16, dtype=np.float32)
    got = nf.gram(cp.asarray(x), net=RELU, get="ntk")
    rows = np.r_[0:50, 8170:8230, n - 50:n]
    want = nf.gram(x[rows], x, net=RELU, get="ntk", backend="cpu")
    _assert_close32(_host(got)[rows], want)
    g = _host(got)
    assert np.array_equal(g, g.T)


def test_numpy_inputs_give_numpy_outputs(rng):
    x, y = _points(rng, 70), _points(rng, 30)
    for b in (None, y):
        got = nf.gram(x, b, net=RELU, backend="cuda", tile_size=32)
        want = nf.gram(x, b, net=RELU, backend="cpu")
        for name in ("nngp", "ntk"):
            value = getattr(got, name)
            assert type(value) is np.ndarray
            _assert_close64(value, getattr(want, name))


# ----------------------------------------------------------------------------------------------
# Structure: exact symmetry, diagonal, duplicates, devices.

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exactly_symmetric_and_diagonal_equals_diagonal(rng, dtype):
    x = _points(rng, 131, dtype=dtype)
    x[7] = x[3]  # a duplicate row
    net = nf.MLP(3, "erf", W_std=1.4, b_std=0.1)
    xd = cp.asarray(x)
    k = nf.gram(xd, net=net, tile_size=32)
    diag = nf.diagonal(xd, net=net)
    for name in ("nngp", "ntk"):
        kernel, d = _host(getattr(k, name)), _host(getattr(diag, name))
        assert kernel.dtype == d.dtype == dtype
        assert np.array_equal(kernel, kernel.T)
        assert np.array_equal(np.diag(kernel), d)
        # the duplicate pair has |ρ| = 1 exactly after the snap: its entry is the diagonal's
        assert kernel[7, 3] == kernel[3, 3] == kernel[7, 7]
        # other columns: the same GEMM rows (equal unless cuBLAS sums the two rows differently)
        tol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(kernel[7], kernel[3], rtol=tol, atol=tol * np.abs(kernel).max())
    # cross Gram of x with its reverse: the anti-diagonal pairs each point with itself
    rev = nf.gram(xd, xd[::-1].copy(), net=net)
    for name in ("nngp", "ntk"):
        assert np.array_equal(np.diag(_host(getattr(rev, name))[:, ::-1]), _host(getattr(diag, name)))


def test_diagonal_matches_cpu(rng):
    x = _points(rng, 25)
    for dtype in (np.float32, np.float64):
        got = nf.diagonal(cp.asarray(x.astype(dtype)), net=RELU)
        want = nf.diagonal(x.astype(dtype), net=RELU)
        for name in ("nngp", "ntk"):
            value = _host(getattr(got, name))
            assert value.dtype == dtype
            np.testing.assert_allclose(value, getattr(want, name), rtol=1e-12 if dtype == np.float64 else 1e-6)
    assert _host(nf.diagonal(cp.asarray(x), net=RELU, get="ntk")).shape == (25,)


def test_cupy_in_cupy_out_on_the_same_device(rng):
    x = _points(rng, 20)
    for device_id in range(cp.cuda.runtime.getDeviceCount()):
        with cp.cuda.Device(device_id):
            xd = cp.asarray(x)
        k = nf.gram(xd, net=RELU)  # computed on xd's device whatever the current device is
        for value in k:
            assert isinstance(value, cp.ndarray) and value.device.id == device_id
        with cp.cuda.Device(device_id):
            _assert_close64(_host(k.ntk), nf.gram(x, net=RELU, get="ntk", backend="cpu"))


def test_non_contiguous_and_integer_inputs(rng):
    x = _points(rng, 30, d=8)
    xd = cp.asarray(x)
    want = nf.gram(x[::2, 1:6], net=RELU, backend="cpu")
    got = nf.gram(xd[::2, 1:6], net=RELU)
    _assert_close64(_host(got.ntk), want.ntk)
    xi = rng.integers(-3, 4, size=(12, 5))
    got = nf.gram(cp.asarray(xi), net=RELU)
    assert got.ntk.dtype == np.float64
    _assert_close64(_host(got.ntk), nf.gram(xi, net=RELU, backend="cpu").ntk)


def test_out_cupy_arrays_written_in_place(rng):
    x = _points(rng, 50)
    xd = cp.asarray(x)
    nngp, ntk = cp.full((50, 50), np.nan), cp.full((50, 50), np.nan)
    k = nf.gram(xd, net=RELU, out=(nngp, ntk), tile_size=16)
    assert k.nngp is nngp and k.ntk is ntk
    single = cp.empty((50, 50))
    assert nf.gram(xd, net=RELU, get="ntk", out=single) is single
    want = nf.gram(x, net=RELU, backend="cpu")
    _assert_close64(_host(ntk), want.ntk)
    _assert_close64(_host(single), want.ntk)
    # NumPy inputs with CuPy outputs: computed on the outputs' device, written in place
    out = cp.empty((50, 50))
    assert nf.gram(x, net=RELU, get="nngp", backend="cuda", out=out) is out
    _assert_close64(_host(out), want.nngp)


# ----------------------------------------------------------------------------------------------
# Streaming to host outputs.

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cross", [False, True])
def test_streamed_to_host_out(rng, dtype, cross):
    x = _points(rng, 301, dtype=dtype)
    y = _points(rng, 130, dtype=dtype) if cross else None
    n2 = 130 if cross else 301
    xd, yd = cp.asarray(x), (cp.asarray(y) if cross else None)
    on_device = nf.gram(xd, yd, net=RELU, tile_size=64)
    out = nf.Kernels(np.full((301, n2), np.nan, dtype), np.full((301, n2), np.nan, dtype))
    got = nf.gram(xd, yd, net=RELU, tile_size=64, out=out)
    assert got.nngp is out.nngp and got.ntk is out.ntk
    for name in ("nngp", "ntk"):
        host = getattr(got, name)
        assert type(host) is np.ndarray and np.isfinite(host).all()
        # the same tiles, GEMMs and kernels: only the destination differs
        np.testing.assert_array_equal(host, _host(getattr(on_device, name)))
    if not cross:
        assert np.array_equal(got.ntk, got.ntk.T)


def test_streamed_to_memmap_from_numpy_inputs(rng, tmp_path):
    x = _points(rng, 260, dtype=np.float32)
    path = tmp_path / "ntk.f32"
    out = np.memmap(path, dtype=np.float32, mode="w+", shape=(260, 260))
    seen = []
    got = nf.gram(x, net=RELU, get="ntk", backend="cuda", out=out, tile_size=48,
                  progress=lambda done, total: seen.append((done, total)))
    assert got is out
    out.flush()
    del out, got
    back = np.fromfile(path, dtype=np.float32).reshape(260, 260)
    _assert_close32(back, nf.gram(x, net=RELU, get="ntk", backend="cpu"))
    tiles = 6 * 7 // 2
    assert seen and seen[-1] == (tiles, tiles)


def test_numpy_inputs_default_host_outputs_are_streamed(rng):
    x = _points(rng, 150)
    got = nf.gram(x, net=RELU, backend="cuda", tile_size=40)
    assert type(got.ntk) is np.ndarray
    _assert_close64(got.ntk, nf.gram(x, net=RELU, get="ntk", backend="cpu"))


@pytest.fixture
def gpu_memory_limited_to():
    """Limits CuPy's memory pool (the GPU memory this process may use) to what it holds plus the
    given bytes, for one test; lifted afterwards."""
    pool = cp.get_default_memory_pool()
    previous = pool.get_limit()
    pool.free_all_blocks()

    def limit(extra_bytes):
        pool.set_limit(size=pool.used_bytes() + extra_bytes)

    yield limit
    pool.set_limit(size=previous)


def test_streamed_to_host_beyond_the_gpu_memory_allowed(rng, gpu_memory_limited_to):
    """Outputs larger than the GPU memory allowed (a pool limit of 48 MiB: an H200's 141 GB cannot
    be exceeded on hosts with less memory and disk than that) stream to host arrays in default
    tiles sized to what is free; on the device they are a MemoryError that suggests out=."""
    n = 2600  # two 2600 x 2600 float64 outputs: 108 MB
    x = _points(rng, n)
    xd = cp.asarray(x)
    gpu_memory_limited_to(48 << 20)
    with pytest.raises(MemoryError, match="out="):
        nf.gram(xd, net=RELU)
    seen = []
    out = nf.Kernels(np.empty((n, n)), np.empty((n, n)))
    got = nf.gram(xd, net=RELU, out=out, progress=lambda done, total: seen.append(total))
    assert got.nngp is out.nngp and seen[-1] > 1  # several tiles, where 2816 would be one
    want = nf.gram(x, net=RELU, backend="cpu")
    for name in ("nngp", "ntk"):
        _assert_close64(getattr(got, name), getattr(want, name), name)


def test_work_space_beyond_the_gpu_memory_allowed(rng, gpu_memory_limited_to):
    """Per-row tables of many points through a deep net (2 GB here) that do not fit the GPU memory
    allowed are a MemoryError naming them, before anything is allocated."""
    x = cp.asarray(_points(rng, 50_000, d=4))
    gpu_memory_limited_to(64 << 20)
    used = cp.get_default_memory_pool().used_bytes()
    deep = nf.MLP(1000, "relu")
    for call in (lambda: nf.gram(x[:8], x, net=deep, get="ntk", out=np.empty((8, 50_000))),
                 lambda: nf.diagonal(x, net=deep)):
        with pytest.raises(MemoryError, match=r"per-row variance tables for .*50000 x2? points.*GPU \d"):
            call()
        assert cp.get_default_memory_pool().used_bytes() == used


def test_iterative_solvers_refuse_cupy_points(rng):
    """The iterative solvers run on the CPU: CuPy points get a TypeError that says what to pass
    (CuPy itself refuses the implicit conversion deep inside a solver); 'auto' keeps CuPy x_train
    on the GPU's eigh path."""
    from ntkfast import predict

    x, y = _points(rng, 40, d=5), rng.standard_normal((40, 1))
    op = nf.KernelOperator(cp.asarray(x), net=RELU, storage="recompute")
    with pytest.raises(TypeError, match="this operator holds CuPy points; build it from NumPy"):
        predict.gradient_descent_mse(op, y, solver="cg")
    with pytest.raises(TypeError, match="x_train is a CuPy array; pass NumPy points"):
        predict.gradient_descent_mse_ensemble(RELU, cp.asarray(x), y, solver="lanczos")
    fn = predict.gradient_descent_mse_ensemble(RELU, cp.asarray(x), y, diag_reg=1e-3)
    got = fn(1.0, cp.asarray(x[:7]))
    want = predict.gradient_descent_mse_ensemble(RELU, x, y, diag_reg=1e-3)(1.0, x[:7])
    for name in ("nngp", "ntk"):  # cuSOLVER's eigh against LAPACK's: test_predict_gpu.py's 1e-9
        w = getattr(want, name)
        np.testing.assert_allclose(_host(getattr(got, name)), w, rtol=0, atol=1e-9 * np.abs(w).max())


def test_deep_networks_default_to_smaller_tiles(rng):
    """One default (8192) tile of a depth-2000 erf MLP holds seconds of layer work, and Ctrl-C and
    progress wait between tiles: the default tile of such a program is smaller."""
    deep = nf.MLP(2000, "erf", W_std=0.8, b_std=0.1)  # ordered phase: rounding errors contract
    x = _points(rng, 2600, d=8)  # the work bound allows an edge of 2235: tiles of 2048, not 2600
    seen = []
    got = nf.gram(cp.asarray(x), net=deep, get="ntk", progress=lambda done, total: seen.append(total))
    assert seen[-1] > 1
    want = nf.gram(x[:64], x, net=deep, get="ntk", backend="cpu")
    _assert_close64(_host(got[:64]), want)


# ----------------------------------------------------------------------------------------------
# Streams.

_SPIN = r"""
extern "C" __global__ void spin(unsigned long long nanoseconds) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < nanoseconds);
}
"""


_spin_kernel = []


def _spin_on_current_stream(seconds):
    """Keeps the current stream busy for `seconds` (one thread spinning on the global timer)."""
    if not _spin_kernel:
        _spin_kernel.append(cp.RawKernel(_SPIN, "spin"))
    _spin_kernel[0]((1,), (1,), (np.uint64(seconds * 1e9),))


def test_runs_on_the_current_stream(rng):
    """Work goes on the caller's current stream: queued behind a busy kernel on that stream, and
    not on the legacy default stream (which would wait for a busy blocking stream)."""
    x = _points(rng, 100)
    want = nf.gram(x, net=RELU, get="ntk", backend="cpu")
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        xd = cp.asarray(x)
        nf.gram(xd, net=RELU)  # warm-up: the kernels are loaded before anything spins
        _spin_on_current_stream(0.01)
        stream.synchronize()
        start = time.perf_counter()
        _spin_on_current_stream(0.5)
        k = nf.gram(xd, net=RELU, check_finite=False)  # the per-row pass waits on this stream
        elapsed = time.perf_counter() - start
    assert elapsed > 0.4, f"gram did not wait for its stream ({elapsed:.3f} s)"
    stream.synchronize()
    _assert_close64(_host(k.ntk), want)

    busy = cp.cuda.Stream()  # a blocking stream: the legacy default stream waits for it
    with busy:
        _spin_on_current_stream(1.0)
    with stream:
        start = time.perf_counter()
        k = nf.gram(xd, net=RELU, check_finite=False)
        elapsed = time.perf_counter() - start
        stream.synchronize()
    assert elapsed < 0.5, f"gram waited for another stream ({elapsed:.3f} s)"
    busy.synchronize()
    _assert_close64(_host(k.ntk), want)


def test_results_ready_after_stream_synchronize(rng):
    x = _points(rng, 400)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        k = nf.gram(cp.asarray(x), net=RELU, tile_size=64)
    stream.synchronize()
    _assert_close64(_host(k.nngp), nf.gram(x, net=RELU, get="nngp", backend="cpu"))


def test_tf32_setting_does_not_reach_the_gemms(rng):
    """With CuPy's float32 compute type set to TF32 (what CUPY_TF32=1 does), ntkfast's GEMMs still
    run in FP32 (TF32 would leave errors ~1e-3 here), and the setting is restored afterwards."""
    from cupy._core import _routines_linalg as linalg

    if int(cp.cuda.Device().compute_capability) < 80:
        pytest.skip("TF32 needs compute capability >= 8.0")
    x = _points(rng, 64, d=512, dtype=np.float32)
    previous = linalg.get_compute_type(np.float32)
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
    try:
        got = nf.gram(cp.asarray(x), net=nf.MLP(1, "erf"), get="nngp")
        assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
    finally:
        linalg.set_compute_type(np.float32, previous)
    want = nf.gram(x.astype(np.float64), net=nf.MLP(1, "erf"), get="nngp", backend="cpu")
    np.testing.assert_allclose(_host(got), want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_progress_callback(rng):
    x = _points(rng, 300)
    seen = []
    nf.gram(cp.asarray(x), net=RELU, tile_size=64, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (15, 15)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


# ----------------------------------------------------------------------------------------------
# Errors.

def test_bad_outputs(rng):
    xd = cp.asarray(_points(rng, 8, d=5))
    with pytest.raises(ValueError, match=r"out must have shape \(8, 8\) and dtype float64, got shape \(8, 7\)"):
        nf.gram(xd, net=RELU, get="ntk", out=cp.empty((8, 7)))
    with pytest.raises(ValueError, match=r"out \(nngp\) must have shape \(8, 8\) and dtype float64.*float32"):
        nf.gram(xd, net=RELU, out=nf.Kernels(cp.empty((8, 8), np.float32), cp.empty((8, 8))))
    with pytest.raises(ValueError, match="C-contiguous"):
        nf.gram(xd, net=RELU, get="ntk", out=cp.empty((8, 8), order="F"))
    with pytest.raises(TypeError, match="all be CuPy arrays or all host arrays"):
        nf.gram(xd, net=RELU, out=(cp.empty((8, 8)), np.empty((8, 8))))
    both = cp.empty((8, 8))
    with pytest.raises(ValueError, match="overlap"):
        nf.gram(xd, net=RELU, out=(both, both))
    square = cp.zeros((8, 8))  # finite: cp.empty's recycled bytes may be NaN, refused first
    with pytest.raises(ValueError, match="overlaps an input"):
        nf.gram(square, net=RELU, get="ntk", out=square)


def test_out_on_another_device(rng):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    xd = cp.asarray(_points(rng, 8, d=5))
    with cp.cuda.Device(1):
        other = cp.empty((8, 8))
    with pytest.raises(ValueError, match="is on GPU 1 but the computation runs on GPU 0"):
        nf.gram(xd, net=RELU, get="ntk", out=other)
    with cp.cuda.Device(1):
        y = cp.asarray(_points(rng, 3, d=5))
    with pytest.raises(ValueError, match="x1 is on GPU 0 but x2 is on GPU 1"):
        nf.gram(xd, y, net=RELU)


def test_backend_mismatches(rng):
    x = _points(rng, 8, d=5)
    with pytest.raises(TypeError, match="backend='cpu' got CuPy arrays"):
        nf.gram(cp.asarray(x), net=RELU, backend="cpu")
    with pytest.raises(TypeError, match="both be CuPy arrays or both host arrays"):
        nf.gram(cp.asarray(x), x, net=RELU)
    with pytest.raises(TypeError, match="x1 is complex"):
        nf.gram(cp.ones((3, 4), dtype=cp.complex128), net=RELU)
    with pytest.raises(ValueError, match=r"x1 must be 2-D .*shape \(5,\)"):
        nf.gram(cp.ones(5), net=RELU)
    with pytest.raises(ValueError, match=r"same number of features.*x1 \(8, 5\).*x2 \(3, 4\)"):
        nf.gram(cp.asarray(x), cp.ones((3, 4)), net=RELU)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_inputs(rng, value):
    x = _points(rng, 8, d=5)
    x[2, 3] = value
    with pytest.raises(ValueError, match=r"x1 contains 1 non-finite value.*x1\[2, 3\].*check_finite"):
        nf.gram(cp.asarray(x), net=RELU)
    with pytest.raises(ValueError, match=r"x contains"):
        nf.diagonal(cp.asarray(x), net=RELU)


def test_non_finite_kernel_is_the_cpu_error(rng):
    x = 10 * _points(rng, 5, d=4)
    net = nf.MLP(3, "exp", W_std=3.0, b_std=0.0)
    with pytest.raises(nf.NonFiniteKernelError, match=r"Exp\(\).*layer") as info:
        nf.gram(cp.asarray(x), net=net)
    with pytest.raises(nf.NonFiniteKernelError) as cpu:
        nf.gram(x, net=net, backend="cpu")
    assert (info.value.argument, info.value.row, info.value.layer) == \
        (cpu.value.argument, cpu.value.row, cpu.value.layer)
    with pytest.raises(nf.NonFiniteKernelError, match=r"x2\[0\]"):
        nf.gram(cp.zeros((3, 4)), cp.asarray(x), net=nf.MLP(1, "exp", W_std=3.0, b_std=0.0))
    with pytest.raises(nf.NonFiniteKernelError):
        nf.diagonal(cp.asarray(x), net=net)
    # fits float64 but not float32 (the CPU engine's depth-130 case)
    deep = nf.MLP(130, "relu", W_std=2.0, b_std=0.0)
    with pytest.raises(nf.NonFiniteKernelError, match="float32|precision"):
        nf.gram(cp.asarray(_points(rng, 10, d=6, dtype=np.float32)), net=deep)


def test_output_too_large_is_memory_error_before_allocating():
    big = cp.zeros((400_000, 2))  # two 400k x 400k float64 outputs: 2.56 TB
    pool = cp.get_default_memory_pool()
    used = pool.used_bytes()
    start = time.perf_counter()
    with pytest.raises(MemoryError, match=r"2 arrays of 400000 x 400000 float64 = 2\.6 TB on GPU \d.*out="):
        nf.gram(big, net=RELU)
    assert time.perf_counter() - start < 5.0
    assert pool.used_bytes() == used
    with pytest.raises(MemoryError, match=r"an array of 400000 x 400000 float32"):
        nf.gram(big.astype(cp.float32), net=RELU, get="ntk")


# ----------------------------------------------------------------------------------------------
# The engine's own GEMMs and range handling (GramPlan, src/cuda/gram_plan.cu).

CUBLAS_TF32_TENSOR_OP_MATH = 3  # cublas_api.h (CuPy names only CUBLAS_DEFAULT_MATH and _TENSOR_OP_)


def test_cublas_handle_state_is_restored(rng):
    """The engine sets CuPy's cuBLAS handle to its stream, CUBLAS_DEFAULT_MATH and host pointer
    mode for its GEMMs, and restores what it found (CuPy shares the handle)."""
    from cupy_backends.cuda.libs import cublas

    handle = cp.cuda.device.get_cublas_handle()
    x = _points(rng, 64, d=256, dtype=np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    other = cp.cuda.Stream(non_blocking=True)
    previous = cublas.getMathMode(handle)
    try:
        cublas.setStream(handle, other.ptr)
        cublas.setMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH)
        with stream:
            got = nf.gram(cp.asarray(x), net=nf.MLP(1, "erf"), get="nngp")
        stream.synchronize()
        assert cublas.getMathMode(handle) == CUBLAS_TF32_TENSOR_OP_MATH
        assert cublas.getStream(handle) == other.ptr
    finally:
        cublas.setMathMode(handle, previous)
        cublas.setStream(handle, cp.cuda.get_current_stream().ptr)
    want = nf.gram(x.astype(np.float64), net=nf.MLP(1, "erf"), get="nngp", backend="cpu")
    np.testing.assert_allclose(_host(got), want, rtol=0, atol=2e-6 * np.abs(want).max())


@pytest.mark.parametrize("scale", [1e-15, 1e15])
@pytest.mark.parametrize("host_out", [False, True])
def test_float32_rows_outside_the_gemm_range(rng, scale, host_out):
    """Rows with |x|² outside [2^-60, 2^60] are GEMMed as exact x·2^-e copies (as on the CPU)."""
    x = _points(rng, 70, d=9, dtype=np.float32)
    x[::3] *= np.float32(scale)  # a mix of scaled and unscaled rows
    y = _points(rng, 33, d=9, dtype=np.float32)
    for b in (None, y):
        want = nf.gram(x, b, net=RELU, backend="cpu")
        n2 = 70 if b is None else 33
        out = nf.Kernels(np.empty((70, n2), np.float32), np.empty((70, n2), np.float32)) if host_out else None
        got = nf.gram(cp.asarray(x), None if b is None else cp.asarray(b), net=RELU, tile_size=32, out=out)
        for name in ("nngp", "ntk"):
            value = getattr(got, name)
            value = value if host_out else _host(value)
            _assert_close32(value, getattr(want, name), name)


def test_tiny_and_huge_variances_rescaled_exactly(rng):
    """Homogeneous ops take variances outside [2^-500, 2^500] through exact rescaling, as on the
    CPU (where it is bit-exact: K(2^k x) = 4^k K(x) for ReLU)."""
    x = _points(rng, 40, d=6)
    for k in (-300, 280):
        xs = x * 2.0 ** k
        want = nf.gram(xs, net=RELU, backend="cpu")
        got = nf.gram(cp.asarray(xs), net=RELU, tile_size=16)
        for name in ("nngp", "ntk"):
            _assert_close64(_host(getattr(got, name)), getattr(want, name), name)


def test_interrupt_from_progress_stops_between_tiles(rng):
    x = cp.asarray(_points(rng, 512, d=8))
    calls = []

    def interrupt(done, total):
        calls.append(done)
        raise KeyboardInterrupt

    for out in (None, nf.Kernels(np.empty((512, 512)), np.empty((512, 512)))):
        with pytest.raises(KeyboardInterrupt):
            nf.gram(x, net=RELU, tile_size=16, progress=interrupt, out=out)
    # the device and the handle are usable afterwards
    _assert_close64(_host(nf.gram(x, net=RELU, get="ntk", tile_size=64)),
                    nf.gram(x.get(), net=RELU, get="ntk", backend="cpu"))


# ----------------------------------------------------------------------------------------------
# Hermite-series activations (Series ops: series_math.hpp, the fallback series_fallback.hpp).
# Against the CPU engine: the GPU sums per entry the terms its own |ρ| needs (the CPU per chunk of
# 64, at their largest |ρ|), both within the tolerance series_inputs sets (1e-14 of a layer's
# largest value in float64), and for CuPy inputs its tables come from each row's variance alone
# (equal to rounding): float64 within rtol 1e-12 (+1e-13 max|K|), float32 within 1e-6 max|K|.

SERIES = [nf.Tanh(), nf.Silu(), nf.Elu(0.7), nf.Softplus(beta=2.0), nf.Sigmoid(), nf.Mish(),
          nf.ElementwiseNumerical(lambda v: np.sin(v) + 0.3 * v, deg=128)]


@pytest.mark.parametrize("layer", SERIES, ids=_ids)
def test_series_activations_float64(rng, layer):
    net = _net(layer)
    x, y = _points(rng, 67), _points(rng, 45)
    x[7] = x[3]  # a duplicate row: the exact diagonal
    for a, b in ((x, None), (x, y)):
        want = nf.gram(a, b, net=net, backend="cpu")
        got = nf.gram(cp.asarray(a), None if b is None else cp.asarray(b), net=net, tile_size=32)
        for name in ("nngp", "ntk"):
            value = _host(getattr(got, name))
            _assert_close64(value, getattr(want, name), f"{layer!r} {name}")
            if b is None:
                assert np.array_equal(value, value.T) and value[7, 3] == value[3, 3]
    diag = nf.diagonal(cp.asarray(x), net=net)
    k = nf.gram(cp.asarray(x), net=net, tile_size=32)
    for name in ("nngp", "ntk"):
        assert np.array_equal(np.diag(_host(getattr(k, name))), _host(getattr(diag, name)))
        np.testing.assert_allclose(_host(getattr(diag, name)),
                                   getattr(nf.diagonal(x, net=net), name), rtol=1e-12)


@pytest.mark.parametrize("layer", SERIES[:3], ids=_ids)
def test_series_activations_float32(rng, layer):
    net = nf.MLP(3, layer, W_std=1.3, b_std=0.1)
    x, y = _points(rng, 50, dtype=np.float32), _points(rng, 23, dtype=np.float32)
    for a, b in ((x, None), (x, y)):
        want = nf.gram(a, b, net=net, backend="cpu")
        got = nf.gram(cp.asarray(a), None if b is None else cp.asarray(b), net=net)
        for name in ("nngp", "ntk"):
            value, expected = _host(getattr(got, name)), getattr(want, name)
            assert value.dtype == np.float32
            np.testing.assert_allclose(value, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("layer", [nf.Elu(0.7, deg=16), nf.Tanh(deg=24)], ids=_ids)
def test_series_fallback_entries(rng, monkeypatch, layer):
    """Near-parallel rows at large variances with few terms: the 2-D quadrature
    (series_fallback_kernel), the same entries as on the CPU, the count reported alike."""
    from ntkfast import _series

    counts = []
    monkeypatch.setattr(_series.SeriesInputs, "warn_if_slow",
                        lambda self, pairs, entries: counts.append(pairs))
    net = nf.MLP(2, layer, W_std=1.5, b_std=0.2)
    kinked = layer._kinked_at_zero
    x, y = near_parallel_points(rng, 40, kinked), near_parallel_points(rng, 13, kinked)
    for a, b in ((x, None), (x, y)):
        for dtype in (np.float64, np.float32):
            want = nf.gram(a.astype(dtype), None if b is None else b.astype(dtype), net=net,
                           backend="cpu", tile_size=16)  # tiles for every core: ~5 ms a pair
            got = nf.gram(cp.asarray(a.astype(dtype)),
                          None if b is None else cp.asarray(b.astype(dtype)), net=net,
                          tile_size=16)
            cpu_count, gpu_count = counts[-2:]
            # The same rule on ρ equal to the last bits (row sums and GEMMs differ in order:
            # one entry within 1e-16 of the threshold could move); in float32 the GEMMs'
            # roundings (~1e-7 in ρ) could move a few.
            assert gpu_count > 0 and abs(gpu_count - cpu_count) <= (
                1 if dtype == np.float64 else 0.01 * cpu_count)
            for name in ("nngp", "ntk"):
                value, expected = _host(getattr(got, name)), getattr(want, name)
                if dtype == np.float64:
                    _assert_close64(value, expected, name)
                else:
                    np.testing.assert_allclose(value, expected, rtol=0,
                                               atol=1e-6 * np.abs(expected).max())


def test_series_numpy_inputs_and_host_outputs(rng, tmp_path):
    net = nf.MLP(3, "tanh", W_std=1.4, b_std=0.1)
    x, y = _points(rng, 70), _points(rng, 30)
    for b in (None, y):
        want = nf.gram(x, b, net=net, backend="cpu")
        got = nf.gram(x, b, net=net, backend="cuda", tile_size=32)  # NumPy out, streamed
        out = nf.Kernels(*(np.memmap(tmp_path / f"{k}{b is None}", np.float64, "w+",
                                     shape=want.nngp.shape) for k in ("nngp", "ntk")))
        nf.gram(cp.asarray(x), None if b is None else cp.asarray(b), net=net, out=out,
                tile_size=16)
        for name in ("nngp", "ntk"):
            assert type(getattr(got, name)) is np.ndarray
            _assert_close64(getattr(got, name), getattr(want, name), name)
            _assert_close64(np.asarray(getattr(out, name)), getattr(want, name), name)

