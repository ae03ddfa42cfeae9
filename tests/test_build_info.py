"""What a build says about itself, and the release configuration: the type stubs match the
compiled modules, one version everywhere, the build facts of show_config() / `ntkfast info`
(compiler, CPU kernel variants, OpenMP, CUDA and the driver it needs, the wheel's manylinux
policy), and pyproject.toml's cibuildwheel settings (checked without containers).

CI's wheel step and cibuildwheel (test-environment) set NTKFAST_TEST_EXPECT_CUDA_MAJOR (the CUDA
major release the GPU module was compiled with) and NTKFAST_TEST_EXPECT_MANYLINUX (the newest
manylinux policy the wheel may have), so that the installed wheel is checked against what was
built, not only for consistency."""
import ast
import builtins
import importlib.metadata
import io
import json
import os
import pathlib
import platform
import re
import subprocess
import sys

import pytest

import ntkfast as nf
from ntkfast import _build_config, _config, _core

PACKAGE = pathlib.Path(nf.__file__).resolve().parent
PYPROJECT = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"


# ---------------------------------------------------------------------------------------------
# The stubs (_core.pyi, _cuda.pyi) against the modules pybind11 built

def _split_top_level(text):
    """Split a parameter list at commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "[(" and 1 or (ch in "])" and -1 or 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _runtime_signatures(obj, name):
    """[(param, keyword_only), ...] per overload, from pybind11's docstring signatures."""
    signatures = []
    for line in (obj.__doc__ or "").splitlines():
        match = re.match(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\) -> ", line.strip())
        if not match:
            continue
        params, keyword_only = [], False
        for part in _split_top_level(match.group(1)):
            if part == "*":
                keyword_only = True
            elif part != "/":
                params.append((part.split(":")[0].split("=")[0].strip(), keyword_only))
        signatures.append([p for p in params if p[0] != "self"])
    return signatures


def _stub_signature(node):
    args = node.args
    params = [(a.arg, False) for a in args.posonlyargs + args.args]
    params += [(a.arg, True) for a in args.kwonlyargs]
    return [p for p in params if p[0] != "self"]


def _stub_members(body):
    """name -> list of FunctionDef (overloads in order), ClassDef, or 'attribute'."""
    members = {}
    for node in body:
        if isinstance(node, ast.FunctionDef):
            members.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.ClassDef):
            members[node.name] = node
        elif isinstance(node, ast.AnnAssign):
            members[node.target.id] = "attribute"
        elif isinstance(node, ast.Assign):  # private type aliases (_F64 = ...)
            members.update({t.id: "alias" for t in node.targets})
    return members


def _check_functions(stub, runtime, where):
    problems = []
    for name, member in stub.items():
        if not isinstance(member, list):
            continue
        obj = getattr(runtime, name, None)
        if obj is None or isinstance(obj, property):
            continue
        expected = _runtime_signatures(obj, name)
        got = [_stub_signature(f) for f in member]
        if expected and got != expected:
            problems.append(f"{where}.{name}: stub {got} != module {expected}")
    return problems


def _compare_stub(module, stub_path):
    tree = ast.parse(stub_path.read_text())
    stub = _stub_members(tree.body)
    public_stub = {n for n, m in stub.items() if m != "alias" and (not n.startswith("__")
                                                                   or n == "__version__")}
    public_runtime = {n for n in dir(module) if not n.startswith("__") or n == "__version__"}
    if not hasattr(module, "__version__"):
        public_stub.discard("__version__")
    problems = []
    if public_stub != public_runtime:
        problems.append(f"only in the stub: {sorted(public_stub - public_runtime)}; only in the "
                        f"module: {sorted(public_runtime - public_stub)}")
    problems += _check_functions(stub, module, module.__name__)
    for name, node in stub.items():
        if not isinstance(node, ast.ClassDef) or not hasattr(module, name):
            continue
        cls = getattr(module, name)
        bases = [getattr(builtins, ast.unparse(b), None) for b in node.bases]
        if not all(base is not None and issubclass(cls, base) for base in bases):
            problems.append(f"{name}: stub bases {[ast.unparse(b) for b in node.bases]} do not "
                            f"match {cls.__mro__}")
        members = _stub_members(node.body)
        runtime_members = {n for n in vars(cls) if not n.startswith("_")}
        stub_public = {n for n in members if not n.startswith("_")}
        if not issubclass(cls, BaseException) and stub_public != runtime_members:
            problems.append(f"{name}: stub members {sorted(stub_public)} != module "
                            f"{sorted(runtime_members)}")
        problems += _check_functions(members, cls, f"{module.__name__}.{name}")
    return problems


def test_core_stub_matches_the_module():
    stub = PACKAGE / "_core.pyi"
    assert stub.is_file(), "python/ntkfast/_core.pyi is not installed with the package"
    assert (PACKAGE / "py.typed").is_file()
    problems = _compare_stub(_core, stub)
    assert not problems, "\n".join(problems)


def test_cuda_stub_matches_the_module():
    if not _build_config.CUDA_STATUS.startswith("built"):
        pytest.skip(f"the CUDA module is not part of this build ({_build_config.CUDA_STATUS})")
    from ntkfast import _cuda

    problems = _compare_stub(_cuda, PACKAGE / "_cuda.pyi")
    assert not problems, "\n".join(problems)


def test_stub_checker_finds_a_mismatch(tmp_path):
    """The comparison is not vacuous: a renamed parameter and a missing function are reported."""
    text = (PACKAGE / "_core.pyi").read_text()
    bad = tmp_path / "_core.pyi"
    bad.write_text(text.replace("def default_tile(n_features: int)", "def default_tile(n: int)")
                   .replace("def in_forked_child() -> bool:", "def _gone() -> bool:"))
    problems = "\n".join(_compare_stub(_core, bad))
    assert "default_tile" in problems and "in_forked_child" in problems


# ---------------------------------------------------------------------------------------------
# One version

def test_one_version_everywhere():
    """pyproject.toml takes the version from python/ntkfast/__init__.py; CMake receives it from
    scikit-build-core and compiles it into _core; the generated _build_config records it."""
    assert _core.__version__ == nf.__version__ == _build_config.VERSION
    assert importlib.metadata.version("ntkfast") == nf.__version__


# ---------------------------------------------------------------------------------------------
# Build facts: get_config()["build"], show_config(), `ntkfast info`

def test_build_facts():
    build = nf.get_config()["build"]
    assert build["compiler"] and build["build_type"] == "Release"
    variants = build["cpu_kernel_variants"]
    assert variants[0] == "generic"
    if platform.machine() in ("x86_64", "AMD64"):
        # the run-time dispatched x86 variants are in the one module, whatever this CPU has
        assert variants == ["generic", "avx2", "avx512"]
    assert set(_core.build_info()["supported_cpu_kernels"]) <= set(variants)
    if _core.build_info()["openmp"]:
        assert build["openmp"].startswith("OpenMP ")
        if build["openmp_runtime"] is not None:
            assert pathlib.Path(build["openmp_runtime"]).exists()
    assert build["install"] in ("wheel", "editable", "not the installed distribution", "unknown")


def test_expected_build_from_ci():
    """The wheel CI built: its CUDA major release and its manylinux policy (set by .ci/run)."""
    major = os.environ.get("NTKFAST_TEST_EXPECT_CUDA_MAJOR")
    policy = os.environ.get("NTKFAST_TEST_EXPECT_MANYLINUX")
    if not major and not policy:
        pytest.skip("not CI's wheel check (NTKFAST_TEST_EXPECT_* unset)")
    cfg = nf.get_config()
    if major:
        assert cfg["build"]["cuda"].split(".")[0] == major, cfg["build"]
        from ntkfast import _cuda  # never an import error, GPU or not

        assert _cuda.build_info()["toolkit"] == cfg["build"]["cuda"]
        assert _cuda.build_info()["runtime"] == "static"
        driver = cfg["cuda"]["driver"]
        assert driver["required_cuda"] == f"{major}.0"
        assert driver["required_driver"] == _config._MIN_DRIVER[int(major)]
    if policy:  # this policy or an older one (a lower glibc floor)
        assert cfg["build"]["install"] == "wheel"
        installed = cfg["build"]["manylinux"]
        assert installed, cfg["build"]["wheel_tags"]
        assert _glibc(installed) <= _glibc(policy), (installed, policy)


def _glibc(policy):
    return tuple(int(part) for part in policy.split("_")[1:3])


@pytest.mark.parametrize("tags, policy", [
    (["cp311-cp311-manylinux_2_28_x86_64"], "manylinux_2_28"),
    (["cp312-cp312-manylinux_2_17_x86_64", "cp312-cp312-manylinux2014_x86_64"], "manylinux_2_17"),
    (["cp310-cp310-manylinux_2_34_aarch64", "cp310-cp310-manylinux_2_28_aarch64"],
     "manylinux_2_28"),
    (["cp311-cp311-linux_x86_64"], None),
    (["cp311-cp311-musllinux_1_2_x86_64"], None),
])
def test_manylinux_policy_from_wheel_tags(tags, policy):
    assert _config._manylinux_policy(tags) == policy


def _driver_status(monkeypatch, tmp_path, toolkit, proc_text=None, cuda_driver=0):
    version_file = tmp_path / "version"
    if proc_text is not None:
        version_file.write_text(proc_text)
    monkeypatch.setattr(_config, "_DRIVER_VERSION_FILE", str(version_file))

    class FakeCuda:
        @staticmethod
        def driver_version():
            return cuda_driver

    monkeypatch.setitem(sys.modules, "ntkfast._cuda", FakeCuda)
    monkeypatch.setattr(nf, "_cuda", FakeCuda, raising=False)
    return _config._driver_status.__wrapped__(toolkit)


def test_driver_needed_and_found(monkeypatch, tmp_path):
    status = _driver_status(monkeypatch, tmp_path, "12.4.131")
    assert status == {"required_cuda": "12.0", "required_driver": "525.60.13", "ptx_cuda": "12.4",
                      "found": None, "found_cuda": None}
    proc = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC "
            "2023\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    status = _driver_status(monkeypatch, tmp_path, "12.4.131", proc, cuda_driver=12020)
    assert status["found"] == "535.104.05" and status["found_cuda"] == "12.2"
    status = _driver_status(monkeypatch, tmp_path, "13.0.88", proc.replace("Kernel", "Open Kernel"),
                            cuda_driver=13000)
    assert status["required_cuda"] == "13.0" and status["required_driver"] == "580.65.06"
    assert status["found"] == "535.104.05" and status["found_cuda"] == "13.0"


def test_show_config_reports_build_and_gpu():
    """The GPU module's CUDA version, the driver it needs and the one found, and, without a
    usable GPU, the reason -- printed, never raised."""
    cfg = nf.get_config()
    text = io.StringIO()
    nf.show_config(file=text)
    out = text.getvalue()
    build = cfg["build"]
    assert "build:" in out and "installed from: " in out
    assert f"CPU kernels compiled: {', '.join(build['cpu_kernel_variants'])}" in out
    assert f"OpenMP: {build['openmp']}" in out
    if build["manylinux"]:
        glibc = build["manylinux"][len("manylinux_"):].replace("_", ".")
        assert f"({build['manylinux']}: glibc >= {glibc})" in out
    cuda = cfg["cuda"]
    if not cuda["toolkit"]:
        assert "CUDA: not built" in out
        return
    assert f"CUDA: {cuda['toolkit']}" in out
    driver = cuda["driver"]
    assert (f"driver: needs CUDA >= {driver['required_cuda']} (driver >= "
            f"{driver['required_driver']}; CUDA >= {driver['ptx_cuda']}") in out
    if not cuda["available"]:
        assert f"cuda: unavailable: {cuda['reason']}" in out
        if not (driver["found"] or driver["found_cuda"]):
            assert "found: none (no NVIDIA driver)" in out


def _run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "ntkfast", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_ntkfast_info_prints_the_build_facts():
    out = _run_cli("info")
    for text in ("build:", "installed from:", "compiler:", "CPU kernels compiled:", "OpenMP:",
                 "CUDA:"):
        assert text in out, out
    cfg = json.loads(_run_cli("info", "--json"))
    assert cfg["version"] == nf.__version__
    assert cfg["build"]["cpu_kernel_variants"] == nf.get_config()["build"]["cpu_kernel_variants"]
    assert set(cfg["cuda"]) >= {"available", "reason", "toolkit", "driver"}


# ---------------------------------------------------------------------------------------------
# The release configuration (pyproject.toml's [tool.cibuildwheel]), without containers

def _pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    if not PYPROJECT.is_file():
        pytest.skip("no pyproject.toml beside the tests")
    return tomllib.loads(PYPROJECT.read_text())


def test_cibuildwheel_configuration():
    config = _pyproject()
    cibw = config["tool"]["cibuildwheel"]
    assert cibw["build"] == ["cp310-*", "cp311-*", "cp312-*", "cp313-*"]
    assert "*-musllinux_*" in cibw["skip"]
    assert cibw["manylinux-x86_64-image"] == cibw["manylinux-aarch64-image"] == "manylinux_2_28"
    assert cibw["config-settings"]["cmake.define.NTKFAST_CUDA"] == "ON"
    assert "test" in cibw["test-extras"] and "pytest" in cibw["test-command"]
    assert "tests" in cibw["test-sources"]
    assert cibw["test-environment"] == {"NTKFAST_TEST_EXPECT_CUDA_MAJOR": "12",
                                        "NTKFAST_TEST_EXPECT_MANYLINUX": "manylinux_2_28"}
    linux = cibw["linux"]
    assert linux["archs"] == ["x86_64", "aarch64"]
    # the CUDA release installed in the image is the one CUDACXX points at, a CUDA 12
    packages = re.findall(r"cuda-nvcc-(\d+)-(\d+)", " ".join(linux["before-all"]))
    assert len(set(packages)) == 1, linux["before-all"]
    major, minor = packages[0]
    assert major == "12"
    assert linux["environment"]["CUDACXX"] == f"/usr/local/cuda-{major}.{minor}/bin/nvcc"
    assert f"cuda-cudart-devel-{major}-{minor}" in " ".join(linux["before-all"])
    # the cuda extra's CuPy is built for the same CUDA major release as the module
    cuda_extra = config["project"]["optional-dependencies"]["cuda"]
    assert any(req.startswith(f"cupy-cuda{major}x") for req in cuda_extra), cuda_extra
    # never a host-specific CPU or CUDA target in what ships
    assert "native" not in PYPROJECT.read_text().replace("-march=native", "")
    archs = config["tool"]["scikit-build"].get("cmake", {}).get("define", {}).get(
        "NTKFAST_CUDA_ARCHITECTURES", "80-real;90-real;90-virtual")
    assert "native" not in archs and "all" not in archs
