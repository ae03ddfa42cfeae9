"""What was built and what works here: ntkfast.show_config()."""
from __future__ import annotations

import os
import platform
import sys

from . import _core
from ._cuda_probe import _build_config, cuda_unavailable_reason


__all__ = ["show_config", "get_config"]


def _apply_dispatch_override():
    """NTKFAST_CPU_DISPATCH=generic|avx2|avx512 forces a CPU kernel variant (testing, benchmarks)."""
    name = os.environ.get("NTKFAST_CPU_DISPATCH")
    if name:
        try:
            _core.select_cpu_kernels(name)
        except ValueError as error:
            raise ImportError(f"NTKFAST_CPU_DISPATCH={name!r}: {error}") from None


_apply_dispatch_override()


def get_config():
    """The build and run-time configuration as a dict (what :func:`show_config` prints).

    Returns
    -------
    dict
        ``version``, ``python``, ``platform``, ``numpy``, ``scipy``; ``cpu`` (``openmp``,
        ``threads``, ``kernels``: the SIMD variant in use, ``supported_kernels``,
        ``cpu_features``, ``compiler``, ``forked_child``); ``cuda`` (``available``, ``reason``
        when it is not, ``build``, ``architectures``); ``blas`` (the BLAS of the tile GEMMs).

    Examples
    --------
    >>> import ntkfast
    >>> config = ntkfast.get_config()
    >>> config["version"] == ntkfast.__version__, config["cpu"]["available"]
    (True, True)
    """
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
            "forked_child": _core.in_forked_child(),
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
    OpenMP threads, the SIMD level of the CPU kernels and the BLAS used.

    The same as ``ntkfast info`` on the command line; :func:`get_config` returns it as a dict.

    Parameters
    ----------
    file : file-like, optional
        Where to print (default ``sys.stdout``).

    Examples
    --------
    >>> import io, ntkfast
    >>> text = io.StringIO()
    >>> ntkfast.show_config(file=text)
    >>> text.getvalue().splitlines()[0] == f"ntkfast {ntkfast.__version__}"
    True
    """
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
    if cpu["forked_child"]:
        lines.append("        (a child made by fork after the parent used OpenMP: 1 thread)")
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
