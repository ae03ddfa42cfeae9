"""``ntkfast.dask``: NNGP/NTK Gram matrices as Dask arrays, and a kernel operator whose products
run on a ``distributed`` cluster.

* :func:`gram` -- the Gram matrix of a (Dask or NumPy) array of points as a lazy
  ``dask.array.Array``: one chunk per pair of row chunks, each chunk one :func:`ntkfast.gram`
  call. Store it with Dask's own machinery (``da.store``, ``da.to_npy_stack``, ``.to_zarr``) to
  write matrices larger than memory.
* :class:`KernelOperator` -- the matrix-free operator of :class:`ntkfast.KernelOperator`
  (``shape``, ``dtype``, ``matmat``, ``diagonal``, ``columns``, ...), with each product spread
  over the workers of a ``distributed.Client``: the iterative solvers of ``ntkfast`` run on it
  unchanged. Its kernel is recomputed per product, or computed once and kept by the workers,
  each holding its share of the bands in memory or in a local file (``storage``).

Needs ``pip install 'ntkfast[dask]'`` (``dask[array]`` and ``distributed``). ``import ntkfast``
never imports Dask; only ``import ntkfast.dask`` does.

Threads. A Dask worker runs up to ``nthreads`` tasks at once, and each ``ntkfast.gram`` call is
itself an OpenMP-parallel computation: letting every task use all of the worker's threads would
run nthreads² threads. With ``num_threads=None`` (default) each task's engine call uses the
worker's ``nthreads`` (from ``distributed.get_worker()``; outside a distributed worker, the
engine's default: all cores or ``OMP_NUM_THREADS``) and the engine calls of one worker (or, off a
cluster, of one process) take turns through a lock, so a worker never runs more than ``nthreads``
engine threads and each call gets the large, well-balanced OpenMP region the engine is tuned
for. An explicit ``num_threads`` is used as given, without the lock (e.g. ``num_threads=1`` on
workers with many threads: one engine thread per Dask thread).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
import pickle
import sys
import tempfile
import threading
import uuid
import weakref

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError("ntkfast.dask needs Dask: pip install 'ntkfast[dask]' "
                      f"(dask[array] and distributed) ({error})") from error

from ._band_store import FILE_BAND_BYTES, MEMORY_BAND_BYTES, BandFile, band_bounds, \
    bands_product, file_product, fill_band, write_bands
from ._gram import Kernels
from ._gram import diagonal as _diagonal
from ._gram import gram as _gram
from ._layers import as_network, holds_user_functions
from ._operator import BLOCK_BYTES, as_indices, as_vectors
from ._validation import check_real_dtype, is_cupy, parse_get, points_request, result_dtype

__all__ = ["gram", "KernelOperator"]

#: Options of ntkfast.gram that dask.gram passes through to every block's call.
GRAM_OPTIONS = ("backend", "num_threads", "check_finite", "tile_size")
#: The fewest rows of a default block: smaller blocks spend more time on task overhead than on
#: the kernel.
MIN_BLOCK = 256


def _distributed():
    try:
        import distributed
    except ImportError as error:
        raise ImportError("ntkfast.dask.KernelOperator needs distributed: "
                          f"pip install 'ntkfast[dask]' ({error})") from error
    return distributed


# ----------------------------------------------------------------------------------------------
# Threads of one task (see the module docstring).

_LOCKS = {}
_LOCKS_GUARD = threading.Lock()


def _lock(key):
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def _current_worker():
    # a task on a distributed worker has distributed imported; elsewhere, do not import it
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.get_worker()
    except ValueError:  # not running in a distributed worker's task
        return None


def _engine_threads(num_threads):
    """(num_threads for ntkfast.gram, a context manager to hold around the call)."""
    if num_threads is not None:
        return num_threads, contextlib.nullcontext()
    worker = _current_worker()
    if worker is None:
        return None, _lock("local")
    state = getattr(worker, "state", worker)
    nthreads = getattr(state, "nthreads", None) or getattr(worker, "nthreads", None)
    return (int(nthreads) if nthreads else None), _lock(("worker", id(worker)))


def _engine_gram(x1, x2, net, get, dtype, options):
    """ntkfast.gram on one block, with the task's thread policy."""
    options = dict(options)
    threads, guard = _engine_threads(options.pop("num_threads", None))
    with guard:
        return _gram(x1, x2, net=net, get=get, dtype=dtype, num_threads=threads, **options)


def _engine_diagonal(x, net, get, dtype, num_threads):
    threads, guard = _engine_threads(num_threads)
    with guard:
        return _diagonal(x, net=net, get=get, dtype=dtype, check_finite=False, num_threads=threads)


# ----------------------------------------------------------------------------------------------
# gram: a Dask array of kernel blocks.

def _default_rows(dtype):
    """Rows per chunk: blocks of ~BLOCK_BYTES, as ntkfast.KernelOperator."""
    return max(MIN_BLOCK, math.isqrt(BLOCK_BYTES // np.dtype(dtype).itemsize))


def _points(x, name, chunks, dtype):
    """x as a Dask array with its features in one chunk and its rows chunked as asked."""
    if isinstance(x, da.Array):
        arr = x
    elif isinstance(x, np.ndarray):
        arr = None
    else:
        raise TypeError(f"{name} must be a dask.array.Array or a NumPy ndarray of shape "
                        f"(n_points, n_features), got {type(x).__name__}")
    check_real_dtype(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_points, n_features), got shape {x.shape}")
    if any(math.isnan(s) for s in x.shape):
        raise ValueError(f"{name} has unknown chunk sizes (shape {x.shape}); call "
                         f"{name}.compute_chunk_sizes() first")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one point and one feature, got shape "
                         f"{x.shape}")
    rows = _row_chunks(chunks, x.shape[0], dtype)
    if arr is None:
        return da.from_array(x, chunks=(rows or _default_rows(dtype), -1))
    if any(math.isnan(c) for c in arr.chunks[0]):
        raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() first")
    return arr.rechunk({0: rows if rows is not None else arr.chunks[0], 1: -1})


def _row_chunks(chunks, n, dtype):
    """None, an int (rows per chunk) or a tuple of row counts summing to n."""
    if chunks is None:
        return None
    if isinstance(chunks, numbers.Integral) and not isinstance(chunks, bool):
        if chunks < 1:
            raise ValueError(f"chunks must be a positive number of rows, got {chunks!r}")
        return int(chunks)
    try:
        sizes = tuple(int(c) for c in chunks)
    except (TypeError, ValueError):
        raise TypeError(f"chunks must be None, a number of rows per chunk, or a tuple of row "
                        f"counts, got {chunks!r}") from None
    if any(c < 1 for c in sizes) or sum(sizes) != n:
        raise ValueError(f"chunks must be positive row counts summing to the number of points "
                         f"({n}), got {chunks!r}")
    return sizes


def _gram_block(x1, x2, net, get, dtype, options):
    """One chunk: ntkfast.gram of two row chunks (x2 None: a symmetric diagonal chunk)."""
    result = _engine_gram(x1, x2, net, get, dtype, options)
    return result if isinstance(get, str) else result._asdict()


def gram(x, x2=None, *, net, get="ntk", dtype=None, chunks=None, **gram_options):
    """The NNGP or NTK Gram matrix K(x, x2) as a lazy ``dask.array.Array``.

    Chunk (I, J) of the result is one :func:`ntkfast.gram` call on row chunk I of ``x`` and row
    chunk J of ``x2``. For the symmetric Gram (``x2=None``) only the chunks J ≥ I are computed:
    the diagonal chunks are symmetric Gram calls (exactly symmetric), and each chunk J < I is the
    transpose of chunk (J, I), not a second computation, so the result equals its transpose
    exactly.

    Parameters
    ----------
    x : dask.array.Array or numpy.ndarray, shape (n1, n_features)
        The points. A Dask array keeps its row chunks (unless ``chunks`` is given); its feature
        axis is merged into one chunk. A NumPy array is chunked by rows.
    x2 : dask.array.Array or numpy.ndarray, shape (n2, n_features), optional
        Second point set, chunked likewise; None gives the symmetric Gram of ``x``.
    net : Layer
        The network, as for :func:`ntkfast.gram`.
    get : {'ntk', 'nngp'} or tuple of them
        A name returns one Dask array; a tuple returns ``ntkfast.Kernels`` of Dask arrays that
        share their tasks (compute them together, e.g. ``dask.compute(*k)``, to run each engine
        call once for both kernels).
    dtype : {None, float32, float64}
        As for :func:`ntkfast.gram` (default: float32 iff every input is float32).
    chunks : int or tuple of int, optional
        Rows per chunk (applied to ``x`` and ``x2``), or the row counts of ``x``'s chunks (and
        then ``x2``'s too only if they fit it). Default: a Dask array's own row chunks; ~32 MB
        kernel blocks for NumPy inputs.
    **gram_options
        ``backend``, ``num_threads``, ``check_finite``, ``tile_size`` for each block's
        :func:`ntkfast.gram` call. ``num_threads=None`` (default): each block uses its
        worker's threads, one engine call at a time per worker (see the module docstring).

    Returns
    -------
    dask.array.Array of shape (n1, n2), chunks (row chunks of x) × (row chunks of x2), or
    ntkfast.Kernels of them.

    Notes
    -----
    Inputs are checked for NaN/Inf (``check_finite``) inside each block's task, so such an error
    surfaces at compute time, naming the block's argument (x1 or x2).

    Examples
    --------
    >>> import numpy as np, ntkfast, ntkfast.dask
    >>> x = np.random.default_rng(0).standard_normal((1000, 20))
    >>> k = ntkfast.dask.gram(x, net=ntkfast.MLP(3, "relu"), chunks=300)
    >>> k.chunks
    ((300, 300, 300, 100), (300, 300, 300, 100))
    >>> np.allclose(k.compute(), ntkfast.gram(x, net=ntkfast.MLP(3, "relu"), get="ntk"))
    True
    """
    names, single = parse_get(get)
    net = as_network(net)
    unknown = sorted(set(gram_options) - set(GRAM_OPTIONS))
    if unknown:
        raise TypeError(f"gram_options may only hold {GRAM_OPTIONS} (the options of each block's "
                        f"ntkfast.gram call), got {unknown}")
    if "num_threads" not in gram_options:
        gram_options["num_threads"] = None
    inputs = [a for a in (x, x2) if a is not None]
    for a, name in zip(inputs, ("x", "x2")):
        if not isinstance(a, (da.Array, np.ndarray)):
            raise TypeError(f"{name} must be a dask.array.Array or a NumPy ndarray of shape "
                            f"(n_points, n_features), got {type(a).__name__}")
    out_dtype = result_dtype(dtype, inputs)
    a1 = _points(x, "x", chunks, out_dtype)
    a2 = None
    if x2 is not None:
        chunks2 = chunks if chunks is None or isinstance(chunks, numbers.Integral) \
            or sum(chunks) == x2.shape[0] else None
        a2 = _points(x2, "x2", chunks2, out_dtype)
        if a2.shape[1] != a1.shape[1]:
            raise ValueError(f"x and x2 must have the same number of features, got x "
                             f"{a1.shape} and x2 {a2.shape}")
    # Fail now, not in a task, on bad options (the dtype policy, backend, threads, tiles).
    _check_options(a1, net, names, out_dtype, gram_options)

    kernel_get = names[0] if single else names
    # A user's function pickles by its name only (two versions of `nngp` look alike), so a
    # network holding one gets keys of its own; the others are named by their value.
    net_token = uuid.uuid4().hex if holds_user_functions(net) else pickle.dumps(net)
    token = dask.base.tokenize(a1.name, None if a2 is None else a2.name, net_token,
                               names, str(out_dtype), sorted(gram_options.items(), key=str))
    name = f"ntkfast-engine-{token}"  # the engine calls; the arrays' chunks are named per kernel
    blocks1 = a1.to_delayed()[:, 0]
    blocks2 = blocks1 if a2 is None else a2.to_delayed()[:, 0]
    rows1 = a1.chunks[0]
    rows2 = rows1 if a2 is None else a2.chunks[0]
    task = dask.delayed(_gram_block, pure=True)
    calls = {}
    for i, bi in enumerate(blocks1):
        for j, bj in enumerate(blocks2):
            if a2 is None and j < i:
                continue  # the transpose of block (j, i)
            other = None if (a2 is None and i == j) else bj
            calls[i, j] = task(bi, other, net, kernel_get, out_dtype, gram_options,
                               dask_key_name=(name, i, j))
    arrays = {}
    for kernel in names:
        chunk = {}
        for (i, j), call in calls.items():
            value = call if single else call[kernel]
            chunk[i, j] = da.from_delayed(value, shape=(rows1[i], rows2[j]), dtype=out_dtype,
                                          name=f"ntkfast-gram-{kernel}-{token}-{i}-{j}")
        grid = [[chunk[i, j] if (i, j) in chunk else chunk[j, i].T for j in range(len(rows2))]
                for i in range(len(rows1))]
        arrays[kernel] = da.block(grid)
    if single:
        return arrays[names[0]]
    return Kernels(nngp=arrays.get("nngp"), ntk=arrays.get("ntk"))


def _check_options(a1, net, names, dtype, options):
    """Run the argument checks of ntkfast.gram on a 1-point stand-in (no kernel computed)."""
    from ._validation import gram_request

    probe = np.zeros((1, a1.shape[1]), dtype=a1.dtype)
    opts = {k: v for k, v in options.items() if k != "check_finite"}
    gram_request(probe, None, net=net, get=names, dtype=dtype, out=None, check_finite=False,
                 progress=False, **{"backend": "auto", "num_threads": None, "tile_size": None,
                                    **opts})


# ----------------------------------------------------------------------------------------------
# KernelOperator: products over a distributed cluster.

def _pair_products(x, x2, v, bounds, net, kernel, dtype, options, transpose):
    """The partial products of one block pair, on a worker: a list of (row0, row1, partial)."""
    i0, i1, j0, j1 = bounds
    symmetric = x2 is None
    if symmetric and (i0, i1) == (j0, j1):
        block = _engine_gram(x[i0:i1], None, net, kernel, dtype, options)
    else:
        block = _engine_gram(x[i0:i1], (x if symmetric else x2)[j0:j1], net, kernel, dtype,
                             options)
    block = block.astype(np.float64, copy=False)
    if transpose:  # cross operator: Kᵀ U
        return [(j0, j1, block.T @ v[i0:i1])]
    parts = [(i0, i1, block @ v[j0:j1])]
    if symmetric and i0 != j0:  # the mirror block K_JI = K_IJᵀ, used without recomputing
        parts.append((j0, j1, block.T @ v[i0:i1]))
    return parts


def _column_block(x, x2, rows, idx, net, kernel, dtype, options, transpose):
    """K[rows, idx] (transpose: K[idx, rows] for the cross operator's rows()), float64."""
    r0, r1 = rows
    source = x if x2 is None else x2
    if transpose:
        block = _engine_gram(x[idx], source[r0:r1], net, kernel, dtype, options)
    else:
        block = _engine_gram(x[r0:r1], source[idx], net, kernel, dtype, options)
    return block.astype(np.float64, copy=False)


# Stored kernels: each worker keeps its share of the bands (ntkfast._band_store), found by the
# operator's token and the worker's address (several workers may share a process).
_SHARDS = {}
_SHARDS_GUARD = threading.Lock()
STORAGES = ("recompute", "memory", "file")


def _shard_key(token):
    worker = _current_worker()
    return token, (worker.address if worker is not None else None)


def _build_shard(token, x, x2, bounds, net, kernel, dtype, options, storage, directory):
    """On a worker: compute the given bands and keep them (in memory, or in a file of its own)."""
    def block(a, b):
        return _engine_gram(a, b, net, kernel, dtype, options)

    shape = (len(x), len(x if x2 is None else x2))
    if storage == "memory":
        shard = []
        for r0, r1, c0 in bounds:
            band = np.empty((r1 - r0, shape[1] - c0), dtype)
            fill_band(block, x, x2, r0, r1, band)
            shard.append(((r0, r1, c0), band))
        stored = sum(band.nbytes for _, band in shard)
    else:
        worker = _current_worker()
        directory = directory or getattr(worker, "local_directory", None) or tempfile.gettempdir()
        handle, path = tempfile.mkstemp(prefix="ntkfast-kernel-", suffix=".bands", dir=directory)
        os.close(handle)
        shard = BandFile(path, shape, dtype, x2 is None, temporary=True, bounds=bounds)
        try:
            write_bands(shard, lambda r0, r1, c0, out: fill_band(block, x, x2, r0, r1, out),
                        progress=False, desc="")
        except BaseException:
            shard.close()
            raise
        stored = shard.nbytes
    with _SHARDS_GUARD:
        _SHARDS[_shard_key(token)] = shard
    return stored


def _shard_product(token, v, shape, symmetric, transpose, num_threads):
    """On a worker: its bands' share of K @ V (Kᵀ @ V)."""
    shard = _SHARDS.get(_shard_key(token))
    if shard is None:
        raise RuntimeError("a worker lost its share of the stored kernel (was it restarted?); "
                           "make a new ntkfast.dask.KernelOperator")
    threads, guard = _engine_threads(num_threads)
    with guard:
        if isinstance(shard, BandFile):
            return file_product(shard, v, transpose=transpose, num_threads=threads or 0,
                                progress=False, desc="")
        return bands_product(shard, shape, v, symmetric=symmetric, transpose=transpose,
                             num_threads=threads or 0)


def _drop_shard(token, dask_worker=None):
    """On every worker (Client.run): forget the operator's bands, delete its file."""
    key = (token, dask_worker.address if dask_worker is not None else None)
    with _SHARDS_GUARD:
        shard = _SHARDS.pop(key, None)
    if isinstance(shard, BandFile):
        shard.close()


def _release_shards(client, token):
    """The operator's finaliser: its shards dropped on every worker. A finaliser runs wherever the
    last reference goes, the client's event loop included (a garbage collection there), where the
    synchronous client.run would only create a coroutine: there it is scheduled on the loop."""
    with contextlib.suppress(Exception):  # the cluster may already be gone
        if client.asynchronous:
            client.loop.add_callback(_release_shards_on_loop, client, token)
        else:
            client.run(_drop_shard, token)


async def _release_shards_on_loop(client, token):
    with contextlib.suppress(Exception):
        await client.run(_drop_shard, token)


def _assign_bands(bounds, n_cols, workers):
    """Bands to workers, balanced by entries (largest first to the least loaded); each worker's
    bands in row order."""
    load, shares = {w: 0 for w in workers}, {w: [] for w in workers}
    for r0, r1, c0 in sorted(bounds, key=lambda b: -(b[1] - b[0]) * (n_cols - b[2])):
        w = min(workers, key=lambda w: (load[w], workers.index(w)))
        load[w] += (r1 - r0) * (n_cols - c0)
        shares[w].append((r0, r1, c0))
    return {w: sorted(share) for w, share in shares.items() if share}


def _workers(client):
    """The addresses of the cluster's workers, asked of the scheduler now. Not
    client.scheduler_info()["workers"]: the client's periodic refresh (no per-worker details)
    can replace the answer between its fetch and its return, and the workers then look gone."""
    return set(client.nthreads())


class KernelOperator:
    """The NNGP or NTK Gram matrix K(x, x2) as a linear operator whose products run on a Dask
    ``distributed`` cluster.

    The same protocol as :class:`ntkfast.KernelOperator` (``shape``, ``dtype``, ``matmat``,
    ``matvec``, ``rmatmat``, ``@``, ``diagonal``, ``columns``, ``rows``, ``aslinearoperator``),
    so the iterative solvers of ``ntkfast`` run on it unchanged. The points are scattered to every
    worker once, at construction. With ``storage='recompute'`` each product scatters V once and
    submits one task per block pair (symmetric operators: the pairs J ≥ I only, each task
    returning K_IJ V_J and K_IJᵀ V_I); the client sums the partial products per row block as
    they arrive. With ``storage='memory'`` or ``'file'`` the kernel is computed once, as the
    bands of :class:`ntkfast.KernelOperator`'s stored kernels, each worker computing and keeping
    its share (balanced by entries); a product is then one task per worker, which reads its
    bands once, and the client adds the workers' partial products in a fixed order.

    Parameters
    ----------
    x : array, shape (n1, n_features)
        Points (NumPy, or a Dask array, which is computed first).
    x2 : array, shape (n2, n_features), optional
        Second point set; None gives the symmetric operator K(x, x).
    net : Layer
        The network, as for :func:`ntkfast.gram`.
    get : {'ntk', 'nngp'}
        Which kernel.
    client : distributed.Client, optional
        Default: the current client (``distributed.get_client()``).
    dtype : {None, float32, float64}
        The kernel's dtype. Products are always float64.
    block_size : int, optional
        Rows of one kernel block (default: ~32 MB blocks, smaller when needed to give every
        worker thread at least two block pairs per product).
    num_threads : int, optional
        Engine threads per task; None (default): the worker's threads, one engine call at a time
        per worker (see the module docstring).
    tile_size : int, optional
        As for :func:`ntkfast.gram`.
    storage : {'recompute', 'memory', 'file'}
        'recompute' (default): every product recomputes the kernel. 'memory': each worker keeps
        its bands in its memory. 'file': each worker keeps its bands in a file in ``directory``
        (default: the worker's ``local_directory``), streamed per product as for
        ``ntkfast.KernelOperator(storage='file')``; the files are deleted by :meth:`close`.
        A stored kernel lives on the workers that computed it: if one of them leaves the
        cluster, products raise ``RuntimeError``.
    directory : str, optional
        Where the workers write their files (storage='file'); must exist on every worker.

    Notes
    -----
    Products match the single-process ``ntkfast.KernelOperator(..., storage="recompute")`` to
    rounding: the kernel blocks are the same engine calls, but the partial sums are added in the
    order the tasks finish.

    Raises
    ------
    ValueError
        No client is given and none is running, or the client is asynchronous.
    TypeError
        ``client`` is not a ``distributed.Client``, or the points are CuPy arrays.

    Examples
    --------
    >>> import numpy as np, ntkfast, ntkfast.dask
    >>> from distributed import Client, LocalCluster
    >>> x = np.random.default_rng(0).standard_normal((200, 5))
    >>> with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
    ...                   dashboard_address=None) as cluster, Client(cluster) as client:
    ...     op = ntkfast.dask.KernelOperator(x, net=ntkfast.MLP(2), client=client, block_size=100)
    ...     product = op @ np.ones((200, 1))
    ...     op.close()
    >>> np.allclose(product, ntkfast.gram(x, net=ntkfast.MLP(2), get="ntk") @ np.ones((200, 1)))
    True
    """

    def __init__(self, x, x2=None, *, net, get="ntk", client=None, dtype=None, block_size=None,
                 num_threads=None, tile_size=None, check_finite=True, storage="recompute",
                 directory=None):
        distributed = _distributed()
        if not isinstance(get, str):
            raise TypeError(f"get must be 'ntk' or 'nngp' (one kernel per operator), got {get!r}")
        x, x2 = (_host_points(a, name) for a, name in ((x, "x"), (x2, "x2")))
        request = points_request(x, x2, net=net, get=get, dtype=dtype, backend="cpu",
                                 num_threads=num_threads, check_finite=check_finite,
                                 progress=False, tile_size=tile_size)
        if client is None:
            try:
                client = distributed.get_client()
            except ValueError:
                raise ValueError("client: no distributed.Client is running; pass client= or "
                                 "start one (distributed.Client(), distributed.LocalCluster)") \
                    from None
        elif not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client or None, got "
                            f"{type(client).__name__}")
        if client.asynchronous:
            raise ValueError("client must be a synchronous distributed.Client (asynchronous=False)")
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        if directory is not None and storage != "file":
            raise ValueError(f"directory is only used with storage='file', got storage={storage!r}")
        self.storage = storage
        self.client = client
        self.net, self.kernel, self.dtype = request.net, request.names[0], request.dtype
        self.shape = request.shape
        self.symmetric = x2 is None
        self.num_threads = num_threads
        self._options = dict(num_threads=num_threads, tile_size=tile_size, check_finite=False,
                             backend="cpu")
        self.block_size = self._block_size(block_size)
        # Scattered once: every product's tasks find the points already on their worker.
        self._x = client.scatter(request.x1, broadcast=True, hash=False)
        self._x2 = None if x2 is None else client.scatter(request.x2, broadcast=True, hash=False)
        self._shards = None  # stored: {worker address: its bands}
        if storage != "recompute":
            self._store(directory)

    def _store(self, directory):
        budget = FILE_BAND_BYTES if self.storage == "file" else MEMORY_BAND_BYTES
        bounds = band_bounds(*self.shape, self.symmetric, self.dtype.itemsize, budget)
        workers = sorted(_workers(self.client))
        if not workers:
            raise ValueError("client: the cluster has no workers to store the kernel on")
        self._token = uuid.uuid4().hex
        self._release = weakref.finalize(self, _release_shards, self.client, self._token)
        self._release.atexit = False  # at exit the workers go, and their directories with them
        shards = _assign_bands(bounds, self.shape[1], workers)
        futures = [self.client.submit(_build_shard, self._token, self._x, self._x2, share,
                                      self.net, self.kernel, self.dtype, self._options,
                                      self.storage, directory, workers=[w],
                                      allow_other_workers=False, pure=False)
                   for w, share in shards.items()]
        try:
            self.stored_bytes = sum(self.client.gather(futures))
        except BaseException:
            self.client.cancel(futures)
            self._release()
            raise
        self._shards = shards

    def _block_size(self, block_size):
        if block_size is not None:
            if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) \
                    or block_size < 1:
                raise ValueError(f"block_size must be a positive integer or None, got "
                                 f"{block_size!r}")
            return int(block_size)
        n = max(self.shape)
        size = min(_default_rows(self.dtype), n)
        # at least two block pairs per worker thread, so that no thread idles through a product
        threads = sum(self.client.nthreads().values()) or 1
        while size > MIN_BLOCK and len(self._pairs(size)) < 2 * threads:
            size = max(MIN_BLOCK, size // 2)
        return size

    def _pairs(self, step):
        n1, n2 = self.shape
        rows, cols = range(0, n1, step), range(0, n2, step)
        if self.symmetric:
            return [(i, j) for i in rows for j in cols if j >= i]
        return [(i, j) for i in rows for j in cols]

    def __repr__(self):
        n1, n2 = self.shape
        stored = "" if self._shards is None else \
            f" ({len(self._shards)} workers, {self.stored_bytes / 1e9:.2f} GB)"
        return (f"ntkfast.dask.KernelOperator({self.kernel}, {n1} x {n2} {self.dtype}, "
                f"{'symmetric' if self.symmetric else 'cross'}, storage={self.storage!r}{stored}, "
                f"block_size={self.block_size}, net={self.net!r})")

    # ------------------------------------------------------------------------------------------
    # Products.

    def _vectors(self, v, rows, name):
        return as_vectors(v, rows, name)

    def _inputs(self):
        if self._x is None:
            raise ValueError("this ntkfast.dask.KernelOperator is closed (close() released its "
                             "points on the workers); make a new one")
        return self._x, self._x2

    def _stored_product(self, v, transpose):
        alive = _workers(self.client)
        gone = [w for w in self._shards if w not in alive]
        if gone:
            raise RuntimeError(f"worker(s) {gone} holding part of the stored kernel left the "
                               "cluster; make a new ntkfast.dask.KernelOperator (or use "
                               "storage='recompute', which any worker can run)")
        vf = self.client.scatter(v, broadcast=True, hash=False)
        futures = [self.client.submit(_shard_product, self._token, vf, self.shape, self.symmetric,
                                      transpose, self.num_threads, workers=[w],
                                      allow_other_workers=False, pure=False)
                   for w in self._shards]
        try:
            parts = self.client.gather(futures)
        finally:
            self.client.cancel(futures)
            del vf
        out = np.zeros((self.shape[1] if transpose else self.shape[0], v.shape[1]))
        for part in parts:  # in the workers' order: the same sum every time
            out += part
        return out

    def _product(self, v, transpose):
        distributed = _distributed()
        x, x2 = self._inputs()
        if self._shards is not None:
            return self._stored_product(v, transpose)
        n1, n2 = self.shape
        step = self.block_size
        vf = self.client.scatter(v, broadcast=True, hash=False)  # once per product
        futures = [self.client.submit(
            _pair_products, x, x2, vf, (i0, min(i0 + step, n1), j0, min(j0 + step, n2)),
            self.net, self.kernel, self.dtype, self._options, transpose, pure=False)
            for i0, j0 in self._pairs(step)]
        out = np.zeros((n2 if transpose else n1, v.shape[1]))
        try:
            # summed as the tasks finish: the client adds while the workers compute
            for _, parts in distributed.as_completed(futures, with_results=True,
                                                      loop=self.client.loop):
                for r0, r1, part in parts:
                    out[r0:r1] += part
        finally:
            self.client.cancel(futures)
            del vf
        return out

    def matmat(self, v):
        """K @ V for V of shape (n2, k) (or (n2,)), in float64."""
        v, one = self._vectors(v, self.shape[1], "V")
        out = self._product(v, transpose=False)
        return out[:, 0] if one else out

    def rmatmat(self, u):
        """Kᵀ @ U for U of shape (n1, k) (or (n1,)), in float64."""
        if self.symmetric:
            return self.matmat(u)
        u, one = self._vectors(u, self.shape[0], "U")
        out = self._product(u, transpose=True)
        return out[:, 0] if one else out

    def matvec(self, v):
        """K @ v for a vector v of n2 entries, float64 (as :meth:`matmat`)."""
        return self.matmat(np.asarray(v).reshape(-1))

    def __matmul__(self, v):
        return self.matmat(v)

    # ------------------------------------------------------------------------------------------
    # What the solvers use besides products.

    def diagonal(self):
        """diag(K) in O(n) (symmetric operators), float64: one task."""
        if not self.symmetric:
            raise ValueError("diagonal() is defined for symmetric operators (x2=None)")
        d = self.client.submit(_engine_diagonal, self._inputs()[0], self.net, self.kernel,
                               self.dtype, self.num_threads, pure=False).result()
        return np.asarray(d, dtype=np.float64)

    def _index(self, idx, n, what):
        return as_indices(idx, n, what)

    def _gather(self, n, idx, transpose):
        """Blocks of rows [r0, r1) of K[:, idx] (or of K[idx, :]ᵀ), one task per block."""
        step = self.block_size
        x, x2 = self._inputs()
        futures = [self.client.submit(_column_block, x, x2, (r0, min(r0 + step, n)),
                                      idx, self.net, self.kernel, self.dtype, self._options,
                                      transpose, pure=False)
                   for r0 in range(0, n, step)]
        try:
            blocks = self.client.gather(futures)
        finally:
            self.client.cancel(futures)
        return np.concatenate(blocks, axis=1 if transpose else 0) if blocks else \
            np.zeros((0, idx.size))

    def columns(self, idx):
        """K[:, idx] (float64), computed in row blocks, one task each."""
        idx = self._index(idx, self.shape[1], "columns")
        return self._gather(self.shape[0], idx, transpose=False)

    def rows(self, idx):
        """K[idx, :] (float64)."""
        if self.symmetric:
            return self.columns(idx).T
        idx = self._index(idx, self.shape[0], "rows")
        return self._gather(self.shape[1], idx, transpose=True)

    def aslinearoperator(self):
        """A ``scipy.sparse.linalg.LinearOperator`` of this operator, float64."""
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(self.shape, matvec=self.matvec, matmat=self.matmat,
                              rmatvec=lambda u: self.rmatmat(np.asarray(u).reshape(-1)),
                              rmatmat=self.rmatmat, dtype=np.float64)

    def close(self):
        """Release the scattered points on the workers and a stored kernel's bands and files
        (also done when the operator is garbage-collected)."""
        self._x = self._x2 = None
        if self._shards is not None:
            self._release()
            self._shards = None


def _host_points(x, name):
    """NumPy points for the operator: a Dask array is computed; CuPy is refused (the workers
    compute on CPU)."""
    if x is None:
        return None
    if isinstance(x, da.Array):
        return x.compute()
    if is_cupy(x):
        raise TypeError(f"{name} must be a NumPy (or Dask) array: ntkfast.dask computes on the "
                        f"workers' CPUs; convert with cupy.asnumpy")
    return x

