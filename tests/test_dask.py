"""ntkfast.dask: Gram matrices as Dask arrays, and the distributed KernelOperator (in-process
workers here, for speed; test_dask_processes.py runs worker processes)."""
import gc
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ntkfast

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import dask  # noqa: E402

import ntkfast.dask as nd  # noqa: E402

NET = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)
#: Products: the same engine blocks as in-process, summed in another order (the order the tasks
#: finish), so they agree to a few ulps of the row sums; 1e-10 relative is the contract.
PRODUCT_RTOL = 1e-10


@pytest.fixture(scope="module")
def client():
    # set_as_default=False: tests choose the scheduler explicitly, and "no client" is testable.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(20261130)
    return rng.standard_normal((230, 12)), rng.standard_normal((170, 12))


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def engine_keys(arr):
    """Keys of the engine calls (the tasks named ntkfast-engine-<token>, i, j) in a graph."""
    return {k for k in dict(arr.__dask_graph__()) if isinstance(k, tuple) and len(k) == 3
            and isinstance(k[0], str) and k[0].startswith("ntkfast-engine-")}


# ----------------------------------------------------------------------------------------------
# Import.

def _python(code):
    env = dict(os.environ, PYTHONWARNINGS="error")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=120)


def test_import_ntkfast_does_not_import_dask():
    run = _python("""
        import sys, ntkfast
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))
        assert not loaded, loaded
        sys.modules['dask'] = None  # as if not installed
        try:
            import ntkfast.dask
        except ImportError as e:
            print(e)
        else:
            raise SystemExit('no ImportError')
    """)
    assert run.returncode == 0, run.stderr
    assert "pip install 'ntkfast[dask]'" in run.stdout


def test_missing_distributed_only_disables_the_operator():
    run = _python("""
        import sys
        sys.modules['distributed'] = None  # dask without distributed
        import numpy as np, ntkfast, ntkfast.dask
        x = np.random.default_rng(0).standard_normal((50, 3))
        k = ntkfast.dask.gram(x, net=ntkfast.MLP(2, 'relu'), chunks=20).compute()
        assert np.array_equal(k, k.T)
        try:
            ntkfast.dask.KernelOperator(x, net=ntkfast.MLP(2, 'relu'))
        except ImportError as e:
            print(e)
        else:
            raise SystemExit('no ImportError')
    """)
    assert run.returncode == 0, run.stderr
    assert "needs distributed: pip install 'ntkfast[dask]'" in run.stdout


# ----------------------------------------------------------------------------------------------
# gram.

def test_gram_symmetric_blocks(points):
    x, _ = points
    k = nd.gram(x, net=NET, chunks=60)
    assert isinstance(k, da.Array) and k.shape == (230, 230) and k.dtype == np.float64
    assert k.chunks == ((60, 60, 60, 50),) * 2
    # the engine runs once per block pair J >= I: 4·5/2 calls, not 16
    assert len(engine_keys(k)) == 10
    got = k.compute(scheduler="sync")
    np.testing.assert_array_equal(got, got.T)  # lower blocks are the upper blocks' transposes
    assert rel(got, ntkfast.gram(x, net=NET, get="ntk")) <= 1e-12
    assert rel(np.diag(got), ntkfast.diagonal(x, net=NET, get="ntk")) <= 1e-12


def test_gram_dask_input_keeps_row_chunks(points):
    x, _ = points
    xd = da.from_array(x, chunks=((100, 100, 30), (5, 7)))  # features in two chunks
    k = nd.gram(xd, net=NET, get="nngp")
    assert k.chunks == ((100, 100, 30),) * 2
    assert rel(k.compute(), ntkfast.gram(x, net=NET, get="nngp")) <= 1e-12
    assert nd.gram(xd, net=NET, chunks=(200, 30)).chunks == ((200, 30),) * 2


def test_gram_cross_and_kernels(points, client):
    x, x2 = points
    ks = nd.gram(da.from_array(x, chunks=(80, -1)), x2, net=NET, get=("nngp", "ntk"), chunks=75)
    assert isinstance(ks, ntkfast.Kernels)
    assert ks.ntk.chunks == ((75, 75, 75, 5), (75, 75, 20))
    # the two kernels share their engine calls: computed together, each call runs once
    assert engine_keys(ks.ntk) == engine_keys(ks.nngp) and len(engine_keys(ks.ntk)) == 12
    nngp, ntk = client.compute([ks.nngp, ks.ntk], sync=True)
    ref = ntkfast.gram(x, x2, net=NET)
    assert rel(nngp, ref.nngp) <= 1e-12 and rel(ntk, ref.ntk) <= 1e-12
    only = nd.gram(x, x2, net=NET, get=("ntk",))
    assert only.nngp is None and only.ntk.shape == (230, 170)


def test_gram_float32(points):
    x, x2 = points
    x32, x232 = x.astype(np.float32), x2.astype(np.float32)
    k = nd.gram(x32, x232, net=NET, chunks=64)
    assert k.dtype == np.float32
    got = k.compute()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ntkfast.gram(x32, x232, net=NET, get="ntk", tile_size=64))
    assert nd.gram(x32, net=NET, dtype=np.float64).dtype == np.float64


def test_gram_store_to_memmap_and_npy_stack(points, tmp_path):
    x, _ = points
    k = nd.gram(x, net=NET, chunks=100)
    out = np.lib.format.open_memmap(tmp_path / "k.npy", mode="w+", dtype=k.dtype, shape=k.shape)
    da.store(k, out, lock=True)
    out.flush()
    ref = ntkfast.gram(x, net=NET, get="ntk")
    assert rel(np.load(tmp_path / "k.npy"), ref) <= 1e-12
    da.to_npy_stack(tmp_path / "stack", k, axis=0)
    assert rel(da.from_npy_stack(tmp_path / "stack").compute(), ref) <= 1e-12


def test_gram_to_zarr(points, tmp_path):
    pytest.importorskip("zarr")
    x, _ = points
    k = nd.gram(x, net=NET, chunks=100)
    k.to_zarr(str(tmp_path / "k.zarr"))
    assert rel(da.from_zarr(str(tmp_path / "k.zarr")).compute(),
               ntkfast.gram(x, net=NET, get="ntk")) <= 1e-12


def test_gram_threads_per_task(client):
    # off a cluster: the engine's default; on a worker: the worker's threads (1 here); explicit:
    # as given
    assert nd._engine_threads(None)[0] is None
    assert nd._engine_threads(3)[0] == 3
    assert client.submit(lambda: nd._engine_threads(None)[0], pure=False).result() == 1


def test_gram_bad_input(points):
    x, x2 = points
    with pytest.raises(TypeError, match="x must be a dask.array.Array or a NumPy ndarray"):
        nd.gram(x.tolist(), net=NET)
    with pytest.raises(TypeError, match="x2 must be a dask.array.Array"):
        nd.gram(x, "points", net=NET)
    with pytest.raises(ValueError, match="x must be 2-D"):
        nd.gram(x[:, 0], net=NET)
    with pytest.raises(ValueError, match="same number of features"):
        nd.gram(x, x2[:, :5], net=NET)
    with pytest.raises(ValueError, match="get must be one of"):
        nd.gram(x, net=NET, get="ntkgp")
    with pytest.raises(ValueError, match="chunks must be positive row counts summing"):
        nd.gram(x, net=NET, chunks=(100, 100))
    with pytest.raises(ValueError, match="chunks must be a positive number of rows"):
        nd.gram(x, net=NET, chunks=0)
    with pytest.raises(TypeError, match="gram_options may only hold"):
        nd.gram(x, net=NET, out=np.empty((230, 230)))
    with pytest.raises(ValueError, match="tile_size"):
        nd.gram(x, net=NET, tile_size=0)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        nd.gram(x, net=NET, dtype=np.float16)
    with pytest.raises(TypeError, match="x must hold real numbers"):
        nd.gram(x.astype(str), net=NET)
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        xd = da.from_array(x, chunks=(100, -1))
        nd.gram(xd[xd[:, 0] > 0], net=NET)
    bad = x.copy()
    bad[3, 1] = np.nan
    k = nd.gram(bad, net=NET, chunks=100)  # checked in the tasks
    with pytest.raises(ValueError, match="non-finite"):
        k.compute(scheduler="sync")


# ----------------------------------------------------------------------------------------------
# KernelOperator.

def test_operator_products(points, client):
    x, x2 = points
    rng = np.random.default_rng(1)
    op = nd.KernelOperator(x, net=NET, client=client, block_size=50)
    ref = ntkfast.KernelOperator(x, net=NET, storage="recompute", block_size=50)
    assert op.shape == (230, 230) and op.dtype == np.float64 and op.symmetric
    v = rng.standard_normal((230, 3))
    assert rel(op.matmat(v), ref.matmat(v)) <= PRODUCT_RTOL
    assert rel(op @ v[:, 0], ref @ v[:, 0]) <= PRODUCT_RTOL and (op @ v[:, 0]).shape == (230,)
    assert rel(op.matvec(v[:, 1]), ref.matvec(v[:, 1])) <= PRODUCT_RTOL
    assert rel(op.rmatmat(v), ref.matmat(v)) <= PRODUCT_RTOL
    np.testing.assert_array_equal(op.diagonal(), ref.diagonal())  # the same engine call
    idx = [0, 17, 229, 17]
    assert rel(op.columns(idx), ref.columns(idx)) <= 1e-12
    assert rel(op.rows(idx), ref.rows(idx)) <= 1e-12
    lin = op.aslinearoperator()
    assert rel(lin @ v, ref.matmat(v)) <= PRODUCT_RTOL
    assert rel(lin.rmatvec(v[:, 2]), ref.matmat(v[:, 2])) <= PRODUCT_RTOL

    cross = nd.KernelOperator(da.from_array(x, chunks=100), x2, net=NET, get="nngp",
                              client=client, block_size=64)
    cref = ntkfast.KernelOperator(x, x2, net=NET, get="nngp", storage="recompute")
    w, u = rng.standard_normal((170, 2)), rng.standard_normal((230, 2))
    assert cross.shape == (230, 170) and not cross.symmetric
    assert rel(cross @ w, cref @ w) <= PRODUCT_RTOL
    assert rel(cross.rmatmat(u), cref.rmatmat(u)) <= PRODUCT_RTOL
    assert rel(cross.columns([3, 169]), cref.columns([3, 169])) <= 1e-12
    assert rel(cross.rows([0, 229]), cref.rows([0, 229])) <= 1e-12
    with pytest.raises(ValueError, match="symmetric"):
        cross.diagonal()


def test_operator_float32_and_default_client(points, client):
    x, _ = points
    x32 = x.astype(np.float32)
    with client.as_current():  # the current client is the default
        op = nd.KernelOperator(x32, net=NET)
    ref = ntkfast.KernelOperator(x32, net=NET, storage="recompute")
    assert op.dtype == np.float32 and op.client is client
    assert op.block_size == 230 and "float32" in repr(op)  # default: ~32 MB blocks, ≤ n rows
    v = np.random.default_rng(2).standard_normal(230)
    out = op @ v
    assert out.dtype == np.float64 and rel(out, ref @ v) <= PRODUCT_RTOL


def test_operator_solvers_threads(points, client):
    from ntkfast._solvers import block_cg, nystrom_preconditioner

    x, _ = points
    b = np.random.default_rng(3).standard_normal((230, 2))
    results = []
    for op in (nd.KernelOperator(x, net=NET, client=client, block_size=80, num_threads=1),
               ntkfast.KernelOperator(x, net=NET, storage="recompute")):
        pre = nystrom_preconditioner(op, 40, 1e-3, rng=0)
        sol, info = block_cg(op, b, shift=1e-3, precond=pre)
        assert info.converged
        results.append(sol)
    assert rel(results[0], results[1]) <= 1e-10


def test_operator_bad_input(points, client):
    x, x2 = points
    with pytest.raises(ValueError, match="client: no distributed.Client is running"):
        nd.KernelOperator(x, net=NET)  # the module's client is not the default
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        nd.KernelOperator(x, net=NET, client="tcp://127.0.0.1:8786")
    with pytest.raises(TypeError, match="one kernel per operator"):
        nd.KernelOperator(x, net=NET, get=("nngp", "ntk"), client=client)
    with pytest.raises(ValueError, match="get must be one of"):
        nd.KernelOperator(x, net=NET, get="ntkgp", client=client)
    with pytest.raises(TypeError, match="x1 must be a real 2-D array"):
        nd.KernelOperator(None, net=NET, client=client)
    with pytest.raises(TypeError, match="x1 must hold real numbers"):
        nd.KernelOperator(np.array([["a", "b"]]), net=NET, client=client)
    with pytest.raises(ValueError, match="same number of features"):
        nd.KernelOperator(x, x2[:, :3], net=NET, client=client)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        nd.KernelOperator(x, net=NET, client=client, block_size=0)
    op = nd.KernelOperator(x, x2, net=NET, client=client)
    with pytest.raises(ValueError, match=r"V must have shape \(170,\) or \(170, k\)"):
        op.matmat(np.ones((230, 2)))
    with pytest.raises(ValueError, match=r"U must have shape \(230,\) or \(230, k\)"):
        op.rmatmat(np.ones(170))
    with pytest.raises(IndexError, match=r"columns: indices must be in \[0, 170\)"):
        op.columns([170])
    with pytest.raises(IndexError, match=r"rows: indices must be in \[0, 230\)"):
        op.rows([-1])
    op.close()
    with pytest.raises(ValueError, match="closed"):
        op.matmat(np.ones(170))


@pytest.mark.parametrize("storage", ["memory", "file"])
def test_stored_operator_matches_in_process(points, client, storage, tmp_path, monkeypatch):
    from ntkfast import _band_store

    # small bands: many per worker, ragged, balanced over the two workers
    monkeypatch.setattr(_band_store, "FILE_BAND_BYTES", 20_000)
    monkeypatch.setattr(nd, "FILE_BAND_BYTES", 20_000)
    monkeypatch.setattr(nd, "MEMORY_BAND_BYTES", 20_000)
    x, x2 = points
    directory = tmp_path if storage == "file" else None
    op = nd.KernelOperator(x, net=NET, client=client, storage=storage, directory=directory)
    cross = nd.KernelOperator(x, x2, net=NET, client=client, storage=storage, dtype=np.float32)
    assert len(op._shards) == 2 and f"storage='{storage}'" in repr(op)
    loads = [sum((r1 - r0) * (230 - c0) for r0, r1, c0 in share) for share in op._shards.values()]
    assert max(loads) <= 1.2 * min(loads)
    if storage == "file":
        assert len(list(tmp_path.glob("ntkfast-kernel-*.bands"))) == 2
    ref = ntkfast.KernelOperator(x, net=NET, storage="memory")
    cref = ntkfast.KernelOperator(x, x2, net=NET, storage="memory", dtype=np.float32)
    v = np.random.default_rng(4).standard_normal((230, 3))
    w = np.random.default_rng(5).standard_normal((170, 2))
    assert rel(op @ v, ref @ v) <= PRODUCT_RTOL
    np.testing.assert_array_equal(op @ v, op @ v)  # partial sums added in a fixed order
    assert rel(cross @ w, cref @ w) <= PRODUCT_RTOL
    assert rel(cross.rmatmat(v), cref.rmatmat(v)) <= PRODUCT_RTOL
    op.close()
    cross.close()
    assert not list(tmp_path.glob("ntkfast-kernel-*"))
    assert not any(key[0] in (op._token, cross._token) for key in nd._SHARDS)
    with pytest.raises(ValueError, match="closed"):
        op @ v


def test_operator_released_from_the_clients_event_loop(points, client):
    """The finaliser may run on the client's event loop (a garbage collection there): the release
    is then scheduled on the loop, not left as a coroutine never awaited."""
    x, _ = points
    op = nd.KernelOperator(x, net=NET, client=client, storage="memory")
    assert any(key[0] == op._token for key in nd._SHARDS)
    client.loop.add_callback(nd._release_shards, client, op._token)
    deadline = time.monotonic() + 30
    while any(key[0] == op._token for key in nd._SHARDS) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(key[0] == op._token for key in nd._SHARDS)
    gc.collect()  # an unawaited coroutine would be reported now (pytest: unraisable exception)


def test_stored_operator_does_not_trust_the_clients_cached_worker_list(points, client,
                                                                      monkeypatch):
    """The client's periodic refresh replaces scheduler_info() with one that lists no workers
    (a CI run saw both workers "leave" mid-solve): the stored operator asks the scheduler."""
    x, _ = points
    op = nd.KernelOperator(x, net=NET, client=client, storage="memory")
    monkeypatch.setattr(client, "scheduler_info", lambda *a, **k: {"workers": {}})
    v = np.ones((len(x), 1))
    ref = ntkfast.KernelOperator(x, net=NET, storage="memory")
    np.testing.assert_allclose(op.matmat(v), ref.matmat(v), rtol=PRODUCT_RTOL)
    op2 = nd.KernelOperator(x, net=NET, client=client, storage="memory")
    np.testing.assert_allclose(op2.matmat(v), ref.matmat(v), rtol=PRODUCT_RTOL)
    op.close()
    op2.close()


def test_stored_operator_bad_input(points, client):
    x, _ = points
    with pytest.raises(ValueError, match="storage must be one of"):
        nd.KernelOperator(x, net=NET, client=client, storage="disk")
    with pytest.raises(ValueError, match="directory is only used with storage='file'"):
        nd.KernelOperator(x, net=NET, client=client, storage="memory", directory="/tmp")
    with pytest.raises(FileNotFoundError):
        nd.KernelOperator(x, net=NET, client=client, storage="file",
                          directory="/nonexistent/ntkfast")
    op = nd.KernelOperator(x, net=NET, client=client, storage="memory")
    op._shards = {"tcp://127.0.0.1:1": op._shards.popitem()[1]}  # a worker that left
    with pytest.raises(RuntimeError, match="left the cluster"):
        op @ np.ones(230)
