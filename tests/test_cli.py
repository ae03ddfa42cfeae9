"""The ntkfast command line (run as a user would, in a subprocess)."""
import subprocess
import sys

import numpy as np
import pytest

import ntkfast as nf


def _run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "ntkfast", *args], capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_gram_symmetric_both_kernels(tmp_path, rng):
    x = rng.standard_normal((40, 6))
    np.save(tmp_path / "x.npy", x)
    proc = _run("gram", str(tmp_path / "x.npy"), "--depth", "3", "--activation", "relu",
                "--W-std", "1.5", "--b-std", "0.05", "-o", str(tmp_path / "K.npy"))
    assert "K.ntk.npy" in proc.stdout
    want = nf.gram(x, net=nf.MLP(3, "relu", W_std=1.5, b_std=0.05))
    assert np.array_equal(np.load(tmp_path / "K.nngp.npy"), want.nngp)
    assert np.array_equal(np.load(tmp_path / "K.ntk.npy"), want.ntk)


def test_gram_cross_float32_single_kernel_with_params(tmp_path, rng):
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((20, 5))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    _run("gram", str(tmp_path / "x.npy"), "--x2", str(tmp_path / "y.npy"), "--depth", "2",
         "--activation", "leaky_relu", "--param", "alpha=0.2", "--get", "ntk", "--dtype", "float32",
         "-o", str(tmp_path / "out" / "K.npy"))
    got = np.load(tmp_path / "out" / "K.npy")
    want = nf.gram(x, y, net=nf.MLP(2, "leaky_relu", alpha=0.2), get="ntk", dtype=np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_errors_are_messages_not_tracebacks(tmp_path):
    proc = _run("gram", str(tmp_path / "missing.npy"), "-o", str(tmp_path / "K.npy"), check=False)
    assert proc.returncode == 2  # bad input: exit status 2, as for argparse's usage errors
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    proc = _run("gram", str(tmp_path / "x.npy"), "--activation", "softsign", "-o",
                str(tmp_path / "K.npy"), check=False)
    assert proc.returncode == 2 and "unknown activation 'softsign'" in proc.stderr
    proc = _run("gram", str(tmp_path / "x.npy"), check=False)
    assert proc.returncode == 2 and "-o" in proc.stderr


def test_info():
    proc = _run("info")
    assert f"ntkfast {nf.__version__}" in proc.stdout
    assert "cpu:" in proc.stdout and "cuda:" in proc.stdout and "blas" in proc.stdout


def test_generated_inputs(tmp_path):
    proc = _run("gram", "random:50x7", "--depth", "2", "--get", "nngp", "-o", str(tmp_path / "K.npy"))
    assert "50 x 50" in proc.stdout
    x = np.random.default_rng(0).standard_normal((50, 7))
    assert np.array_equal(np.load(tmp_path / "K.npy"), nf.gram(x, net=nf.MLP(2), get="nngp"))
    proc = _run("gram", "random:5by7", "-o", str(tmp_path / "K.npy"), check=False)
    assert proc.returncode == 2 and "random:NxD" in proc.stderr


def test_version_is_single_sourced():
    """The installed distribution's version is __version__ (pyproject.toml reads it from
    python/ntkfast/__init__.py with scikit-build-core's regex provider; no second copy)."""
    import importlib.metadata
    import pathlib

    assert importlib.metadata.version("ntkfast") == nf.__version__
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not run from a source checkout")
    config = tomllib.loads(pyproject.read_text())
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    provider = config["tool"]["scikit-build"]["metadata"]["version"]
    assert provider == {"provider": "scikit_build_core.metadata.regex",
                        "input": "python/ntkfast/__init__.py"}
