"""User arguments -> a checked request: the one place where ntkfast validates what it is given.

:func:`gram_request` and :func:`diagonal_request` turn the arguments of ``ntkfast.gram`` /
``ntkfast.diagonal`` (and of the CLI and ``ntkfast.predict``, which call them) into a
:class:`GramRequest`: arrays checked (NumPy or CuPy), dtype policy applied, outputs checked
(shape, dtype, layout, overlap, file backing), backend chosen, threads and tiles bounded. The
backends (``_backends``) receive only such requests. Every error names the argument and says what
was expected.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import mmap
import numbers
import os
from typing import Any, Dict, Tuple

import numpy as np

from ._cuda_probe import require_backend
from ._layers import Layer, as_network

__all__ = ["Kernels", "GramRequest", "gram_request", "points_request", "diagonal_request", "parse_get",
           "check_points", "read_array", "check_real_dtype", "reject_non_finite", "result_dtype", "available_memory", "human_bytes",
           "check_host_output", "check_outputs_disjoint", "reserve_file_backing", "is_cupy", "MAX_THREADS", "MAX_TILE",
           "row_table_bytes", "row_table_memory_error", "file_mappings"]

#: The result of a multi-kernel request: ``Kernels(nngp=..., ntk=...)`` (None where not requested).
Kernels = collections.namedtuple("Kernels", ["nngp", "ntk"])
Kernels.__doc__ = """NNGP and NTK results (arrays, or None where not requested).

A named tuple: returned by :func:`ntkfast.gram` and :func:`ntkfast.diagonal` when ``get`` is a
tuple, and accepted wherever a pair of kernels is expected (``out=``, ``ntkfast.predict``).

Attributes
----------
nngp : array
    Σ(x, x'), the NNGP kernel (the output covariance of the infinitely wide network at init).
ntk : array
    Θ(x, x'), the neural tangent kernel.

Examples
--------
>>> import numpy as np, ntkfast
>>> k = ntkfast.gram(np.eye(3), net=ntkfast.MLP(2))
>>> k.nngp.shape, k.ntk.shape
((3, 3), (3, 3))
>>> ntkfast.gram(np.eye(3), net=ntkfast.MLP(2), get=("ntk",)).nngp is None
True
"""

KERNEL_NAMES = ("nngp", "ntk")
BACKENDS = ("auto", "cpu", "cuda")
#: Bounds on the performance options: far above any useful value, low enough that a typo cannot
#: ask for millions of threads or a terabyte of tile buffers.
MAX_THREADS = 1024
MAX_TILE = 16384


@dataclasses.dataclass(frozen=True)
class GramRequest:
    """A checked ``gram`` / ``diagonal`` call. Arrays are NumPy or CuPy, as given (validated, not
    yet converted): the backend converts them to the layout and dtype it computes in."""

    x1: Any
    x2: Any                      # None: the symmetric Gram of x1 (always None for diagonal)
    net: Layer
    names: Tuple[str, ...]       # the kernels requested, 'nngp' and/or 'ntk'
    single: bool                 # get was a string: return one array, not Kernels
    dtype: np.dtype              # the output dtype
    out: Dict[str, Any]          # the destinations given by the caller, by kernel name
    backend: str                 # 'cpu' or 'cuda'
    num_threads: int             # 0: the engine's default
    tile: int                    # 0: the engine's default
    progress: Any                # False, True or a callable(done, total)
    arguments: Tuple[str, str] = ("x1", "x2")  # argument names of point sets 1 and 2, for errors
    out_file_backed: bool = False  # some out array maps a file (set by the CPU outputs' check)

    @property
    def symmetric(self) -> bool:
        return self.x2 is None

    @property
    def shape(self) -> Tuple[int, int]:
        n1 = self.x1.shape[0]
        return (n1, n1 if self.x2 is None else self.x2.shape[0])

    @property
    def n_features(self) -> int:
        return self.x1.shape[1]

    def result(self, outputs):
        return outputs[self.names[0]] if self.single else Kernels(
            nngp=outputs.get("nngp"), ntk=outputs.get("ntk"))


# ----------------------------------------------------------------------------------------------
# Single arguments.

def is_cupy(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def parse_get(get, allowed=KERNEL_NAMES, default=None):
    """(names, single): a name gives ((name,), True), a tuple of names (names, False); None gives
    `default` where there is one. Shared by gram/diagonal and predict (which adds 'ntkgp')."""
    if get is None and default is not None:
        return tuple(default), False
    if isinstance(get, str):
        names, single = (get.lower(),), True
    else:
        try:
            names, single = tuple(g.lower() if isinstance(g, str) else g for g in get), False
        except TypeError:
            raise TypeError(f"get must be one of {allowed} or a tuple of them, got {get!r}") from None
    if not names or any(g not in allowed for g in names):
        raise ValueError(f"get must be one of {allowed} or a tuple of them, got {get!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"get lists a kernel twice: {get!r}")
    return names, single


def read_array(x, name):
    """np.asarray(x) (CuPy arrays as given), or a ValueError naming the argument."""
    if is_cupy(x):
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as error:  # ragged lists and the like
        raise ValueError(f"{name} could not be read as an array: {error}") from None


def check_real_dtype(arr, name):
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} is complex ({arr.dtype}); ntkfast's kernels and targets are real")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")


def check_points(x, name):
    """A real 2-D array (NumPy, or CuPy as given; any memory layout), else an error naming it."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a real 2-D array (n_points, n_features), got "
                        f"{type(x).__name__}")
    x = read_array(x, name)
    check_real_dtype(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_points, n_features), got shape {x.shape}")
    return x


def reject_non_finite(arr, name, hint="; pass check_finite=False to skip this check"):
    """ValueError naming the first NaN/Inf of a NumPy or CuPy array."""
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    xp = _array_module(arr)
    with _device_of(arr):
        # min and max propagate NaN and show ±Inf: two reductions, no temporary of the array's size
        if np.isfinite(float(arr.min())) and np.isfinite(float(arr.max())):
            return
        bad = ~xp.isfinite(arr)
        count = int(bad.sum())
        first = tuple(int(i) for i in np.unravel_index(int(xp.argmax(bad.ravel())), arr.shape))
    where = ", ".join(map(str, first))
    raise ValueError(f"{name} contains {count} non-finite value(s) (NaN or Inf), first at "
                     f"{name}[{where}] = {float(arr[first])!r}{hint}")


def _array_module(arr):
    if is_cupy(arr):
        import cupy

        return cupy
    return np


def _device_of(arr):
    """A CuPy array's device as a context (its reductions run there, not on the current
    device); a null context for host arrays."""
    return arr.device if is_cupy(arr) else contextlib.nullcontext()


def check_fits_dtype(arr, name, dtype):
    """Inputs are converted to the output dtype; a finite value beyond its range would become Inf
    (float64 inputs with dtype=float32)."""
    if arr.dtype.kind != "f" or arr.dtype.itemsize <= dtype.itemsize or arr.size == 0:
        return
    with _device_of(arr):
        biggest = float(abs(arr).max())
    if np.isfinite(biggest) and biggest > float(np.finfo(dtype).max):
        raise ValueError(f"{name} holds values up to {biggest:.3g}, beyond the range of {dtype} "
                         f"({float(np.finfo(dtype).max):.3g}); pass dtype=float64 or rescale the inputs")


def result_dtype(dtype, arrays):
    """The output dtype: as asked (float32/float64), else float32 iff every input is float32."""
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


def _bounded_int(value, name, maximum):
    """None -> 0 (the default); else an int in [1, maximum]."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= maximum:
        raise ValueError(f"{name} must be None or an integer from 1 to {maximum}, got {value!r}")
    return int(value)


def check_progress(progress):
    if progress in (False, None, True) or (callable(progress) and not isinstance(progress, bool)):
        return progress or False
    raise TypeError(f"progress must be True, False or a callable(done, total), got {progress!r}")


def select_backend(backend, arrays):
    """'cpu' or 'cuda' from backend='auto' | 'cpu' | 'cuda' and where the arrays live."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_gpu = any(is_cupy(a) for a in arrays if a is not None)
    if backend == "auto":
        backend = "cuda" if on_gpu else "cpu"
    if backend == "cpu" and on_gpu:
        raise TypeError("backend='cpu' got CuPy arrays; pass NumPy arrays (cupy.asnumpy) or use "
                        "backend='cuda'")
    require_backend(backend)  # BackendUnavailableError now, saying why, before any work
    return backend


# ----------------------------------------------------------------------------------------------
# Memory.

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


def human_bytes(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000


def row_table_bytes(request, n_ops, stride):
    """Bytes of the engines' per-row tables: q, sqrt(q) (8 bytes each) and a rescale exponent (4)
    after every op, for each point set's rows padded to ``stride(rows)``."""
    sets = [request.x1] if request.x2 is None else [request.x1, request.x2]
    return sum((n_ops + 1) * stride(a.shape[0]) * 20 for a in sets)


def row_table_memory_error(request, n_ops, what, need, than):
    """The MemoryError of per-row tables (`need` bytes) larger than `than` (the memory free)."""
    sets = [request.x1] if request.x2 is None else [request.x1, request.x2]
    points = " and ".join(f"{a.shape[0]} {name}" for a, name in zip(sets, request.arguments))
    return MemoryError(
        f"{what}: the per-row variance tables for {points} points through the {n_ops} ops of "
        f"net need {human_bytes(need)}, more than {than} (they grow with points x depth); pass "
        "fewer points per call or use a shallower net")


def check_memory(shape, dtype, count, what):
    """MemoryError before allocating `count` arrays that would not fit in the available memory."""
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize * count
    free = available_memory()
    if free is not None and need > free:
        arrays = f"{count} arrays" if count > 1 else "an array"
        raise MemoryError(
            f"{what} needs {arrays} of {shape[0]} x {shape[1]} {dtype} = {human_bytes(need)}, "
            f"more than the {human_bytes(free)} of memory available; pass out= (e.g. np.memmap "
            "arrays, to write the result to disk) or use dtype=float32")


# ----------------------------------------------------------------------------------------------
# Outputs.

def parse_out(out, names, single):
    """{name: array} of the destinations given (any array type)."""
    if out is None:
        return {}
    if single:
        return {names[0]: out}
    if isinstance(out, dict):
        unknown = set(out) - set(names)
        if unknown:
            raise ValueError(f"out has entries for kernels not requested: {sorted(unknown)}")
        return dict(out)
    if isinstance(out, Kernels):
        return {n: getattr(out, n) for n in names if getattr(out, n) is not None}
    if isinstance(out, (tuple, list)):
        if len(out) != len(names):
            raise ValueError(f"out must hold {len(names)} arrays (one per kernel in get={names}), "
                             f"got {len(out)}")
        return dict(zip(names, out))
    raise TypeError("out must be an array (single kernel), or a Kernels / tuple / dict of "
                    f"arrays (one per kernel in get), got {type(out).__name__}")


def out_label(name, single):
    return "out" if single else f"out ({name})"


def check_host_output(arr, name, shape, dtype, inputs, mappings=None):
    """A writable, C-contiguous NumPy array (np.memmap allowed) of the result's shape and dtype
    that overlaps no input, in memory or in a file; a file-backed one gets its disk blocks
    reserved now (a full disk is an OSError here, not a SIGBUS in the middle of the
    computation). Returns whether it is file-backed. ``mappings``: the process's file mappings
    (``file_mappings()``), read once by a caller checking several outputs."""
    if not isinstance(arr, np.ndarray):
        if is_cupy(arr):
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
    if mappings is None:
        mappings = file_mappings()
    for x in inputs:
        path = _shared_file_part(arr, x, mappings)
        if path:
            raise ValueError(f"{name} maps the same part of the file {path} as an input array "
                             "(two memory maps of one file): the outputs would overwrite the "
                             "input while it is read")
    return reserve_file_backing(arr, name, mappings)


def check_outputs_disjoint(nngp, ntk, mappings=None):
    """The two host outputs share no memory and no part of a file."""
    if np.may_share_memory(nngp, ntk):
        raise ValueError("out: the nngp and ntk arrays overlap")
    path = _shared_file_part(nngp, ntk, file_mappings() if mappings is None else mappings)
    if path:
        raise ValueError(f"out: the nngp and ntk arrays map the same part of the file {path} "
                         "(two memory maps of one file)")


FileMapping = collections.namedtuple("FileMapping", "start end shared file path offset")


def file_mappings():
    """The process's file-backed memory mappings, from /proc/self/maps (none without /proc):
    address range, whether writes reach the file (shared), the file's identity (device, inode),
    its path and the file offset of ``start``."""
    found = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or fields[4] == "0":  # anonymous memory
                    continue
                path = fields[5].rstrip("\n")
                if not path.startswith("/") or path.endswith(" (deleted)"):
                    continue
                start, end = (int(v, 16) for v in fields[0].split("-"))
                found.append(FileMapping(start, end, fields[1][3] == "s", (fields[3], fields[4]),
                                         path, int(fields[2], 16)))
    except OSError:  # not Linux
        pass
    return found


def _file_parts(arr, mappings, shared_only):
    """(file identity, path, first byte, end byte) of the file ranges under arr's memory."""
    if not mappings or arr.size == 0:
        return []
    low, high = _byte_bounds(arr)
    parts = []
    for m in mappings:
        lo, hi = max(m.start, low), min(m.end, high)
        if lo < hi and (m.shared or not shared_only):
            parts.append((m.file, m.path, m.offset + lo - m.start, m.offset + hi - m.start))
    return parts


def _shared_file_part(written, other, mappings):
    """The path of a file that ``written`` (an output) writes through a shared mapping where
    ``other`` maps it too (a private map of a file sees the file's pages until it writes them),
    else None. np.may_share_memory compares addresses, so it cannot see two maps of one file."""
    for file, path, lo, hi in _file_parts(written, mappings, shared_only=True):
        for other_file, _, other_lo, other_hi in _file_parts(other, mappings, shared_only=False):
            if file == other_file and lo < other_hi and other_lo < hi:
                return path
    return None


def maps_file(arr, path):
    """Whether arr's memory maps (part of) the file at ``path``, by the file's identity (a
    np.memmap, np.load(mmap_mode=...), or an mmap viewed through np.frombuffer alike)."""
    st = os.stat(path)
    identity = (f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}", str(st.st_ino))
    return any(file == identity for file, *_ in _file_parts(arr, file_mappings(), False))


def _byte_bounds(arr):
    utils = getattr(np.lib, "array_utils", None)  # NumPy >= 2.0; np.byte_bounds before
    return (utils.byte_bounds if utils else np.byte_bounds)(arr)


def reserve_file_backing(arr, name, mappings=None):
    """Allocate the disk blocks under a file-backed output before the engine writes to it.

    Writing to a memory map of a sparse file (np.lib.format.open_memmap makes one) allocates
    blocks on the first store to each page; on a full disk the kernel answers with SIGBUS, which
    kills the process. posix_fallocate makes that an OSError, raised here, before any work. The
    free space is compared first, because a failed posix_fallocate keeps the blocks it got (on
    ext4), which would leave the disk full. Returns whether arr maps a file at all (the engine
    then writes it row panel by row panel, each page once and in order)."""
    if mappings is None:
        mappings = file_mappings()
    parts = _file_parts(arr, mappings, shared_only=True)
    if not hasattr(os, "posix_fallocate"):
        return bool(parts)
    for _, path, first, end in parts:
        page = mmap.ALLOCATIONGRANULARITY
        start = first // page * page
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue  # not ours to extend (the mapping itself is writable, so this is rare)
        try:
            free = _free_bytes(fd)
            missing = end - start - min(os.fstat(fd).st_blocks * 512, end - start)
            if free is not None and missing > free:  # at most this many bytes are new (fewer where the file has blocks)
                raise OSError(errno.ENOSPC, f"{name}: cannot reserve {human_bytes(end - first)} "
                                            f"on disk for the output file {path}: "
                                            f"{os.strerror(errno.ENOSPC)} ({human_bytes(free)} "
                                            "free)")
            try:
                os.posix_fallocate(fd, start, end - start)
            except OSError as error:
                if error.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    continue  # the file system cannot reserve blocks; nothing to check
                raise OSError(error.errno, f"{name}: cannot reserve {human_bytes(end - first)} "
                                           f"on disk for the output file {path}: "
                                           f"{os.strerror(error.errno)}") from None
        finally:
            os.close(fd)
    return bool(parts)


def _free_bytes(fd):
    """Free space on fd's file system, as this process may use it (root may use the blocks
    ext4 reserves for it); None where the file system reports no size (some FUSE and
    pseudo file systems), whose answer would mean nothing."""
    fs = os.fstatvfs(fd)
    if fs.f_blocks == 0:
        return None
    return (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) * fs.f_frsize


# ----------------------------------------------------------------------------------------------
# Requests.

def points_request(x1, x2, *, net, get, dtype, backend, num_threads, check_finite, progress,
                   tile_size, out=None):
    """A checked request for the kernel of (x1, x2), outputs not yet checked (``gram_request``
    adds them; a ``KernelOperator`` has none)."""
    names, single = parse_get(get)
    net = as_network(net)
    backend = select_backend(backend, (x1, x2))
    a1 = check_points(x1, "x1")
    a2 = None if x2 is None else check_points(x2, "x2")
    if a2 is not None and is_cupy(a1) != is_cupy(a2):
        raise TypeError(f"x1 and x2 must both be CuPy arrays or both host arrays, got "
                        f"{type(x1).__name__} and {type(x2).__name__}; convert one with "
                        "cupy.asarray or cupy.asnumpy")
    if a2 is not None and a2.shape[1] != a1.shape[1]:
        raise ValueError(f"x1 and x2 must have the same number of features, got x1 {a1.shape} and "
                         f"x2 {a2.shape}")
    inputs = [a for a in (a1, a2) if a is not None]
    request = GramRequest(
        x1=a1, x2=a2, net=net, names=names, single=single, dtype=result_dtype(dtype, inputs),
        out=parse_out(out, names, single), backend=backend,
        num_threads=_bounded_int(num_threads, "num_threads", MAX_THREADS),
        tile=_bounded_int(tile_size, "tile_size", MAX_TILE), progress=check_progress(progress))
    if check_finite:
        for a, name in zip(inputs, ("x1", "x2")):
            reject_non_finite(a, name)
    for a, name in zip(inputs, ("x1", "x2")):
        check_fits_dtype(a, name, request.dtype)
    return request


def gram_request(x1, x2, *, net, get, dtype, out, backend, num_threads, check_finite, progress,
                 tile_size):
    """The checked request of ``ntkfast.gram`` (see there for the arguments)."""
    request = points_request(x1, x2, net=net, get=get, dtype=dtype, out=out, backend=backend,
                             num_threads=num_threads, check_finite=check_finite,
                             progress=progress, tile_size=tile_size)
    if request.backend == "cpu":
        request = _check_cpu_outputs(request,
                                     [a for a in (request.x1, request.x2) if a is not None])
    return request


def _check_cpu_outputs(request, inputs):
    """The request, its out arrays checked (and out_file_backed set)."""
    shape, dtype = request.shape, request.dtype
    mappings = file_mappings()  # one read of /proc/self/maps for every check below
    file_backed = [check_host_output(arr, out_label(name, request.single), shape, dtype, inputs,
                                     mappings)
                   for name, arr in request.out.items()]
    if len(request.out) == 2:
        check_outputs_disjoint(request.out["nngp"], request.out["ntk"], mappings)
    missing = [n for n in request.names if n not in request.out]
    if missing:
        check_memory(shape, dtype, len(missing), "gram")
    return dataclasses.replace(request, out_file_backed=any(file_backed))


def diagonal_request(x, *, net, get, dtype, check_finite, num_threads, backend="auto"):
    """The checked request of ``ntkfast.diagonal`` (outputs are always allocated)."""
    names, single = parse_get(get)
    net = as_network(net)
    backend = select_backend(backend, (x,))
    a = check_points(x, "x")
    request = GramRequest(
        x1=a, x2=None, net=net, names=names, single=single, dtype=result_dtype(dtype, [a]),
        out={}, backend=backend, num_threads=_bounded_int(num_threads, "num_threads", MAX_THREADS),
        tile=0, progress=False, arguments=("x", "x"))
    if check_finite:
        reject_non_finite(a, "x")
    check_fits_dtype(a, "x", request.dtype)
    return request
