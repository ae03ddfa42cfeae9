"""A dense solve at N = 16000 must not crash: OpenBLAS's multithreaded ?syrk (inside ?potrf) writes
out of bounds there with its AVX-512 kernels (scipy-openblas 0.3.30/0.3.31; a SIGSEGV measured on an
AVX-512 EPYC), so ntkfast.predict runs large factorisations with single-threaded BLAS on such
builds. In a subprocess: a crash is a failed test, not a dead test run. ~40 s, 2 GB."""
import subprocess
import sys
import textwrap

import pytest

_SOLVE = textwrap.dedent("""
    import numpy as np, scipy.linalg, ntkfast as nf
    from threadpoolctl import threadpool_info
    n = 16000
    rng = np.random.default_rng(0)
    k = rng.random((n, n))
    k += k.T
    k *= 0.01
    k[np.diag_indices(n)] += n  # strongly diagonally dominant: symmetric positive definite
    y = rng.standard_normal((n, 1))
    before = [lib["num_threads"] for lib in threadpool_info()]
    mean = nf.predict.gradient_descent_mse(k, y)(t=None, fx_train_0=None, fx_test_0=0.0,
                                                 k_test_train=k[:3])
    assert [lib["num_threads"] for lib in threadpool_info()] == before  # limits restored
    # the reference k⁻¹ y by Jacobi iterations (they converge fast on this k): no LAPACK
    d = np.diag(k).copy()
    x = y[:, 0] / d
    for _ in range(12):
        x = (y[:, 0] - (k @ x - d * x)) / d
    error = float(np.abs(mean[:, 0] - k[:3] @ x).max() / np.abs(k[:3] @ x).max())
    print("finite", bool(np.isfinite(mean).all()), error)
""")


@pytest.mark.slow
def test_dense_cholesky_at_16000_points_does_not_crash():
    proc = subprocess.run([sys.executable, "-c", _SOLVE], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode} (SIGSEGV is -11): {proc.stderr[-2000:]}"
    assert proc.stdout.split()[1] == "True"
    assert float(proc.stdout.split()[-1]) < 1e-10
