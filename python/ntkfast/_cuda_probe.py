"""Can the CUDA backend run here? Probed once per process and cached; importing this module
imports neither CuPy nor the CUDA extension."""
from __future__ import annotations

import functools

from ._errors import BackendUnavailableError

__all__ = ["cuda_unavailable_reason", "require_backend", "device_problem"]

try:  # written by CMake at build time
    from . import _build_config
except ImportError:  # pragma: no cover - a source tree without a build
    _build_config = None


@functools.lru_cache(maxsize=None)
def cuda_unavailable_reason():
    """None if the CUDA backend can run here, else why not. Probed once per process (importing
    CuPy and asking the driver take up to seconds); ``cuda_unavailable_reason.cache_clear()``
    probes again."""
    status = getattr(_build_config, "CUDA_STATUS", "unknown build")
    try:
        from . import _cuda  # noqa: F401 - the compiled CUDA engine
    except ImportError as error:
        if status.startswith("built"):
            return f"the CUDA extension failed to load: {error}"
        return f"the CUDA engine was not built ({status})"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed (pip install 'ntkfast[cuda]')"
    except Exception as error:  # a broken CuPy installation must not break show_config()
        return f"CuPy failed to import: {type(error).__name__}: {error}"
    return device_problem()


def device_problem():
    """None if the CUDA backend can run on the current CUDA device, else a short reason."""
    try:
        from . import _cuda
    except ImportError as error:
        return f"the CUDA extension failed to load: {error}"
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install 'ntkfast[cuda]')"
    except Exception as error:  # a broken CuPy installation (missing CUDA libraries, ...)
        return f"CuPy failed to import: {type(error).__name__}: {error}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        device = cupy.cuda.runtime.getDevice() if count else None
    except cupy.cuda.runtime.CUDARuntimeError as error:
        return f"no usable CUDA device (CuPy: {error})"
    if not count:
        return "no CUDA device"
    return _cuda.probe(device) or None


def require_backend(name):
    """BackendUnavailableError (saying why) if backend `name` ('cpu' or 'cuda') cannot run here."""
    if name == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"the CUDA backend is not available: {reason}")
