"""The CUDA backend of :func:`ntkfast.gram` and :func:`ntkfast.diagonal`: CuPy arrays in and out.

How a Gram matrix is computed (docs/cuda.md has the details):

1. Per point set, once: the per-row tables q[k][i], sq[k][i] (the variance of row i entering op k
   and its square root) and Θ(x_i, x_i), by ``ntkfast._cuda.row_stats`` with the same per-entry
   math (``layer_math.hpp``) as the CPU engine. Non-finite variances raise here, before any tile.
2. Per tile (I, J) -- only J >= I for a symmetric Gram -- the input Gram x_I · x_Jᵀ by cuBLAS
   through CuPy into a device buffer (float32 GEMMs in full FP32: TF32 is switched off for them),
   then ``ntkfast._cuda.gram_tile`` runs every layer per entry in registers and writes each NNGP /
   NTK value once: into the CuPy output (and its mirror image), or into a device staging buffer
   that is copied to pinned host memory on a second stream while the next tile computes, and from
   there into the host output (a NumPy array or np.memmap: outputs larger than GPU memory).

Everything runs on the caller's current CuPy stream of the inputs' device (the copy stream of the
host path waits on it through events); with CuPy outputs the call returns with the last tiles
possibly still running on that stream, as any CuPy operation does. No device memory is allocated
outside CuPy's memory pool. The only host synchronisations are the non-finite check of step 1 and
the throttle that keeps at most two tiles queued (so that Ctrl-C and progress work between tiles).

CuPy is imported only inside these functions: ``import ntkfast`` never imports it.
"""
from __future__ import annotations

import collections
import contextlib
import math
import os
import time

import numpy as np

from . import _core
from ._program import compiled_program
from ._layers import lower
from ._progress import Progress
from ._validation import check_host_output, check_memory, human_bytes, is_cupy, out_label

__all__ = ["gram", "diagonal", "tf32_state"]

#: Default tile edge with CuPy outputs: a 8192 x 8192 x d GEMM is well past cuBLAS's efficient
#: size and takes milliseconds, so the per-tile Python overhead (~0.1 ms) is negligible.
DEVICE_TILE = 8192
#: Bytes of one staging slot (device and pinned host; two of each) when streaming to host outputs.
STAGING_SLOT_BYTES = 256 << 20
_POLL_INTERVAL = 0.1
_IN_FLIGHT_DEVICE = 2  # tiles queued on the GPU ahead of the host (CuPy outputs)


# ----------------------------------------------------------------------------------------------
# Configuration.

def tf32_state():
    """How float32 GEMMs are configured (for benchmark records): CuPy's environment and compute
    type; ntkfast's own GEMMs always run in full FP32 whatever these say."""
    info = {name: os.environ.get(name) for name in ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE")}
    try:
        from cupy._core import _routines_linalg as linalg

        info["cupy_compute_type_float32"] = linalg.compute_type_to_str(linalg.get_compute_type(np.float32))
    except Exception as error:  # pragma: no cover - depends on the CuPy version
        info["cupy_compute_type_float32"] = f"unknown ({type(error).__name__})"
    info["ntkfast_gemms"] = "FP32 (CUBLAS_COMPUTE_32F; TF32 switched off while ntkfast runs)"
    return info


@contextlib.contextmanager
def _fp32_gemms(dtype):
    """float32 GEMMs in full FP32 while in scope. CuPy runs them on TF32 tensor cores (10-bit
    mantissa) when CUPY_TF32=1 or ``set_compute_type`` asked for it; the kernels must be exact.
    The setting is process-wide in CuPy, so it is restored on exit."""
    if dtype != np.float32:
        yield
        return
    try:
        from cupy._core import _routines_linalg as linalg

        previous = linalg.get_compute_type(np.float32)
        tf32 = linalg.COMPUTE_TYPE_TF32
    except (ImportError, AttributeError):  # pragma: no cover - a CuPy without compute types
        yield
        return
    if previous != tf32:
        yield
        return
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_DEFAULT)
    try:
        yield
    finally:
        linalg.set_compute_type(np.float32, previous)


# ----------------------------------------------------------------------------------------------
# Device memory and device-side checks (the arguments were checked by _validation).

def _free_device_bytes(cp):
    """Free memory of the current device, counting what CuPy's pool holds unused."""
    free, _ = cp.cuda.runtime.memGetInfo()
    pool = cp.get_default_memory_pool()
    available = free + pool.free_bytes()
    limit = pool.get_limit()
    if limit:
        available = min(available, limit - pool.used_bytes())
    return max(0, int(available))


def _out_of_memory(what, device, error, nbytes=None):
    size = f" ({human_bytes(nbytes)})" if nbytes else ""
    return MemoryError(
        f"out of GPU memory on GPU {device} for {what}{size}: {error}; pass out= host arrays "
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


# ----------------------------------------------------------------------------------------------
# Device-side pieces.

class _DeviceProgram:
    """The layer program in device memory (LayerOp array and pool), built once per call."""

    def __init__(self, cp, net, n_features):
        from . import _cuda

        ops, pool, _ = lower(net, n_features)
        compiled_program(ops, pool)  # the CPU engine's validation: nothing unchecked reaches the GPU
        packed = _cuda.pack_program([(k, deg, off, list(p)) for k, deg, off, p in ops])
        self.n_ops = len(ops)
        self.ops = cp.asarray(np.frombuffer(packed, dtype=np.uint8)) if packed else None
        self.pool = cp.asarray(np.asarray(pool, dtype=np.float64)) if pool else None
        self.ops_ptr = self.ops.data.ptr if self.ops is not None else 0
        self.pool_ptr = self.pool.data.ptr if self.pool is not None else 0


class _RowTables:
    """q[k, i], sq[k, i] (float64, shape (n_ops + 1, stride)) and the NTK diagonal of one point set."""

    def __init__(self, cp, x, prog, with_ntk, point_set, device, stream):
        from . import _cuda

        n, d = x.shape
        self.n, self.n_ops = n, prog.n_ops
        self.stride = max(32, -(-n // 32) * 32)
        self.q = cp.empty((prog.n_ops + 1, self.stride), dtype=np.float64)
        self.sq = cp.empty((prog.n_ops + 1, self.stride), dtype=np.float64)
        self.ntk = cp.empty(self.stride, dtype=np.float64) if with_ntk else None
        status = cp.empty(1, dtype=np.uint64)
        _cuda.row_stats(dtype=x.dtype.name, x=x.data.ptr if x.size else 0, n=n, d=d, ld_x=d,
                        ops=prog.ops_ptr, n_ops=prog.n_ops, pool=prog.pool_ptr, q=self.q.data.ptr,
                        sq=self.sq.data.ptr, stride=self.stride,
                        ntk_diag=self.ntk.data.ptr if with_ntk else 0, status=status.data.ptr,
                        point_set=point_set, device=device.id, stream=stream.ptr)

    def at(self, table, k, row):
        """Device address of table[k, row] (table: self.q or self.sq)."""
        return table.data.ptr + 8 * (k * self.stride + row)

    def ntk_at(self, row):
        return self.ntk.data.ptr + 8 * row


def _to_device(cp, a, dtype, device, what):
    """A C-contiguous device array of `dtype` (no copy when a CuPy input already is one)."""
    nbytes = int(np.prod(a.shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    try:
        if isinstance(a, np.ndarray):
            return cp.asarray(np.ascontiguousarray(a, dtype=dtype))
        return cp.ascontiguousarray(a, dtype=dtype)
    except cp.cuda.memory.OutOfMemoryError as error:
        raise _out_of_memory(f"the copy of {what} to the GPU", device.id, error, nbytes) from None


class _DeviceSink:
    """Tiles written straight into CuPy outputs (and the mirror image for a symmetric Gram)."""

    keep = _IN_FLIGHT_DEVICE

    def __init__(self, cp, outputs, names, itemsize):
        self.cp = cp
        self.outputs, self.names, self.itemsize = outputs, names, itemsize
        self.pending = collections.deque()

    def before(self, k, stream):
        pass

    def targets(self, k, i0, j0, rows, cols, symmetric, diagonal):
        result = {}
        for name in self.names:
            arr = self.outputs[name]
            ld = arr.shape[1]
            base = arr.data.ptr
            direct = base + (i0 * ld + j0) * self.itemsize
            if not symmetric:
                mirror = 0
            elif diagonal:
                mirror = direct  # same square: the lower half is the mirror of the upper half
            else:
                mirror = base + (j0 * ld + i0) * self.itemsize
            result[name] = (direct, ld, mirror, ld)
        return result

    def after(self, k, stream, tile):
        event = self.cp.cuda.Event(disable_timing=True)
        event.record(stream)
        self.pending.append(event)

    def drain(self, keep):
        """Waits until at most `keep` tiles are unfinished; returns how many finished."""
        finished = 0
        while len(self.pending) > keep:
            self.pending.popleft().synchronize()
            finished += 1
        return finished

    def close(self):
        self.pending.clear()


class _HostSink:
    """Tiles streamed to host outputs: the epilogue writes a device staging slot, a second stream
    copies it to pinned memory once the tile is done, the host copies it into the outputs while
    the GPU computes the next tile. Two slots (double buffering)."""

    keep = 1  # with two slots: tile k computes while tile k - 1 is written out

    def __init__(self, cp, outputs, names, dtype, tile, symmetric, device):
        self.cp = cp
        self.outputs, self.names, self.dtype = outputs, names, np.dtype(dtype)
        self.itemsize = self.dtype.itemsize
        self.area = tile * tile
        self.per_kernel = self.area * (2 if symmetric else 1)
        slot_elems = self.per_kernel * len(names)
        nbytes = slot_elems * self.itemsize
        with _gpu_memory(cp, "the staging buffers of a host output", device.id):
            self.device = [cp.empty(slot_elems, dtype=self.dtype) for _ in range(2)]
        try:
            self.pinned_mem = [cp.cuda.alloc_pinned_memory(nbytes) for _ in range(2)]
        except cp.cuda.runtime.CUDARuntimeError as error:
            raise MemoryError(f"could not allocate 2 x {human_bytes(nbytes)} of pinned host "
                              f"memory to stream the result ({error}); pass a smaller tile_size") from None
        self.pinned = [np.frombuffer(mem, dtype=self.dtype, count=slot_elems) for mem in self.pinned_mem]
        self.copy_stream = cp.cuda.Stream(non_blocking=True)
        self.copy_done = [None, None]
        self.pending = collections.deque()

    def before(self, k, stream):
        done = self.copy_done[k % 2]
        if done is not None:  # the slot's previous tile has left the device staging buffer
            stream.wait_event(done)

    def targets(self, k, i0, j0, rows, cols, symmetric, diagonal):
        base = self.device[k % 2].data.ptr
        result = {}
        for index, name in enumerate(self.names):
            direct = base + index * self.per_kernel * self.itemsize
            if not symmetric:
                mirror, ld_mirror = 0, rows
            elif diagonal:
                mirror, ld_mirror = direct, cols
            else:
                mirror, ld_mirror = direct + self.area * self.itemsize, rows
            result[name] = (direct, cols, mirror, ld_mirror)
        return result

    def after(self, k, stream, tile):
        cp = self.cp
        slot = k % 2
        computed = cp.cuda.Event(disable_timing=True)
        computed.record(stream)
        self.copy_stream.wait_event(computed)
        i0, j0, rows, cols, symmetric, diagonal = tile
        nbytes = rows * cols * self.itemsize
        src, dst = self.device[slot].data.ptr, self.pinned_mem[slot].ptr
        for index in range(len(self.names)):
            offsets = [index * self.per_kernel]
            if symmetric and not diagonal:
                offsets.append(index * self.per_kernel + self.area)
            for offset in offsets:
                cp.cuda.runtime.memcpyAsync(dst + offset * self.itemsize, src + offset * self.itemsize,
                                            nbytes, cp.cuda.runtime.memcpyDeviceToHost,
                                            self.copy_stream.ptr)
        done = cp.cuda.Event(disable_timing=True)
        done.record(self.copy_stream)
        self.copy_done[slot] = done
        self.pending.append((slot, tile, done))

    def drain(self, keep):
        finished = 0
        while len(self.pending) > keep:
            slot, (i0, j0, rows, cols, symmetric, diagonal), done = self.pending.popleft()
            done.synchronize()
            staged = self.pinned[slot]
            for index, name in enumerate(self.names):
                out = self.outputs[name]
                base = index * self.per_kernel
                out[i0:i0 + rows, j0:j0 + cols] = staged[base:base + rows * cols].reshape(rows, cols)
                if symmetric and not diagonal:
                    base += self.area
                    out[j0:j0 + cols, i0:i0 + rows] = staged[base:base + rows * cols].reshape(cols, rows)
            finished += 1
        return finished

    def close(self):
        # No copy may still write into pinned memory once it goes back to CuPy's pool.
        self.copy_stream.synchronize()
        self.pending.clear()


def _default_tile(cp, requested, n1, n2, itemsize, on_host, n_kernels, symmetric, max_rows):
    if requested:
        tile = requested
    elif on_host:
        per_entry = n_kernels * (2 if symmetric else 1) * itemsize
        tile = max(256, int(math.isqrt(STAGING_SLOT_BYTES // per_entry)) // 256 * 256)
    else:
        # The GEMM buffer (tile² entries) takes at most a quarter of the free memory.
        budget = _free_device_bytes(cp) // 4
        tile = min(DEVICE_TILE, max(256, int(math.isqrt(max(budget, 1) // itemsize)) // 256 * 256))
    return max(1, min(tile, max(n1, n2), max_rows))


def _run_tiles(cp, x1, x2, tables1, tables2, prog, sink, names, dtype, tile, device, stream,
               reporter):
    """Every tile of the Gram: GEMM on `stream`, epilogue into `sink`'s targets."""
    from . import _cuda

    symmetric = x2 is None
    xb = x1 if symmetric else x2
    n1, d = x1.shape
    n2 = xb.shape[0]
    tiles1, tiles2 = -(-n1 // tile), -(-n2 // tile)
    work = [(ti, tj) for ti in range(tiles1) for tj in range(ti if symmetric else 0, tiles2)]
    total = len(work)
    gemm_rows, gemm_cols = min(tile, n1), min(tile, n2)
    with _gpu_memory(cp, "the tile GEMM buffer", device.id):
        buffer = cp.empty(gemm_rows * gemm_cols, dtype=dtype)
    snap_tol = _core.snap_tolerance(np.dtype(dtype).name, d)
    inv_d = 1.0 / d if d > 0 else 0.0
    n_ops = prog.n_ops
    done = 0
    last_poll = time.monotonic()
    with _fp32_gemms(np.dtype(dtype)):
        for k, (ti, tj) in enumerate(work):
            i0, j0 = ti * tile, tj * tile
            rows, cols = min(tile, n1 - i0), min(tile, n2 - j0)
            diagonal = symmetric and ti == tj
            sink.before(k, stream)
            g = buffer[:rows * cols].reshape(rows, cols)
            if d:
                cp.matmul(x1[i0:i0 + rows], xb[j0:j0 + cols].T, out=g)
            else:
                g.fill(0)
            targets = sink.targets(k, i0, j0, rows, cols, symmetric, diagonal)
            nngp = targets.get("nngp", (0, 0, 0, 0))
            ntk = targets.get("ntk", (0, 0, 0, 0))
            _cuda.gram_tile(
                dtype=np.dtype(dtype).name, gram=g.data.ptr, ld_gram=cols, rows=rows, cols=cols,
                inv_d=inv_d, snap_tol=snap_tol, ops=prog.ops_ptr, n_ops=n_ops, pool=prog.pool_ptr,
                q1=tables1.at(tables1.q, 0, i0), sq1=tables1.at(tables1.sq, 0, i0),
                stride1=tables1.stride,
                q2=tables2.at(tables2.q, 0, j0), sq2=tables2.at(tables2.sq, 0, j0),
                stride2=tables2.stride,
                nngp=nngp[0], ld_nngp=nngp[1], nngp_mirror=nngp[2], ld_nngp_mirror=nngp[3],
                ntk=ntk[0], ld_ntk=ntk[1], ntk_mirror=ntk[2], ld_ntk_mirror=ntk[3],
                diagonal=diagonal,
                diag_nngp=tables1.at(tables1.q, n_ops, i0) if diagonal else 0,
                diag_ntk=tables1.ntk_at(i0) if diagonal and "ntk" in names else 0,
                device=device.id, stream=stream.ptr)
            sink.after(k, stream, (i0, j0, rows, cols, symmetric, diagonal))
            # Between tiles: at most sink.keep tiles stay queued, so Ctrl-C (KeyboardInterrupt)
            # and the progress callback are served within about a tile's time.
            done += sink.drain(sink.keep)
            if reporter.enabled:
                now = time.monotonic()
                if now - last_poll >= _POLL_INTERVAL:
                    last_poll = now
                    reporter(done, total)
    if isinstance(sink, _HostSink) or reporter.enabled:
        sink.drain(0)
    if reporter.enabled:
        reporter(total, total)


# ----------------------------------------------------------------------------------------------
# Public entry points (called by _backends.CudaBackend with a checked request).

def gram(request):
    """ntkfast.gram on the GPU: {kernel name: array} for a checked request.

    CuPy inputs are computed on their device, on its current CuPy stream, and give CuPy outputs;
    host (NumPy) inputs are copied to the current device and give NumPy outputs. ``out`` may hold
    CuPy arrays (written in place) or host arrays / np.memmap (streamed tile by tile).
    """
    import cupy as cp

    a1, a2, names = request.x1, request.x2, request.names
    gpu1 = is_cupy(a1)
    if gpu1 and a2 is not None and a2.device.id != a1.device.id:
        raise ValueError(f"x1 is on GPU {a1.device.id} but x2 is on GPU {a2.device.id}")
    inputs = [a for a in (a1, a2) if a is not None]
    out_dtype = request.dtype
    _check_gemm_range(cp, inputs, out_dtype)
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
        outputs = _prepare_outputs(cp, given, names, request.single, request.shape, out_dtype,
                                   inputs, gpu1, on_host, device)
        n1, n2 = request.shape
        try:
            if n1 and n2:
                _compute(cp, a1, a2, request.net, names, outputs, on_host, out_dtype, request.tile,
                         device, reporter)
        finally:
            reporter.close()
    return outputs


def _check_gemm_range(cp, inputs, dtype):
    """The GPU engine has no per-row rescaling of the GEMM inputs (the CPU engine has): float32
    rows whose squared norm leaves [2^-60, 2^60] could overflow or lose precision in the float32
    GEMM, so they are refused rather than computed wrongly."""
    if dtype != np.float32:
        return
    for a, name in zip(inputs, ("x1", "x2")):
        if a.size == 0:
            continue
        xp = cp if is_cupy(a) else np
        sq = (xp.asarray(a, dtype=np.float64) ** 2).sum(axis=1)
        positive = sq[sq > 0]
        low = float(positive.min()) if positive.size else 1.0
        high = float(sq.max())
        if not (2.0 ** -60 <= low and high <= 2.0 ** 60):
            raise ValueError(
                f"{name} has rows with squared norms from {low:.3g} to {high:.3g}: outside "
                "[8.7e-19, 1.2e18], float32 GEMMs on the GPU could overflow or underflow; pass "
                "dtype=float64, rescale the inputs, or use backend='cpu'")


def _prepare_outputs(cp, given, names, single, shape, dtype, inputs, gpu_inputs, on_host, device):
    host_inputs = [] if gpu_inputs else inputs
    device_inputs = inputs if gpu_inputs else []
    for name, arr in given.items():
        if on_host:
            check_host_output(arr, out_label(name, single), shape, dtype, host_inputs)
        else:
            _check_out_device(cp, arr, out_label(name, single), shape, dtype, device, device_inputs)
    if len(given) == 2:
        share = np.may_share_memory if on_host else cp.may_share_memory
        if share(given["nngp"], given["ntk"]):
            raise ValueError("out: the nngp and ntk arrays overlap")
    missing = [n for n in names if n not in given]
    result = dict(given)
    if not missing:
        return result
    if on_host:
        check_memory(shape, dtype, len(missing), "gram")
        for name in missing:
            result[name] = np.empty(shape, dtype=dtype)
        return result
    # CuPy outputs: check before allocating, counting the work space (inputs copied from the host,
    # per-row tables, a GEMM buffer of at least 256 x 256).
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize * len(missing)
    work = sum(int(np.prod(a.shape, dtype=np.float64)) for a in host_inputs) * dtype.itemsize
    work += 16 * (shape[0] + shape[1]) * 64 + 256 * 256 * dtype.itemsize
    free = _free_device_bytes(cp)
    if need + work > free:
        arrays = f"{len(missing)} arrays" if len(missing) > 1 else "an array"
        raise MemoryError(
            f"gram needs {arrays} of {shape[0]} x {shape[1]} {dtype} = {human_bytes(need)} "
            f"on GPU {device.id}, more than the {human_bytes(free)} of free GPU memory; "
            "pass out= host arrays (e.g. np.memmap) to stream the result to host memory or disk "
            "tile by tile, or use dtype=float32")
    with _gpu_memory(cp, "the gram outputs", device.id):
        for name in missing:
            result[name] = cp.empty(shape, dtype=dtype)
    return result


def _compute(cp, a1, a2, net, names, outputs, on_host, dtype, tile, device, reporter):
    from . import _cuda

    n1, d = a1.shape
    n2 = n1 if a2 is None else a2.shape[0]
    stream = cp.cuda.get_current_stream()
    with_ntk = "ntk" in names
    with _gpu_memory(cp, "the computation", device.id):
        prog = _DeviceProgram(cp, net, d)
        x1 = _to_device(cp, a1, dtype, device, "x1")
        x2 = None if a2 is None else _to_device(cp, a2, dtype, device, "x2")
        tables1 = _RowTables(cp, x1, prog, with_ntk, 1, device, stream)
        tables2 = tables1 if x2 is None else _RowTables(cp, x2, prog, with_ntk, 2, device, stream)
        tile = _default_tile(cp, tile, n1, n2, dtype.itemsize, on_host, len(names), a2 is None,
                             _cuda.max_tile_rows())
        if on_host:
            sink = _HostSink(cp, outputs, names, dtype, tile, a2 is None, device)
        else:
            sink = _DeviceSink(cp, outputs, names, dtype.itemsize)
        try:
            _run_tiles(cp, x1, x2, tables1, tables2, prog, sink, names, dtype, tile, device, stream,
                       reporter)
        except BaseException:
            # Interrupted (Ctrl-C, a progress callback, an error): let the queued work finish before
            # the buffers it uses go back to the pools.
            stream.synchronize()
            raise
        finally:
            sink.close()


def diagonal(request):
    """ntkfast.diagonal of a CuPy array, on its device and current stream (CuPy outputs)."""
    import cupy as cp

    a, names, out_dtype = request.x1, request.names, request.dtype
    if not is_cupy(a):
        raise TypeError("ntkfast.diagonal on the CUDA backend takes a CuPy array; pass a NumPy "
                        "array with backend='cpu' (the default), or convert it with cupy.asarray")
    with a.device as device:
        n, d = a.shape
        outputs = {}
        if n == 0:
            return {name: cp.empty(0, dtype=out_dtype) for name in names}
        stream = cp.cuda.get_current_stream()
        with _gpu_memory(cp, "diagonal", device.id):
            prog = _DeviceProgram(cp, request.net, d)
            xd = _to_device(cp, a, out_dtype, device, "x")
            tables = _RowTables(cp, xd, prog, "ntk" in names, 1, device, stream)
            if "nngp" in names:
                outputs["nngp"] = tables.q[prog.n_ops, :n].astype(out_dtype)
            if "ntk" in names:
                outputs["ntk"] = tables.ntk[:n].astype(out_dtype)
    return outputs
