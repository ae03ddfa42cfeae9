"""Type stub of ntkfast._cuda, the compiled CUDA engine (src/cuda/bindings_cuda.cpp).

Private: python/ntkfast/_cuda_backend.py is its only caller. One class, GramPlan, runs a Gram
computation on one device (src/cuda/gram_plan.hpp): device memory is CuPy's, passed as raw
addresses (``array.data.ptr``) with the ``cudaStream_t`` of the caller's current CuPy stream
(``stream.ptr``) and CuPy's cuBLAS handle; nothing here allocates device memory.
"""
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

DEVICE_TILE: int
STAGING_SLOT_BYTES: int

class Cancelled(KeyboardInterrupt): ...

def probe(device: int) -> str:
    """An empty string if the kernels can run on `device`, else why not."""

def device_name(device: int) -> str: ...
def max_tile_rows() -> int: ...
def build_info() -> dict: ...
def driver_version() -> int: ...
def pack_program(ops: Iterable[Tuple[int, int, int, Sequence[float]]]) -> bytes:
    """The LayerOp array (program.hpp layout, 64 bytes per op) of a lowered program."""

class GramPlan:
    """The workspace layout, the per-row pass and the tile loop of one computation."""

    def __init__(self, *, ops: Iterable[Tuple[int, int, int, Sequence[float]]], pool: Sequence[float],
                 dtype: str, n1: int, n2: int, d: int, symmetric: bool, nngp: bool, ntk: bool,
                 tile: int, outputs: str, device: int, free_bytes: int, snap_tol: float,
                 series_rows: int = 0, profiles: Optional[np.ndarray] = None,
                 fallbacks: Optional[np.ndarray] = None, fallback_above: float = 1.0) -> None:
        """outputs: 'device' (CuPy arrays), 'host' (NumPy arrays, streamed) or 'none' (tables
        only, for write_diagonal). tile 0: the default. Programs with Series ops: the rows of
        each point set's tables, the tail profiles and fallback records (_series.SeriesInputs),
        checked against the program here. No CUDA call."""
    @property
    def tile(self) -> int: ...
    @property
    def tiles_total(self) -> int: ...
    @property
    def workspace_bytes(self) -> int: ...
    @property
    def pinned_bytes(self) -> int: ...
    @property
    def scaled_bytes(self) -> int: ...
    @property
    def has_series(self) -> bool: ...
    def row_stats(self, *, x1: int, x2: int, workspace: int, stream: int,
                  series1: Optional[np.ndarray] = None, series2: Optional[np.ndarray] = None) -> int:
        """Per-row tables (with Series ops from the host tables series1, series2: (series_rows,
        >= n) float64); synchronizes `stream`; raises EngineNonFinite. Returns scaled_bytes."""
    def series_report(self, *, workspace: int, stream: int) -> Tuple[float, int]:
        """After run, with Series ops: (largest tail bound left, entries the fallback computed);
        synchronizes `stream`."""
    def run(self, *, x1: int, x2: int, workspace: int, scaled: int, nngp: object, ntk: object,
            pinned: int, stream: int, cublas: int,
            progress: Optional[Callable[[int, int], None]]) -> None:
        """Every tile; outputs are device addresses ('device') or NumPy arrays ('host')."""
    def write_diagonal(self, *, workspace: int, nngp: int, ntk: int, stream: int) -> None: ...

def choose_tile(requested: int, n1: int, n2: int, itemsize: int, outputs: str, n_outputs: int,
                symmetric: bool, free_bytes: int) -> int:
    """The tile edge a GramPlan uses: `requested` if > 0, else the output kind's default."""

# Test hooks (tests/test_cuda_driver.py).
def _schedule(n1: int, n2: int, tile: int, symmetric: bool, outputs: str, n_outputs: int) -> List[dict]: ...
def _simulate(n1: int, n2: int, tile: int, symmetric: bool, outputs: str, out: List[np.ndarray],
              progress: Optional[Callable[[int, int], None]] = None, poll_interval: float = 0.0) -> dict: ...
def _load_cublas() -> str: ...
def _series_gram_host(ops: Iterable[Tuple[int, int, int, Sequence[float]]], pool: Sequence[float],
                      x1: np.ndarray, x2: Optional[np.ndarray], tables1: np.ndarray,
                      tables2: Optional[np.ndarray], profiles: np.ndarray,
                      fallbacks: Optional[np.ndarray], fallback_above: float,
                      snap_tol: float) -> Tuple[np.ndarray, np.ndarray, float, int]:
    """The CUDA engine's per-entry code for programs with Series ops, run on the host (float64):
    (nngp, ntk, largest tail bound, fallback entries)."""
