"""``ntkfast demo``, run as a user would (subprocess), small so it takes a few seconds."""
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest


def _demo(*args, code=None):
    command = [sys.executable, "-m", "ntkfast", "demo", *args] if code is None else \
        [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_demo_runs_and_saves_the_plot(tmp_path):
    pytest.importorskip("sklearn", reason="the demo extra is not installed")
    pytest.importorskip("matplotlib", reason="the demo extra is not installed")
    plot = tmp_path / "out" / "demo.png"
    proc = _demo("--n-train", "300", "--n-test", "150", "--times", "6", "--depth", "2",
                 "--no-progress", "-o", str(plot))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "NNGP (readout trained)" in out and "NTK (all layers trained)" in out
    assert "timings" in out and str(plot.resolve()) in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+(inf|[0-9.e+-]+)\s+\d", line)]
    assert len(rows) == 7  # six times and t = inf
    final = rows[-1]
    assert final[0] == "inf"
    # columns: t, then per kernel train MSE, test MSE, accuracy, posterior std
    for train_mse, test_mse, accuracy in ((final[1], final[2], final[3]),
                                          (final[5], final[6], final[7])):
        assert float(train_mse) < 1e-6  # the infinite-time train fit interpolates
        assert float(test_mse) < 0.09  # below the untrained ensemble's mean y² = 0.09
        assert float(accuracy.rstrip("%")) > 85.0  # digits are easy for kernel regression
    first = rows[0]
    assert float(first[1]) == pytest.approx(0.09, rel=0.1)  # t = 0.1: nearly untrained


def test_demo_without_the_extra_says_how_to_install_it():
    code = textwrap.dedent("""
        import sys
        sys.modules["sklearn"] = None  # as if scikit-learn were not installed
        from ntkfast.cli import main
        sys.exit(main(["demo"]))
    """)
    proc = _demo(code=code)
    assert proc.returncode == 1
    assert 'pip install "ntkfast[demo]"' in proc.stderr and "scikit-learn" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_rejects_bad_arguments(tmp_path):
    pytest.importorskip("sklearn", reason="the demo extra is not installed")
    pytest.importorskip("matplotlib", reason="the demo extra is not installed")
    proc = _demo("--n-train", "1700", "--n-test", "200")
    assert proc.returncode == 1 and "at most 1797" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _demo("--times", "1")
    assert proc.returncode == 1 and "--times must be >= 2" in proc.stderr
    proc = _demo("-o", str(tmp_path))  # a directory: refused before anything is computed
    assert proc.returncode == 1 and "is a directory" in proc.stderr and proc.stdout == ""


def test_digits_split_is_normalised():
    pytest.importorskip("sklearn", reason="the demo extra is not installed")
    from ntkfast import demo

    x_train, y_train, labels, x_test, labels_test = demo.load_digits_split(100, 50, seed=1)
    assert x_train.shape == (100, 64) and x_test.shape == (50, 64)
    np.testing.assert_allclose((x_train ** 2).sum(axis=1) / 64, 1.0, rtol=1e-12)
    np.testing.assert_allclose(y_train.sum(axis=1), 0.0, atol=1e-12)
    assert (y_train.argmax(axis=1) == labels).all()


def test_demo_large_runs_the_iterative_path():
    """`ntkfast demo --large N` (generated data, no extra needed): CG and Lanczos reports, the
    train error falling with training time and reaching ~0 at t = inf."""
    proc = _demo("--large", "600", "--times", "8", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "KernelOperator(ntk, 600 x 600" in out and "storage=" in out
    assert re.search(r"preconditioned CG, \d+ iterations, relative residual [0-9.e+-]+", out)
    assert re.search(r"8 times: Lanczos, \d+ steps", out)
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+(inf|[0-9.e+-]+)\s+\d", line)]
    train = [float(r[1]) for r in rows]
    assert rows[-1][0] == "inf" and train[-1] == 0.0
    assert train[0] > 10 * train[-2] and all(a >= b - 1e-12 for a, b in zip(train, train[1:]))
    proc = _demo("--large", "1")
    assert proc.returncode != 0 and "--large must be at least 2" in proc.stderr
    assert "Traceback" not in proc.stderr
