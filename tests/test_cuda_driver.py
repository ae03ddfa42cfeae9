"""The CUDA engine's host-side logic without a GPU.

1. The tile schedule and target arithmetic (src/cuda/tile_schedule.hpp, through the test hook
   ntkfast._cuda._schedule): the copies every tile record describes are replayed in NumPy, so
   every entry of every output must be written exactly once (twice where a mirror image lands on
   it is impossible by construction, and is caught) with the right value.
2. The tile loop itself (run_tile_loop, the code GramPlan.run runs) through _cuda._simulate: an
   executor that emulates the device eagerly in host memory (kernel contract, staging slots,
   pinned slots, host copies) with bounds-checked, counted writes; also its throttling, polling,
   cancellation and the binding's poll (Ctrl-C, progress, reallocated outputs).
3. The Python glue (python/ntkfast/_cuda_backend.py) on a NumPy stand-in for CuPy and a stand-in
   GramPlan: device choice, output checks and allocation, MemoryError messages, argument passing.

The real kernels, cuBLAS and CuPy are tested on a GPU by test_cuda.py.
"""
import ctypes
import math
import sys
import types
import warnings

import numpy as np
import pytest

import ntkfast as nf
from conftest import near_parallel_points
from ntkfast import _build_config, _cuda_probe

if not _build_config.CUDA_STATUS.startswith("built"):
    pytest.skip(f"the CUDA extension is not part of this build ({_build_config.CUDA_STATUS})",
                allow_module_level=True)

from ntkfast import _cuda  # noqa: E402

NET = nf.MLP(2, "relu", W_std=1.5, b_std=0.05)

SHAPES = [(1, None, 1), (1, None, 4), (1, 1, 3), (1, 5, 2), (5, 1, 2), (7, None, 7), (7, None, 3),
          (9, None, 2), (10, None, 4), (13, 6, 4), (6, 13, 4), (8, 8, 8), (17, None, 5),
          (17, 9, 32), (33, None, 8), (32, 40, 16)]


def _code(n2, sign=1.0):
    """The value the emulated kernel gives entry (i, j) of a Gram with n2 columns."""
    return lambda i, j: sign * (1.0 + i * n2 + j)


def _expected(n1, n2, symmetric, sign):
    i, j = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
    if symmetric:
        i, j = np.minimum(i, j), np.maximum(i, j)
    return sign * (1.0 + i * n2 + j)


# ----------------------------------------------------------------------------------------------
# 1. The schedule's records, replayed in NumPy.

def _replay(records, n1, n2, symmetric, outputs, n_outputs, tile):
    """Applies every record as the kernel contract and the copies say; returns (values, counts)."""
    values = [np.full((n1, n2), np.nan) for _ in range(n_outputs)]
    counts = [np.zeros((n1, n2), int) for _ in range(n_outputs)]
    area = min(tile, n1) * min(tile, n2)
    slot_elems = area * (2 if symmetric else 1) * n_outputs
    for rec in records:
        rows, cols, i0, j0 = rec["rows"], rec["cols"], rec["i0"], rec["j0"]
        staging = np.full(slot_elems, np.nan)
        for o, (offset, ld, moffset, mld) in enumerate(rec["targets"]):
            code = _code(n2, 1.0 if o == 0 else -1.0)
            flat = values[o].reshape(-1) if outputs == "device" else staging
            size = flat.size
            for i in range(rows):
                for j in range(cols):
                    if rec["diagonal"] and j < i:
                        continue
                    v = code(i0 + i, j0 + j)
                    writes = [offset + i * ld + j]
                    if moffset >= 0 and not (rec["diagonal"] and i == j):
                        writes.append(moffset + j * mld + i)
                    for w in writes:
                        assert 0 <= w < size
                        flat[w] = v
                        if outputs == "device":
                            counts[o].reshape(-1)[w] += 1
            if outputs == "host":
                for off, r, c, row0, col0 in rec["staged"][o]:
                    assert 0 <= off and off + r * c <= slot_elems
                    block = staging[off:off + r * c].reshape(r, c)
                    values[o][row0:row0 + r, col0:col0 + c] = block
                    counts[o][row0:row0 + r, col0:col0 + c] += 1
    return values, counts


@pytest.mark.parametrize("outputs", ["device", "host"])
@pytest.mark.parametrize("n1,n2,tile", SHAPES)
@pytest.mark.parametrize("n_outputs", [1, 2])
def test_schedule_writes_every_entry_once(n1, n2, tile, outputs, n_outputs):
    symmetric = n2 is None
    n2_ = n1 if symmetric else n2
    records = _cuda._schedule(n1, n2_, tile, symmetric, outputs, n_outputs)
    t1, t2 = -(-n1 // tile), -(-n2_ // tile)
    order = [(a, b) for a in range(t1) for b in range(a if symmetric else 0, t2)]
    assert [(r["ti"], r["tj"]) for r in records] == order
    assert [r["index"] for r in records] == list(range(len(order)))
    assert [r["slot"] for r in records] == [k % 2 if outputs == "host" else -1 for k in range(len(order))]
    assert all(r["diagonal"] == (symmetric and r["ti"] == r["tj"]) for r in records)
    values, counts = _replay(records, n1, n2_, symmetric, outputs, n_outputs, tile)
    for o in range(n_outputs):
        assert (counts[o] == 1).all(), counts[o]
        np.testing.assert_array_equal(values[o], _expected(n1, n2_, symmetric, 1.0 if o == 0 else -1.0))


def test_schedule_records_in_detail():
    """A 5 x 5 symmetric Gram in tiles of 2, host outputs, 2 kernels: the second tile (0, 1)."""
    rec = _cuda._schedule(5, 5, 2, True, "host", 2)[1]
    assert (rec["i0"], rec["j0"], rec["rows"], rec["cols"], rec["slot"]) == (0, 2, 2, 2, 1)
    # per kernel 2 x (2 x 2) staging elements: the tile, then its mirror image
    assert rec["targets"] == [(0, 2, 4, 2), (8, 2, 12, 2)]
    assert rec["staged"] == [[(0, 2, 2, 0, 2), (4, 2, 2, 2, 0)], [(8, 2, 2, 0, 2), (12, 2, 2, 2, 0)]]
    last = _cuda._schedule(5, 5, 2, True, "device", 1)[-1]  # the 1 x 1 corner, a diagonal tile
    assert (last["i0"], last["rows"], last["diagonal"], last["targets"]) == (4, 1, True, [(24, 5, 24, 5)])
    cross = _cuda._schedule(3, 7, 4, False, "device", 1)
    assert [r["targets"][0] for r in cross] == [(0, 7, -1, 0), (4, 7, -1, 0)]
    assert _cuda._schedule(0, 0, 4, True, "device", 2) == []
    with pytest.raises(ValueError, match="tile edge must be positive"):
        _cuda._schedule(3, 3, 0, True, "device", 1)


# ----------------------------------------------------------------------------------------------
# 2. The tile loop on an emulated device.

def _simulate(n1, n2, tile, outputs, n_outputs, **kw):
    symmetric = n2 is None
    n2_ = n1 if symmetric else n2
    out = [np.full((n1, n2_), np.nan) for _ in range(n_outputs)]
    result = _cuda._simulate(n1, n2_, tile, symmetric, outputs, out, **kw)
    return out, result


@pytest.mark.parametrize("outputs", ["device", "host"])
@pytest.mark.parametrize("n1,n2,tile", SHAPES)
@pytest.mark.parametrize("n_outputs", [1, 2])
def test_loop_writes_every_entry_once(n1, n2, tile, outputs, n_outputs):
    out, result = _simulate(n1, n2, tile, outputs, n_outputs)
    assert result["error"] is None
    n2_ = n1 if n2 is None else n2
    for o in range(n_outputs):
        np.testing.assert_array_equal(out[o], _expected(n1, n2_, n2 is None, 1.0 if o == 0 else -1.0))
        assert (result["writes"][o] == 1).all()
    total = result["total"]
    enq = [k for what, k in result["log"] if what == "enqueue"]
    ret = [k for what, k in result["log"] if what == "retire"]
    assert enq == list(range(total))
    # host outputs: every tile retired (copied out) before returning, at most 2 queued (two
    # staging slots); device outputs: at most 3 between enqueue and retire, the last 2 left queued
    if outputs == "host":
        assert ret == list(range(total)) and result["max_queued"] <= 2
    else:
        assert ret == list(range(max(0, total - 2))) and result["max_queued"] <= 3
    # a tile is retired only after the next ones were enqueued (the GPU keeps working meanwhile)
    lag = 1 if outputs == "host" else 2
    position = {entry: p for p, entry in enumerate(result["log"])}
    for k in ret:
        if k + lag < total:
            assert position[("enqueue", k + lag)] < position[("retire", k)]


@pytest.mark.parametrize("outputs", ["device", "host"])
def test_loop_progress(outputs):
    seen = []
    out, result = _simulate(33, None, 8, outputs, 2, progress=lambda d, t: seen.append((d, t)))
    assert result["error"] is None
    total = result["total"]
    assert total == 15 and seen[-1] == (15, 15) and len(seen) == total + 1
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:])) and all(t == total for _, t in seen)
    # with a progress callback every tile is finished before returning, device outputs too
    assert [k for what, k in result["log"] if what == "retire"] == list(range(total))
    np.testing.assert_array_equal(out[1], _expected(33, 33, True, -1.0))


@pytest.mark.parametrize("outputs", ["device", "host"])
def test_loop_interrupted_between_tiles(outputs):
    calls = []

    def interrupt(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    out, result = _simulate(40, None, 8, outputs, 1, progress=interrupt)
    assert isinstance(result["error"], KeyboardInterrupt)
    log = result["log"]
    assert log[-1] == ("synchronize", -1)  # queued work finished before the buffers go back
    assert [k for what, k in log if what == "enqueue"] == [0, 1, 2]  # stopped after the 3rd tile
    # host outputs: nothing written after the callback raised
    if outputs == "host":
        assert [k for what, k in log if what == "retire"] == [0, 1]


def test_loop_progress_reallocating_the_output_stops():
    out = [np.full((30, 30), np.nan)]

    def resize(done, total):
        out[0].resize((31, 30), refcheck=False)

    result = _cuda._simulate(30, 30, 8, True, "host", out, progress=resize)
    assert isinstance(result["error"], RuntimeError)
    assert "resized or reallocated the output" in str(result["error"])
    assert result["log"][-1] == ("synchronize", -1)


def test_loop_poll_interval():
    seen = []
    _, result = _simulate(64, None, 4, "host", 1, progress=lambda d, t: seen.append(d),
                          poll_interval=3600.0)
    assert result["error"] is None and len(seen) == 1  # only the final (total, total)


# ----------------------------------------------------------------------------------------------
# The plan's sizes and defaults (host code only: no CUDA call before row_stats).

def _reference_tile(requested, n1, n2, itemsize, outputs, n_outputs, symmetric, free):
    """The tile rule of the former Python driver."""
    if requested:
        tile = requested
    elif outputs == "host":
        per_entry = n_outputs * (2 if symmetric else 1) * itemsize
        fitting = (256 << 20) // per_entry
        if free > 0:  # two staging slots and the GEMM buffer in half the free memory
            fitting = min(fitting, free // 2 // (2 * per_entry + itemsize))
        tile = max(256, math.isqrt(fitting) // 256 * 256)
    else:
        tile = min(8192, max(256, math.isqrt(max(free // 4, 1) // itemsize) // 256 * 256))
    return max(1, min(tile, max(n1, n2), 65535 * 32))


@pytest.mark.parametrize("requested", [0, 1, 100, 10 ** 8])
@pytest.mark.parametrize("outputs", ["device", "host"])
@pytest.mark.parametrize("free", [0, 10 ** 6, 10 ** 8, 1 << 30, 1 << 34])
def test_choose_tile(requested, outputs, free):
    for n1, n2 in ((10, 3), (100_000, 100_000), (3, 50_000), (5_000_000, 7)):
        for itemsize in (4, 8):
            for n_outputs, symmetric in ((1, True), (2, True), (2, False)):
                args = (requested, n1, n2, itemsize, outputs, n_outputs, symmetric, free)
                assert _cuda.choose_tile(*args) == _reference_tile(*args), args
    assert _cuda.choose_tile(0, 10 ** 6, 10 ** 6, 4, "host", 2, True, 0) == 4096
    assert _cuda.choose_tile(0, 10 ** 6, 10 ** 6, 4, "device", 1, True, 1 << 40) == _cuda.DEVICE_TILE
    # host outputs on a nearly full GPU: the device buffers of the default tile fit in half of it
    for free in (10 ** 8, 1 << 30):
        for itemsize, n_outputs, symmetric in ((4, 2, True), (8, 1, False)):
            args = (0, 10 ** 6, 10 ** 6, itemsize, "host", n_outputs, symmetric)
            tile, unknown = _cuda.choose_tile(*args, free), _cuda.choose_tile(*args, 0)
            slot = tile * tile * n_outputs * (2 if symmetric else 1) * itemsize
            assert 256 <= tile <= unknown and 2 * slot + tile * tile * itemsize <= free // 2, (free, tile)
    assert _cuda.choose_tile(0, 10 ** 6, 10 ** 6, 4, "host", 2, True, 10 ** 8) == 1024


def _plan(**changes):
    kw = dict(ops=[(0, 0, 0, [1.0, 0.0, 0.0, 0.0, 1.0]), (2, 0, 0, [0.1, 0.5])], pool=[], dtype="float32",
              n1=100, n2=100, d=7, symmetric=True, nngp=True, ntk=True, tile=32, outputs="host",
              device=0, free_bytes=0, snap_tol=1e-6)
    kw.update(changes)
    return _cuda.GramPlan(**kw)


def _align(n):
    return -(-max(n, 1) // 256) * 256


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("outputs", ["device", "host", "none"])
@pytest.mark.parametrize("ntk", [True, False])
def test_plan_workspace_layout(symmetric, outputs, ntk):
    plan = _plan(symmetric=symmetric, outputs=outputs, ntk=ntk, n2=100 if symmetric else 45)
    n_ops, stride, itemsize = 2, 128, 4
    per_set = (_align(8 * (n_ops + 1) * stride) * 2 + (_align(8 * stride) if ntk else 0)
               + _align(4 * stride) + _align(4 * (n_ops + 1) * stride))
    want = _align(2 * 64) + _align(0) + _align(16) + per_set * (1 if symmetric else 2)
    n_outputs = 2 if ntk else 1
    slot = 32 * 32 * (2 if symmetric else 1) * n_outputs * itemsize
    if outputs != "none":
        want += _align(32 * 32 * itemsize)
    if outputs == "host":
        want += _align(2 * slot)
    assert plan.workspace_bytes == want
    assert plan.pinned_bytes == (2 * slot if outputs == "host" else 0)
    assert plan.tile == 32 and plan.scaled_bytes == 0
    assert plan.tiles_total == (0 if outputs == "none" else (10 if symmetric else 8))


def test_plan_arguments_are_checked_before_any_cuda_call():
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        _plan(dtype="float16")
    with pytest.raises(ValueError, match="outputs must be 'device', 'host' or 'none'"):
        _plan(outputs="disk")
    with pytest.raises(ValueError, match="no kernel requested"):
        _plan(nngp=False, ntk=False)
    with pytest.raises(ValueError, match="negative size"):
        _plan(n1=-1)
    with pytest.raises(ValueError, match="unknown kind"):
        _plan(ops=[(99, 0, 0, [])])
    with pytest.raises(ValueError, match="32-bit"):
        _plan(d=2 ** 31)
    plan = _plan()
    with pytest.raises(ValueError, match="call row_stats with this workspace first"):
        plan.run(x1=8, x2=0, workspace=4096, scaled=0, nngp=np.empty((100, 100), np.float32),
                 ntk=np.empty((100, 100), np.float32), pinned=8, stream=0, cublas=8, progress=None)
    with pytest.raises(ValueError, match="no workspace"):
        plan.row_stats(x1=8, x2=0, workspace=0, stream=0)
    with pytest.raises(ValueError, match="x2 must be given exactly for a cross Gram"):
        plan.row_stats(x1=8, x2=16, workspace=4096, stream=0)
    with pytest.raises(ValueError, match="C-contiguous native array of the plan's shape and dtype"):
        plan.run(x1=8, x2=0, workspace=4096, scaled=0, nngp=np.empty((100, 100)), ntk=None, pinned=8,
                 stream=0, cublas=8, progress=None)
    with pytest.raises(ValueError, match="write_diagonal: call row_stats"):
        plan.write_diagonal(workspace=4096, nngp=8, ntk=0, stream=0)


def test_cublas_is_resolved_at_run_time():
    """Found (where CuPy or a toolkit provides it), or a clear error naming the library."""
    if _cuda_probe.device_problem() is None:  # as GramPlan.run: CuPy loads its cuBLAS first
        import cupy

        cupy.cuda.device.get_cublas_handle()
    try:
        path = _cuda._load_cublas()
    except RuntimeError as error:
        assert "could not load libcublas.so." in str(error) and "CuPy" in str(error)
    else:
        assert "libcublas" in path
    assert _cuda.build_info()["cublas"].startswith("libcublas.so.")


# ----------------------------------------------------------------------------------------------
# 3. The Python glue, on a CuPy stand-in and a GramPlan stand-in.

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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeMemoryPool:
    def free_bytes(self):
        return 0

    def used_bytes(self):
        return 0

    def get_limit(self):
        return 0


def _make_fake_cupy(free_bytes):
    cp = types.ModuleType("cupy")
    cp.ndarray = FakeArray
    cp.empty = lambda shape, dtype=np.float64: _fake(np.empty(shape, dtype=dtype))
    cp.asarray = lambda a, dtype=None: _fake(np.array(a, dtype=dtype, copy=True))
    cp.ascontiguousarray = lambda a, dtype=None: _fake(np.ascontiguousarray(a, dtype=dtype))
    cp.may_share_memory = np.may_share_memory
    cp.isfinite = lambda a: _fake(np.isfinite(a))
    cp.argmax = np.argmax
    cp.get_default_memory_pool = FakeMemoryPool
    stream = types.SimpleNamespace(ptr=0x5EED)
    pinned = types.SimpleNamespace(ptr=0xB0B)
    cp.cuda = types.SimpleNamespace(
        Device=FakeDevice, get_current_stream=lambda: stream,
        alloc_pinned_memory=lambda nbytes: pinned,
        device=types.SimpleNamespace(get_cublas_handle=lambda: 0xC0B),
        memory=types.SimpleNamespace(OutOfMemoryError=type("OutOfMemoryError", (MemoryError,), {})),
        runtime=types.SimpleNamespace(memGetInfo=lambda: (free_bytes, free_bytes),
                                      CUDARuntimeError=RuntimeError))
    return cp


def _view(address, dtype, shape):
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    buf = (ctypes.c_char * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)


class FakePlan:
    """GramPlan's interface; the 'kernels' are NNGP = x·x'/d, NTK = 2 NNGP, diagonal q and 2q."""

    instances = []
    workspace_bytes_value = 4096
    scaled_bytes_after_stats = 0
    series_report_value = (0.5, 0)  # what series_report returns: (tail bound, fallback entries)

    def __init__(self, **kw):
        self.kw = kw
        self.tile = kw["tile"] or 64
        self.workspace_bytes = FakePlan.workspace_bytes_value
        self.pinned_bytes = 8192 if kw["outputs"] == "host" else 0
        self.calls = []
        FakePlan.instances.append(self)

    def _rows(self, x1, x2):
        kw = self.kw
        a = _view(x1, kw["dtype"], (kw["n1"], kw["d"])).astype(np.float64)
        return a, a if x2 == 0 else _view(x2, kw["dtype"], (kw["n2"], kw["d"])).astype(np.float64)

    @property
    def has_series(self):
        return self.kw.get("series_rows", 0) > 0

    def row_stats(self, *, x1, x2, workspace, stream, series1=None, series2=None):
        assert workspace and stream == 0x5EED and (x2 == 0) == self.kw["symmetric"]
        assert (series1 is not None) == self.has_series
        assert (series2 is not None) == (self.has_series and not self.kw["symmetric"])
        self.series = (series1, series2)
        self.x = _view(x1, self.kw["dtype"], (self.kw["n1"], self.kw["d"])).astype(np.float64)
        self.calls.append("row_stats")
        return self.scaled_bytes_after_stats

    def run(self, *, x1, x2, workspace, scaled, nngp, ntk, pinned, stream, cublas, progress):
        kw = self.kw
        assert self.calls == ["row_stats"] and cublas == 0xC0B and stream == 0x5EED
        assert (scaled != 0) == (self.scaled_bytes_after_stats > 0)
        assert (pinned == 0xB0B) == (kw["outputs"] == "host")
        self.calls.append("run")
        a, b = self._rows(x1, x2)
        f = a @ b.T / kw["d"]
        for value, out, wanted in ((f, nngp, kw["nngp"]), (2 * f, ntk, kw["ntk"])):
            assert (out is not None) == wanted
            if out is None:
                continue
            if kw["outputs"] == "host":
                assert type(out) is not FakeArray and isinstance(out, np.ndarray)
                out[...] = value
            else:
                _view(out, kw["dtype"], (kw["n1"], kw["n2"]))[...] = value
        if progress is not None:
            progress(3, 3)

    def series_report(self, *, workspace, stream):
        assert self.has_series and self.calls == ["row_stats", "run"] and stream == 0x5EED
        self.calls.append("series_report")
        return self.series_report_value

    def write_diagonal(self, *, workspace, nngp, ntk, stream):
        n, d, dtype = self.kw["n1"], self.kw["d"], self.kw["dtype"]
        q = (self.x ** 2).sum(1) / d
        for value, out in ((q, nngp), (2 * q, ntk)):
            if out:
                _view(out, dtype, (n,))[...] = value


@pytest.fixture
def fake(monkeypatch):
    cp = _make_fake_cupy(free_bytes=1 << 34)
    FakePlan.instances = []
    FakePlan.workspace_bytes_value = 4096
    FakePlan.scaled_bytes_after_stats = 0
    FakePlan.series_report_value = (0.5, 0)
    module = types.SimpleNamespace(GramPlan=FakePlan, DEVICE_TILE=_cuda.DEVICE_TILE,
                                   choose_tile=_cuda.choose_tile)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "ntkfast._cuda", module)
    monkeypatch.setattr(nf, "_cuda", module, raising=False)
    monkeypatch.setattr(_cuda_probe, "cuda_unavailable_reason", lambda: None)
    yield cp


def _want(x1, x2=None):
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    f = x1 @ x2.T / x1.shape[1]
    return f, 2 * f


@pytest.mark.parametrize("n1,n2,tile", [(50, None, 7), (50, 23, 0), (1, None, 4), (1, 5, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_outputs(fake, rng, n1, n2, tile, dtype):
    x1 = rng.standard_normal((n1, 6)).astype(dtype)
    x2 = None if n2 is None else rng.standard_normal((n2, 6)).astype(dtype)
    got = nf.gram(_fake(x1), None if x2 is None else _fake(x2), net=NET, tile_size=tile or None)
    assert isinstance(got.nngp, FakeArray) and got.nngp.dtype == dtype
    for value, want in zip((got.nngp, got.ntk), _want(x1, x2)):
        np.testing.assert_allclose(value.get(), want, rtol=1e-6)
    kw = FakePlan.instances[-1].kw
    assert (kw["symmetric"], kw["outputs"], kw["tile"], kw["n2"]) == (n2 is None, "device", tile, n2 or n1)
    assert kw["free_bytes"] == (0 if tile else 1 << 34)  # only the default tile needs it
    assert kw["snap_tol"] == nf._core.snap_tolerance(np.dtype(dtype).name, 6)


@pytest.mark.parametrize("outputs", ["device", "host"])
def test_deep_programs_get_tiles_within_the_work_budget(fake, rng, outputs):
    """The default tile of a deep program holds at most GPU_TILE_WORK_BUDGET of layer work (the
    engine polls Ctrl-C between tiles); shallow ones keep the engine's default, tile_size wins."""
    from ntkfast import _layers, _program

    x, y = _fake(rng.standard_normal((3, 4))), _fake(rng.standard_normal((9000, 4)))
    out = {} if outputs == "device" else {"out": nf.Kernels(np.empty((3, 9000)), np.empty((3, 9000)))}
    engine = _cuda.choose_tile(0, 3, 9000, 8, outputs, 2, False, 1 << 34)
    budget, bounded = _program.GPU_TILE_WORK_BUDGET, 0
    for depth, kind in ((20, "erf"), (25, "tanh"), (2000, "erf"), (5000, "relu"), (40000, "erf")):
        net = nf.MLP(depth, kind)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a Series net's truncation report from the fake plan
            nf.gram(x, y, net=net, **out)
        tile = FakePlan.instances[-1].kw["tile"]
        work = _program.tile_work(_layers.lower(net, 4)[0])
        if engine ** 2 * work <= budget:  # the engine's default: 8192 on device, 4096 streamed
            assert tile == 0, depth
            continue
        bounded += 1
        assert 0 < tile < engine and tile % 32 == 0, (depth, tile)
        assert tile ** 2 * work <= budget < (tile + 256) ** 2 * work, depth
        nf.gram(x, y, net=net, tile_size=8192, **out)
        assert FakePlan.instances[-1].kw["tile"] == 8192
    assert (bounded, engine) == ((4, 8192) if outputs == "device" else (3, 4096))


def test_work_space_beyond_the_free_gpu_memory(fake, rng, monkeypatch):
    """A work space larger than the free GPU memory is a MemoryError before allocating, naming
    what fills it: the per-row tables (deep nets, many points) or the tiles' buffers."""
    x = _fake(rng.standard_normal((50, 3)))
    monkeypatch.setattr(fake.cuda.runtime, "memGetInfo", lambda: (10 ** 6, 10 ** 6))
    FakePlan.workspace_bytes_value = 10 ** 7
    deep = nf.MLP(3000, "relu")  # 6001 ops: tables of 6002 x 64 x 20 bytes = 7.7 MB
    for call, what in ((lambda: nf.gram(x, net=deep), "gram"), (lambda: nf.diagonal(x, net=deep), "diagonal")):
        with pytest.raises(MemoryError, match=rf"^{what}: the per-row variance tables for 50 x1? points through "
                                               r"the 6001 ops of net need 10\.0 MB, more than the 1\.0 MB of "
                                               r"free memory on GPU 0 .*shallower net"):
            call()
    with pytest.raises(MemoryError, match=r"^gram needs 10\.0 MB of GPU work space for tiles of 64 x 64 "
                                          r".*1\.0 MB of free memory on GPU 0; pass a smaller tile_size"):
        nf.gram(x, net=NET)
    FakePlan.workspace_bytes_value = 10 ** 5  # fits
    np.testing.assert_allclose(nf.gram(x, net=NET).ntk.get(), _want(x.get())[1])


def test_host_output_checks_read_the_mappings_once(fake, rng, monkeypatch, tmp_path):
    """Both host outputs' checks and their disjointness check share one read of /proc/self/maps,
    and a second memory map of an output's file is still caught."""
    from ntkfast import _cuda_backend, _validation

    reads = []
    monkeypatch.setattr(_cuda_backend, "file_mappings",
                        lambda: reads.append(1) or _validation.file_mappings())
    x = _fake(rng.standard_normal((20, 3)))
    out = nf.Kernels(np.memmap(tmp_path / "k", np.float64, "w+", shape=(20, 20)), np.empty((20, 20)))
    nf.gram(x, net=NET, out=out)
    assert len(reads) == 1
    np.testing.assert_allclose(np.asarray(out.ntk), _want(x.get())[1])
    same = np.memmap(tmp_path / "k", np.float64, "r+", shape=(20, 20))
    with pytest.raises(ValueError, match="map the same part of the file"):
        nf.gram(x, net=NET, out=nf.Kernels(out.nngp, same))


def test_input_checks_run_on_the_arrays_device(fake, rng, monkeypatch):
    """The finiteness and dtype-range reductions of a CuPy input run on its own device, not on
    the current one (another GPU's array there needs peer access, or fails)."""
    entered = []

    class RecordingDevice(FakeDevice):
        def __enter__(self):
            entered.append(self.id)
            return self

    monkeypatch.setattr(FakeArray, "device", property(lambda self: RecordingDevice(1)))
    x = rng.standard_normal((5, 3))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"contains 1 non-finite value\(s\) \(NaN or Inf\), first at x1?\[2, 1\]"):
        nf.gram(_fake(x), net=NET)
    assert entered == [1]
    entered.clear()
    with pytest.raises(ValueError, match="beyond the range of float32"):
        nf.gram(_fake(np.full((5, 3), 1e300)), net=NET, dtype=np.float32)
    assert entered and set(entered) == {1}


def test_iterative_solvers_refuse_cupy_points(fake, rng):
    """The iterative solvers run on the CPU: a KernelOperator of CuPy points, or CuPy x_train with
    solver='cg'/'lanczos', is a TypeError that says what to pass (not CuPy's refusal of an
    implicit conversion from deep inside a solver)."""
    from ntkfast import predict

    x, y = rng.standard_normal((30, 3)), rng.standard_normal((30, 1))
    op = nf.KernelOperator(_fake(x), net=NET, backend="cuda", storage="recompute")
    for solver in ("cg", "lanczos", "auto"):
        with pytest.raises(TypeError, match="^k_train_train: the iterative solvers run on the CPU, and "
                                            "this operator holds CuPy points; build it from NumPy"):
            predict.gradient_descent_mse(op, y, solver=solver)
    for solver in ("cg", "lanczos"):
        with pytest.raises(TypeError, match=f"^x_train: solver='{solver}' runs on the CPU, and x_train "
                                            "is a CuPy array; pass NumPy points"):
            predict.gradient_descent_mse_ensemble(NET, _fake(x), y, solver=solver)
    # NumPy points computed by the CUDA backend are the iterative path's
    op = nf.KernelOperator(x, net=NET, backend="cuda", storage="recompute")
    got = predict.gradient_descent_mse(op, y, solver="lanczos", tol=1e-12)(2.0)
    want = predict.gradient_descent_mse(_want(x)[1], y)(2.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cross", [False, True])
def test_host_outputs_and_memmap(fake, rng, tmp_path, cross):
    x1 = rng.standard_normal((41, 5))
    x2 = rng.standard_normal((19, 5)) if cross else None
    n2 = 19 if cross else 41
    out = nf.Kernels(np.full((41, n2), np.nan), np.memmap(tmp_path / "k", np.float64, "w+", shape=(41, n2)))
    seen = []
    got = nf.gram(_fake(x1), None if x2 is None else _fake(x2), net=NET, out=out,
                  progress=lambda d, t: seen.append((d, t)))
    assert got.nngp is out.nngp and got.ntk is out.ntk and seen == [(3, 3)]
    kw = FakePlan.instances[-1].kw
    assert kw["outputs"] == "host" and kw["tile"] == 0
    assert kw["free_bytes"] == 1 << 34  # the default tile's device buffers fit what is free
    for value, want in zip(got, _want(x1, x2)):
        np.testing.assert_allclose(np.asarray(value), want, rtol=1e-12)
    # NumPy inputs without out=: computed on the GPU, NumPy results (streamed)
    got = nf.gram(x1, x2, net=NET, backend="cuda")
    assert type(got.nngp) is np.ndarray and FakePlan.instances[-1].kw["outputs"] == "host"


def test_get_variants_and_out_forms(fake, rng):
    x = _fake(rng.standard_normal((12, 3)))
    nngp, ntk = _want(x)
    np.testing.assert_allclose(nf.gram(x, net=NET, get="ntk").get(), ntk)
    assert FakePlan.instances[-1].kw["nngp"] is False
    out = _fake(np.empty((12, 12)))
    assert nf.gram(x, net=NET, get="nngp", out=out) is out
    np.testing.assert_allclose(out.get(), nngp)
    host = np.empty((12, 12))
    k = nf.gram(x, net=NET, out={"ntk": host})
    assert k.ntk is host and type(k.nngp) is np.ndarray  # the missing one follows out='s kind
    np.testing.assert_allclose(k.nngp, nngp)


def test_float32_rows_outside_the_gemm_range_reach_the_engine(fake, rng):
    """No longer refused in Python: the engine GEMMs scaled copies (memory from CuPy)."""
    FakePlan.scaled_bytes_after_stats = 1024
    x = _fake((rng.standard_normal((6, 3)) * 1e-12).astype(np.float32))  # |x|² ~ 1e-24 < 2^-60
    got = nf.gram(x, net=NET, get="nngp")
    assert FakePlan.instances[-1].calls == ["row_stats", "run"] and got.shape == (6, 6)


def test_diagonal(fake, rng):
    x = rng.standard_normal((9, 4)).astype(np.float32)
    d = nf.diagonal(_fake(x), net=NET)
    q = (x.astype(np.float64) ** 2).sum(1) / 4
    assert isinstance(d.nngp, FakeArray) and d.nngp.dtype == np.float32
    np.testing.assert_array_equal(d.nngp.get(), q.astype(np.float32))
    np.testing.assert_array_equal(d.ntk.get(), (2 * q).astype(np.float32))
    assert FakePlan.instances[-1].kw["outputs"] == "none"
    assert nf.diagonal(_fake(np.empty((0, 4))), net=NET, get="ntk").shape == (0,)


def test_validation_messages(fake, rng):
    x = _fake(rng.standard_normal((8, 5)))
    with pytest.raises(ValueError, match=r"out must have shape \(8, 8\) and dtype float64, got shape \(8, 7\)"):
        nf.gram(x, net=NET, get="ntk", out=_fake(np.empty((8, 7))))
    with pytest.raises(ValueError, match="C-contiguous"):
        nf.gram(x, net=NET, get="ntk", out=_fake(np.empty((8, 8), order="F")))
    with pytest.raises(TypeError, match="all be CuPy arrays or all host arrays"):
        nf.gram(x, net=NET, out=(_fake(np.empty((8, 8))), np.empty((8, 8))))
    both = _fake(np.empty((8, 8)))
    with pytest.raises(ValueError, match="overlap"):
        nf.gram(x, net=NET, out=(both, both))
    square = _fake(rng.standard_normal((8, 8)))
    with pytest.raises(ValueError, match="overlaps an input"):
        nf.gram(square, net=NET, get="ntk", out=square)
    with pytest.raises(TypeError, match="both be CuPy arrays or both host arrays"):
        nf.gram(x, np.ones((2, 5)), net=NET)
    bad = rng.standard_normal((8, 5))
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"x1 contains 1 non-finite value.*x1\[2, 3\] = inf"):
        nf.gram(_fake(bad), net=NET)
    assert not FakePlan.instances  # every check before any plan


def test_output_larger_than_gpu_memory(monkeypatch, fake, rng):
    monkeypatch.setitem(sys.modules, "cupy", _make_fake_cupy(free_bytes=10_000))
    x = _fake(rng.standard_normal((100, 3)))
    with pytest.raises(MemoryError, match=r"2 arrays of 100 x 100 float64 = 160\.0 KB on GPU 0, more "
                                          r"than the 10\.0 KB of free GPU memory; pass out= host arrays"):
        nf.gram(x, net=NET)
    assert not FakePlan.instances  # raised before any work
    out = nf.Kernels(np.empty((100, 100)), np.empty((100, 100)))
    nf.gram(x, net=NET, out=out, tile_size=32)  # streamed instead
    np.testing.assert_allclose(out.ntk, _want(x)[1])


def test_unavailable_backend_says_why(monkeypatch, rng):
    monkeypatch.setattr(_cuda_probe, "cuda_unavailable_reason", lambda: "no CUDA device (test)")
    with pytest.raises(nf.BackendUnavailableError, match=r"not available: no CUDA device \(test\)"):
        nf.gram(rng.standard_normal((3, 2)), net=NET, backend="cuda")
    with pytest.raises(nf.BackendUnavailableError, match="no CUDA device"):
        nf.diagonal(_fake(np.ones((2, 2))), net=NET, get="ntk")


# Hermite-series activations (Series ops): the host side of the CUDA backend.
SERIES_NET = nf.serial(nf.Dense(W_std=1.4, b_std=0.1), nf.Tanh(deg=96), nf.Dense(W_std=1.2),
                       nf.Elu(0.7, deg=64), nf.Dense())


def _series_want(net, x1, x2, dtype):
    from ntkfast._layers import lower, series_activations
    from ntkfast._series import series_inputs

    ops, pool, _ = lower(net, x1.shape[1])
    return series_inputs(series_activations(net), ops, pool, x1.astype(dtype),
                         None if x2 is None else x2.astype(dtype), None, dtype)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_series_inputs_reach_the_plan(fake, rng, cross, dtype):
    """The plan gets series_inputs's program (the Series ops' stored terms), profiles and
    fallback records, and row_stats the tables of each point set, as the CPU backend builds
    them: bit for bit from NumPy rows; from each CuPy row's variance alone (N values to the
    host), equal up to the rounding of that variance."""
    x1 = rng.standard_normal((29, 5)) * rng.uniform(0.2, 3.0, (29, 1))
    x1[7] = x1[3]  # a duplicate row: its own column of coefficients, equal to the original's
    x2 = rng.standard_normal((11, 5)) if cross else None
    want = _series_want(SERIES_NET, x1, x2, dtype)
    for inputs, exact in (((_fake(x1.astype(dtype)), None if x2 is None else _fake(x2.astype(dtype))),
                           False),
                          ((x1.astype(dtype), x2 if x2 is None else x2.astype(dtype)), True)):
        nf.gram(*inputs, net=SERIES_NET, backend="cuda")
        plan = FakePlan.instances[-1]
        kw = plan.kw
        assert plan.calls == ["row_stats", "run", "series_report"]
        assert kw["ops"] == [(k, deg, off, list(p)) for k, deg, off, p in want.ops]
        assert kw["series_rows"] == want.tables1.shape[0] and kw["fallback_above"] == want.fallback_above
        np.testing.assert_array_equal(kw["fallbacks"], want.fallbacks)
        for got, table, rows in zip(plan.series, (want.tables1, want.tables2), (x1, x2)):
            if table is None:
                assert got is None
            elif exact:
                np.testing.assert_array_equal(got, table)
            else:
                n = rows.shape[0]
                np.testing.assert_allclose(got[:, :n], table[:, :n], rtol=1e-13, atol=1e-15)
        np.testing.assert_array_equal(plan.series[0][:, 7], plan.series[0][:, 3])
        if exact:
            np.testing.assert_array_equal(kw["profiles"], want.profiles)
        else:  # bounds in units of the tolerance, on tails that are differences of sums
            np.testing.assert_allclose(kw["profiles"], want.profiles, rtol=1e-6, atol=1e-6)


def test_series_input_variances_are_summed_on_the_device_by_chunks(fake, rng, monkeypatch):
    from ntkfast import _cuda_backend

    monkeypatch.setattr(_cuda_backend, "_VARIANCE_CHUNK_BYTES", 8 * 5 * 4)  # 4 rows per chunk
    x = (rng.standard_normal((13, 5)) * 1e3).astype(np.float32)
    q = _cuda_backend._input_variances(fake, _fake(x))
    assert type(q) is np.ndarray and q.dtype == np.float64
    np.testing.assert_allclose(q, (x.astype(np.float64) ** 2).sum(1) / 5, rtol=1e-15)
    assert _cuda_backend._input_variances(fake, _fake(np.empty((3, 0)))).tolist() == [0.0] * 3


def test_series_warnings_from_the_engine_report(fake, rng):
    """The engine's largest tail bound and fallback count warn as on the CPU backend."""
    x = _fake(rng.standard_normal((20, 4)))
    FakePlan.series_report_value = (1e9, 0)
    with pytest.warns(RuntimeWarning, match="Hermite series was truncated"):
        nf.gram(x, net=SERIES_NET)
    FakePlan.series_report_value = (0.5, 20_000)
    with pytest.warns(RuntimeWarning, match="computed by 2-D quadrature"):
        nf.gram(x, net=SERIES_NET)
    FakePlan.series_report_value = (0.5, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nf.gram(x, net=SERIES_NET)
    nf.gram(x, net=NET)  # no Series op: no report asked for
    assert FakePlan.instances[-1].calls == ["row_stats", "run"]


def test_series_diagonal(fake, rng):
    x = rng.standard_normal((9, 4))
    nf.diagonal(_fake(x), net=SERIES_NET)
    plan = FakePlan.instances[-1]
    want = _series_want(SERIES_NET, x, None, np.float64)
    assert plan.kw["outputs"] == "none" and plan.kw["series_rows"] == want.tables1.shape[0]
    assert plan.series[1] is None
    np.testing.assert_allclose(plan.series[0][:, :9], want.tables1[:, :9], rtol=1e-13, atol=1e-15)


def _series_plan(**changes):
    want = _series_want(SERIES_NET, np.random.default_rng(3).standard_normal((10, 5)), None,
                        np.float64)
    kw = dict(ops=[(k, deg, off, list(p)) for k, deg, off, p in want.ops], pool=[],
              dtype="float64", n1=10, n2=10, d=5, symmetric=True, nngp=True, ntk=True, tile=32,
              outputs="device", device=0, free_bytes=0, snap_tol=1e-12,
              series_rows=want.tables1.shape[0], profiles=want.profiles,
              fallbacks=want.fallbacks, fallback_above=want.fallback_above)
    kw.update(changes)
    return _cuda.GramPlan(**kw), want


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("outputs", ["device", "none"])
def test_series_plan_workspace_layout(symmetric, outputs):
    plan, want = _series_plan(symmetric=symmetric, outputs=outputs)
    base = _plan(ops=plan_ops(want), pool=[], dtype="float64", n1=10, n2=10, d=5,
                 symmetric=symmetric, outputs=outputs, tile=32)
    rows, stride = want.tables1.shape[0], 32
    extra = _align(8 * rows * stride) * (1 if symmetric else 2)
    extra += _align(8 * want.profiles.size) + _align(8 * want.fallbacks.size)
    extra += _align(8 * (2 * 12 + 2 * 6 * 24 + 6) + 4 * 6)  # FallbackRules
    extra += _align(24)  # the report
    if outputs != "none":
        extra += _align(4 * (32 * 32 // 32))  # a bit per entry of a tile
    assert plan.has_series and not base.has_series
    assert plan.workspace_bytes == base.workspace_bytes + extra


def plan_ops(want):
    """The program of `want` with Identity ops for its Series ops (the same tables otherwise)."""
    identity = (nf._core.OP_KINDS["Identity"], 0, 0, [])
    return [identity if k == nf._core.OP_KINDS["Series"] else (k, deg, off, list(p))
            for k, deg, off, p in want.ops]


def test_series_plan_arguments_are_checked_before_any_cuda_call():
    plan, want = _series_plan()
    series = nf._core.OP_KINDS["Series"]
    ops = [(k, deg, off, list(p)) for k, deg, off, p in want.ops]
    with pytest.raises(ValueError, match="Series op 1: its tables lie outside the series_rows"):
        _series_plan(series_rows=0)
    with pytest.raises(ValueError, match="series_rows must be given exactly"):
        _plan(series_rows=8)
    with pytest.raises(ValueError, match="tables lie outside the series_rows"):
        _series_plan(series_rows=want.tables1.shape[0] - 1)
    with pytest.raises(ValueError, match="no tail profile"):
        _series_plan(profiles=want.profiles[:, :10])
    with pytest.raises(ValueError, match="no tail profile"):
        _series_plan(profiles=want.profiles[:1])
    bad = want.fallbacks.copy()
    bad[1, 0] = 2.0  # kinked flag neither 0 nor 1
    with pytest.raises(ValueError, match="Series op 3: malformed fallback record"):
        _series_plan(fallbacks=bad)
    with pytest.raises(ValueError, match="fallback_above >= 1"):
        _series_plan(fallback_above=0.5)
    with pytest.raises(ValueError, match="bad degree"):
        _series_plan(ops=[op if op[0] != series else (series, 1025, 0, op[3]) for op in ops])
    _series_plan(fallbacks=np.array([[-1.0], [-1.0]]))  # no fallback records: accepted
    _series_plan(fallbacks=None)
    for tables in ({}, dict(series1=want.tables1[:-1]), dict(series1=want.tables1[:, :9]),
                   dict(series1=want.tables1, series2=want.tables1)):
        with pytest.raises(ValueError, match="Series tables must be given exactly"):
            plan.row_stats(x1=8, x2=0, workspace=4096, stream=0, **tables)
    with pytest.raises(ValueError, match="series_report: call row_stats"):
        plan.series_report(workspace=4096, stream=0)
    with pytest.raises(ValueError, match="no Series op"):
        _plan().series_report(workspace=4096, stream=0)


@pytest.mark.parametrize("net", [nf.MLP(2, nf.Elu(0.7, deg=16), W_std=1.5, b_std=0.2),
                                 nf.MLP(2, nf.Tanh(deg=24), W_std=1.5, b_std=0.2),
                                 SERIES_NET,
                                 nf.serial(nf.Dense(W_std=1.4, b_std=0.1), nf.Silu(), nf.Dense(),
                                           nf.Relu(), nf.Dense(W_std=1.3), nf.Softplus(beta=2.0),
                                           nf.Dense())],
                         ids=["elu-deg16", "tanh-deg24", "tanh-elu", "silu-relu-softplus"])
@pytest.mark.parametrize("cross", [False, True])
def test_series_entries_of_the_cuda_kernels_on_the_host(rng, monkeypatch, net, cross):
    """The CUDA engine's per-entry code for programs with Series ops (series_math.hpp's
    series_program_entry: per-entry terms, Horner sums, duplicates, the fallback choice and the
    quadrature itself), run on the host by _cuda._series_gram_host, against the CPU engine:
    float64 within rtol 1e-12 (+1e-13 max|K|), the same entries by 2-D quadrature."""
    from ntkfast import _series

    counts = []
    monkeypatch.setattr(_series.SeriesInputs, "warn_if_slow",
                        lambda self, pairs, entries: counts.append(pairs))
    from ntkfast._layers import lower, series_activations

    kinked = any(layer._kinked_at_zero for layer in series_activations(net))
    x = near_parallel_points(rng, 24, kinked)
    y = near_parallel_points(rng, 13, kinked) if cross else None
    want = nf.gram(x, y, net=net, backend="cpu")
    inputs = _series_want(net, x, y, np.float64)
    _, pool, _ = lower(net, 9)
    nngp, ntk, bound, fallbacks = _cuda._series_gram_host(
        ops=[(k, deg, off, list(p)) for k, deg, off, p in inputs.ops], pool=list(pool), x1=x,
        x2=y, tables1=inputs.tables1, tables2=inputs.tables2, profiles=inputs.profiles,
        fallbacks=inputs.fallbacks, fallback_above=inputs.fallback_above,
        snap_tol=nf._core.snap_tolerance("float64", 9))
    for got, expected in ((nngp, want.nngp), (ntk, want.ntk)):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13 * np.abs(expected).max())
    if y is None:
        assert np.array_equal(ntk, ntk.T) and ntk[9, 10] == ntk[9, 9]
    assert fallbacks == counts[-1]
    assert fallbacks > 0 or min(layer.deg for layer in series_activations(net)) > 24
    assert 0 <= bound <= inputs.fallback_above
