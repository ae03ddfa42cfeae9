"""The CUDA backend's Python driver (python/ntkfast/_cuda_backend.py) without a GPU.

CuPy is replaced by a stand-in on NumPy (host memory, addresses from .ctypes) and the two kernels
of ntkfast._cuda by emulations of their documented contract (src/cuda/cuda_engine.hpp) with a
simple stand-in for the layer math: every entry becomes F(i, j) = x_i·x'_j / d + q_i + q'_j (q the
input variances), the NTK 2 F, and the per-row diagonal 3 q_i, 6 q_i. So the tiling, pointer and
leading-dimension arithmetic, mirror and diagonal handling, the staging and streaming to host
outputs, validation, progress and cleanup all run here, and every misplaced or missing entry shows.
The real kernels and CuPy are tested on a GPU by test_cuda.py.
"""
import ctypes
import sys
import types

import numpy as np
import pytest

import ntkfast as nf
from ntkfast import _cuda_backend, _cuda_probe

NET = nf.MLP(2, "relu", W_std=1.5, b_std=0.05)


# ----------------------------------------------------------------------------------------------
# A CuPy stand-in.

class FakeArray(np.ndarray):
    """A 'device' array: a NumPy array whose type lives in module 'cupy'."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data if self.size else 0)

    @property
    def device(self):
        return FakeDevice(0)

    def get(self):
        return np.array(self, copy=True).view(np.ndarray)


FakeArray.__module__ = "cupy"


def _fake(a):
    return np.asarray(a).view(FakeArray)


class FakeDevice:
    def __init__(self, device=None):
        self.id = 0 if device is None else device
        self.compute_capability = "90"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeEvent:
    def __init__(self, disable_timing=False):
        self.recorded = False

    def record(self, stream=None):
        self.recorded = True

    def synchronize(self):
        assert self.recorded, "waited for an event that was never recorded"


class FakeStream:
    def __init__(self, non_blocking=False):
        self.ptr = 0x5EED if non_blocking else 0
        self.waits = []

    def wait_event(self, event):
        assert event.recorded
        self.waits.append(event)

    def synchronize(self):
        pass


class FakeMemoryPool:
    def free_bytes(self):
        return 0

    def used_bytes(self):
        return 0

    def get_limit(self):
        return 0


class FakeOutOfMemoryError(MemoryError):
    pass


class FakeRuntimeError(RuntimeError):
    pass


def _make_fake_cupy(free_bytes):
    cp = types.ModuleType("cupy")
    cp.ndarray = FakeArray
    cp.float32, cp.float64 = np.float32, np.float64
    cp.empty = lambda shape, dtype=np.float64: _fake(np.empty(shape, dtype=dtype))
    cp.full = lambda shape, value, dtype=np.float64: _fake(np.full(shape, value, dtype=dtype))
    cp.zeros = lambda shape, dtype=np.float64: _fake(np.zeros(shape, dtype=dtype))
    cp.asarray = lambda a, dtype=None: _fake(np.array(a, dtype=dtype, copy=True))
    cp.ascontiguousarray = lambda a, dtype=None: _fake(np.ascontiguousarray(a, dtype=dtype))
    cp.matmul = lambda a, b, out=None: np.matmul(a, b, out=out)
    cp.isfinite = lambda a: _fake(np.isfinite(a))
    cp.argwhere = lambda a: _fake(np.argwhere(a))
    cp.argmax = lambda a: np.argmax(a)
    cp.may_share_memory = np.may_share_memory
    cp.get_default_memory_pool = FakeMemoryPool
    cuda = types.SimpleNamespace()
    cuda.Device = FakeDevice
    cuda.Stream = FakeStream
    cuda.Event = FakeEvent
    current = FakeStream()
    cuda.get_current_stream = lambda: current

    def alloc_pinned_memory(nbytes):
        mem = np.zeros(nbytes, dtype=np.uint8)
        holder = mem.view(PinnedArray)
        holder.ptr = holder.ctypes.data
        return holder

    cuda.alloc_pinned_memory = alloc_pinned_memory
    cuda.memory = types.SimpleNamespace(OutOfMemoryError=FakeOutOfMemoryError)
    cuda.runtime = types.SimpleNamespace(
        memcpyAsync=lambda dst, src, n, kind, stream: ctypes.memmove(dst, src, n),
        memcpyDeviceToHost=2, memGetInfo=lambda: (free_bytes, free_bytes),
        getDeviceCount=lambda: 1, getDevice=lambda: 0, CUDARuntimeError=FakeRuntimeError)
    cp.cuda = cuda
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32 = 1, 7
    linalg.state = {"float32": 7}  # as with CUPY_TF32=1: ntkfast must switch it off and back on
    linalg.history = []

    def set_compute_type(dtype, value):
        linalg.history.append(value)
        linalg.state[np.dtype(dtype).name] = value

    linalg.get_compute_type = lambda dtype: linalg.state.get(np.dtype(dtype).name, 1)
    linalg.set_compute_type = set_compute_type
    linalg.compute_type_to_str = str
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    cp._core = core
    return cp, core, linalg


class PinnedArray(np.ndarray):
    ptr = 0


# ----------------------------------------------------------------------------------------------
# The kernels' contract, emulated (cuda_engine.hpp).

def _view(address, dtype, shape, ld):
    """A (rows, cols) view with leading dimension ld of the memory at `address`."""
    dtype = np.dtype(dtype)
    rows, cols = shape
    span = (rows - 1) * ld + cols
    base = np.frombuffer((ctypes.c_char * (span * dtype.itemsize)).from_address(address), dtype=dtype)
    return np.lib.stride_tricks.as_strided(base, shape=shape, strides=(ld * dtype.itemsize, dtype.itemsize),
                                           writeable=True)


class FakeEngine:
    """Stands in for ntkfast._cuda: records the calls and emulates them."""

    def __init__(self):
        self.tiles = []
        self.row_calls = []

    @staticmethod
    def probe(device):
        return ""

    @staticmethod
    def max_tile_rows():
        return 65535 * 32

    @staticmethod
    def pack_program(ops):
        return b"".join(np.array([(k, deg, off, 0, tuple(list(p) + [0.0] * (6 - len(p))))],
                                 dtype=[("k", "<i4"), ("d", "<i4"), ("o", "<i4"), ("r", "<i4"),
                                        ("p", "<f8", 6)]).tobytes() for k, deg, off, p in ops)

    def row_stats(self, *, dtype, x, n, d, ld_x, ops, n_ops, pool, q, sq, stride, ntk_diag, status,
                  point_set, device, stream):
        self.row_calls.append(dict(n=n, d=d, point_set=point_set, stream=stream))
        assert n > 0 and stride >= n and status and q and sq and (ops or n_ops == 0)
        xs = _view(x, dtype, (n, d), ld_x).astype(np.float64) if d else np.zeros((n, 0))
        q0 = (xs * xs).sum(axis=1) / d if d else np.zeros(n)
        qt = _view(q, np.float64, (n_ops + 1, n), stride)
        sqt = _view(sq, np.float64, (n_ops + 1, n), stride)
        qt[0], sqt[0] = q0, np.sqrt(q0)
        for k in range(1, n_ops + 1):
            qt[k] = 3.0 * q0 if k == n_ops else q0
            sqt[k] = np.sqrt(qt[k])
        if ntk_diag:
            _view(ntk_diag, np.float64, (1, n), n)[0] = 6.0 * q0

    def gram_tile(self, *, dtype, gram, ld_gram, rows, cols, inv_d, snap_tol, ops, n_ops, pool,
                  q1, sq1, stride1, q2, sq2, stride2, nngp, ld_nngp, nngp_mirror, ld_nngp_mirror,
                  ntk, ld_ntk, ntk_mirror, ld_ntk_mirror, diagonal, diag_nngp, diag_ntk, device,
                  stream):
        self.tiles.append(dict(rows=rows, cols=cols, diagonal=diagonal, stream=stream))
        assert ld_gram >= cols and (not diagonal or rows == cols)
        g = _view(gram, dtype, (rows, cols), ld_gram).astype(np.float64)
        a = _view(q1, np.float64, (1, rows), rows)[0]
        b = _view(q2, np.float64, (1, cols), cols)[0]
        f = g * inv_d + a[:, None] + b[None, :]
        upper = np.triu(np.ones((rows, cols), bool), 1) if diagonal else np.ones((rows, cols), bool)
        for scale, ptr, ld, mptr, mld, dptr in ((1.0, nngp, ld_nngp, nngp_mirror, ld_nngp_mirror, diag_nngp),
                                                (2.0, ntk, ld_ntk, ntk_mirror, ld_ntk_mirror, diag_ntk)):
            if not ptr:
                continue
            value = (scale * f).astype(dtype)
            out = _view(ptr, dtype, (rows, cols), ld)
            out[upper] = value[upper]
            if diagonal:
                idx = np.arange(rows)
                out[idx, idx] = _view(dptr, np.float64, (1, rows), rows)[0].astype(dtype)
            if mptr:
                mirror = _view(mptr, dtype, (cols, rows), mld)
                mirror[upper.T] = value.T[upper.T]


@pytest.fixture
def fake(monkeypatch):
    """Installs the stand-ins; yields (cupy, engine, linalg)."""
    cp, core, linalg = _make_fake_cupy(free_bytes=1 << 34)
    engine = FakeEngine()
    module = types.ModuleType("ntkfast._cuda")
    for name in ("probe", "max_tile_rows", "pack_program", "row_stats", "gram_tile"):
        setattr(module, name, getattr(engine, name))
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupy._core", core)
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", linalg)
    monkeypatch.setitem(sys.modules, "ntkfast._cuda", module)
    monkeypatch.setattr(nf, "_cuda", module, raising=False)
    monkeypatch.setattr(_cuda_probe, "cuda_unavailable_reason", lambda: None)
    yield cp, engine, linalg


def _expected(x1, x2=None):
    """The emulated kernels' result: NNGP F = x·x'/d + q + q', NTK 2F, diagonal 3q and 6q."""
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    d = x1.shape[1]
    q1, q2 = (x1 * x1).sum(1) / d, (x2 * x2).sum(1) / d
    f = x1 @ x2.T / d + q1[:, None] + q2[None, :]
    return f, 2 * f


def _check(got, x1, x2=None, dtype=np.float64):
    nngp, ntk = _expected(x1, x2)
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    for value, want in ((got.nngp, nngp), (got.ntk, ntk)):
        value = value.get() if isinstance(value, FakeArray) else value
        np.testing.assert_allclose(value, want, rtol=rtol)
        if x2 is None:
            assert np.array_equal(value, value.T)
            q = (np.asarray(x1, np.float64) ** 2).sum(1) / x1.shape[1]
            assert np.array_equal(np.diag(value), (3 * q * (1 if want is nngp else 2)).astype(dtype))


# ----------------------------------------------------------------------------------------------
# Tests.

@pytest.mark.parametrize("n1,n2,tile", [(50, None, 7), (50, None, 16), (50, None, 64),
                                        (50, 23, 8), (23, 50, 8), (1, None, 4), (1, 5, 2),
                                        (33, None, None)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_outputs(fake, rng, n1, n2, tile, dtype):
    cp, engine, linalg = fake
    x1 = rng.standard_normal((n1, 6)).astype(dtype)
    x2 = None if n2 is None else rng.standard_normal((n2, 6)).astype(dtype)
    got = nf.gram(_fake(x1), None if x2 is None else _fake(x2), net=NET, tile_size=tile)
    assert isinstance(got.nngp, FakeArray) and got.nngp.dtype == dtype
    _check(got, x1, x2, dtype)
    tiles = -(-n1 // (tile or n1)), -(-(n2 or n1) // (tile or n1))
    expected = tiles[0] * (tiles[0] + 1) // 2 if n2 is None else tiles[0] * tiles[1]
    assert len(engine.tiles) == expected
    assert sum(t["diagonal"] for t in engine.tiles) == (tiles[0] if n2 is None else 0)
    # float32 GEMMs ran with TF32 switched off and the setting was restored
    if dtype == np.float32:
        assert linalg.history == [1, 7] and linalg.state["float32"] == 7
    else:
        assert linalg.history == []


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile", [5, 16, 100])
def test_host_outputs_streamed(fake, rng, cross, dtype, tile):
    x1 = rng.standard_normal((41, 5)).astype(dtype)
    x2 = rng.standard_normal((19, 5)).astype(dtype) if cross else None
    n2 = 19 if cross else 41
    out = nf.Kernels(np.full((41, n2), np.nan, dtype), np.full((41, n2), np.nan, dtype))
    got = nf.gram(_fake(x1), None if x2 is None else _fake(x2), net=NET, tile_size=tile, out=out)
    assert got.nngp is out.nngp and got.ntk is out.ntk
    _check(got, x1, x2, dtype)


def test_memmap_output_and_numpy_inputs(fake, rng, tmp_path):
    _, engine, _ = fake
    x = rng.standard_normal((37, 4))
    out = np.memmap(tmp_path / "k.f64", dtype=np.float64, mode="w+", shape=(37, 37))
    seen = []
    got = nf.gram(x, net=NET, get="ntk", backend="cuda", out=out, tile_size=10,
                  progress=lambda done, total: seen.append((done, total)))
    assert got is out
    np.testing.assert_allclose(np.asarray(out), _expected(x)[1], rtol=1e-12)
    assert seen[-1] == (10, 10) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert all(t["stream"] == 0 for t in engine.tiles)  # the caller's current stream
    # NumPy inputs without out=: NumPy results
    got = nf.gram(x, x[:9], net=NET, backend="cuda", tile_size=4)
    assert type(got.nngp) is np.ndarray
    _check(got, x, x[:9])


def test_default_host_tile_fits_the_staging_budget(fake, rng, monkeypatch):
    _, engine, _ = fake
    monkeypatch.setattr(_cuda_backend, "STAGING_SLOT_BYTES", 4 * 64 * 64 * 8)
    x = rng.standard_normal((300, 3))
    got = nf.gram(x, net=NET, backend="cuda")  # 2 kernels x (tile, mirror) x 8 bytes per entry
    _check(got, x)
    assert max(t["rows"] for t in engine.tiles) == 256  # 64 rounded up to the 256 minimum


def test_get_variants_and_out_forms(fake, rng):
    x = _fake(rng.standard_normal((12, 3)))
    nngp, ntk = _expected(x)
    got = nf.gram(x, net=NET, get="ntk")
    np.testing.assert_allclose(got.get(), ntk, rtol=1e-12)
    out = _fake(np.empty((12, 12)))
    assert nf.gram(x, net=NET, get="nngp", out=out) is out
    np.testing.assert_allclose(out.get(), nngp, rtol=1e-12)
    k = nf.gram(x, net=NET, get=("ntk",), out={"ntk": _fake(np.empty((12, 12)))})
    assert k.nngp is None
    host = np.empty((12, 12))
    k = nf.gram(x, net=NET, out={"ntk": host})
    assert k.ntk is host and type(k.nngp) is np.ndarray  # the missing one follows out='s kind
    np.testing.assert_allclose(k.nngp, nngp, rtol=1e-12)


def test_diagonal(fake, rng):
    x = rng.standard_normal((9, 4)).astype(np.float32)
    d = nf.diagonal(_fake(x), net=NET)
    q = (x.astype(np.float64) ** 2).sum(1) / 4
    assert isinstance(d.nngp, FakeArray) and d.nngp.dtype == np.float32
    assert np.array_equal(d.nngp.get(), (3 * q).astype(np.float32))
    assert np.array_equal(nf.diagonal(_fake(x), net=NET, get="ntk").get(), (6 * q).astype(np.float32))
    assert nf.diagonal(_fake(np.empty((0, 4))), net=NET, get="ntk").shape == (0,)


def test_validation_messages(fake, rng):
    x = _fake(rng.standard_normal((8, 5)))
    with pytest.raises(ValueError, match=r"out must have shape \(8, 8\) and dtype float64, got shape \(8, 7\)"):
        nf.gram(x, net=NET, get="ntk", out=_fake(np.empty((8, 7))))
    with pytest.raises(ValueError, match="C-contiguous"):
        nf.gram(x, net=NET, get="ntk", out=_fake(np.empty((8, 8), order="F")))
    with pytest.raises(TypeError, match="all be CuPy arrays or all host arrays"):
        nf.gram(x, net=NET, out=(_fake(np.empty((8, 8))), np.empty((8, 8))))
    square = _fake(rng.standard_normal((8, 8)))
    with pytest.raises(ValueError, match="overlaps an input"):
        nf.gram(square, net=NET, get="ntk", out=square)
    with pytest.raises(TypeError, match="both be CuPy arrays or both host arrays"):
        nf.gram(x, np.ones((2, 5)), net=NET)
    with pytest.raises(ValueError, match=r"same number of features.*x1 \(8, 5\).*x2 \(3, 4\)"):
        nf.gram(x, _fake(np.ones((3, 4))), net=NET)
    with pytest.raises(TypeError, match="x1 is complex"):
        nf.gram(_fake(np.ones((3, 4), complex)), net=NET)
    bad = rng.standard_normal((8, 5))
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"x1 contains 1 non-finite value.*x1\[2, 3\] = inf"):
        nf.gram(_fake(bad), net=NET)
    with pytest.raises(ValueError, match=r"x contains"):
        nf.diagonal(_fake(bad), net=NET)
    with pytest.raises(TypeError, match="progress must be"):
        nf.gram(x, net=NET, progress="yes")


def test_output_larger_than_gpu_memory(monkeypatch, rng):
    cp, core, linalg = _make_fake_cupy(free_bytes=10_000)
    engine = FakeEngine()
    module = types.ModuleType("ntkfast._cuda")
    for name in ("probe", "max_tile_rows", "pack_program", "row_stats", "gram_tile"):
        setattr(module, name, getattr(engine, name))
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupy._core", core)
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", linalg)
    monkeypatch.setitem(sys.modules, "ntkfast._cuda", module)
    monkeypatch.setattr(nf, "_cuda", module, raising=False)
    monkeypatch.setattr(_cuda_probe, "cuda_unavailable_reason", lambda: None)
    x = _fake(rng.standard_normal((100, 3)))
    with pytest.raises(MemoryError, match=r"2 arrays of 100 x 100 float64 = 160\.0 KB on GPU 0, more "
                                          r"than the 10\.0 KB of free GPU memory; pass out= host arrays"):
        nf.gram(x, net=NET)
    assert not engine.row_calls  # raised before any work
    out = nf.Kernels(np.empty((100, 100)), np.empty((100, 100)))
    _check(nf.gram(x, net=NET, out=out, tile_size=32), x)  # streamed instead


def test_interrupt_between_tiles_stops_and_cleans_up(fake, rng, monkeypatch):
    _, engine, linalg = fake
    monkeypatch.setattr(_cuda_backend, "_POLL_INTERVAL", 0.0)  # poll after every tile
    x = _fake(rng.standard_normal((64, 3)).astype(np.float32))

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nf.gram(x, net=NET, tile_size=8, progress=interrupt, out=nf.Kernels(np.empty((64, 64), np.float32),
                                                                            np.empty((64, 64), np.float32)))
    assert len(engine.tiles) == 1  # stopped right after the first tile was queued
    assert linalg.state["float32"] == 7  # the TF32 setting was restored on the way out


def test_unavailable_backend_says_why(monkeypatch, rng):
    monkeypatch.setattr(_cuda_probe, "cuda_unavailable_reason", lambda: "no CUDA device (test)")
    with pytest.raises(nf.BackendUnavailableError, match=r"not available: no CUDA device \(test\)"):
        nf.gram(rng.standard_normal((3, 2)), net=NET, backend="cuda")
    with pytest.raises(nf.BackendUnavailableError, match="no CUDA device"):
        nf.diagonal(_fake(np.ones((2, 2))), net=NET, get="ntk")
