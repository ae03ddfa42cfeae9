"""Type stub of ntkfast._cuda, the compiled CUDA engine (src/cuda/bindings_cuda.cpp).

Private: python/ntkfast/_cuda_backend.py is its only caller. Device buffers are CuPy's, passed
as raw addresses (``array.data.ptr``) with the device ordinal and the ``cudaStream_t`` of the
caller's current CuPy stream (``stream.ptr``); nothing here allocates device memory.
"""
from typing import Iterable, Sequence, Tuple

def probe(device: int) -> str:
    """An empty string if the kernels can run on `device`, else why not."""

def device_name(device: int) -> str: ...
def max_tile_rows() -> int: ...
def build_info() -> dict: ...
def driver_version() -> int: ...
def pack_program(ops: Iterable[Tuple[int, int, int, Sequence[float]]]) -> bytes:
    """The LayerOp array (program.hpp layout, 64 bytes per op) of a lowered program."""

def row_stats(*, dtype: str, x: int, n: int, d: int, ld_x: int, ops: int, n_ops: int, pool: int,
              q: int, sq: int, stride: int, ntk_diag: int, status: int, point_set: int,
              device: int, stream: int) -> None:
    """Per-row tables of one point set; synchronizes `stream`; raises EngineNonFinite."""

def gram_tile(*, dtype: str, gram: int, ld_gram: int, rows: int, cols: int, inv_d: float,
              snap_tol: float, ops: int, n_ops: int, pool: int, q1: int, sq1: int, stride1: int,
              q2: int, sq2: int, stride2: int, nngp: int, ld_nngp: int, nngp_mirror: int,
              ld_nngp_mirror: int, ntk: int, ld_ntk: int, ntk_mirror: int, ld_ntk_mirror: int,
              diagonal: bool, diag_nngp: int, diag_ntk: int, device: int, stream: int) -> None:
    """One tile's epilogue, enqueued on `stream` (does not wait)."""
