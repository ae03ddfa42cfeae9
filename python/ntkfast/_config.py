"""What was built and what works here: ntkfast.show_config()."""
from __future__ import annotations

import os
import platform
import sys

from . import _core

try:  # written by CMake at build time
    from . import _build_config
except ImportError:  # pragma: no cover - a source tree without a build
    _build_config = None

__all__ = ["show_config", "get_config", "cuda_unavailable_reason"]


def _apply_dispatch_override():
    """NTKFAST_CPU_DISPATCH=generic|avx2|avx512 forces a CPU kernel variant (testing, benchmarks)."""
    name = os.environ.get("NTKFAST_CPU_DISPATCH")
    if name:
        try:
            _core.select_cpu_kernels(name)
        except ValueError as error:
            raise ImportError(f"NTKFAST_CPU_DISPATCH={name!r}: {error}") from None


_apply_dispatch_override()


def cuda_unavailable_reason():
    """None if the CUDA backend can run here, else why not (recorded, never raised)."""
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
    from . import _cuda_backend

    return _cuda_backend.device_problem()


def get_config():
    """The build and run-time configuration as a dict (what show_config prints)."""
    import numpy
    import scipy

    from . import __version__, _blas

    info = _core.build_info()
    cuda_reason = cuda_unavailable_reason()
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "cpu": {
            "available": True,
            "openmp": info["openmp"],
            "threads": info["max_threads"],
            "kernels": info["cpu_kernels"],
            "lanes": info["cpu_kernel_lanes"],
            "supported_kernels": info["supported_cpu_kernels"],
            "cpu_features": info["cpu_features"],
            "compiler": info["compiler"],
        },
        "cuda": {
            "available": cuda_reason is None,
            "reason": cuda_reason,
            "build": getattr(_build_config, "CUDA_STATUS", None),
            "architectures": getattr(_build_config, "CUDA_ARCHITECTURES", None),
        },
        "blas": _blas.info(),
    }


def show_config(file=None):
    """Print the version, the backends built and available (with the reason when one is not),
    OpenMP threads, the SIMD level of the CPU kernels and the BLAS used."""
    cfg = get_config()
    cpu, cuda, blas = cfg["cpu"], cfg["cuda"], cfg["blas"]
    lines = [
        f"ntkfast {cfg['version']}",
        f"  python {cfg['python']}, numpy {cfg['numpy']}, scipy {cfg['scipy']} ({cfg['platform']})",
        "backends:",
        f"  cpu:  available; OpenMP {'on' if cpu['openmp'] else 'off'}, {cpu['threads']} thread(s); "
        f"SIMD kernels '{cpu['kernels']}' ({cpu['lanes']} doubles per vector; this CPU supports "
        f"{', '.join(cpu['supported_kernels'])}; features: {cpu['cpu_features']})",
    ]
    if cuda["available"]:
        lines.append(f"  cuda: available ({cuda['build']}; architectures {cuda['architectures']})")
    else:
        lines.append(f"  cuda: unavailable: {cuda['reason']}")
    blas_name = " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k))
    extra = ", ".join(f"{k} {blas[k]}" for k in ("threading", "architecture") if blas.get(k))
    lines += [
        "blas (tile GEMMs):",
        f"  {blas_name or 'unknown'} via {blas['provider']}" + (f" ({extra})" if extra else ""),
        f"compiler: {cpu['compiler']}",
    ]
    print("\n".join(lines), file=file or sys.stdout)
