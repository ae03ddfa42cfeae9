"""The compute backends behind ``ntkfast.gram`` and ``ntkfast.diagonal``.

A backend receives a checked :class:`~ntkfast._validation.GramRequest` and returns
``{kernel name: array}``; it never sees raw user arguments. ``CpuBackend`` drives the compiled
OpenMP engine (``ntkfast._core``), ``CudaBackend`` the CUDA engine (``ntkfast._cuda`` through
``_cuda_backend``, imported only when used). Future backends (matrix-free operators, Dask) plug in
here. Whether CUDA can run is probed once per process and cached (``_cuda_probe``).
"""
from __future__ import annotations

import numpy as np

from . import _blas, _core
from ._dual_kernels import dual_kernel_callback
from ._errors import EngineNonFinite, KernelUnderflowError, NonFiniteKernelError
from ._layers import lower, series_activations
from ._program import compiled_program, default_tile
from ._progress import Progress
from ._series import series_inputs
from ._validation import available_memory, human_bytes, row_table_bytes, row_table_memory_error

__all__ = ["run", "CpuBackend", "CudaBackend", "kernel_range_error", "check_row_table_memory"]


def kernel_range_error(error, request):
    """The user-facing exception for an engine's EngineNonFinite, naming the input row and layer."""
    _, _, sources = lower(request.net, request.n_features)
    argument = request.arguments[error.point_set - 1]
    layer = None if error.op < 0 else sources[error.op]
    where = "the input layer" if layer is None else layer
    if error.underflow:
        return KernelUnderflowError(
            f"the NNGP variance of {argument}[{error.row}] is {error.value!r} after {where}: "
            "below the normal range of double precision (or exactly 0 for a nonzero input), so "
            "the kernel cannot be computed exactly. Typical causes: inputs near 1e-154 or below "
            "(rescale them), or a very deep network whose variance shrinks every layer (e.g. ReLU "
            "with W_std < sqrt(2) and b_std = 0: use b_std > 0 or W_std = sqrt(2)).",
            argument=argument, row=error.row, layer=layer, value=error.value)
    kind = "NTK" if error.is_ntk else "NNGP variance"
    return NonFiniteKernelError(
        f"the {kind} of {argument}[{error.row}] is {error.value!r} after {where}: the kernel "
        "overflows (or is undefined) in this precision (variances entering a nonlinearity that "
        "multiplies two of them must stay below ~1e150, outputs within the dtype's range). "
        "Typical causes: NaN/Inf inputs, "
        "Exp/Gaussian activations with large variances, or very deep networks with W_std > 1; "
        "with float32 outputs, try dtype=float64.",
        argument=argument, row=error.row, layer=layer, value=error.value)


def _engine_array(x, dtype):
    """C-contiguous and aligned (a view at an odd byte offset is C-contiguous too, and the engine
    reads whole elements): a copy only where needed."""
    return np.require(np.asarray(x, dtype=dtype), requirements=["C", "A"])


#: Row tables smaller than this are allocated without asking how much memory is free.
_ROW_TABLES_UNCHECKED_BYTES = 64 * 2**20


def check_row_table_memory(request, n_ops, what):
    """MemoryError, before the engine allocates them, when the per-row tables do not fit.

    The engine keeps each point set's variances after every op (q, sqrt(q): 8 bytes each, a
    rescale exponent: 4) for rows padded to ``_core.row_stride``: (n_ops + 1) x stride x 20
    bytes per point set, which for a deep net can dwarf the Gram matrix itself."""
    need = row_table_bytes(request, n_ops, _core.row_stride)
    if need < _ROW_TABLES_UNCHECKED_BYTES:
        return
    free = available_memory()
    if free is not None and need > free:
        raise row_table_memory_error(request, n_ops, what, need,
                                     f"the {human_bytes(free)} of memory available")


def _program(request, x1, x2, dual_kernels):
    """(the CPU engine's program for request.net on these engine arrays, its SeriesInputs or
    None, the lowered ops): with Series ops, the program series_inputs rewrote to the terms it
    stored."""
    ops, pool, _ = lower(request.net, x1.shape[1])
    series = series_inputs(series_activations(request.net), ops, pool, x1, x2,
                           request.num_threads, request.dtype, dual_kernels)
    return (series.program if series else compiled_program(ops, pool)), series, ops


class CpuBackend:
    """The OpenMP engine: NumPy arrays in and out; outputs allocated here unless given."""

    name = "cpu"

    def gram(self, request):
        n1, n2 = request.shape
        outputs = dict(request.out)
        for name in request.names:
            if name not in outputs:
                outputs[name] = np.empty((n1, n2), dtype=request.dtype)
        if n1 and n2:
            c1 = _engine_array(request.x1, request.dtype)
            c2 = None if request.x2 is None else _engine_array(request.x2, request.dtype)
            dual_kernels = dual_kernel_callback(request.net, request.names, self.name)
            reporter = Progress(request.progress, "ntkfast.gram")
            try:
                # Single-threaded BLAS also for the series tables' small products: OpenBLAS
                # threads left spinning after them would take cores from the engine's threads.
                with _blas.single_threaded():
                    program, series, ops = _program(request, c1, c2, dual_kernels)
                    check_row_table_memory(request, program.n_ops, "gram")
                    tile = request.tile or default_tile(ops, c1.shape[1])
                    bound, fallback_pairs = _core.gram(
                        program, c1, c2, outputs.get("nngp"),
                        outputs.get("ntk"), request.num_threads, tile,
                        reporter if reporter.enabled else None,
                        *(series.engine_arguments() if series else ()),
                        dual_kernels=dual_kernels, panel_writes=request.out_file_backed)
            finally:
                reporter.close()
            if series:
                series.warn_if_truncated(bound)
                entries = n1 * (n1 + 1) // 2 if request.x2 is None else n1 * n2
                series.warn_if_slow(fallback_pairs, entries)
        return outputs

    def diagonal(self, request):
        n = request.x1.shape[0]
        outputs = {name: np.empty(n, dtype=request.dtype) for name in request.names}
        if n:
            x = _engine_array(request.x1, request.dtype)
            dual_kernels = dual_kernel_callback(request.net, request.names, self.name)
            program, series, _ = _program(request, x, None, dual_kernels)
            check_row_table_memory(request, program.n_ops, "diagonal")
            _core.diagonal(program, x, outputs.get("nngp"), outputs.get("ntk"),
                           request.num_threads, series.tables1 if series else None,
                           dual_kernels)
        return outputs


class CudaBackend:
    """The CUDA engine: CuPy or NumPy arrays in, outputs where the inputs (or ``out``) live."""

    name = "cuda"

    @staticmethod
    def _check_supported(request):
        dual_kernel_callback(request.net, request.names, "cuda")  # raises for DualKernel layers

    def gram(self, request):
        from . import _cuda_backend

        self._check_supported(request)
        return _cuda_backend.gram(request)

    def diagonal(self, request):
        from . import _cuda_backend

        self._check_supported(request)
        return _cuda_backend.diagonal(request)


_BACKENDS = {"cpu": CpuBackend(), "cuda": CudaBackend()}


def run(request, what):
    """Runs ``what`` ('gram' or 'diagonal') of a checked request on its backend."""
    backend = _BACKENDS[request.backend]  # available: checked with the request
    try:
        return getattr(backend, what)(request)
    except EngineNonFinite as error:
        raise kernel_range_error(error, request) from None
