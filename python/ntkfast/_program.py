"""Networks lowered and compiled for the engines (shared by every backend)."""
from __future__ import annotations

import math

from . import _core

__all__ = ["compiled_program", "default_tile", "tile_work", "work_bounded_edge",
           "GPU_TILE_WORK_BUDGET"]

#: Cost of one Gram entry through each op kind, in Dense ops (one Dense ~0.4 ns per entry on a
#: 2-core x86 box; measured as ns per entry of 30-200 [Dense, activation] blocks, one thread).
#: Degree-dependent kinds cost 4 + degree; Series and Callback ops are the slowest measured
#: (tanh, softplus; a NumPy dual kernel).
_OP_COST = {"Dense": 1, "Identity": 1, "ABRelu": 4, "Erf": 5, "Gelu": 6, "Sin": 20, "Rbf": 10,
            "Exp": 10, "ExpNormalized": 10, "Gaussian": 4, "Gabor": 15, "Sign": 4, "Series": 40,
            "Callback": 40}
_DEGREE_COST_KINDS = {_core.OP_KINDS[name] for name in ("RectifiedMonomial", "Polynomial", "Hermite")}
_COST_BY_CODE = {_core.OP_KINDS[name]: cost for name, cost in _OP_COST.items()}

#: Most work (tile entries x op cost) in one default tile: ~0.1 s on one core at the rate above.
#: The engine polls for Ctrl-C and reports progress only between tiles, so this bounds their
#: latency. Depth-20 MLPs of the costliest kinds (20 x (1 + 40) + 1 = 821 units) still get the
#: full 384 x 384 tile (1.2e8 units), so shallow networks keep the tile tuned for speed.
TILE_WORK_BUDGET = 2e8


#: The same bound for the CUDA engine's default tile. A GPU runs the layer math some hundreds of
#: times faster than one core (an H100's FP64 vector peak, ~34 TFLOP/s, is ~500 times a Zen 4
#: core's ~60 GFLOP/s; 300 allows for a lower occupancy), so its tiles may hold that much more
#: work for the same latency. A depth-20 tanh MLP or a depth-170 ReLU MLP keeps the engine's
#: 8192 tile (``_cuda.DEVICE_TILE``).
GPU_TILE_WORK_BUDGET = 300 * TILE_WORK_BUDGET


def tile_work(ops):
    """Cost of one Gram entry through a lowered program (``_layers.lower``'s ops), in Dense ops."""
    return sum(4 + degree if kind in _DEGREE_COST_KINDS else _COST_BY_CODE.get(kind, 40)
               for kind, degree, _, _ in ops)


def default_tile(ops, n_features):
    """The CPU engine's tile edge for a program when the caller gives no tile_size.

    The engine's own default (``_core.default_tile``) bounds a tile's GEMM; deep programs also
    need a bound on a tile's layer work (``TILE_WORK_BUDGET``), or one tile of a depth-5000 MLP
    takes seconds and Ctrl-C waits for it. Small tiles cost little there: the layers dominate.
    """
    tile = _core.default_tile(n_features)
    fitting = work_bounded_edge(ops, TILE_WORK_BUDGET)
    if fitting >= tile:
        return tile
    # multiples of 16 (8 below 32) as the engine's default, for the vector kernels' widths
    return fitting // 16 * 16 if fitting >= 32 else max(1, fitting // 8 * 8 if fitting >= 8 else fitting)


def work_bounded_edge(ops, budget):
    """The largest tile edge whose entries' layer work (``tile_work``) stays within `budget`."""
    return math.isqrt(int(budget // max(tile_work(ops), 1)))


_programs = {}


def compiled_program(ops, pool):
    """The engine's program for a lowered network (``_layers.lower``), cached: building one
    validates every op and table in C++, so nothing unchecked reaches an engine."""
    key = (ops, pool)
    program = _programs.get(key)
    if program is None:
        program = _core.Program([(k, deg, off, list(p)) for k, deg, off, p in ops], list(pool))
        if len(_programs) > 256:
            _programs.clear()
        _programs[key] = program
    return program
