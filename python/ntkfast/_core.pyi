"""Type stub of ntkfast._core, the compiled CPU engine (src/cpp/bindings.cpp).

Private: the Python layer (_gram.py, _operator.py, _config.py, _blas.py) is its only caller and
hands it checked requests. Arrays are taken as they are (``noconvert``): exact dtype, C-contiguous,
so there is no hidden copy; outputs are written in place. The GIL is released while it computes.
tests/test_build_info.py checks this stub against the module (names, parameters, overloads).
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str
OP_KINDS: Dict[str, int]
MAX_DEGREE: int
MAX_SERIES_DEGREE: int
MAX_OPS: int
MAX_THREADS: int

_F64 = npt.NDArray[np.float64]
_F32 = npt.NDArray[np.float32]

class Cancelled(KeyboardInterrupt):
    """Ctrl-C (or a progress callback's exception) stopped a computation between tiles."""

class Program:
    """A lowered layer program (program.hpp): ops (kind, degree, offset into `pool`, up to 6
    parameters), validated on construction."""

    def __init__(self, ops: Sequence[Tuple[int, int, int, Sequence[float]]],
                 pool: Sequence[float]) -> None: ...
    @property
    def n_ops(self) -> int: ...

def set_blas(dgemm: object, sgemm: object) -> None:
    """The dgemm/sgemm the tile GEMMs call: capsules of scipy.linalg.cython_blas (_blas.py)."""

@overload
def gram(program: Program, x1: _F64, x2: Optional[_F64], nngp: Optional[_F64], ntk: Optional[_F64],
         num_threads: int, tile: int, progress: Optional[Callable[..., object]],
         series1: Optional[_F64] = ..., series2: Optional[_F64] = ...,
         series_profiles: Optional[_F64] = ..., series_fallbacks: Optional[_F64] = ...,
         series_fallback_above: float = ...,
         dual_kernels: Optional[Callable[..., object]] = ...,
         panel_writes: bool = ...) -> Tuple[float, int]: ...
@overload
def gram(program: Program, x1: _F32, x2: Optional[_F32], nngp: Optional[_F32],
         ntk: Optional[_F32], num_threads: int, tile: int,
         progress: Optional[Callable[..., object]], series1: Optional[_F64] = ...,
         series2: Optional[_F64] = ..., series_profiles: Optional[_F64] = ...,
         series_fallbacks: Optional[_F64] = ..., series_fallback_above: float = ...,
         dual_kernels: Optional[Callable[..., object]] = ...,
         panel_writes: bool = ...) -> Tuple[float, int]: ...
@overload
def diagonal(program: Program, x: _F64, nngp: Optional[_F64], ntk: Optional[_F64],
             num_threads: int, series: Optional[_F64] = ...,
             dual_kernels: Optional[Callable[..., object]] = ...) -> None: ...
@overload
def diagonal(program: Program, x: _F32, nngp: Optional[_F32], ntk: Optional[_F32],
             num_threads: int, series: Optional[_F64] = ...,
             dual_kernels: Optional[Callable[..., object]] = ...) -> None: ...
@overload
def band_matmat(band: _F64, row0: int, col0: int, v_cols: Optional[_F64], v_rows: Optional[_F64],
                out_rows: Optional[_F64], out_cols: Optional[_F64], mirror: int,
                num_threads: int) -> None:
    """One band of a stored kernel times vectors (band_product.hpp); the band's rows may be
    strided, the vectors are C-contiguous (k, n) float64 arrays."""
@overload
def band_matmat(band: _F32, row0: int, col0: int, v_cols: Optional[_F64], v_rows: Optional[_F64],
                out_rows: Optional[_F64], out_cols: Optional[_F64], mirror: int,
                num_threads: int) -> None: ...
@overload
def symmetric_band_matmat(band: _F64, row0: int, v: _F64, out: _F64, num_threads: int) -> None:
    """out += the share of K @ V of one band K[row0:row0 + rows, row0:row0 + cols] of a symmetric
    K (rows <= cols: the diagonal block's upper triangle is read, each entry used twice); v and
    out are C-contiguous (k, n) float64 arrays (band_product.hpp)."""
@overload
def symmetric_band_matmat(band: _F32, row0: int, v: _F64, out: _F64, num_threads: int) -> None: ...
def in_forked_child() -> bool:
    """True in a child forked after the engine started threads: it then runs single-threaded."""

def select_cpu_kernels(name: str) -> None:
    """Force a kernel variant: 'generic', 'avx2' or 'avx512' (ValueError if this CPU lacks it)."""

def row_stride(n: int) -> int: ...
def series_pair_fallback(record: _F64, a: float, b: float, rho: float) -> Tuple[float, float]: ...
def default_tile(n_features: int) -> int: ...
def snap_tolerance(arg0: str, arg1: int) -> float:
    """The correlation snap tolerance for dtype `arg0` ('float32'/'float64') and `arg1` features."""

def build_info() -> Dict[str, Union[bool, int, str, List[str]]]:
    """openmp, max_threads, cpu_features, cpu_kernels, cpu_kernel_lanes, supported_cpu_kernels,
    max_degree, compiler."""
