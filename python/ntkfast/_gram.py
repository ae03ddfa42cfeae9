"""ntkfast.gram and ntkfast.diagonal: the public entry points (checks in _validation, compute in
_backends)."""
from __future__ import annotations

from . import _backends
from ._validation import Kernels, diagonal_request, gram_request

__all__ = ["gram", "diagonal", "Kernels"]


def gram(x1, x2=None, *, net, get=("nngp", "ntk"), dtype=None, out=None, backend="auto",
         num_threads=None, check_finite=True, progress=False, tile_size=None):
    """NNGP and/or NTK Gram matrix of an infinitely wide network.

    Computes the NNGP kernel Σ(x, x') (Lee et al. 2018; Matthews et al. 2018) and the neural
    tangent kernel Θ(x, x') (Jacot et al. 2018; the layer recursion of Arora et al. 2019) of the
    network's output for every pair of rows, with neural-tangents' conventions (inputs enter as x·x'/n_features; ``Dense`` as in
    ``neural_tangents.stax``). Tiled: every tile's input Gram is one BLAS GEMM, then all layers run
    while it is in cache and each output entry is written once.

    Parameters
    ----------
    x1 : array_like, shape (n1, n_features)
        Input points (real numbers; any memory layout).
    x2 : array_like, shape (n2, n_features), optional
        Second set of points. None computes the symmetric Gram of x1 with half the work; the
        result is then exactly symmetric and its diagonal equals :func:`diagonal`.
    net : Layer
        The network, e.g. ``ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)`` or ``ntkfast.serial(...)``.
    get : {'nngp', 'ntk'} or tuple of them
        A name returns one array; a tuple returns ``Kernels(nngp=..., ntk=...)``.
    dtype : {None, float32, float64}
        Output dtype. Default: float32 if every input is float32, else float64. The layer maps are
        evaluated in float64 either way; float32 inputs use a float32 GEMM.
    out : ndarray or Kernels/tuple/dict of ndarrays, optional
        Preallocated C-contiguous destination(s) of shape (n1, n2) and the output dtype, e.g.
        ``np.memmap`` arrays: results larger than memory then go straight to disk. File-backed
        outputs are written one row panel (a tile's rows) at a time, each page once and in
        order, through a panel buffer of tile x n2 entries per output (up to 1 GiB in all;
        beyond that, tile by tile).
    backend : {'auto', 'cpu', 'cuda'}
        'auto' follows the data (CuPy arrays -> 'cuda').
    num_threads : int, optional
        OpenMP threads, 1 to 1024 (default: all, or OMP_NUM_THREADS); never more than the Gram
        has tiles (each thread holds a tile's buffers). In a child process made by
        ``fork`` after the parent used the engine, the engine runs single-threaded (the OpenMP
        runtime cannot be used across fork); use the 'spawn' or 'forkserver' start method of
        multiprocessing for parallel children.
    check_finite : bool
        Reject NaN/Inf inputs with a ValueError (default). Disable only for inputs known finite.
    progress : bool or callable
        True shows a tqdm progress bar; a callable is called as ``progress(tiles_done, tiles_total)``.
    tile_size : int, optional
        Tile edge, 1 to 16384 (advanced; default: 384, smaller for very wide inputs, and for
        deep networks so that one tile, the unit between Ctrl-C checks, stays ~0.1 s). The BLAS may sum a tile's
        input Gram in another order for another tile shape, which moves results by a few ulps of
        the output dtype (measured: ≤ 2e-16 of max|K| in float64, ≤ 5e-7 in float32); symmetry and
        the diagonal's equality with :func:`diagonal` hold for every tile size.

    Returns
    -------
    ndarray of shape (n1, n2), or Kernels of them.

    Raises
    ------
    TypeError, ValueError
        Bad arguments (the message names the argument and what was expected).
    MemoryError
        The outputs, or a deep network's per-point variance tables ((ops + 1) x N x 20 bytes
        per point set), do not fit in the available memory (raised before allocating).
    NonFiniteKernelError
        The kernel overflows in the requested precision, or an input is NaN/Inf with
        ``check_finite=False`` (raised before the Gram is computed).
    KernelUnderflowError
        A variance inside the network is so small (below ~1e-150, not 0) that the kernel cannot
        be computed exactly in double precision (raised before the Gram is computed).
    OSError
        ``out`` is a memory-mapped file whose disk space cannot be reserved (e.g. a full disk).
    KeyboardInterrupt
        Ctrl-C; the computation stops within a fraction of a second.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((100, 10))
    >>> k = ntkfast.gram(x, net=ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05))
    >>> k.ntk.shape
    (100, 100)
    """
    request = gram_request(x1, x2, net=net, get=get, dtype=dtype, out=out, backend=backend,
                           num_threads=num_threads, check_finite=check_finite, progress=progress,
                           tile_size=tile_size)
    return request.result(_backends.run(request, "gram"))


def diagonal(x, *, net, get=("nngp", "ntk"), dtype=None, check_finite=True, num_threads=None):
    """Per-point kernel values k(x_i, x_i) in O(n · (n_features + depth)).

    The NNGP diagonal is each point's prior output variance Σ(x, x); it equals the
    diagonal of ``gram(x, net=net)`` to the last bit.

    Parameters
    ----------
    x : array_like, shape (n, n_features)
    net, get, dtype, check_finite, num_threads
        As for :func:`gram`.

    Returns
    -------
    ndarray of shape (n,), or Kernels of them.

    Raises
    ------
    TypeError, ValueError, NonFiniteKernelError, KernelUnderflowError
        As for :func:`gram`.
    MemoryError
        The per-point variance tables of a deep network do not fit in the available memory.

    Examples
    --------
    >>> import numpy as np, ntkfast
    >>> x = np.random.default_rng(0).standard_normal((50, 8))
    >>> net = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)
    >>> d = ntkfast.diagonal(x, net=net, get="ntk")
    >>> np.array_equal(d, np.diag(ntkfast.gram(x, net=net, get="ntk")))
    True
    """
    request = diagonal_request(x, net=net, get=get, dtype=dtype, check_finite=check_finite,
                               num_threads=num_threads)
    return request.result(_backends.run(request, "diagonal"))
