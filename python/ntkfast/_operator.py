"""``ntkfast.KernelOperator``: an NNGP or NTK Gram matrix as a matrix-free linear operator.

``op @ V`` computes K·V block pair by block pair through the engine (``ntkfast.gram`` on blocks of
rows, CPU or CUDA), holding one kernel block (a few engine tiles, ~32 MB) and the vectors, never
the N×N matrix; a symmetric operator computes each off-diagonal block once and uses it twice
(K_IJ V_J and K_IJᵀ V_I), so one product costs about one symmetric Gram computation plus the
GEMMs with V. Where the matrix fits, it can instead be computed once and kept (in memory, or in a
file), so that each later product costs one pass over it (``storage``, ``_band_store``).

The operator protocol of the iterative solvers (``_solvers``): ``shape``, ``dtype``,
``matmat(V)``, ``diagonal()``, ``columns(idx)``; plus ``rmatmat``, ``@``,
:meth:`KernelOperator.aslinearoperator` (SciPy's, or CuPy's for GPU arrays).
"""
from __future__ import annotations

import math
import os
import tempfile
import weakref

import numpy as np

from . import _blas, _core
from ._band_store import (BandFile, file_product, fill_band, memory_product, transposed_vectors,
                          write_bands)
from ._gram import diagonal as _diagonal
from ._gram import gram as _gram
from ._progress import Progress
from ._validation import (available_memory, check_real_dtype, human_bytes, is_cupy,
                          maps_file, points_request, read_array, reject_non_finite)

__all__ = ["KernelOperator", "STORAGES", "as_indices", "as_vectors"]

STORAGES = ("auto", "recompute", "memory", "file")
#: Bytes of one kernel block in the recompute path: large enough that each engine call runs
#: many tiles (GEMM efficiency, OpenMP balance), small enough to stay a few tiles' worth.
BLOCK_BYTES = 32 << 20


class KernelOperator:
    """The NNGP or NTK Gram matrix K(x, x2) as a linear operator, without storing it.

    Parameters
    ----------
    x : array, shape (n1, n_features)
        Points (NumPy, or CuPy for the CUDA backend).
    x2 : array, shape (n2, n_features), optional
        Second point set; None gives the symmetric operator K(x, x).
    net : Layer
        The network, as for :func:`ntkfast.gram`.
    get : {'ntk', 'nngp'}
        Which kernel.
    dtype : {None, float32, float64}
        The kernel's dtype (as for :func:`ntkfast.gram`). Products are always float64.
    backend : {'auto', 'cpu', 'cuda'}
    storage : {'auto', 'recompute', 'memory', 'file'}
        'recompute': every product recomputes the kernel block by block (O(block) memory).
        'memory': the Gram matrix is computed once and kept in memory; a product reads it once
        (a symmetric one only its upper triangle), summing in float64.
        'file': the Gram matrix is computed once and kept on disk, in ``path`` or a temporary
        file deleted by :meth:`close` (or with the operator): a symmetric kernel as the bands of
        its upper triangle (N²/2 entries, e.g. 20 GB at N = 100,000 in float32), packed in the
        operator's own layout. Products stream it band by band through two buffers of 64 MB,
        so the process's memory does not grow with N; repeated products run at the speed of
        the disk or, where the file fits, of the page cache. The space is reserved up front: a
        disk too small raises ``OSError`` before any computation.
        'auto' (default): 'memory' if the matrix takes at most ``memory_fraction`` of the
        available memory, else 'recompute' ('file' is never chosen for you: it writes to disk).
        The choice is in ``op.storage``.
    path : str or path-like, optional
        File for storage='file' (created or overwritten; kept after :meth:`close`). Default: a
        temporary file in :func:`tempfile.gettempdir` (``TMPDIR``).
    memory_fraction : float
        For storage='auto' (default 0.5).
    block_size : int, optional
        Rows of one kernel block (default: ~32 MB blocks); values above the operator's larger
        side are clamped to it (one block then spans the whole matrix).
    num_threads, tile_size, check_finite
        As for :func:`ntkfast.gram`.
    progress : bool or callable
        A progress bar over the blocks of each product (and of the one-off computation), or a
        ``callable(done, total)`` called instead, as for :func:`ntkfast.gram`.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((300, 20))
    >>> op = ntkfast.KernelOperator(x, net=ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05),
    ...                             storage="recompute")
    >>> v = np.ones((300, 2))
    >>> np.allclose(op @ v, ntkfast.gram(x, net=op.net, get="ntk") @ v)
    True
    """

    def __init__(self, x, x2=None, *, net, get="ntk", dtype=None, backend="auto",
                 storage="auto", path=None, memory_fraction=0.5, block_size=None,
                 num_threads=None, tile_size=None, check_finite=True, progress=False):
        if not isinstance(get, str):
            raise TypeError(f"get must be 'ntk' or 'nngp' (one kernel per operator), got {get!r}")
        request = points_request(x, x2, net=net, get=get, dtype=dtype, backend=backend,
                                 num_threads=num_threads, check_finite=check_finite,
                                 progress=progress, tile_size=tile_size)
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if isinstance(memory_fraction, bool) or not isinstance(memory_fraction, (int, float)) \
                or not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be a number in (0, 1], got {memory_fraction!r}")
        if path is not None and storage != "file":
            raise ValueError(f"path is only used with storage='file', got storage={storage!r}")
        self.x, self.x2 = request.x1, request.x2
        self.net, self.kernel, self.dtype = request.net, request.names[0], request.dtype
        self.backend = request.backend
        self._gram_options = dict(backend=request.backend, num_threads=num_threads,
                                  tile_size=tile_size, check_finite=False)
        self.progress = request.progress  # False, True (a bar) or a callable(done, total)
        self.shape = request.shape
        self.symmetric = x2 is None
        self.block_size = self._block_size(block_size)
        self._xp = _array_module(self.x)
        self._matrix = None  # storage='memory'
        self._store = None   # storage='file': a BandFile
        self.storage = self._choose_storage(storage, memory_fraction)
        if self.storage == "memory":
            self._matrix = self._full_gram(out=None)
        elif self.storage == "file":
            self._store = self._file_gram(path)
            self._closer = weakref.finalize(self, self._store.close)

    # ------------------------------------------------------------------------------------------
    # Set-up.

    def _block_size(self, block_size):
        if block_size is None:
            rows = int(math.isqrt(BLOCK_BYTES // self.dtype.itemsize))
            return max(256, min(rows, max(self.shape)))
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
                or block_size < 1:
            raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
        # a block never has more rows or columns than the matrix: the product's buffer is sized
        # from it
        return min(int(block_size), max(self.shape))

    @property
    def nbytes(self):
        """Bytes of the full Gram matrix in the kernel's dtype.

        Examples
        --------
        >>> import numpy as np, ntkfast
        >>> ntkfast.KernelOperator(np.eye(100), net=ntkfast.MLP(1)).nbytes
        80000
        """
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    def _choose_storage(self, storage, memory_fraction):
        if storage != "auto":
            if storage == "file" and self.backend == "cuda" and is_cupy(self.x):
                raise ValueError("storage='file' needs host arrays; pass NumPy inputs")
            return storage
        if self.backend == "cuda" and is_cupy(self.x):
            import cupy

            free, _ = cupy.cuda.runtime.memGetInfo()
            return "memory" if self.nbytes <= memory_fraction * free else "recompute"
        free = available_memory()
        return "memory" if free is not None and self.nbytes <= memory_fraction * free else "recompute"

    def _full_gram(self, out):
        return _gram(self.x, self.x2, net=self.net, get=self.kernel, dtype=self.dtype, out=out,
                     progress=self.progress, **self._gram_options)

    def _file_gram(self, path):
        temporary = path is None
        if not temporary:
            _refuse_input_files(path, (self.x, self.x2))
        else:
            handle, path = tempfile.mkstemp(prefix="ntkfast-kernel-", suffix=".bands")
            os.close(handle)
        store = BandFile(path, self.shape, self.dtype, self.symmetric, temporary)
        try:
            write_bands(store, self._band, progress=self.progress,
                        desc=f"ntkfast.KernelOperator ({self.kernel}) to {store.path}")
        except BaseException:
            store.close()
            raise
        return store

    def _band(self, r0, r1, c0, out):
        def block(a, b):
            return _gram(a, b, net=self.net, get=self.kernel, dtype=self.dtype,
                         **self._gram_options)

        fill_band(block, self.x, self.x2, r0, r1, out)

    def close(self):
        """Delete the operator's temporary file (storage='file'); later products raise
        ``ValueError``. Also called when the operator is garbage-collected; a no-op for other
        storages. Operators are context managers: ``with KernelOperator(...) as op:``."""
        if self._store is not None:
            self._closer()
            self.storage = "closed"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        # the array module is found again from the points; a file store is an open file of
        # this process, which another process (or a deep copy) could not share
        if self._store is not None or self.storage == "closed":
            raise TypeError(f"a KernelOperator with storage={self.storage!r} cannot be pickled or "
                            "deep-copied (it holds this process's open kernel file); use "
                            "storage='memory' or 'recompute', or build one from the points where "
                            "it is needed")
        state = dict(self.__dict__)
        state.pop("_xp")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._xp = _array_module(self.x)

    def __copy__(self):  # shares the stored kernel (a file store too: close() closes it for both)
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __repr__(self):
        n1, n2 = self.shape
        return (f"KernelOperator({self.kernel}, {n1} x {n2} {self.dtype}, "
                f"{'symmetric' if self.symmetric else 'cross'}, backend={self.backend!r}, "
                f"storage={self.storage!r} ({human_bytes(self.nbytes)} as a matrix"
                f"{f', {human_bytes(self._store.nbytes)} in {self._store.path}' if self._store else ''}), "
                f"net={self.net!r})")

    # ------------------------------------------------------------------------------------------
    # Products.

    def _vectors(self, v, rows, name):
        return as_vectors(v, rows, name, self._xp)

    def _block(self, i0, i1, j0, j1, out=None):
        xa = self.x[i0:i1]
        if self.symmetric and i0 == j0 and i1 == j1:
            return _gram(xa, None, net=self.net, get=self.kernel, dtype=self.dtype, out=out,
                         **self._gram_options)
        xb = (self.x if self.x2 is None else self.x2)[j0:j1]
        return _gram(xa, xb, net=self.net, get=self.kernel, dtype=self.dtype, out=out,
                     **self._gram_options)

    def matmat(self, v):
        """K @ V for V of shape (n2, k) (or (n2,)), in float64.

        Parameters
        ----------
        v : array, shape (n2, k) or (n2,)

        Returns
        -------
        array, shape (n1, k) or (n1,), float64 (CuPy for CuPy inputs)

        Examples
        --------
        >>> import numpy as np, ntkfast
        >>> x = np.random.default_rng(0).standard_normal((40, 3))
        >>> op = ntkfast.KernelOperator(x, net=ntkfast.MLP(2), storage="recompute")
        >>> k = ntkfast.gram(x, net=ntkfast.MLP(2), get="ntk")
        >>> np.allclose(op.matmat(np.ones((40, 2))), k @ np.ones((40, 2)))
        True
        """
        v, one = self._vectors(v, self.shape[1], "V")
        out = self._recompute_product(v, transpose=False) if self.storage == "recompute" \
            else self._stored_product(v, transpose=False)
        return out[:, 0] if one else out

    def rmatmat(self, u):
        """Kᵀ @ U for U of shape (n1, k) (or (n1,)), in float64.

        Parameters
        ----------
        u : array, shape (n1, k) or (n1,)

        Returns
        -------
        array, shape (n2, k) or (n2,), float64

        Examples
        --------
        >>> import numpy as np, ntkfast
        >>> rng = np.random.default_rng(0)
        >>> x, x2 = rng.standard_normal((30, 3)), rng.standard_normal((20, 3))
        >>> op = ntkfast.KernelOperator(x, x2, net=ntkfast.MLP(2))
        >>> k = ntkfast.gram(x, x2, net=ntkfast.MLP(2), get="ntk")
        >>> np.allclose(op.rmatmat(np.ones(30)), k.T @ np.ones(30))
        True
        """
        if self.symmetric:
            return self.matmat(u)
        u, one = self._vectors(u, self.shape[0], "U")
        out = self._recompute_product(u, transpose=True) if self.storage == "recompute" \
            else self._stored_product(u, transpose=True)
        return out[:, 0] if one else out

    def matvec(self, v):
        """K @ v for a vector v of n2 entries (any shape with n2 elements), float64.

        Examples
        --------
        >>> import numpy as np, ntkfast
        >>> op = ntkfast.KernelOperator(np.eye(4), net=ntkfast.MLP(1))
        >>> op.matvec(np.ones(4)).shape
        (4,)
        """
        return self.matmat(self._xp.asarray(v).reshape(-1))

    def __matmul__(self, v):
        return self.matmat(v)

    def _stored_product(self, v, transpose):
        if self.storage == "closed":
            raise ValueError("this KernelOperator was closed (its file is gone)")
        desc = f"ntkfast.KernelOperator ({self.kernel}, {self.storage}) @ V"
        threads = self._gram_options["num_threads"] or 0
        if self._store is not None:
            return file_product(self._store, v, transpose=transpose, num_threads=threads,
                                progress=self.progress, desc=desc)
        k = self._matrix
        if self._xp is not np:  # GPU arrays: cuBLAS
            return (k.T if transpose else k) @ v
        return memory_product(k, v, symmetric=self.symmetric, transpose=transpose,
                              num_threads=threads, progress=self.progress, desc=desc)

    def _block_pairs(self):
        n1, n2 = self.shape
        step = self.block_size
        for i0 in range(0, n1, step):
            for j0 in range(i0 if self.symmetric else 0, n2, step):
                yield i0, min(i0 + step, n1), j0, min(j0 + step, n2)

    def _recompute_product(self, v, transpose):
        if self._xp is not np:  # pragma: no cover - needs a GPU
            return self._recompute_product_gpu(v, transpose)
        n1, n2 = self.shape
        pairs = list(self._block_pairs())
        # One reused block buffer (no page faults per block); the block products run in the
        # engine's OpenMP threads, and the BLAS stays single-threaded from the first block to the
        # last: BLAS threads woken between the engine calls (a product, or the thread count
        # restored after each call) spin on the cores the next call needs (about 20 % of a
        # product at N = 8000 on two cores).
        buffer = np.empty(min(self.block_size, n1) * min(self.block_size, n2), self.dtype)
        vt, out = transposed_vectors(v, n2 if transpose else n1)
        threads = self._gram_options["num_threads"] or 0
        reporter = Progress(self.progress, f"ntkfast.KernelOperator ({self.kernel}) @ V")
        try:
            with _blas.single_threaded():
                for done, (i0, i1, j0, j1) in enumerate(pairs):
                    rows, cols = i1 - i0, j1 - j0
                    block = self._block(i0, i1, j0, j1,
                                        out=buffer[:rows * cols].reshape(rows, cols))
                    if transpose:  # cross operator: Kᵀ U, block by block
                        _core.band_matmat(block, i0, j0, None, vt, None, out, 0, threads)
                    elif self.symmetric and i0 == j0:  # its upper triangle, each entry twice
                        _core.symmetric_band_matmat(block, i0, vt, out, threads)
                    elif self.symmetric:  # the mirror block, used without recomputing
                        _core.band_matmat(block, i0, j0, vt, vt, out, out, 0, threads)
                    else:
                        _core.band_matmat(block, i0, j0, vt, None, out, None, cols, threads)
                    if reporter.enabled:
                        reporter(done + 1, len(pairs))
        finally:
            reporter.close()
        return out.T

    def _recompute_product_gpu(self, v, transpose):  # pragma: no cover - needs a GPU
        xp = self._xp
        n1, n2 = self.shape
        pairs = list(self._block_pairs())
        out = xp.zeros((n2 if transpose else n1, v.shape[1]))
        reporter = Progress(self.progress, f"ntkfast.KernelOperator ({self.kernel}) @ V")
        try:
            for done, (i0, i1, j0, j1) in enumerate(pairs):
                block = self._block(i0, i1, j0, j1).astype(np.float64, copy=False)
                if transpose:  # cross operator: Kᵀ U, block by block
                    out[j0:j1] += block.T @ v[i0:i1]
                else:
                    out[i0:i1] += block @ v[j0:j1]
                    if self.symmetric and j0 != i0:  # the mirror block, used without recomputing
                        out[j0:j1] += block.T @ v[i0:i1]
                if reporter.enabled:
                    reporter(done + 1, len(pairs))
        finally:
            reporter.close()
        return out

    # ------------------------------------------------------------------------------------------
    # What the solvers use besides products.

    def diagonal(self):
        """diag(K) in O(n) (symmetric operators), float64.

        Raises
        ------
        ValueError
            The operator is not symmetric (it was built with ``x2``).

        Examples
        --------
        >>> import numpy as np, ntkfast
        >>> x = np.random.default_rng(0).standard_normal((30, 3))
        >>> op = ntkfast.KernelOperator(x, net=ntkfast.MLP(2), storage="recompute")
        >>> np.allclose(op.diagonal(), ntkfast.diagonal(x, net=ntkfast.MLP(2), get="ntk"))
        True
        """
        if not self.symmetric:
            raise ValueError("diagonal() is defined for symmetric operators (x2=None)")
        if self._matrix is not None:
            return self._xp.asarray(self._xp.diagonal(self._matrix), dtype=np.float64)
        d = _diagonal(self.x, net=self.net, get=self.kernel, dtype=self.dtype, check_finite=False,
                      num_threads=self._gram_options["num_threads"])
        return self._xp.asarray(d, dtype=np.float64)

    def columns(self, idx):
        """K[:, idx] (float64), computed as one cross Gram against the chosen points.

        Parameters
        ----------
        idx : array_like of int
            Column indices in [0, n2) (for a boolean mask, pass ``np.flatnonzero(mask)``).

        Returns
        -------
        array, shape (n1, len(idx)), float64

        Raises
        ------
        IndexError
            An index is out of range, or ``idx`` is not integers (a boolean mask, floats).

        Examples
        --------
        >>> import numpy as np, ntkfast
        >>> x = np.random.default_rng(0).standard_normal((30, 3))
        >>> op = ntkfast.KernelOperator(x, net=ntkfast.MLP(2), storage="recompute")
        >>> np.allclose(op.columns([0, 5]), ntkfast.gram(x, net=op.net, get="ntk")[:, [0, 5]])
        True
        """
        idx = as_indices(idx, self.shape[1], "columns", self._xp)
        if self._matrix is not None:
            return self._xp.asarray(self._matrix[:, idx], dtype=np.float64)
        xb = (self.x if self.x2 is None else self.x2)[idx]
        return _gram(self.x, xb, net=self.net, get=self.kernel, dtype=self.dtype,
                     **self._gram_options).astype(np.float64, copy=False)

    def rows(self, idx):
        """K[idx, :] (float64).

        Parameters
        ----------
        idx : array_like of int
            Row indices in [0, n1) (for a boolean mask, pass ``np.flatnonzero(mask)``).

        Returns
        -------
        array, shape (len(idx), n2), float64

        Raises
        ------
        IndexError
            An index is out of range, or ``idx`` is not integers (a boolean mask, floats).

        Examples
        --------
        >>> import numpy as np, ntkfast
        >>> x = np.random.default_rng(0).standard_normal((30, 3))
        >>> op = ntkfast.KernelOperator(x, net=ntkfast.MLP(2), storage="recompute")
        >>> op.rows([1, 2]).shape
        (2, 30)
        """
        if self.symmetric:
            return self.columns(idx).T
        idx = as_indices(idx, self.shape[0], "rows", self._xp)
        return _gram(self.x[idx], self.x2, net=self.net, get=self.kernel, dtype=self.dtype,
                     **self._gram_options).astype(np.float64, copy=False)

    def aslinearoperator(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (``cupyx.scipy.sparse.linalg`` for CuPy
        inputs) of this operator, float64.

        Examples
        --------
        >>> import numpy as np, scipy.sparse.linalg, ntkfast
        >>> x = np.random.default_rng(0).standard_normal((30, 3))
        >>> op = ntkfast.KernelOperator(x, net=ntkfast.MLP(2, b_std=0.1))
        >>> solution, info = scipy.sparse.linalg.cg(op.aslinearoperator(), np.ones(30))
        >>> info
        0
        """
        if self._xp is np:
            from scipy.sparse.linalg import LinearOperator
        else:  # pragma: no cover - needs a GPU
            from cupyx.scipy.sparse.linalg import LinearOperator
        return LinearOperator(self.shape, matvec=self.matvec, matmat=self.matmat,
                              rmatvec=lambda u: self.rmatmat(self._xp.asarray(u).reshape(-1)),
                              rmatmat=self.rmatmat, dtype=np.float64)


def _refuse_input_files(path, arrays):
    """storage='file' truncates ``path``: never when it holds one of the points (a memory map
    of the file, whoever made it: np.memmap, np.load(mmap_mode=...), mmap + np.frombuffer)."""
    if not os.path.exists(path):
        return
    for a in arrays:
        if a is not None and maps_file(a, path):
            raise ValueError(f"path {os.fspath(path)!r} is the file of an input array (a memory "
                             "map); the kernel would overwrite it: choose another path")


def as_indices(idx, n, what, xp=np):
    """idx as int64 indices in [0, n), else an IndexError. A boolean mask or float indices are
    refused rather than cast: the cast would read a mask as indices 0 and 1, and truncate
    1.7 to 1."""
    idx = xp.asarray(idx).reshape(-1)
    if idx.size == 0:  # np.asarray([]) is float64
        return idx.astype(np.int64)
    if idx.dtype.kind not in "iu":
        raise IndexError(f"{what}: idx must be integer indices in [0, {n}), got dtype "
                         f"{idx.dtype}" + ("; for a boolean mask pass np.flatnonzero(mask)"
                                            if idx.dtype.kind == "b" else ""))
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise IndexError(f"{what}: indices must be in [0, {n}), got "
                         f"{int(idx.min())}..{int(idx.max())}")
    return idx.astype(np.int64, copy=False)


def as_vectors(v, rows, name, xp=np):
    """(V as a float64 (rows, k) array, whether it came as one vector): the product argument of
    every operator. Complex, object or string arrays are a TypeError and NaN/Inf a ValueError,
    naming V: a cast would drop imaginary parts or turn None into NaN, and one NaN would make
    the whole product NaN."""
    if isinstance(v, (str, bytes)) or v is None:
        raise TypeError(f"{name} must be a real array of shape ({rows},) or ({rows}, k), got "
                        f"{type(v).__name__}")
    v = read_array(v, name) if xp is np else xp.asarray(v)
    check_real_dtype(v, name)
    reject_non_finite(v, name, hint="")
    v = xp.asarray(v, dtype=np.float64)
    one = v.ndim == 1
    if one:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != rows:
        raise ValueError(f"{name} must have shape ({rows},) or ({rows}, k), got {v.shape}")
    return v, one


def _array_module(x):
    if is_cupy(x):
        import cupy

        return cupy
    return np
