"""Stored kernels (KernelOperator storage='memory'/'file', ntkfast._band_store): the band layout
against the dense Gram over many bands, the temporary file's life, a disk too small, Ctrl-C
between bands, and the engine's band product against NumPy."""
import gc
import errno
import os
import threading

import numpy as np
import pytest

import ntkfast as nf
from ntkfast import _band_store, _core

NET = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of a few rows each: ragged bands, many diagonal blocks, every code path."""
    monkeypatch.setattr(_band_store, "FILE_BAND_BYTES", 3000)
    monkeypatch.setattr(_band_store, "MEMORY_BAND_BYTES", 2000)
    monkeypatch.setattr(_band_store, "VIEW_BAND_BYTES", 2000)


@pytest.mark.parametrize("storage", ["memory", "file"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 3, 11])
def test_banded_products_match_the_dense_gram(rng, small_bands, tmp_path, storage, dtype, k):
    x, x2 = rng.standard_normal((157, 9)).astype(dtype), rng.standard_normal((61, 9)).astype(dtype)
    gram = nf.gram(x, net=NET, get="ntk").astype(np.float64)
    cross = nf.gram(x, x2, net=NET, get="ntk").astype(np.float64)
    v, u = rng.standard_normal((157, k)), rng.standard_normal((61, k))
    path = tmp_path / "k.bands" if storage == "file" else None
    op = nf.KernelOperator(x, net=NET, storage=storage, path=path)
    cop = nf.KernelOperator(x, x2, net=NET, storage=storage)
    if storage == "file":
        assert len(op._store.bounds) > 10 and len(cop._store.bounds) > 10
    # float64 sums of the stored (float32 or float64) entries: rounding of the sums only
    for got, want in ((op @ v, gram @ v), (cop @ u, cross @ u), (cop.rmatmat(v), cross.T @ v)):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * np.abs(want).max())


def test_file_is_written_once_and_read_per_product(rng, small_bands, tmp_path, monkeypatch):
    x = rng.standard_normal((90, 5))
    op = nf.KernelOperator(x, net=NET, storage="file", path=tmp_path / "k.bands")
    calls = []
    real = _band_store.BandFile.read
    monkeypatch.setattr(_band_store.BandFile, "read",
                        lambda self, b, buf: calls.append(b) or real(self, b, buf))
    op @ np.ones(90)
    assert sorted(calls) == list(range(len(op._store.bounds)))
    # upper bands: n (n + 1) / 2 entries plus each diagonal block's lower half
    entries = op._store.nbytes // 8
    assert 90 * 91 // 2 <= entries < 90 * 90


def test_temporary_file_goes_with_the_operator(rng, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    x = rng.standard_normal((40, 5))
    op = nf.KernelOperator(x, net=NET, storage="file")
    path = op._store.path
    assert os.path.dirname(path) == str(tmp_path) and os.path.exists(path)
    op.close()
    assert not os.path.exists(path)
    with nf.KernelOperator(x, net=NET, storage="file") as op2:
        path = op2._store.path
        assert os.path.exists(path)
    assert not os.path.exists(path)
    op3 = nf.KernelOperator(x, net=NET, storage="file")
    path = op3._store.path
    del op3
    gc.collect()
    assert not os.path.exists(path)


def test_a_disk_too_small_fails_before_computing(rng, tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    computed = []
    monkeypatch.setattr(nf.KernelOperator, "_band", lambda *a: computed.append(a))
    with pytest.raises(OSError, match=r"cannot reserve .* for the kernel at .*k.bands \(not enough "
                                      r"disk space\)"):
        nf.KernelOperator(rng.standard_normal((40, 5)), net=NET, storage="file",
                          path=tmp_path / "k.bands")
    assert not computed


def test_truncated_file_is_an_error_not_zeros(rng, tmp_path):
    x = rng.standard_normal((40, 5))
    op = nf.KernelOperator(x, net=NET, storage="file", path=tmp_path / "k.bands")
    os.truncate(tmp_path / "k.bands", 100)
    with pytest.raises(OSError, match="ended early"):
        op @ np.ones(40)


def test_ctrl_c_between_bands_leaves_the_operator_usable(rng, small_bands, tmp_path, monkeypatch):
    x = rng.standard_normal((120, 5))
    op = nf.KernelOperator(x, net=NET, storage="file", path=tmp_path / "k.bands")
    want = op @ np.ones(120)
    real, seen = _band_store._apply_band, []

    def interrupted(*args):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(_band_store, "_apply_band", interrupted)
    threads = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        op @ np.ones(120)
    assert threading.active_count() == threads  # the reader thread is joined
    monkeypatch.setattr(_band_store, "_apply_band", real)
    np.testing.assert_array_equal(op @ np.ones(120), want)


def test_products_from_many_threads(rng, small_bands, tmp_path):
    x = rng.standard_normal((100, 5))
    op = nf.KernelOperator(x, net=NET, storage="file", path=tmp_path / "k.bands")
    vs = [rng.standard_normal(100) for _ in range(6)]
    want = [op @ v for v in vs]
    got = [None] * 6

    def work(i):
        got[i] = op @ vs[i]

    pool = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_engine_band_product_against_numpy(rng):
    k = rng.standard_normal((50, 80))
    v, w = rng.standard_normal((3, 80)), rng.standard_normal((3, 50))
    out_rows, out_cols = np.zeros((3, 50)), np.zeros((3, 80))
    band = k[10:30, 20:]  # strided rows, offsets in both directions
    _core.band_matmat(band, 10, 20, v, w, out_rows, out_cols, 15, 1)
    close = dict(rtol=1e-13, atol=1e-13 * np.abs(k).max() * 80)
    np.testing.assert_allclose(out_rows[:, 10:30], (band @ v[:, 20:].T).T, **close)
    assert not out_rows[:, :10].any() and not out_rows[:, 30:].any()
    np.testing.assert_allclose(out_cols[:, 35:], (band[:, 15:].T @ w[:, 10:30].T).T, **close)
    assert not out_cols[:, :35].any()


def test_engine_band_product_refuses_bad_arguments(rng):
    band = rng.standard_normal((10, 20))
    v, out = np.zeros((2, 20)), np.zeros((2, 20))
    with pytest.raises(ValueError, match="overlap"):
        _core.band_matmat(band, 0, 0, v, v, out, out, 5, 1)
    with pytest.raises(ValueError, match="wrong shape"):
        _core.band_matmat(band, 0, 5, v, v, out, out, 10, 1)
    with pytest.raises(ValueError, match="wrong number of vectors"):
        _core.band_matmat(band, 0, 0, v, np.zeros((3, 20)), out, np.zeros((3, 20)), 10, 1)
    with pytest.raises(ValueError, match="contiguous rows"):
        _core.band_matmat(band[:, ::2], 0, 0, np.zeros((2, 10)), None, out, None, 10, 1)
    with pytest.raises(TypeError):
        _core.band_matmat(band.astype(np.float16), 0, 0, v, None, out, None, 20, 1)


def test_file_never_overwrites_an_input_memmap(rng, tmp_path):
    path = tmp_path / "x.dat"
    x = np.memmap(path, dtype=np.float64, mode="w+", shape=(40, 5))
    x[:] = rng.standard_normal((40, 5))
    x.flush()
    before = path.read_bytes()
    for points in (x, x[5:]):  # the memmap itself, or a view of it
        with pytest.raises(ValueError, match="file of an input array"):
            nf.KernelOperator(points, net=NET, storage="file", path=path)
    with pytest.raises(ValueError, match="file of an input array"):
        nf.KernelOperator(rng.standard_normal((3, 5)), x, net=NET, storage="file", path=path)
    assert path.read_bytes() == before


def _band_reference(band, v, w, mirror, rows_product):
    """(row sums, mirrored column sums) of band_matmat in float64 NumPy (vectors transposed)."""
    b = band.astype(np.float64)
    rows = (v @ b.T) if rows_product else None
    cols = np.zeros((w.shape[0], band.shape[1]))
    cols[:, mirror:] = w @ b[:, mirror:]
    return rows, cols


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_engine_band_product_edge_sizes_and_threads(rng, dtype):
    """Bands smaller than, equal to and one past the kernel's row blocks (8 and 4 rows) and
    vector lanes (4), mirrors inside a lane, 1 to 5 vectors (pairs and a last one alone), and
    bands wide enough for two and three threads: all against NumPy, and every thread count
    within rounding of one thread."""
    for rows, cols, k in [(1, 1, 1), (3, 7, 2), (4, 4, 3), (5, 9, 5), (8, 13, 1), (9, 3, 4),
                          (13, 1029, 3), (17, 1600, 1), (2, 2100, 2)]:
        band = rng.standard_normal((rows, cols)).astype(dtype)
        v, w = rng.standard_normal((k, cols)), rng.standard_normal((k, rows))
        scale = np.abs(band.astype(np.float64)).sum(axis=1).max() * 4
        for mirror in sorted({0, 1, cols // 2 + 1, cols}):
            for rows_product in (True, False):
                want_rows, want_cols = _band_reference(band, v, w, mirror, rows_product)
                results = []
                for threads in (1, 2, 3):
                    out_rows, out_cols = np.zeros((k, rows)), np.zeros((k, cols))
                    # the engine indexes v_rows / out_rows from row0, v_cols / out_cols from col0
                    _core.band_matmat(band, 0, 0, v if rows_product else None,
                                      w if mirror < cols else None,
                                      out_rows if rows_product else None,
                                      out_cols if mirror < cols else None, mirror, threads)
                    results.append((out_rows, out_cols))
                    close = dict(rtol=0, atol=1e-14 * scale)
                    if rows_product:
                        np.testing.assert_allclose(out_rows, want_rows, **close)
                    else:
                        assert not out_rows.any()
                    np.testing.assert_allclose(out_cols, want_cols, **close)
                for out_rows, out_cols in results[1:]:
                    np.testing.assert_allclose(out_rows, results[0][0], rtol=0, atol=1e-15 * scale)
                    # each column's mirrored sum has one owner thread and one order: exact
                    np.testing.assert_array_equal(out_cols, results[0][1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 2, 20])
def test_memory_product_one_thread_and_two(rng, monkeypatch, dtype, k):
    """Bands wide enough that two threads split them, a ragged last band: the same product on
    one thread and on two, and the dense float64 product."""
    monkeypatch.setattr(_band_store, "VIEW_BAND_BYTES", 300_000)  # 68 rows and more per band
    a = rng.standard_normal((1100, 1100))
    kernel = (a + a.T).astype(dtype)
    v = rng.standard_normal((1100, k))
    got = [_band_store.memory_product(kernel, v, symmetric=True, transpose=False,
                                      num_threads=threads, progress=False, desc="")
           for threads in (1, 2)]
    want = kernel.astype(np.float64) @ v
    for g in got:
        np.testing.assert_allclose(g, want, rtol=1e-13, atol=1e-13 * np.abs(want).max())
    np.testing.assert_allclose(got[0], got[1], rtol=1e-14, atol=1e-14 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_engine_symmetric_band_reads_the_upper_triangle_once(rng, dtype):
    """A band of a symmetric kernel (its first columns its diagonal block): each entry of the
    upper triangle serves its row and its column, the diagonal block's lower triangle is never
    read (NaN there), for ragged row blocks, corners split between threads and 1 to 5 vectors;
    every thread count gives the same within rounding."""
    for rows, cols, k in [(1, 1, 1), (3, 3, 2), (5, 12, 3), (9, 9, 5), (13, 1100, 1),
                          (20, 2100, 2), (700, 1400, 3)]:
        r0, n = 7, 7 + cols + 4
        band = rng.standard_normal((rows, cols)).astype(dtype)
        wide = band.astype(np.float64)
        band[np.tril_indices(rows, -1)] = np.nan
        v = rng.standard_normal((k, n))
        want = np.zeros((k, n))
        upper = np.triu(wide)  # column >= row, band-relative: the rows' sums
        want[:, r0:r0 + rows] += v[:, r0:r0 + cols] @ upper.T
        want[:, r0:r0 + cols] += v[:, r0:r0 + rows] @ np.triu(wide, 1)  # the mirrored sums
        scale = np.abs(upper).sum(axis=1).max() * 8
        results = []
        for threads in (1, 2, 3):
            out = np.zeros((k, n))
            _core.symmetric_band_matmat(band, r0, v, out, threads)
            np.testing.assert_allclose(out, want, rtol=0, atol=1e-14 * scale)
            results.append(out)
        for out in results[1:]:
            np.testing.assert_allclose(out, results[0], rtol=0, atol=1e-15 * scale)


def test_engine_symmetric_band_refuses_bad_arguments(rng):
    tall, v = rng.standard_normal((6, 4)), np.zeros((2, 10))
    band = np.ascontiguousarray(tall.T)
    with pytest.raises(ValueError, match="diagonal block"):
        _core.symmetric_band_matmat(tall, 0, v, np.zeros((2, 10)), 1)
    with pytest.raises(ValueError, match="alike"):
        _core.symmetric_band_matmat(band, 0, v, np.zeros((3, 10)), 1)
    with pytest.raises(ValueError, match="wrong shape"):
        _core.symmetric_band_matmat(band, 7, v, np.zeros((2, 10)), 1)
    with pytest.raises(ValueError, match="contiguous rows"):
        _core.symmetric_band_matmat(tall.T, 0, v, np.zeros((2, 10)), 1)
    with pytest.raises(TypeError):  # no silent copy of the output
        _core.symmetric_band_matmat(band, 0, v, np.zeros((10, 2)).T, 1)
