"""The CUDA backend where no GPU is needed: the extension module is built when a toolkit is
present, imports without a GPU, packs programs in the engine's layout, exposes a narrow API, and
`import ntkfast` loads neither CuPy nor any CUDA library. (The engine's host logic:
tests/test_cuda_driver.py; on a GPU: tests/test_cuda.py.)"""
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import pytest

import ntkfast as nf
from ntkfast import _build_config


def _toolkit_present():
    return shutil.which("nvcc") is not None or os.environ.get("CUDACXX") or os.path.exists(
        "/usr/local/cuda/bin/nvcc")


def _cuda_module():
    status = _build_config.CUDA_STATUS
    if not status.startswith("built"):
        pytest.skip(f"the CUDA extension is not part of this build ({status})")
    from ntkfast import _cuda

    return _cuda


_IMPORT_CHECK = textwrap.dedent("""
    import sys
    import numpy as np
    import ntkfast
    ntkfast.gram(np.eye(3), net=ntkfast.MLP(1))
    ntkfast.diagonal(np.eye(3), net=ntkfast.MLP(1))
    mapped = open("/proc/self/maps").read()
    loaded = sorted({m for m in ("cupy", "ntkfast._cuda", "ntkfast._cuda_backend") if m in sys.modules})
    libs = sorted({lib for lib in ("libcudart", "libcuda.so", "libcublas", "libnvrtc") if lib in mapped})
    print(loaded, libs)
""")


def test_import_loads_neither_cupy_nor_cuda():
    proc = subprocess.run([sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] []", proc.stdout


def test_cuda_extension_built_when_toolkit_present():
    status = _build_config.CUDA_STATUS
    if "NTKFAST_CUDA=OFF" in status:
        pytest.skip(f"built with NTKFAST_CUDA=OFF ({status})")
    if not _toolkit_present():
        pytest.skip("no CUDA toolkit (nvcc) on this machine")
    assert status.startswith("built"), status
    from ntkfast import _cuda

    info = _cuda.build_info()
    archs = info["architectures"].split(",")
    assert archs == _build_config.CUDA_ARCHITECTURES.split(";")
    assert "80-real" in archs and any(a.startswith("90") for a in archs)
    assert all(a != "native" for a in archs)
    assert info["runtime"] == "static" and info["runtime_version"] >= 12000


def test_show_config_reports_cuda():
    cfg = nf.get_config()["cuda"]
    if cfg["available"]:
        assert cfg["reason"] is None
        return
    # the reason is recorded, never raised, and show_config prints it
    assert isinstance(cfg["reason"], str) and cfg["reason"]
    from io import StringIO

    text = StringIO()
    nf.show_config(file=text)
    assert f"cuda: unavailable: {cfg['reason']}" in text.getvalue()


def test_probe_without_gpu_returns_a_reason():
    _cuda = _cuda_module()
    from ntkfast import _cuda_probe

    problem = _cuda_probe.device_problem()
    if problem is None:
        pytest.skip("a usable CUDA GPU is present")
    reason = _cuda.probe(0)  # must not crash or abort without a driver / device
    assert isinstance(reason, str)
    assert isinstance(_cuda.driver_version(), int)


def test_pack_program_layout():
    """program.hpp's LayerOp: int32 kind, degree, offset, reserved, then 6 float64 parameters."""
    _cuda = _cuda_module()
    packed = _cuda.pack_program([(0, 0, 0, [2.25, 0.01, 0.0, 0.0, 1.0]), (12, 3, 7, [0.5])])
    assert len(packed) == 2 * 64
    assert struct.unpack("<iiii6d", packed[:64]) == (0, 0, 0, 0, 2.25, 0.01, 0.0, 0.0, 1.0, 0.0)
    assert struct.unpack("<iiii6d", packed[64:]) == (12, 3, 7, 0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert _cuda.pack_program([]) == b""
    with pytest.raises(ValueError, match="at most 6"):
        _cuda.pack_program([(0, 0, 0, [0.0] * 7)])
    with pytest.raises(ValueError, match="unknown kind"):
        _cuda.pack_program([(99, 0, 0, [])])


def test_python_facing_api_is_narrow():
    """One plan class and a few queries; no raw-pointer kernel entry points (the tile loop is C++).
    Its arguments are checked before any CUDA call: test_cuda_driver.py."""
    _cuda = _cuda_module()
    public = {name for name in dir(_cuda) if not name.startswith("_")}
    assert public == {"GramPlan", "Cancelled", "DEVICE_TILE", "STAGING_SLOT_BYTES", "build_info",
                      "choose_tile", "device_name", "driver_version", "max_tile_rows", "pack_program", "probe"}
    assert issubclass(_cuda.Cancelled, KeyboardInterrupt)
    assert _cuda.DEVICE_TILE == 8192 and _cuda.STAGING_SLOT_BYTES == 256 << 20
