"""What was built and what works here: ntkfast.show_config()."""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import sys

from . import _core
from ._cuda_probe import _build_config, cuda_unavailable_reason


__all__ = ["show_config", "get_config"]

# The oldest Linux driver each CUDA major release runs on (minor-version compatibility: code built
# with any CUDA 12.x runs on a CUDA 12.0 driver; NVIDIA's CUDA compatibility guide, table 2).
# Machine code (sm_80, sm_90) needs only that; the PTX in the module (compute_90, for GPUs newer
# than sm_90) is compiled by the driver, which must then know the nvcc release that wrote it.
_MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
_DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"


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
        when it is not, ``build``, ``architectures``, ``toolkit``: the nvcc release of the CUDA
        module, ``driver``: the NVIDIA driver it needs and the one found); ``blas`` (the BLAS of
        the tile GEMMs); ``build`` (``compiler``, ``cpu_kernel_variants`` compiled in,
        ``openmp`` and the ``openmp_runtime`` loaded, ``cuda``, ``build_type``, ``install``,
        ``wheel_tags`` and ``manylinux``: the policy of the wheel installed, when known).

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
    build = _build_facts()
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
            "toolkit": build["cuda"],
            "driver": dict(_driver_status(build["cuda"])),
        },
        "blas": _blas.info(),
        "build": build,
    }


def _build_facts():
    """What this installation was built with and how it was installed: get_config()["build"]."""
    fact = functools.partial(getattr, _build_config)
    variants = fact("CPU_KERNEL_VARIANTS", "")
    return {
        "compiler": fact("CXX_COMPILER", None),
        "cpu_kernel_variants": variants.split(";") if variants else [],
        "openmp": fact("OPENMP", None),
        "openmp_runtime": _openmp_runtime(),
        "cuda": fact("CUDA_VERSION", "") or None,
        "build_type": fact("BUILD_TYPE", None),
        **{key: list(value) if isinstance(value, tuple) else value  # copies of the cached facts
           for key, value in _wheel_facts().items()},
    }


@functools.lru_cache(maxsize=None)
def _wheel_facts():
    """The tags of the wheel this package was installed from and, for a manylinux wheel, the policy
    (the oldest glibc it runs on). ``None`` where unknown: a source tree, an editable install."""
    facts = {"wheel_tags": None, "manylinux": None, "install": "unknown"}
    try:
        dist = importlib.metadata.distribution("ntkfast")
        wheel = dist.read_text("WHEEL") or ""
        direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
        installed_init = pathlib.Path(dist.locate_file("ntkfast/__init__.py"))
        ours = installed_init.exists() and installed_init.samefile(pathlib.Path(__file__).with_name(
            "__init__.py"))
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError):
        return facts
    if direct_url.get("dir_info", {}).get("editable"):
        facts["install"] = "editable"
        return facts
    if not ours:  # e.g. a source tree on sys.path ahead of an installed copy
        facts["install"] = "not the installed distribution"
        return facts
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    facts.update(install="wheel", wheel_tags=tuple(tags), manylinux=_manylinux_policy(tags))
    return facts


def _manylinux_policy(tags):
    """'manylinux_2_28' for a wheel tagged ...-manylinux_2_28_x86_64 (PEP 600); of several
    policies the oldest glibc, where the wheel installs; None for a wheel that is not manylinux."""
    policies = sorted({(int(m[1]), int(m[2])) for tag in tags
                       for m in re.finditer(r"manylinux_(\d+)_(\d+)_", tag)})
    return "manylinux_%d_%d" % policies[0] if policies else None


def _openmp_runtime():
    """The file of the OpenMP runtime the CPU engine runs on (a wheel carries its own libgomp)."""
    if not _core.build_info()["openmp"]:
        return None
    try:
        from threadpoolctl import threadpool_info

        paths = [lib["filepath"] for lib in threadpool_info() if lib.get("user_api") == "openmp"]
    except Exception:  # threadpoolctl could not inspect this process: not worth failing over
        return None
    package = pathlib.Path(__file__).resolve().parent
    own = [p for p in paths
           if pathlib.Path(p).resolve().parent.name in ("ntkfast.libs", package.name)]
    return (own or paths or [None])[0]


@functools.lru_cache(maxsize=None)
def _driver_status(toolkit):
    """The NVIDIA driver the CUDA module (built by nvcc release `toolkit`) needs; the one found."""
    status = dict.fromkeys(("required_cuda", "required_driver", "ptx_cuda", "found", "found_cuda"))
    if toolkit:
        major, minor = (int(part) for part in toolkit.split(".")[:2])
        status.update(required_cuda=f"{major}.0", required_driver=_MIN_DRIVER.get(major),
                      ptx_cuda=f"{major}.{minor}")
        try:
            from . import _cuda

            found = _cuda.driver_version()  # 0 without a driver (it opens libcuda.so.1 if present)
        except ImportError:
            found = 0
        if found:
            status["found_cuda"] = f"{found // 1000}.{found % 1000 // 10}"
    try:  # the kernel module's release: "NVRM version: NVIDIA UNIX ... Module  550.54.14 ..."
        text = pathlib.Path(_DRIVER_VERSION_FILE).read_text()
        match = re.search(r"Module\s+(\d+\.\d+(?:\.\d+)?)", text)
        status["found"] = match.group(1) if match else None
    except OSError:
        pass
    return status


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
    cpu, cuda, blas, build = cfg["cpu"], cfg["cuda"], cfg["blas"], cfg["build"]
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
        if cuda["toolkit"]:
            lines.append(f"        module: {cuda['build']}; architectures {cuda['architectures']}")
    if cuda["toolkit"]:
        driver = cuda["driver"]
        found = "none (no NVIDIA driver)"
        if driver["found_cuda"] or driver["found"]:
            found = " ".join(filter(None, [driver["found"], driver["found_cuda"] and
                                           f"(CUDA {driver['found_cuda']})"]))
        lines.append(f"        driver: needs CUDA >= {driver['required_cuda']} (driver >= "
                     f"{driver['required_driver'] or '?'}; CUDA >= {driver['ptx_cuda']} to compile "
                     f"the PTX for GPUs newer than sm_90); found: {found}")
    blas_name = " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k))
    extra = ", ".join(f"{k} {blas[k]}" for k in ("threading", "architecture") if blas.get(k))
    wheel = {"wheel": ", ".join(build["wheel_tags"] or ["?"]),
             "editable": "an editable install", "unknown": "not an installed distribution"}.get(
                 build["install"], build["install"])
    if build["manylinux"]:
        glibc = build["manylinux"].split("_", 1)[1].replace("_", ".")
        wheel += f" ({build['manylinux']}: glibc >= {glibc})"
    lines += [
        "blas (tile GEMMs):",
        f"  {blas_name or 'unknown'} via {blas['provider']}" + (f" ({extra})" if extra else ""),
        "build:",
        f"  installed from: {wheel}",
        f"  compiler: {cpu['compiler']}; CPU kernels compiled: "
        f"{', '.join(build['cpu_kernel_variants']) or '?'} (one picked at run time)",
        f"  OpenMP: {build['openmp'] or '?'}" + (f", runtime {build['openmp_runtime']}"
                                               if build["openmp_runtime"] else ""),
        f"  CUDA: {build['cuda'] or 'not built'}",
    ]
    print("\n".join(lines), file=file or sys.stdout)
