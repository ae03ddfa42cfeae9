"""Dense symmetric linear algebra behind :mod:`ntkfast.predict`, for NumPy or CuPy arrays.

A :class:`Backend` bundles the few operations the predictions need (``eigh``, a Cholesky
factorisation that reports numerical singularity, triangular solves) for one array library:

* NumPy arrays -> SciPy's LAPACK on the CPU (:data:`CPU`);
* CuPy arrays -> ``cupy.linalg`` / ``cupyx.scipy.linalg`` on the GPU (built on first use, so
  ``import ntkfast`` never imports CuPy).

Everything here works on the regularised train kernel K̃ = K + λI without modifying K.
"""
from __future__ import annotations

import numpy as np

from ._errors import BackendUnavailableError
from ._validation import is_cupy

__all__ = ["Backend", "CPU", "backend_for", "is_cupy", "cpu_eigh_driver", "SYEVD_LP64_MAX_N",
           "check_symmetric"]

#: Largest N for which LAPACK's ?syevd workspace, lwork = 1 + 6N + 2N² reals, fits in a 32-bit
#: integer. SciPy's wheels (and JAX's CPU backend, and NumPy < 2) use LP64 LAPACK: from
#: N = 32767 on, LAPACK's own integer arithmetic wraps, the workspace query returns a far too
#: small size and ?syevd then writes past its workspace (a crash or silent corruption).
SYEVD_LP64_MAX_N = 32766


def cpu_eigh_driver(n: int) -> str:
    """The SciPy ``eigh`` driver used for an n x n matrix.

    'evd' (divide and conquer) below the LP64 limit: measured faster here than 'evr' and its
    eigenvectors are orthogonal to ~1e-15 (MRRR's to ~1e-11). 'evr' (MRRR) from N = 32767 on:
    its workspace is 26N reals and 10N integers, valid for every N whose matrix fits in memory,
    and it also avoids evd's 2N² scratch reals (17 GB more at N = 32768).
    """
    return "evd" if n <= SYEVD_LP64_MAX_N else "evr"


def _row_blocks(n, rows_per_block):
    for start in range(0, n, rows_per_block):
        yield start, min(n, start + rows_per_block)


def _block_rows(n, itemsize):
    # ~64 MB temporaries, whatever N: symmetry checks and norms never allocate an N x N copy.
    return max(1, (64 << 20) // max(1, n * itemsize))


def check_symmetric(xp, k, name):
    """Raise ValueError unless k is symmetric to within sqrt(eps) of its largest entry.

    Kernels from ntkfast.gram are exactly symmetric; ones assembled elsewhere (other libraries,
    float32, blocked computations) may differ from their transpose by a few rounding errors,
    which this tolerance (1.5e-8 relative in float64, 3.5e-4 in float32) accepts.
    """
    n = k.shape[0]
    if n == 0:
        return
    scale = max(abs(float(k.min())), abs(float(k.max())))  # no N x N temporary
    tol = float(np.sqrt(np.finfo(k.dtype).eps)) * scale
    worst, where = 0.0, None
    for rows, cols in _mirror_blocks(xp, n, k.dtype.itemsize):
        diff = xp.abs(k[rows, cols] - k[cols, rows].T)
        block_worst = float(diff.max())
        if block_worst > worst:
            i, j = np.unravel_index(int(diff.argmax()), diff.shape)
            worst, where = block_worst, (rows.start + int(i), cols.start + int(j))
    if worst > tol:
        i, j = where
        raise ValueError(
            f"{name} must be symmetric (a kernel on the training set), but {name}[{i}, {j}] = "
            f"{float(k[i, j])!r} and {name}[{j}, {i}] = {float(k[j, i])!r} differ by "
            f"{worst:.3g} (tolerance {tol:.3g} = sqrt(eps) x max |{name}|)")


def _mirror_blocks(xp, n, itemsize):
    """(rows, cols) slices covering the upper triangle. On the CPU, square tiles that fit in L2
    with their mirror (a transposed read of whole row blocks misses the cache on every element);
    on the GPU, ~64 MB row blocks (few launches)."""
    if xp is np:
        edge = 256
        for i in range(0, n, edge):
            for j in range(i, n, edge):
                yield slice(i, min(n, i + edge)), slice(j, min(n, j + edge))
    else:
        for start, stop in _row_blocks(n, _block_rows(n, itemsize)):
            yield slice(start, stop), slice(0, n)


def _one_norm_symmetric(xp, k):
    """max column sum of |k| (= the 1-norm LAPACK's ?pocon wants), without an N x N temporary."""
    n = k.shape[0]
    best = 0.0
    for start, stop in _row_blocks(n, _block_rows(n, k.dtype.itemsize)):
        best = max(best, float(xp.abs(k[start:stop]).sum(axis=1).max()))
    return best


class Backend:
    """The operations ntkfast.predict needs, for one array library.

    Parameters
    ----------
    name : str
        'numpy' or 'cupy'.
    xp : module
        The array namespace (``numpy`` or ``cupy``).
    eigh : callable(a, shift) -> (w, v)
        Eigendecomposition of ``a + shift * I`` (ascending eigenvalues; ``a`` left unchanged).
    cholesky : callable(a, shift) -> (L, rcond) or (None, 0.0)
        Lower Cholesky factor of ``a + shift * I`` and an estimate of its reciprocal condition
        number; (None, 0.0) where the factorisation breaks down (not numerically positive
        definite).
    solve_triangular : callable
        ``solve_triangular(L, b, lower=True, trans=0|1)`` with SciPy's signature.
    """

    def __init__(self, name, xp, eigh, cholesky, solve_triangular):
        self.name = name
        self.xp = xp
        self.eigh = eigh
        self.cholesky = cholesky
        self.solve_triangular = solve_triangular

    def __repr__(self):
        return f"<ntkfast.predict backend {self.name!r}>"

    def asarray(self, x, dtype=None):
        return self.xp.asarray(x, dtype=dtype)

    def owns(self, x) -> bool:
        """Whether x is an array of this backend's library (not a scalar or another library's)."""
        if self.name == "cupy":
            return is_cupy(x)
        return isinstance(x, np.ndarray)


# ----------------------------------------------------------------------------------------------
# CPU: NumPy arrays, SciPy's LAPACK.

def _cpu_working_copy(a, shift):
    """A Fortran-ordered copy of a + shift*I for LAPACK to overwrite (one memcpy: a is symmetric,
    so a C-ordered a is its own Fortran-ordered transpose)."""
    work = np.array(a.T if a.flags.c_contiguous else a, order="F", copy=True)
    if shift:
        work.flat[::work.shape[0] + 1] += shift
    return work


#: Above this order the LAPACK factorisations run with single-threaded BLAS where OpenBLAS uses its
#: AVX-512 ('SkylakeX' family) kernels: its multithreaded ?syrk writes out of bounds for large
#: outputs there (measured with scipy-openblas 0.3.30 and NumPy's 0.3.31 on an AVX-512 EPYC:
#: x @ x.T at N = 16000, d = 784, and scipy.linalg.cholesky at N = 16000 die with SIGSEGV; N = 12000
#: and 1 thread are fine). ?potrf calls ?syrk, so a dense Cholesky of a 16000-point kernel crashed.
_SYRK_SAFE_ORDER = 12000
_AVX512_OPENBLAS = ("skylakex", "cooperlake", "sapphirerapids")


def _threaded_syrk_is_unsafe():
    from threadpoolctl import threadpool_info

    return any(lib.get("internal_api") == "openblas"
               and str(lib.get("architecture", "")).lower() in _AVX512_OPENBLAS
               for lib in threadpool_info())


def _lapack_threads(n):
    """A context for a LAPACK factorisation of order n: single-threaded BLAS where the threaded
    ?syrk of this OpenBLAS is known to crash at this size, else nothing."""
    import contextlib

    if n > _SYRK_SAFE_ORDER and _threaded_syrk_is_unsafe():
        from . import _blas

        return _blas.single_threaded()
    return contextlib.nullcontext()


def _cpu_eigh(a, shift, overwrite=False):
    import scipy.linalg

    n = a.shape[0]
    if overwrite and not shift and (a.flags.f_contiguous or a.flags.c_contiguous):
        work = a if a.flags.f_contiguous else a.T  # symmetric: the transpose is the same matrix
    else:
        work = _cpu_working_copy(a, shift)
    with _lapack_threads(n):
        return scipy.linalg.eigh(work, lower=True, overwrite_a=True, check_finite=False,
                                 driver=cpu_eigh_driver(n))


def _cpu_cholesky(a, shift):
    import scipy.linalg
    from scipy.linalg import lapack

    work = _cpu_working_copy(a, shift)
    anorm = _one_norm_symmetric(np, work)
    try:
        with _lapack_threads(work.shape[0]):
            factor = scipy.linalg.cholesky(work, lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None, 0.0
    pocon = lapack.get_lapack_funcs("pocon", (factor,))
    rcond, info = pocon(factor, anorm, uplo="L")
    if info != 0 or not np.isfinite(rcond):
        return None, 0.0
    return factor, float(rcond)


def _cpu_solve_triangular(l, b, lower=True, trans=0):
    import scipy.linalg

    return scipy.linalg.solve_triangular(l, b, lower=lower, trans=trans, check_finite=False)


CPU = Backend("numpy", np, _cpu_eigh, _cpu_cholesky, _cpu_solve_triangular)


# ----------------------------------------------------------------------------------------------
# Array-API style backend (CuPy; NumPy can stand in for it in tests).

def array_api_backend(name, xp, eigh, cholesky, solve_triangular):
    """A backend from numpy-like primitives: ``eigh(a)``, ``cholesky(a)`` (lower; may raise or
    return non-finite values on failure) and SciPy-style ``solve_triangular``.

    Without a condition estimator (no ?pocon in cuSOLVER), the reciprocal condition number is
    approximated from the Cholesky pivots, (min_i L_ii / max_i L_ii)². That is an upper bound
    on 1/cond(K̃) (every pivot L_ii² lies in [λ_min, max_j K̃_jj]), so it can miss
    ill-conditioning spread over many rows, but it collapses where the factorisation meets a
    numerically dependent row, which is the failure that matters here (duplicate training
    points, rank-deficient kernels).
    """

    def shifted(a, shift):
        work = a.copy()
        if shift:
            n = work.shape[0]
            work.reshape(-1)[::n + 1] += shift
        return work

    def eigh_(a, shift, overwrite=False):
        return eigh(a if (overwrite and not shift) else shifted(a, shift))

    def cholesky_(a, shift):
        try:
            factor = cholesky(shifted(a, shift))
        except np.linalg.LinAlgError:
            return None, 0.0
        except Exception as error:  # cupy.linalg.LinAlgError is not a NumPy subclass
            if type(error).__name__ != "LinAlgError":
                raise
            return None, 0.0
        pivots = xp.diagonal(factor)
        if factor.shape[0] == 0:
            return factor, 1.0
        smallest, largest = float(pivots.min()), float(pivots.max())
        if not (np.isfinite(smallest) and np.isfinite(largest)) or smallest <= 0.0:
            return None, 0.0
        return factor, (smallest / largest) ** 2

    return Backend(name, xp, eigh_, cholesky_, solve_triangular)


_GPU = None


def _gpu_backend():
    global _GPU
    if _GPU is None:
        try:
            import cupy
            import cupyx
            import cupyx.scipy.linalg
        except ImportError as error:  # pragma: no cover - CuPy arrays imply CuPy is importable
            raise BackendUnavailableError(
                "ntkfast.predict got a CuPy array but cannot import CuPy/cupyx "
                f"({error}); install the GPU extra: pip install 'ntkfast[cuda]'") from None
        def cholesky(a):
            # CuPy only checks cuSOLVER's status under errstate(linalg='raise'); otherwise a
            # failed factorisation returns a partly factored matrix without a word.
            with cupyx.errstate(linalg="raise"):
                return cupy.linalg.cholesky(a)

        _GPU = array_api_backend("cupy", cupy, cupy.linalg.eigh, cholesky,
                                 cupyx.scipy.linalg.solve_triangular)
    return _GPU


def backend_for(array):
    """The backend for the train kernel (or train inputs) ``array``: CuPy in -> GPU."""
    return _gpu_backend() if is_cupy(array) else CPU
