"""Shared fixtures: the neural-tangents reference data (skipped cleanly when absent)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))


def reference_dir():
    """The neural-tangents reference outputs: $NTKFAST_REFERENCE_DIR if set, else the copy
    shipped in tests/data/nt_reference (of ../shared/reference, 1.5 MB, so that every clone
    runs these tests), else shared/reference next to the repository; None if none exists."""
    env = os.environ.get("NTKFAST_REFERENCE_DIR")
    candidates = [pathlib.Path(env)] if env else []
    candidates.append(pathlib.Path(__file__).resolve().parent / "data" / "nt_reference")
    candidates.append(pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference")
    for path in candidates:
        if (path / "kernels.npz").is_file():
            return path
    return None


@pytest.fixture(scope="session")
def reference():
    path = reference_dir()
    if path is None:
        pytest.skip("neural-tangents reference data not found (../shared/reference or "
                    "$NTKFAST_REFERENCE_DIR); the oracle tests still run")
    return path


@pytest.fixture(scope="session")
def kernel_reference(reference):
    meta = json.loads((reference / "kernels.json").read_text())
    arrays = np.load(reference / "kernels.npz")
    return meta, {k: arrays[k] for k in arrays.files}


@pytest.fixture(scope="session")
def dynamics_reference(reference):
    meta = json.loads((reference / "dynamics.json").read_text())
    arrays = np.load(reference / "dynamics.npz")
    return meta, {k: arrays[k] for k in arrays.files}


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


class _Backend:
    """How a test hands arrays to one backend and reads them back (see the `backend` fixture)."""

    def __init__(self, name):
        self.name = name
        if name == "cuda":
            import cupy

            self.xp = cupy
        else:
            self.xp = np

    def asarray(self, a):
        return a if a is None else self.xp.asarray(a)

    def asnumpy(self, a):
        return a.get() if self.name == "cuda" else np.asarray(a)


@pytest.fixture(params=["cpu", "cuda"])
def backend(request):
    """Runs a test once on the CPU engine and once on the CUDA engine (CuPy arrays in and out);
    the CUDA run is skipped, saying why, where there is no usable GPU."""
    if request.param == "cuda":
        import ntkfast

        reason = ntkfast._cuda_probe.cuda_unavailable_reason()
        if reason is not None:
            pytest.skip(f"CUDA backend unavailable: {reason}")
    return _Backend(request.param)


def interrupt_script(script, after=1.0, timeout=60):
    """Runs ``python -c script``, waits for the line 'started', sends SIGINT ``after`` seconds
    later; returns (return code, stdout, stderr, seconds from the signal to the exit)."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(after)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err, time.perf_counter() - sent
    finally:
        if proc.poll() is None:
            proc.kill()


def near_parallel_points(rng, n, kinked, d=9, scale=3.0):
    """Random rows at large variances (few Hermite terms reach the tolerance: the series
    fallback) with a duplicate and near-parallel pairs. Exactly parallel rows of unequal norms
    only for smooth activations: for a kinked one the NTK at |ρ| = 1 - δ moves by ~√δ (the kink
    smoothed at s = √(1 - ρ²)), so whether rounding leaves ρ at 1 or at 1 - 1e-16 after a Dense
    layer moves it by ~1e-10 relative, in either engine."""
    x = scale * rng.standard_normal((n, d))
    x[1] = x[0] + 1e-3 * rng.standard_normal(d)
    x[5] = -x[4] + 1e-3 * rng.standard_normal(d)
    x[9] = x[10]
    if not kinked:
        x[2] = 2.5 * x[3]
        x[6] = -0.5 * x[8]
    return x
