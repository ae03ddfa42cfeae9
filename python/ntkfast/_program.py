"""Networks lowered and compiled for the engines (shared by every backend)."""
from __future__ import annotations

from . import _core

__all__ = ["compiled_program"]

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
