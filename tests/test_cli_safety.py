"""ntkfast gram never overwrites its inputs, never leaves partial outputs, and answers every bad
input with one line on stderr (exit status 2), not a traceback."""
import os
import subprocess
import sys

import numpy as np
import pytest

import ntkfast as nf
from ntkfast import cli


def _main(capsys, *args):
    """(exit status, stdout, stderr) of ``ntkfast <args>`` run in-process."""
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err, *fragments):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntkfast gram: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


@pytest.fixture
def points(tmp_path, rng):
    x = rng.standard_normal((12, 4))
    np.save(tmp_path / "x.npy", x)
    return x, tmp_path / "x.npy"


# ----------------------------------------------------------------------------------------------
# outputs that are inputs

def test_output_equal_to_input_is_refused(capsys, points, tmp_path):
    x, path = points
    rc, _, err = _main(capsys, "gram", path, "--get", "ntk", "-o", path)
    _assert_one_line_error(rc, err, "-o", "input file X")
    assert np.array_equal(np.load(path), x)  # before the fix: zeros, exit status 0


def test_output_equal_to_x2_is_refused(capsys, points, tmp_path, rng):
    y = rng.standard_normal((5, 4))
    np.save(tmp_path / "y.npy", y)
    rc, _, err = _main(capsys, "gram", points[1], "--x2", tmp_path / "y.npy", "--get", "nngp",
                       "-o", tmp_path / "y.npy")
    _assert_one_line_error(rc, err, "input file --x2")
    assert np.array_equal(np.load(tmp_path / "y.npy"), y)


def test_derived_output_name_equal_to_input_is_refused(capsys, tmp_path, rng):
    # -o K.npy with both kernels writes K.nngp.npy and K.ntk.npy: the latter is the input here
    x = rng.standard_normal((6, 3))
    np.save(tmp_path / "K.ntk.npy", x)
    rc, _, err = _main(capsys, "gram", tmp_path / "K.ntk.npy", "-o", tmp_path / "K.npy")
    _assert_one_line_error(rc, err, "K.ntk.npy")
    assert np.array_equal(np.load(tmp_path / "K.ntk.npy"), x)
    assert not (tmp_path / "K.nngp.npy").exists()


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_output_linked_to_input_is_refused(capsys, points, tmp_path, link):
    x, path = points
    alias = tmp_path / "alias.npy"
    (os.symlink if link == "symlink" else os.link)(path, alias)
    rc, _, err = _main(capsys, "gram", path, "--get", "ntk", "-o", alias)
    _assert_one_line_error(rc, err, "input file X")
    assert np.array_equal(np.load(path), x)


def test_output_directory_is_refused(capsys, points, tmp_path):
    (tmp_path / "d.npy").mkdir()
    rc, _, err = _main(capsys, "gram", points[1], "--get", "ntk", "-o", tmp_path / "d.npy")
    _assert_one_line_error(rc, err, "is a directory")


# ----------------------------------------------------------------------------------------------
# failed and interrupted runs

def _existing_outputs(tmp_path):
    old = {name: np.full((2, 2), 7.0) for name in ("nngp", "ntk")}
    for name, arr in old.items():
        np.save(tmp_path / f"K.{name}.npy", arr)
    return old


def _assert_untouched(tmp_path, old):
    for name, arr in old.items():
        assert np.array_equal(np.load(tmp_path / f"K.{name}.npy"), arr)
    assert sorted(os.listdir(tmp_path)) == sorted(["x.npy", "K.nngp.npy", "K.ntk.npy"])


def test_failed_run_leaves_existing_outputs_untouched(capsys, tmp_path):
    x = np.ones((5, 3))
    x[2, 1] = np.nan  # gram refuses it only after the outputs are opened
    np.save(tmp_path / "x.npy", x)
    old = _existing_outputs(tmp_path)
    rc, _, err = _main(capsys, "gram", tmp_path / "x.npy", "-o", tmp_path / "K.npy")
    _assert_one_line_error(rc, err, "non-finite")
    _assert_untouched(tmp_path, old)  # before the fix: zero-filled 5 x 5 files


def test_failed_run_leaves_no_output(capsys, tmp_path):
    x = np.ones((5, 3))
    x[0, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    rc, _, err = _main(capsys, "gram", tmp_path / "x.npy", "-o", tmp_path / "out" / "K.npy")
    assert rc == 2 and "Traceback" not in err
    assert os.listdir(tmp_path / "out") == []


def test_interrupted_run_leaves_existing_outputs_untouched(capsys, tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.ones((5, 3)))
    old = _existing_outputs(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nf, "gram", interrupted)
    rc, _, err = _main(capsys, "gram", tmp_path / "x.npy", "-o", tmp_path / "K.npy")
    assert rc == 130 and "interrupted" in err
    _assert_untouched(tmp_path, old)


def test_successful_run_replaces_outputs_with_normal_permissions(capsys, tmp_path, rng):
    x = rng.standard_normal((7, 3))
    np.save(tmp_path / "x.npy", x)
    _existing_outputs(tmp_path)
    rc, out, err = _main(capsys, "gram", tmp_path / "x.npy", "--depth", "2", "-o",
                         tmp_path / "K.npy")
    assert rc == 0, err
    want = nf.gram(x, net=nf.MLP(2))
    assert np.array_equal(np.load(tmp_path / "K.nngp.npy"), want.nngp)
    assert np.array_equal(np.load(tmp_path / "K.ntk.npy"), want.ntk)
    assert sorted(os.listdir(tmp_path)) == ["K.nngp.npy", "K.ntk.npy", "x.npy"]
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(tmp_path / "K.ntk.npy").st_mode & 0o777) == 0o666 & ~umask


# ----------------------------------------------------------------------------------------------
# bad inputs: one line, exit status 2

def _write(path, content):
    path.write_bytes(content)
    return path


def _bad_inputs(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones((3, 2)))
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    np.save(tmp_path / "complex.npy", np.ones((3, 2), dtype=complex))
    np.save(tmp_path / "struct.npy", np.zeros((3, 2), dtype=[("a", "f8")]))
    np.save(tmp_path / "1d.npy", np.ones(4))
    np.save(tmp_path / "3d.npy", np.ones((2, 3, 4)))
    np.save(tmp_path / "0d.npy", np.float64(1.0))
    np.save(tmp_path / "nopoints.npy", np.ones((0, 3)))
    np.save(tmp_path / "nofeatures.npy", np.ones((3, 0)))
    np.save(tmp_path / "full.npy", np.ones((50, 20)))
    data = (tmp_path / "full.npy").read_bytes()
    return {
        "empty": (_write(tmp_path / "empty.npy", b""), "empty file"),
        "npz": (tmp_path / "a.npz", ".npz archive"),
        "garbage": (_write(tmp_path / "garbage.npy", b"not an array at all\n" * 10), "not a .npy"),
        "truncated": (_write(tmp_path / "truncated.npy", data[:300]), "truncated.npy"),
        "bad header": (_write(tmp_path / "header.npy", data[:10] + b"{'descr': <f8, ???"
                              + data[40:200]), "header.npy"),
        "object": (tmp_path / "obj.npy", "obj.npy"),
        "string": (tmp_path / "str.npy", "real numbers"),
        "complex": (tmp_path / "complex.npy", "real numbers"),
        "structured": (tmp_path / "struct.npy", "real numbers"),
        "1-D": (tmp_path / "1d.npy", "2-D array"),
        "3-D": (tmp_path / "3d.npy", "2-D array"),
        "0-D": (tmp_path / "0d.npy", "2-D array"),
        "no points": (tmp_path / "nopoints.npy", "at least one point"),
        "no features": (tmp_path / "nofeatures.npy", "at least one point"),
        "missing": (tmp_path / "missing.npy", "no such file"),
        "directory": (tmp_path, "no such file"),
    }


@pytest.mark.parametrize("case", ["empty", "npz", "garbage", "truncated", "bad header", "object",
                                  "string", "complex", "structured", "1-D", "3-D", "0-D",
                                  "no points", "no features", "missing", "directory"])
def test_bad_input_files(capsys, tmp_path, case):
    path, fragment = _bad_inputs(tmp_path)[case]
    rc, _, err = _main(capsys, "gram", path, "-o", tmp_path / "out" / "K.npy")
    _assert_one_line_error(rc, err, "X: ", fragment)
    assert not (tmp_path / "out").exists()
    np.save(tmp_path / "good.npy", np.ones((3, 20)))  # the same checks apply to --x2
    rc, _, err = _main(capsys, "gram", tmp_path / "good.npy", "--x2", path, "-o",
                       tmp_path / "out" / "K.npy")
    _assert_one_line_error(rc, err, "--x2: ", fragment)


@pytest.mark.parametrize("spec", ["random:5by7", "random:0x5", "random:5x0", "random:-3x5",
                                  "random:5x", "random:x", "random:", "random:1e3x5",
                                  "random:5x5x5", "random:+5x5", "random:2.5x3"])
def test_bad_random_specs(capsys, tmp_path, spec):
    rc, _, err = _main(capsys, "gram", spec, "-o", tmp_path / "K.npy")
    _assert_one_line_error(rc, err, "random:NxD")
    assert not (tmp_path / "K.npy").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--threads", "0"], "--threads must be a positive integer, got 0"),
    (["--threads", "-2"], "--threads must be a positive integer, got -2"),
    (["--depth", "-1"], "--depth must be >= 0, got -1"),
    (["--width", "0", "--parameterization", "standard"], "--width must be a positive integer"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--W-std", "nan"], "W_std must be finite"),
    (["--b-std", "-1"], "b_std must be >= 0"),
    (["--activation", "softsign"], "unknown activation 'softsign'"),
    (["--activation", "leaky_relu", "--param", "alpha=[1]"], "alpha must be a real number"),
    (["--activation", "relu", "--param", "beta=2"], "beta"),
])
def test_bad_options(capsys, tmp_path, args, fragment):
    rc, _, err = _main(capsys, "gram", "random:4x3", *args, "-o", tmp_path / "K.npy")
    _assert_one_line_error(rc, err, fragment)
    assert not (tmp_path / "K.npy").exists()


def test_mismatched_features(capsys, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 4)))
    np.save(tmp_path / "y.npy", np.ones((3, 5)))
    rc, _, err = _main(capsys, "gram", tmp_path / "x.npy", "--x2", tmp_path / "y.npy", "-o",
                       tmp_path / "K.npy")
    _assert_one_line_error(rc, err, "--x2: expected 4 features")


# ----------------------------------------------------------------------------------------------
# as a user runs it

def _run(*args):
    return subprocess.run([sys.executable, "-m", "ntkfast", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_subprocess_refuses_own_input_and_reports_bad_files(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "x.npy", x)
    proc = _run("gram", tmp_path / "x.npy", "--get", "ntk", "-o", tmp_path / "x.npy")
    assert proc.returncode == 2 and proc.stdout == ""
    _assert_one_line_error(proc.returncode, proc.stderr, "input file X")
    assert np.array_equal(np.load(tmp_path / "x.npy"), x)
    (tmp_path / "empty.npy").write_bytes(b"")
    proc = _run("gram", tmp_path / "empty.npy", "-o", tmp_path / "K.npy")
    _assert_one_line_error(proc.returncode, proc.stderr, "empty file")
    proc = _run("gram", "random:3x", "-o", tmp_path / "K.npy")
    _assert_one_line_error(proc.returncode, proc.stderr, "random:NxD")
    proc = _run("gram", "random:3x2", "--threads", "0", "-o", tmp_path / "K.npy")
    _assert_one_line_error(proc.returncode, proc.stderr, "--threads")
    assert sorted(os.listdir(tmp_path)) == ["empty.npy", "x.npy"]
