"""The BLAS the CPU engine's tile GEMMs call: SciPy's (``scipy.linalg.cython_blas``).

The engine receives the Fortran ``dgemm``/``sgemm`` entry points as capsules, so the extension
links no BLAS of its own and uses the one SciPy ships (OpenBLAS in PyPI wheels). The engine calls
it from its own OpenMP threads, one tile each, so during a call the library is limited to one
thread of its own (threadpoolctl) to avoid oversubscription.
"""
from __future__ import annotations

import contextlib
import os
import threading

from . import _core

_lock = threading.Lock()
_controller = None
# single_threaded() is re-entrant across threads: the first caller in limits the BLAS libraries,
# the last one out restores them. (Each caller saving and restoring on its own would restore out
# of order when two calls overlap and leave the process's BLAS at one thread for good.)
_limit_lock = threading.Lock()
_limit_users = 0
_limit_restore = None


def ensure_loaded():
    """Hand SciPy's gemm entry points to the engine (once)."""
    global _controller
    if _controller is not None:
        return
    with _lock:
        if _controller is not None:
            return
        try:
            from scipy.linalg import cython_blas
        except ImportError as error:  # pragma: no cover - scipy is a dependency
            raise ImportError("ntkfast needs SciPy for its BLAS (pip install scipy)") from error
        capsules = cython_blas.__pyx_capi__
        _core.set_blas(capsules["dgemm"], capsules["sgemm"])
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()


@contextlib.contextmanager
def single_threaded():
    """BLAS libraries run single-threaded inside (our OpenMP threads call it in parallel); the
    process's previous limits are back once the last overlapping caller has left."""
    global _limit_users, _limit_restore
    ensure_loaded()
    entered = False
    try:
        with _limit_lock:
            if _limit_users == 0:
                # the thread counts to restore, read before any is changed
                before = [(lib, lib.num_threads)
                          for lib in _controller.select(user_api="blas").lib_controllers]
                try:
                    _set_threads([(lib, 1) for lib, _ in before])
                except KeyboardInterrupt:
                    _set_threads(before)
                    raise
                _limit_restore = before
            _limit_users += 1
            entered = True
        yield
    finally:
        if entered:
            with _limit_lock:
                _limit_users -= 1
                if _limit_users == 0:
                    restore, _limit_restore = _limit_restore, None
                    _set_threads(restore)


def _set_threads(settings):
    """Set each (library, thread count), all of them even when Ctrl-C arrives in between: a
    half-restored state would be read as the original by the next call and kept for good. The
    KeyboardInterrupt is raised once every library is set."""
    interrupted = False
    for lib, threads in settings:
        while True:
            try:
                lib.set_num_threads(threads)
                break
            except KeyboardInterrupt:
                interrupted = True
    if interrupted:
        raise KeyboardInterrupt


def _after_fork_in_child():
    """A child forked while other threads of the parent were inside single_threaded(): those
    threads do not exist here, so nothing will ever restore the limit they set (the child's BLAS
    would stay at one thread for good), and a lock one of them held would stay held."""
    global _lock, _limit_lock, _limit_users, _limit_restore
    _lock, _limit_lock = threading.Lock(), threading.Lock()
    if _limit_users:
        _limit_users = 0
        restore, _limit_restore = _limit_restore, None
        _set_threads(restore)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def info():
    """Name, version and threading of SciPy's BLAS, for show_config()."""
    ensure_loaded()
    import scipy

    out = {"provider": "scipy.linalg.cython_blas"}
    try:
        deps = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        out["name"] = deps.get("name")
        out["version"] = deps.get("version")
    except Exception:  # noqa: BLE001 - informational only
        pass
    for lib in _controller.info():
        if lib.get("user_api") == "blas" and "scipy" in (lib.get("filepath") or "") \
                and "numpy" not in (lib.get("filepath") or ""):
            out.update(internal_api=lib.get("internal_api"), threading=lib.get("threading_layer"),
                       architecture=lib.get("architecture"), filepath=lib.get("filepath"))
            break
    return out
