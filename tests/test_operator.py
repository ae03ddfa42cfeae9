"""ntkfast.KernelOperator (products against the dense Gram, every storage) and the iterative
path of ntkfast.predict (against the exact eigh/Cholesky path)."""
import numpy as np
import pytest

import ntkfast as nf

NET = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)
STORAGES = ("recompute", "memory", "file")


@pytest.fixture
def points(rng):
    return rng.standard_normal((230, 12)), rng.standard_normal((70, 12))


# ----------------------------------------------------------------------------------------------
# The operator.

@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("get", ["ntk", "nngp"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_products_match_the_dense_gram(points, storage, get, dtype):
    x, x2 = points
    x, x2 = x.astype(dtype), x2.astype(dtype)
    rtol = 1e-13 if dtype == np.float64 else 1e-6
    k = nf.gram(x, net=NET, get=get).astype(np.float64)
    c = nf.gram(x, x2, net=NET, get=get).astype(np.float64)
    rng = np.random.default_rng(1)
    v, u = rng.standard_normal((230, 3)), rng.standard_normal((70, 3))
    # block_size 64: ragged blocks, diagonal and off-diagonal pairs, every code path
    op = nf.KernelOperator(x, net=NET, get=get, storage=storage, block_size=64)
    cross = nf.KernelOperator(x, x2, net=NET, get=get, storage=storage, block_size=64)
    assert op.storage == storage and op.shape == (230, 230) and cross.shape == (230, 70)
    for got, want in ((op @ v, k @ v), (op.matvec(v[:, 0]), k @ v[:, 0]),
                      (cross @ u, c @ u), (cross.rmatmat(v), c.T @ v)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())
        assert got.dtype == np.float64
    np.testing.assert_array_equal(op.diagonal(), np.diag(k))
    np.testing.assert_allclose(op.columns([0, 5, 229]), k[:, [0, 5, 229]], rtol=rtol)
    np.testing.assert_allclose(cross.rows([3, 4]), c[[3, 4]], rtol=rtol)
    lin = op.aslinearoperator()
    np.testing.assert_allclose(lin.matmat(v), k @ v, rtol=rtol, atol=rtol * np.abs(k @ v).max())


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_products_on_one_thread_and_two(rng, storage, dtype):
    """Blocks and bands wide enough for two threads to split (a ragged last block): the same
    product on one thread and on two, both the dense one."""
    x = rng.standard_normal((1500, 6)).astype(dtype)
    v = rng.standard_normal((1500, 3))
    want = nf.gram(x, net=NET, get="ntk").astype(np.float64) @ v
    got = [nf.KernelOperator(x, net=NET, storage=storage, block_size=1100,
                             num_threads=threads) @ v for threads in (1, 2)]
    for g in got:
        np.testing.assert_allclose(g, want, rtol=1e-13, atol=1e-13 * np.abs(want).max())
    np.testing.assert_allclose(got[0], got[1], rtol=0, atol=1e-14 * np.abs(want).max())


def test_auto_storage_says_what_it_chose(points, monkeypatch):
    x, _ = points
    from ntkfast import _operator

    assert nf.KernelOperator(x, net=NET).storage == "memory"
    monkeypatch.setattr(_operator, "available_memory", lambda: 1000)
    op = nf.KernelOperator(x, net=NET)
    assert op.storage == "recompute" and "storage='recompute'" in repr(op)


def test_file_storage_at_a_given_path(points, tmp_path):
    x, _ = points
    path = tmp_path / "k.bands"
    op = nf.KernelOperator(x, net=NET, storage="file", path=path)
    assert op.storage == "file" and str(path) in repr(op)
    assert path.stat().st_size == op._store.nbytes <= op.nbytes
    v = np.ones(230)
    np.testing.assert_allclose(op @ v, nf.gram(x, net=NET, get="ntk") @ v, rtol=1e-13)
    op.close()
    assert path.exists() and op.storage == "closed"  # a file the user named stays
    with pytest.raises(ValueError, match="closed"):
        op @ v


def test_bad_arguments(points):
    x, x2 = points
    with pytest.raises(TypeError, match="get must be 'ntk' or 'nngp'"):
        nf.KernelOperator(x, net=NET, get=("nngp", "ntk"))
    with pytest.raises(ValueError, match="storage must be one of"):
        nf.KernelOperator(x, net=NET, storage="disk")
    with pytest.raises(ValueError, match="path is only used with storage='file'"):
        nf.KernelOperator(x, net=NET, storage="memory", path="k.npy")
    with pytest.raises(ValueError, match="memory_fraction"):
        nf.KernelOperator(x, net=NET, memory_fraction=2)
    with pytest.raises(ValueError, match="same number of features"):
        nf.KernelOperator(x, x2[:, :5], net=NET)
    op = nf.KernelOperator(x, net=NET, storage="recompute")
    with pytest.raises(ValueError, match=r"V must have shape \(230,\) or \(230, k\)"):
        op @ np.ones((229, 2))
    with pytest.raises(IndexError, match="columns"):
        op.columns([230])
    with pytest.raises(ValueError, match="symmetric"):
        nf.KernelOperator(x, x2, net=NET).diagonal()



@pytest.mark.parametrize("storage", STORAGES)
def test_products_refuse_vectors_that_are_not_real_and_finite(points, storage):
    """A cast would drop an imaginary part, turn None into NaN, or fail on a string without
    naming the argument."""
    x, x2 = points
    op = nf.KernelOperator(x, net=NET, storage=storage)
    cross = nf.KernelOperator(x, x2, net=NET, storage=storage)
    for product, name, n in ((op.matmat, "V", 230), (op.matvec, "V", 230),
                             (cross.rmatmat, "U", 230), (cross.matmat, "V", 70)):
        with pytest.raises(TypeError, match=f"^{name} is complex"):
            product(np.ones(n) + 1j)
        with pytest.raises(TypeError, match=f"^{name} must hold real numbers, got dtype object"):
            product(np.full((n, 2), None, dtype=object))
        with pytest.raises(TypeError, match=f"^{name} must hold real numbers, got dtype <U"):
            product(np.full(n, "1.0"))
        for bad in (np.nan, np.inf):
            v = np.ones((n, 2))
            v[n - 1, 1] = bad
            with pytest.raises(ValueError, match=rf"^{name} contains 1 non-finite value\(s\)"):
                product(v)
    with pytest.raises(TypeError, match="^V must be a real array"):
        op @ "abc"
    # integer and boolean vectors are real: converted, as NumPy would
    k = nf.gram(x, net=NET, get="ntk")
    ones = np.ones(230, dtype=np.int32)
    np.testing.assert_allclose(op @ ones, k @ np.ones(230), rtol=1e-13)


def test_block_size_beyond_the_matrix_is_clamped(points):
    """block_size sizes the product's buffer: 2**40 rows must not ask for 160 TiB."""
    x, x2 = points
    k, c = nf.gram(x, net=NET, get="ntk"), nf.gram(x, x2, net=NET, get="ntk")
    v = np.random.default_rng(1).standard_normal((230, 2))
    op = nf.KernelOperator(x, net=NET, storage="recompute", block_size=2**40)
    cross = nf.KernelOperator(x, x2, net=NET, storage="recompute", block_size=np.int64(2**40))
    assert op.block_size == 230 and cross.block_size == 230
    for got, want in ((op @ v, k @ v), (cross.rmatmat(v), c.T @ v), (cross @ v[:70], c @ v[:70])):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * np.abs(want).max())


def test_columns_and_rows_take_integer_indices_only(points):
    """A boolean mask would be read as indices 0 and 1, and 1.7 truncated to 1."""
    x, x2 = points
    k, c = nf.gram(x, net=NET, get="ntk"), nf.gram(x, x2, net=NET, get="ntk")
    for storage in ("recompute", "memory"):
        op = nf.KernelOperator(x, net=NET, storage=storage)
        cross = nf.KernelOperator(x, x2, net=NET, storage=storage)
        mask = np.zeros(230, dtype=bool)
        mask[[3, 7]] = True
        with pytest.raises(IndexError, match="columns: idx must be integer.*np.flatnonzero"):
            op.columns(mask)
        with pytest.raises(IndexError, match="columns: idx must be integer.*float64"):
            op.columns([1.7])
        with pytest.raises(IndexError, match="rows: idx must be integer.*float64"):
            cross.rows(np.array([0.0]))
        with pytest.raises(IndexError, match=r"rows: indices must be in \[0, 230\)"):
            cross.rows([-1])
        np.testing.assert_allclose(op.columns(np.flatnonzero(mask)), k[:, [3, 7]], rtol=1e-13)
        np.testing.assert_allclose(cross.rows(np.array([5, 2], dtype=np.uint16)), c[[5, 2]],
                                   rtol=1e-13)
        assert op.columns([]).shape == (230, 0)

# ----------------------------------------------------------------------------------------------
# predict's iterative path against the exact one.

@pytest.fixture
def problem(rng):
    x = rng.standard_normal((300, 10))
    x_test = rng.standard_normal((40, 10))
    y = np.stack([np.sin(x[:, 0]), np.cos(x[:, 1])], axis=1)
    return x, x_test, y


def _close(got, want, rtol):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("diag_reg", [0.0, 1e-3])
def test_gradient_descent_mse_iterative_matches_eigh(problem, diag_reg):
    x, x_test, y = problem
    k, k_td = nf.gram(x, net=NET, get="ntk"), nf.gram(x_test, x, net=NET, get="ntk")
    exact = nf.predict.gradient_descent_mse(k, y, diag_reg=diag_reg)
    iterative = nf.predict.gradient_descent_mse(
        nf.KernelOperator(x, net=NET, storage="recompute"), y, diag_reg=diag_reg)
    times = np.logspace(-1, 4, 12)
    for t in (None, times, 7.0):
        want = exact(t=t, fx_train_0=0.1, fx_test_0=0.0, k_test_train=k_td)
        got = iterative(t=t, fx_train_0=0.1, fx_test_0=0.0,
                        k_test_train=nf.KernelOperator(x_test, x, net=NET))
        for g, w in zip(got, want):
            assert g.shape == w.shape
            _close(g, w, 1e-7)
    assert iterative.info is not None  # the last solve's report


def test_dense_array_with_the_iterative_solver(problem):
    x, x_test, y = problem
    k = nf.gram(x, net=NET, get="ntk")
    exact = nf.predict.gradient_descent_mse(k, y, diag_reg=1e-4)(t=None, fx_train_0=None,
                                                                fx_test_0=0.0, k_test_train=k[:5])
    for solver in ("cg", "lanczos"):
        got = nf.predict.gradient_descent_mse(k, y, diag_reg=1e-4, solver=solver)(
            t=None, fx_train_0=None, fx_test_0=0.0, k_test_train=k[:5])
        _close(got, exact, 1e-7)


def test_gp_inference_iterative_matches_cholesky(problem):
    x, x_test, y = problem
    kernels = nf.gram(x, net=NET)
    k_td, k_tt = nf.gram(x_test, x, net=NET), nf.gram(x_test, net=NET)
    ops = nf.Kernels(*(nf.KernelOperator(x, net=NET, get=g, storage="recompute")
                       for g in ("nngp", "ntk")))
    get = ("nngp", "ntk", "ntkgp")
    want = nf.predict.gp_inference(kernels, y, diag_reg=1e-4)(get=get, k_test_train=k_td,
                                                               k_test_test=k_tt)
    got = nf.predict.gp_inference(ops, y, diag_reg=1e-4)(get=get, k_test_train=k_td,
                                                         k_test_test=k_tt)
    for g, w in zip(got, want):
        _close(g.mean, w.mean, 1e-7)
        _close(g.covariance, w.covariance, 1e-7)
    means = nf.predict.gp_inference(ops, y, diag_reg=1e-4)(
        get="nngp", k_test_train=nf.Kernels(nf.KernelOperator(x_test, x, net=NET, get="nngp"), None))
    _close(means, want.nngp.mean, 1e-7)


def test_iterative_path_errors(problem):
    x, x_test, y = problem
    op = nf.KernelOperator(x, net=NET, storage="recompute")
    with pytest.raises(ValueError, match="solver must be one of"):
        nf.predict.gradient_descent_mse(op, y, solver="qr")
    with pytest.raises(ValueError, match="solver='eigh' needs the kernel as an array"):
        nf.predict.gradient_descent_mse(op, y, solver="eigh")
    with pytest.raises(ValueError, match="preconditioner_rank"):
        nf.predict.gradient_descent_mse(op, y, preconditioner_rank=10_000)
    with pytest.raises(ValueError, match="square"):
        nf.predict.gradient_descent_mse(nf.KernelOperator(x_test, x, net=NET), y)
    ops = nf.Kernels(*(nf.KernelOperator(x, net=NET, get=g) for g in ("nngp", "ntk")))
    with pytest.raises(ValueError, match="covariances on the iterative path need k_test_train as an array"):
        nf.predict.gp_inference(ops, y)(get="nngp", k_test_train=nf.Kernels(
            nf.KernelOperator(x_test, x, net=NET, get="nngp"), None), k_test_test=np.eye(40))
    # a tolerance the iteration limit cannot reach: a clear error with the residual, no answer
    fn = nf.predict.gradient_descent_mse(op, y, maxiter=2, preconditioner_rank=0)
    with pytest.raises(nf.ConvergenceError, match="residual"):
        fn(t=None, fx_train_0=None, fx_test_0=0.0, k_test_train=nf.KernelOperator(x_test, x, net=NET))


def _flat(a):
    if isinstance(a, tuple):
        return np.concatenate([_flat(v) for v in a])
    return np.ravel(a)


def test_ensemble_iterative_matches_exact(problem):
    x, x_test, y = problem
    exact = nf.predict.gradient_descent_mse_ensemble(NET, x, y, diag_reg=1e-3)
    iterative = nf.predict.gradient_descent_mse_ensemble(NET, x, y, diag_reg=1e-3, solver="cg")
    times = np.logspace(0, 3, 5)
    for kwargs in (dict(t=times, x_test=x_test), dict(t=times), dict(t=3.0, x_test=x_test, get="ntk"),
                   dict(t=None, x_test=x_test, compute_cov=True), dict(t=None, compute_cov=True)):
        want, got = _flat(exact(**kwargs)), _flat(iterative(**kwargs))
        assert got.shape == want.shape
        _close(got, want, 1e-7)
    with pytest.raises(ValueError, match="compute_cov=True at finite t"):
        iterative(t=times, x_test=x_test, compute_cov=True)
    with pytest.raises(ValueError, match="iterative path needs an ntkfast network"):
        nf.predict.gradient_descent_mse_ensemble(lambda a, b, g: None, x, y, solver="cg")


def test_a_path_in_use_by_another_open_operator_is_refused(tmp_path):
    """The second operator truncated and rewrote the first one's kernel under it: the first
    then computed with the second's kernel (an error of 133 against its own), silently."""
    rng = np.random.default_rng(11)
    x, x2, v = rng.standard_normal((300, 5)), rng.standard_normal((300, 5)), rng.standard_normal(300)
    path = tmp_path / "k.bands"
    first = nf.KernelOperator(x, net=NET, storage="file", path=path)
    with pytest.raises(ValueError, match="holds the kernel of another open KernelOperator"):
        nf.KernelOperator(x2, net=NET, storage="file", path=path)
    np.testing.assert_allclose(first @ v, nf.gram(x, net=NET, get="ntk") @ v, rtol=1e-12)
    first.close()
    second = nf.KernelOperator(x2, net=NET, storage="file", path=path)  # free again
    np.testing.assert_allclose(second @ v, nf.gram(x2, net=NET, get="ntk") @ v, rtol=1e-12)


def test_an_input_mapped_by_hand_is_not_overwritten(tmp_path):
    """The check followed np.memmap's .filename only: an mmap viewed through np.frombuffer was
    truncated and rewritten while it was being read."""
    import mmap

    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(12).standard_normal((200, 5)))
    saved = np.load(path)
    with open(path, "r+b") as f:
        mapped = mmap.mmap(f.fileno(), 0)
    x = np.frombuffer(mapped, dtype=np.float64, offset=128).reshape(200, 5)
    with pytest.raises(ValueError, match="is the file of an input array"):
        nf.KernelOperator(x, net=NET, storage="file", path=path)
    np.testing.assert_array_equal(np.load(path), saved)
    del x
    mapped.close()


@pytest.mark.parametrize("storage", ["recompute", "memory", "file"])
def test_a_progress_callable_is_called(storage):
    """It was validated, then turned into True: a tqdm bar instead of the caller's function."""
    calls = []
    x = np.random.default_rng(13).standard_normal((300, 5))
    op = nf.KernelOperator(x, net=NET, storage=storage, block_size=64,
                           progress=lambda done, total: calls.append((done, total)))
    calls.clear()
    op @ np.ones(300)
    assert calls and calls[-1][0] == calls[-1][1] and all(0 <= d <= t for d, t in calls)


def test_closing_a_shared_store_during_a_product_is_a_clear_error_and_no_stale_read():
    """A copy's close() (or another thread's) left the product calling os.preadv(None): a
    TypeError; closing the descriptor under a running read could even read another file that
    reused its number. Now the last reader releases the file, and later reads say 'closed'."""
    import copy
    import os

    x = np.random.default_rng(14).standard_normal((300, 5))
    op = nf.KernelOperator(x, net=NET, storage="file", block_size=64)
    twin = copy.copy(op)  # shares the stored kernel
    store = op._store
    with store._reading() as fd:  # a band read in flight
        twin.close()
        os.fstat(fd)  # still open: the read may finish
        assert os.path.exists(store.path)
    with pytest.raises(OSError):
        os.fstat(fd)  # released by the last reader
    assert not os.path.exists(store.path)
    with pytest.raises(ValueError, match="was closed .* on it or on a copy of it"):
        op @ np.ones(300)


@pytest.mark.parametrize("storage", ["recompute", "memory"])
def test_an_operator_pickles_and_deep_copies(storage):
    """It kept the NumPy module as an attribute: 'cannot pickle module object' for every
    storage."""
    import copy
    import pickle

    x = np.random.default_rng(15).standard_normal((200, 5))
    op = nf.KernelOperator(x, net=NET, storage=storage)
    v = np.random.default_rng(16).standard_normal((200, 2))
    expected = nf.gram(x, net=NET, get="ntk") @ v
    for clone in (pickle.loads(pickle.dumps(op)), copy.deepcopy(op)):
        assert clone.storage == storage
        np.testing.assert_allclose(clone @ v, expected, rtol=1e-12)


def test_a_file_operator_refuses_pickling_clearly(tmp_path):
    import pickle

    op = nf.KernelOperator(np.ones((50, 3)), net=NET, storage="file")
    with pytest.raises(TypeError, match="storage='file' cannot be pickled or deep-copied"):
        pickle.dumps(op)
    op.close()
