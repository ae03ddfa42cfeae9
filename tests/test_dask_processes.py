"""ntkfast.dask.KernelOperator on worker processes (2 workers, 1 thread each): the solvers of
ntkfast._solvers run on it unchanged and give the in-process answers."""
import numpy as np
import pytest

import ntkfast

distributed = pytest.importorskip("distributed")
pytest.importorskip("dask.array")

import ntkfast.dask as nd  # noqa: E402
from ntkfast._solvers import (block_cg, dynamics_functions, lanczos_functions,  # noqa: E402
                              nystrom_preconditioner)

NET = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def operators(client):
    x = np.random.default_rng(20261130).standard_normal((400, 30))
    op = nd.KernelOperator(x, net=NET, client=client)
    yield op, ntkfast.KernelOperator(x, net=NET, storage="recompute")
    op.close()


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_operator_on_processes(operators, client):
    op, ref = operators
    # the default block size gives each of the 2 worker threads at least 2 block pairs
    assert op.block_size == 256
    v = np.random.default_rng(1).standard_normal((400, 4))
    assert rel(op @ v, ref @ v) <= 1e-10
    np.testing.assert_array_equal(op.diagonal(), ref.diagonal())
    assert rel(op.columns(np.arange(0, 400, 7)), ref.columns(np.arange(0, 400, 7))) <= 1e-12
    # a worker process runs its engine calls on the worker's 1 thread
    assert client.submit(lambda: nd._engine_threads(None)[0], pure=False).result() == 1


def test_solvers_match_in_process(operators):
    op, ref = operators
    rng = np.random.default_rng(2)
    b = rng.standard_normal((400, 2))
    answers = []
    for o in (op, ref):
        pre = nystrom_preconditioner(o, 60, 1e-3, rng=0)
        sol, info = block_cg(o, b, shift=1e-3, precond=pre)
        assert info.converged
        y, linfo = lanczos_functions(o, b[:, 0], dynamics_functions([1.0, 30.0], 400.0))
        answers.append((pre.apply(b) if hasattr(pre, "apply") else None, sol, y))
    (p1, s1, y1), (p2, s2, y2) = answers
    if p1 is not None:
        assert rel(p1, p2) <= 1e-10
    assert rel(s1, s2) <= 1e-10
    assert rel(y1, y2) <= 1e-10


def test_file_storage_on_worker_processes(client, tmp_path, monkeypatch):
    """Each worker process keeps its bands in its own file; a solve on them gives the
    in-process answer, and close() deletes the files."""
    monkeypatch.setattr(nd, "FILE_BAND_BYTES", 50_000)  # the bands are cut on the client
    x = np.random.default_rng(7).standard_normal((400, 30))
    op = nd.KernelOperator(x, net=NET, client=client, storage="file", directory=tmp_path)
    ref = ntkfast.KernelOperator(x, net=NET, storage="memory")
    assert len(op._shards) == 2 and len(list(tmp_path.glob("*.bands"))) == 2
    b = np.random.default_rng(8).standard_normal((400, 2))
    sols = [block_cg(o, b, shift=1e-3, precond=nystrom_preconditioner(o, 60, 1e-3, rng=0))[0]
            for o in (op, ref)]
    assert rel(sols[0], sols[1]) <= 1e-10
    op.close()
    assert not list(tmp_path.glob("*.bands"))
