"""The CUDA backend of :func:`ntkfast.gram` and :func:`ntkfast.diagonal`: CuPy glue.

The computation is the engine's (``ntkfast._cuda.GramPlan``, src/cuda/gram_plan.hpp: per-row
tables, every tile's GEMM and epilogue, streaming to host outputs, progress and Ctrl-C). This
module chooses the device, checks and allocates the outputs, converts the inputs and allocates from
CuPy's pools the memory the plan asks for, on the caller's current CuPy stream (docs/cuda.md).
CuPy is imported only inside these functions: ``import ntkfast`` never imports it.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from . import _core
from ._cuda_probe import device_problem  # noqa: F401  (benchmarks/cuda_bench.py)
from ._layers import lower, series_activations
from ._program import GPU_TILE_WORK_BUDGET, compiled_program, work_bounded_edge
from ._progress import Progress
from ._series import series_inputs
from ._validation import (check_host_output, check_memory, check_outputs_disjoint, file_mappings,
                          human_bytes, is_cupy, out_label, row_table_bytes,
                          row_table_memory_error)

__all__ = ["gram", "diagonal", "tf32_state"]


def tf32_state():
    """How float32 GEMMs are configured (for benchmark records): CuPy's environment and compute
    type; ntkfast's own GEMMs always run in full FP32 whatever these say."""
    info = {name: os.environ.get(name) for name in ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE")}
    try:
        from cupy._core import _routines_linalg as linalg

        info["cupy_compute_type_float32"] = linalg.compute_type_to_str(linalg.get_compute_type(np.float32))
    except Exception as error:  # pragma: no cover - depends on the CuPy version
        info["cupy_compute_type_float32"] = f"unknown ({type(error).__name__})"
    info["ntkfast_gemms"] = ("FP32 (cublasSgemm with CUBLAS_DEFAULT_MATH set on CuPy's handle for "
                             "the call: no TF32)")
    return info


@contextlib.contextmanager
def _fp32_gemms(dtype):
    """CuPy's own float32 GEMMs in full FP32 while in scope (benchmarks/cuda_bench.py's reference)."""
    try:
        from cupy._core import _routines_linalg as linalg

        previous, tf32 = linalg.get_compute_type(np.float32), linalg.COMPUTE_TYPE_TF32
    except (ImportError, AttributeError):  # pragma: no cover - a CuPy without compute types
        previous = tf32 = None
    if dtype != np.float32 or previous is None or previous != tf32:
        yield
        return
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_DEFAULT)
    try:
        yield
    finally:
        linalg.set_compute_type(np.float32, previous)


# Device memory and device-side checks (the arguments were checked by _validation).
def _free_device_bytes(cp):
    """Free memory of the current device, counting what CuPy's pool holds unused."""
    free, _ = cp.cuda.runtime.memGetInfo()
    pool = cp.get_default_memory_pool()
    available = free + pool.free_bytes()
    if pool.get_limit():
        available = min(available, pool.get_limit() - pool.used_bytes())
    return max(0, int(available))


def _out_of_memory(what, device, error, nbytes=None):
    size = f" ({human_bytes(nbytes)})" if nbytes else ""
    return MemoryError(f"out of GPU memory on GPU {device} for {what}{size}: {error}; pass out= host arrays "
        "(e.g. np.memmap) to stream the result to host memory or disk tile by tile, or use a "
        "smaller tile_size or dtype=float32")


@contextlib.contextmanager
def _gpu_memory(cp, what, device):
    """CuPy's OutOfMemoryError as a MemoryError that names the request and suggests out=."""
    try:
        yield
    except cp.cuda.memory.OutOfMemoryError as error:
        raise _out_of_memory(what, device, error) from None


def _check_out_device(cp, arr, name, shape, dtype, device, inputs):
    if arr.shape != tuple(shape) or arr.dtype != dtype:
        raise ValueError(f"{name} must have shape {tuple(shape)} and dtype {dtype}, got shape "
                         f"{arr.shape} and dtype {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if arr.device.id != device.id:
        raise ValueError(f"{name} is on GPU {arr.device.id} but the computation runs on GPU "
                         f"{device.id} (where the inputs are)")
    if any(cp.may_share_memory(arr, x) for x in inputs):
        raise ValueError(f"{name} overlaps an input array")


def _to_device(cp, a, dtype, device, what):
    """A C-contiguous device array of `dtype` (no copy when a CuPy input already is one)."""
    nbytes = int(np.prod(a.shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    try:
        if isinstance(a, np.ndarray):
            return cp.asarray(np.ascontiguousarray(a, dtype=dtype))
        return cp.ascontiguousarray(a, dtype=dtype)
    except cp.cuda.memory.OutOfMemoryError as error:
        raise _out_of_memory(f"the copy of {what} to the GPU", device.id, error, nbytes) from None


def _workspace(cp, plan, request, device, what):
    """The plan's device work space (per-row tables, GEMM buffer, staging), or a MemoryError
    before allocating that says which part does not fit in the free GPU memory."""
    need, free = plan.workspace_bytes, _free_device_bytes(cp)
    if need > free:
        n_ops = len(lower(request.net, request.n_features)[0])
        # the plan pads both point sets' tables to the larger set's rows (gram_plan.cu)
        rows = max(a.shape[0] for a in (request.x1, request.x2) if a is not None)
        stride = max(32, -(-rows // 32) * 32)
        tables = row_table_bytes(request, n_ops, lambda _: stride)
        than = f"the {human_bytes(free)} of free memory on GPU {device.id}"
        if 2 * tables >= need:
            raise row_table_memory_error(request, n_ops, what, need, than)
        raise MemoryError(f"{what} needs {human_bytes(need)} of GPU work space for tiles of "
                          f"{plan.tile} x {plan.tile} (the GEMM buffer, and the staging slots of "
                          f"host outputs), more than {than}; pass a smaller tile_size")
    with _gpu_memory(cp, f"the {what} work space", device.id):
        return cp.empty(need, dtype=np.uint8)


def _ptr(a):
    return 0 if a is None else a.data.ptr


# Rows per chunk of the device-side sums ||x_i||² (bounded float64 temporaries).
_VARIANCE_CHUNK_BYTES = 64 << 20


def _input_variances(cp, x):
    """||x_i||²/d of a device array, summed in float64 on the device by chunks of rows, as a
    NumPy array (N values cross to the host, not the rows)."""
    n, d = x.shape
    inv_d = 1.0 / d if d else 0.0  # as the engines
    q = np.empty(n)
    step = max(1, _VARIANCE_CHUNK_BYTES // (8 * max(d, 1)))
    for start in range(0, n, step):
        block = x[start:start + step].astype(np.float64)
        q[start:start + step] = ((block * block).sum(axis=1) * inv_d).get()
    return q


def _series(cp, request, x1, x2):
    """The SeriesInputs of a request whose network has Hermite-series activations (else None),
    built on the host by series_inputs as on the CPU backend: from the rows themselves for NumPy
    inputs (the CPU backend's tables, bit for bit), else from each device row's variance alone,
    through (n, 1) rows √(||x||²/d) with the same variances (up to rounding): O(N) values to the
    host and O(N·K) work there, never O(N²)."""
    layers = series_activations(request.net)
    if not layers:
        return None
    if is_cupy(request.x1):
        rows = [np.sqrt(_input_variances(cp, x))[:, None] for x in (x1, x2) if x is not None]
    else:
        rows = [np.asarray(x, dtype=request.dtype) for x in (request.x1, request.x2) if x is not None]
    ops, pool, _ = lower(request.net, request.n_features)
    return series_inputs(layers, ops, pool, rows[0], rows[1] if len(rows) > 1 else None,
                         request.num_threads, request.dtype)


def _plan(request, shape, outputs, device, free_bytes=0, series=None):
    """The engine's plan for this request (the program validated by the CPU engine first; with
    Series ops, series_inputs's program and the sizes of its tables)."""
    from . import _cuda

    d, dtype = request.n_features, np.dtype(request.dtype)
    ops, pool, _ = lower(request.net, d)
    compiled_program(ops, pool)  # the CPU engine's validation: nothing unchecked reaches the GPU
    extra = {}
    if series is not None:
        ops = series.ops  # validated by series_inputs, with the terms the tables hold
        extra = dict(series_rows=series.tables1.shape[0], profiles=series.profiles,
                     fallbacks=series.fallbacks, fallback_above=series.fallback_above)
    symmetric, n_outputs = request.x2 is None, len(request.names)
    tile = request.tile or _work_bounded_tile(ops, shape, dtype.itemsize, outputs, n_outputs,
                                              symmetric, free_bytes)
    return _cuda.GramPlan(
        ops=[(k, deg, off, list(p)) for k, deg, off, p in ops], pool=list(pool), dtype=dtype.name,
        n1=shape[0], n2=shape[1], d=d, symmetric=symmetric, nngp="nngp" in request.names,
        ntk="ntk" in request.names, tile=tile, outputs=outputs, device=device.id,
        free_bytes=free_bytes, snap_tol=_core.snap_tolerance(dtype.name, d), **extra)


def _work_bounded_tile(ops, shape, itemsize, outputs, n_outputs, symmetric, free_bytes):
    """0 (the engine's default tile) unless one such tile of this program holds more layer work
    than GPU_TILE_WORK_BUDGET: the engine polls for Ctrl-C and reports progress between tiles, and
    one 8192² tile of a depth-5000 erf MLP takes seconds. Then the largest multiple of 256 (of 32
    below 256) within the budget."""
    from . import _cuda

    fitting = work_bounded_edge(ops, GPU_TILE_WORK_BUDGET)
    if outputs == "none" or fitting >= _cuda.DEVICE_TILE:
        return 0
    engine = _cuda.choose_tile(0, shape[0], shape[1], itemsize, outputs, n_outputs, symmetric,
                               free_bytes)
    if fitting >= engine:
        return 0
    return fitting // 256 * 256 if fitting >= 256 else max(1, fitting // 32 * 32 or fitting)


def _series_tables(series, symmetric):
    """row_stats's Series arguments."""
    if series is None:
        return {}
    return dict(series1=series.tables1, series2=None if symmetric else series.tables2)


# Public entry points (called by _backends.CudaBackend with a checked request).
def gram(request):
    """ntkfast.gram on the GPU: CuPy inputs on their device give CuPy outputs, NumPy inputs on the
    current device NumPy ones; ``out`` may hold CuPy arrays or host arrays / np.memmap (streamed)."""
    import cupy as cp

    a1, a2 = request.x1, request.x2
    gpu1 = is_cupy(a1)
    if gpu1 and a2 is not None and a2.device.id != a1.device.id:
        raise ValueError(f"x1 is on GPU {a1.device.id} but x2 is on GPU {a2.device.id}")
    given = request.out
    kinds = {is_cupy(arr) for arr in given.values()}
    if len(kinds) > 1:
        raise TypeError("out: the arrays must all be CuPy arrays or all host arrays")
    on_host = (not gpu1) if not kinds else not kinds.pop()
    if gpu1:
        device = a1.device
    elif given and not on_host:
        device = next(iter(given.values())).device
    else:
        device = cp.cuda.Device()
    reporter = Progress(request.progress, "ntkfast.gram")
    with device:
        outputs = _prepare_outputs(cp, request, gpu1, on_host, device)
        try:
            if request.shape[0] and request.shape[1]:
                _compute(cp, request, outputs, on_host, device, reporter)
        finally:
            reporter.close()
    return outputs


def _prepare_outputs(cp, request, gpu_inputs, on_host, device):
    shape, dtype, names, given = request.shape, request.dtype, request.names, request.out
    inputs = [a for a in (request.x1, request.x2) if a is not None]
    host_inputs = [] if gpu_inputs else inputs
    mappings = file_mappings() if on_host and given else None  # read once for every check
    for name, arr in given.items():
        if on_host:
            check_host_output(arr, out_label(name, request.single), shape, dtype, host_inputs,
                              mappings)
        else:
            _check_out_device(cp, arr, out_label(name, request.single), shape, dtype, device,
                              inputs if gpu_inputs else [])
    if len(given) == 2:
        if on_host:
            check_outputs_disjoint(given["nngp"], given["ntk"], mappings)
        elif cp.may_share_memory(given["nngp"], given["ntk"]):
            raise ValueError("out: the nngp and ntk arrays overlap")
    missing = [n for n in names if n not in given]
    result = dict(given)
    if on_host:
        if missing:
            check_memory(shape, dtype, len(missing), "gram")
        result.update((name, np.empty(shape, dtype=dtype)) for name in missing)
        return result
    # CuPy outputs: checked before allocating, with the work space (inputs, tables, GEMM buffer).
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize * len(missing)
    work = sum(int(np.prod(a.shape, dtype=np.float64)) for a in host_inputs) * dtype.itemsize
    work += 16 * (shape[0] + shape[1]) * 64 + 256 * 256 * dtype.itemsize
    free = _free_device_bytes(cp)
    if missing and need + work > free:
        arrays = f"{len(missing)} arrays" if len(missing) > 1 else "an array"
        raise MemoryError(
            f"gram needs {arrays} of {shape[0]} x {shape[1]} {dtype} = {human_bytes(need)} "
            f"on GPU {device.id}, more than the {human_bytes(free)} of free GPU memory; "
            "pass out= host arrays (e.g. np.memmap) to stream the result to host memory or disk "
            "tile by tile, or use dtype=float32")
    with _gpu_memory(cp, "the gram outputs", device.id):
        result.update((name, cp.empty(shape, dtype=dtype)) for name in missing)
    return result


def _compute(cp, request, outputs, on_host, device, reporter):
    stream = cp.cuda.get_current_stream()
    dtype = request.dtype
    with _gpu_memory(cp, "the computation", device.id):
        x1 = _to_device(cp, request.x1, dtype, device, "x1")
        x2 = None if request.x2 is None else _to_device(cp, request.x2, dtype, device, "x2")
        series = _series(cp, request, x1, x2)
        plan = _plan(request, request.shape, "host" if on_host else "device", device,
                     0 if request.tile else _free_device_bytes(cp), series)
        workspace = _workspace(cp, plan, request, device, "gram")
        pinned = None
        if on_host:
            try:
                pinned = cp.cuda.alloc_pinned_memory(plan.pinned_bytes)
            except cp.cuda.runtime.CUDARuntimeError as error:
                raise MemoryError(f"could not allocate {human_bytes(plan.pinned_bytes)} of pinned host "
                                  f"memory to stream the result ({error}); pass a smaller tile_size") from None
        extra = plan.row_stats(x1=_ptr(x1), x2=_ptr(x2), workspace=workspace.data.ptr,
                               stream=stream.ptr, **_series_tables(series, x2 is None))
        scaled = cp.empty(extra, dtype=np.uint8) if extra else None
        out = {name: outputs[name] if on_host else outputs[name].data.ptr for name in request.names}
        plan.run(x1=_ptr(x1), x2=_ptr(x2), workspace=workspace.data.ptr, scaled=_ptr(scaled),
                 nngp=out.get("nngp"), ntk=out.get("ntk"), pinned=pinned.ptr if on_host else 0,
                 stream=stream.ptr, cublas=cp.cuda.device.get_cublas_handle(),
                 progress=reporter if reporter.enabled else None)
        if series is not None:  # as the CPU backend (waits for the last tiles)
            bound, fallback_pairs = plan.series_report(workspace=workspace.data.ptr,
                                                       stream=stream.ptr)
            series.warn_if_truncated(bound)
            n1, n2 = request.shape
            series.warn_if_slow(fallback_pairs, n1 * (n1 + 1) // 2 if x2 is None else n1 * n2)


def diagonal(request):
    """ntkfast.diagonal of a CuPy array, on its device and current stream (CuPy outputs)."""
    import cupy as cp

    a, names, dtype = request.x1, request.names, request.dtype
    if not is_cupy(a):
        raise TypeError("ntkfast.diagonal on the CUDA backend takes a CuPy array; pass a NumPy "
                        "array with backend='cpu' (the default), or convert it with cupy.asarray")
    n = a.shape[0]
    with a.device as device:
        if n == 0:
            return {name: cp.empty(0, dtype=dtype) for name in names}
        stream = cp.cuda.get_current_stream()
        with _gpu_memory(cp, "diagonal", device.id):
            x = _to_device(cp, a, dtype, device, "x")
            series = _series(cp, request, x, None)
            plan = _plan(request, (n, n), "none", device, series=series)
            workspace = _workspace(cp, plan, request, device, "diagonal")
            plan.row_stats(x1=_ptr(x), x2=0, workspace=workspace.data.ptr, stream=stream.ptr,
                           **_series_tables(series, True))
            outputs = {name: cp.empty(n, dtype=dtype) for name in names}
            plan.write_diagonal(workspace=workspace.data.ptr, nngp=_ptr(outputs.get("nngp")),
                                ntk=_ptr(outputs.get("ntk")), stream=stream.ptr)
    return outputs
