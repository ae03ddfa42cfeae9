"""ntkfast.gram and ntkfast.diagonal: validation, dtype policy, outputs, dispatch to the engines."""
from __future__ import annotations

import collections
import numbers
import os

import numpy as np

from . import _core, _blas
from ._errors import BackendUnavailableError, EngineNonFinite, NonFiniteKernelError
from ._layers import as_network, lower

__all__ = ["gram", "diagonal", "Kernels"]

#: The result of a multi-kernel request: ``Kernels(nngp=..., ntk=...)`` (None where not requested).
Kernels = collections.namedtuple("Kernels", ["nngp", "ntk"])
Kernels.__doc__ = """NNGP and NTK results (arrays, or None where not requested).

Fields
------
nngp : array
    Σ(x, x'), the NNGP kernel (the output covariance of the infinitely wide network at init).
ntk : array
    Θ(x, x'), the neural tangent kernel.
"""

_KERNEL_NAMES = ("nngp", "ntk")
_BACKENDS = ("auto", "cpu", "cuda")


# ----------------------------------------------------------------------------------------------
# Argument parsing.

def _parse_get(get):
    if isinstance(get, str):
        if get not in _KERNEL_NAMES:
            raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
        return (get,), True
    try:
        names = tuple(get)
    except TypeError:
        raise TypeError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}") from None
    if not names or any(not isinstance(n, str) or n not in _KERNEL_NAMES for n in names):
        raise ValueError(f"get must be 'nngp', 'ntk' or a tuple of them, got {get!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"get lists a kernel twice: {get!r}")
    return names, False


def _is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def _check_points(x, name):
    """A real 2-D array (any memory layout); raises naming the argument otherwise."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a real 2-D array (n_points, n_features), got a string")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name} could not be read as an array: {error}") from None
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} is complex ({arr.dtype}); the kernels are defined for real inputs")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_points, n_features), got shape {arr.shape}")
    return arr


def _check_finite(arr, name):
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))
        i, j = bad[0]
        raise ValueError(f"{name} contains {len(bad)} non-finite value(s) (NaN or Inf), first at "
                         f"{name}[{i}, {j}] = {arr[i, j]}; pass check_finite=False to skip this check")


def _result_dtype(dtype, arrays):
    if dtype is not None:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {dt}")
        return dt
    if all(a.dtype == np.float32 for a in arrays):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _resolve_threads(num_threads):
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    return int(num_threads)


def _resolve_tile(tile_size):
    if tile_size is None:
        return 0
    if isinstance(tile_size, bool) or not isinstance(tile_size, numbers.Integral) or tile_size < 1:
        raise ValueError(f"tile_size must be a positive integer or None, got {tile_size!r}")
    return int(tile_size)


def available_memory():
    """Bytes of memory this process can still allocate (MemAvailable, cgroup limit), or None."""
    candidates = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            candidates.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(0, min(candidates))


def _human_bytes(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000


def _check_memory(shape, dtype, count, what):
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize * count
    free = available_memory()
    if free is not None and need > free:
        arrays = f"{count} arrays" if count > 1 else "an array"
        raise MemoryError(
            f"{what} needs {arrays} of {shape[0]} x {shape[1]} {dtype} = {_human_bytes(need)}, "
            f"more than the {_human_bytes(free)} of memory available; pass out= (e.g. np.memmap "
            "arrays, to write the result to disk) or use dtype=float32")


def _check_out_array(arr, name, shape, dtype, inputs):
    if not isinstance(arr, np.ndarray):
        if _is_cupy(arr):
            raise TypeError(f"{name}: a CuPy array needs backend='cuda' with CuPy inputs")
        raise TypeError(f"{name} must be a NumPy array (np.memmap allowed), got {type(arr).__name__}")
    if arr.shape != tuple(shape) or arr.dtype != dtype:
        raise ValueError(f"{name} must have shape {tuple(shape)} and dtype {dtype}, got shape "
                         f"{arr.shape} and dtype {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not arr.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if any(np.may_share_memory(arr, x) for x in inputs):
        raise ValueError(f"{name} overlaps an input array")


def _prepare_outputs(out, names, single, shape, dtype, inputs, what):
    """{name: array} for every requested kernel, validating out= or allocating."""
    given = {}
    if out is not None:
        if single:
            given[names[0]] = out
        elif isinstance(out, dict):
            unknown = set(out) - set(names)
            if unknown:
                raise ValueError(f"out has entries for kernels not requested: {sorted(unknown)}")
            given = dict(out)
        elif isinstance(out, Kernels):
            given = {n: getattr(out, n) for n in names if getattr(out, n) is not None}
        elif isinstance(out, (tuple, list)):
            if len(out) != len(names):
                raise ValueError(f"out must hold {len(names)} arrays (one per kernel in get={names}), "
                                 f"got {len(out)}")
            given = dict(zip(names, out))
        else:
            raise TypeError("out must be an array (single kernel), or a Kernels / tuple / dict of "
                            f"arrays (one per kernel in get), got {type(out).__name__}")
    for name, arr in given.items():
        _check_out_array(arr, f"out ({name})" if not single else "out", shape, dtype, inputs)
    if len(given) == 2 and np.may_share_memory(given["nngp"], given["ntk"]):
        raise ValueError("out: the nngp and ntk arrays overlap")
    missing = [n for n in names if n not in given]
    if missing:
        _check_memory(shape, dtype, len(missing), what)
    result = dict(given)
    for name in missing:
        result[name] = np.empty(shape, dtype=dtype)
    return result


def _non_finite_error(error, net, n_features, arguments):
    _, _, sources = lower(net, n_features)
    argument = arguments[error.point_set - 1]
    kind = "NTK" if error.is_ntk else "NNGP variance"
    layer = None if error.op < 0 else sources[error.op]
    where = "the input layer" if layer is None else layer
    return NonFiniteKernelError(
        f"the {kind} of {argument}[{error.row}] is {error.value!r} after {where}: the kernel "
        "overflows (or is undefined) in this precision (variances inside the network must stay "
        "below 1e150, outputs within the dtype's range). Typical causes: Exp/Gaussian activations "
        "with large variances, or very deep networks with W_std > 1; with float32 outputs, try "
        "dtype=float64.", argument=argument, row=error.row, layer=layer, value=error.value)


# ----------------------------------------------------------------------------------------------
# Backends.

def _select_backend(backend, arrays):
    if not isinstance(backend, str) or backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    on_gpu = [_is_cupy(a) for a in arrays if a is not None]
    if backend == "auto":
        backend = "cuda" if any(on_gpu) else "cpu"
    if backend == "cpu" and any(on_gpu):
        raise TypeError("backend='cpu' got CuPy arrays; pass NumPy arrays (cupy.asnumpy) or use "
                        "backend='cuda'")
    if backend == "cuda":
        from . import _config

        reason = _config.cuda_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"the CUDA backend is not available: {reason}")
    return backend


class _Progress:
    """Adapts progress=True (a tqdm bar) or a callable(done, total) to the engine's callback."""

    def __init__(self, progress, desc):
        self.bar = None
        self.callback = None
        self.desc = desc
        if callable(progress) and not isinstance(progress, bool):
            self.callback = progress
        elif progress not in (False, None, True):
            raise TypeError(f"progress must be True, False or a callable(done, total), got {progress!r}")
        self.enabled = bool(progress)

    def __call__(self, done, total):
        if self.callback is not None:
            self.callback(done, total)
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="tile", dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------
# Public API.

def gram(x1, x2=None, *, net, get=("nngp", "ntk"), dtype=None, out=None, backend="auto",
         num_threads=None, check_finite=True, progress=False, tile_size=None):
    """NNGP and/or NTK Gram matrix of an infinitely wide network.

    Computes Σ^{L+1}(x, x') and Θ^{L+1}(x, x') of MATH.md §2 for every pair of rows, with
    neural-tangents' conventions (inputs enter as x·x'/n_features; ``Dense`` as in
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
        ``np.memmap`` arrays: results larger than memory then go straight to disk.
    backend : {'auto', 'cpu', 'cuda'}
        'auto' follows the data (CuPy arrays -> 'cuda').
    num_threads : int, optional
        OpenMP threads (default: all, or OMP_NUM_THREADS).
    check_finite : bool
        Reject NaN/Inf inputs with a ValueError (default). Disable only for inputs known finite.
    progress : bool or callable
        True shows a tqdm progress bar; a callable is called as ``progress(tiles_done, tiles_total)``.
    tile_size : int, optional
        Tile edge (advanced; the results do not depend on it).

    Returns
    -------
    ndarray of shape (n1, n2), or Kernels of them.

    Raises
    ------
    TypeError, ValueError
        Bad arguments (the message names the argument and what was expected).
    MemoryError
        The outputs do not fit in the available memory (raised before allocating).
    NonFiniteKernelError
        The kernel overflows in the requested precision (raised before the Gram is computed).
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
    names, single = _parse_get(get)
    net = as_network(net)
    backend = _select_backend(backend, (x1, x2))
    if backend == "cuda":
        from . import _cuda_backend

        return _cuda_backend.gram(x1, x2, net=net, names=names, single=single, dtype=dtype, out=out,
                                  check_finite=check_finite, progress=progress, tile_size=tile_size)

    a1 = _check_points(x1, "x1")
    a2 = None if x2 is None else _check_points(x2, "x2")
    if a2 is not None and a2.shape[1] != a1.shape[1]:
        raise ValueError(f"x1 and x2 must have the same number of features, got x1 {a1.shape} and "
                         f"x2 {a2.shape}")
    out_dtype = _result_dtype(dtype, [a for a in (a1, a2) if a is not None])
    threads = _resolve_threads(num_threads)
    tile = _resolve_tile(tile_size)
    if check_finite:
        _check_finite(a1, "x1")
        if a2 is not None:
            _check_finite(a2, "x2")
    n1, d = a1.shape
    n2 = n1 if a2 is None else a2.shape[0]
    inputs = [a for a in (a1, a2) if a is not None]
    outputs = _prepare_outputs(out, names, single, (n1, n2), out_dtype, inputs, "gram")

    if n1 and n2:
        c1 = np.ascontiguousarray(a1, dtype=out_dtype)
        c2 = None if a2 is None else np.ascontiguousarray(a2, dtype=out_dtype)
        ops, pool, _ = lower(net, d)
        program = _program(ops, pool)
        reporter = _Progress(progress, "ntkfast.gram")
        try:
            with _blas.single_threaded():
                _core.gram(program, c1, c2, outputs.get("nngp"), outputs.get("ntk"), threads, tile,
                           reporter if reporter.enabled else None)
        except EngineNonFinite as error:
            raise _non_finite_error(error, net, d, ("x1", "x2" if a2 is not None else "x1")) from None
        finally:
            reporter.close()
    if single:
        return outputs[names[0]]
    return Kernels(nngp=outputs.get("nngp"), ntk=outputs.get("ntk"))


def diagonal(x, *, net, get=("nngp", "ntk"), dtype=None, check_finite=True, num_threads=None):
    """Per-point kernel values k(x_i, x_i) in O(n · (n_features + depth)).

    The NNGP diagonal is each point's prior output variance (MATH.md §2 at x = x'); it equals the
    diagonal of ``gram(x, net=net)`` to the last bit.

    Parameters
    ----------
    x : array_like, shape (n, n_features)
    net, get, dtype, check_finite, num_threads
        As for :func:`gram`.

    Returns
    -------
    ndarray of shape (n,), or Kernels of them.
    """
    names, single = _parse_get(get)
    net = as_network(net)
    if _is_cupy(x):
        from . import _cuda_backend

        return _cuda_backend.diagonal(x, net=net, names=names, single=single, dtype=dtype,
                                      check_finite=check_finite)
    arr = _check_points(x, "x")
    out_dtype = _result_dtype(dtype, [arr])
    threads = _resolve_threads(num_threads)
    if check_finite:
        _check_finite(arr, "x")
    n, d = arr.shape
    outputs = {name: np.empty(n, dtype=out_dtype) for name in names}
    if n:
        ops, pool, _ = lower(net, d)
        try:
            _core.diagonal(_program(ops, pool), np.ascontiguousarray(arr, dtype=out_dtype),
                           outputs.get("nngp"), outputs.get("ntk"), threads)
        except EngineNonFinite as error:
            raise _non_finite_error(error, net, d, ("x",)) from None
    if single:
        return outputs[names[0]]
    return Kernels(nngp=outputs.get("nngp"), ntk=outputs.get("ntk"))


_programs = {}


def _program(ops, pool):
    """The compiled program for a lowered network (cached: building one validates it)."""
    key = (ops, pool)
    program = _programs.get(key)
    if program is None:
        program = _core.Program([(k, deg, off, list(p)) for k, deg, off, p in ops], list(pool))
        if len(_programs) > 256:
            _programs.clear()
        _programs[key] = program
    return program
