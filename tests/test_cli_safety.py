"""ntkfast gram never overwrites its inputs, never leaves partial outputs, and answers every bad
input with one line on stderr (exit status 2), not a traceback."""
import errno
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


# ----------------------------------------------------------------------------------------------
# numbers out of range and inputs whose kernel cannot be computed are bad input (2), in the
# CLI's words

@pytest.mark.parametrize("depth", ["99999999999999999999", "500000"])
def test_huge_depth_is_one_line_bad_input(capsys, points, tmp_path, depth):
    # before: an OverflowError traceback and exit status 1
    rc, _, err = _main(capsys, "gram", points[1], "--depth", depth, "-o", tmp_path / "K.npy")
    _assert_one_line_error(rc, err, "depth must be <= 499999", f"got {depth}")
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


@pytest.mark.parametrize("value, option, fragment", [
    (1e200, "X", "the NNGP variance of X[1] is inf"),        # NonFiniteKernelError
    (1e-200, "X", "the NNGP variance of X[1] is 0.0"),       # KernelUnderflowError
    (1e200, "--x2", "the NNGP variance of --x2[1] is inf"),
])
def test_kernel_range_errors_are_bad_input_named_as_the_cli_names_them(capsys, tmp_path, value,
                                                                       option, fragment):
    x = np.ones((4, 3))
    x[1] = value
    np.save(tmp_path / "bad.npy", x)
    np.save(tmp_path / "good.npy", np.ones((4, 3)))
    files = (["bad.npy"] if option == "X" else ["good.npy", "--x2", "bad.npy"])
    args = [tmp_path / f if f.endswith(".npy") else f for f in files]
    rc, _, err = _main(capsys, "gram", *args, "--activation", "erf", "-o", tmp_path / "K.npy")
    _assert_one_line_error(rc, err, fragment)  # before: exit status 1, "x1[1]" / "x2[1]"
    assert "x1[" not in err and " x2[" not in err
    assert sorted(os.listdir(tmp_path)) == ["bad.npy", "good.npy"]


@pytest.mark.parametrize("option", ["X", "--x2"])
def test_non_finite_input_message_uses_cli_names(capsys, tmp_path, option):
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    np.save(tmp_path / "good.npy", np.ones((4, 3)))
    args = ([tmp_path / "nan.npy"] if option == "X"
            else [tmp_path / "good.npy", "--x2", tmp_path / "nan.npy"])
    rc, _, err = _main(capsys, "gram", *args, "-o", tmp_path / "K.npy")
    _assert_one_line_error(rc, err, f"{option} contains 1 non-finite value(s)",
                           f"first at {option}[2, 1] = nan")
    # before: "x1 ... pass check_finite=False", an option the CLI does not have
    assert "check_finite" not in err and "x1" not in err


def test_float32_range_message_uses_cli_names(capsys, tmp_path):
    np.save(tmp_path / "big.npy", np.array([[1e200, 1.0], [2.0, 3.0]]))
    rc, _, err = _main(capsys, "gram", tmp_path / "big.npy", "--dtype", "float32", "-o",
                       tmp_path / "K.npy")
    _assert_one_line_error(rc, err, "X holds values up to 1e+200, beyond the range of float32",
                           "pass --dtype float64")
    assert "x1" not in err and "dtype=" not in err  # before: "x1 ... pass dtype=float64"
    assert sorted(os.listdir(tmp_path)) == ["big.npy"]


# ----------------------------------------------------------------------------------------------
# a full disk: the temporary output's blocks are freed before the error is printed, and the
# error names the user's -o file

def test_disk_full_frees_the_temporary_output_and_names_the_output(capsys, tmp_path,
                                                                    monkeypatch):
    kept = {}

    def disk_full(x1, x2=None, *, out, **kwargs):
        # as the real failure: the traceback still holds the output maps, here plus a file
        # descriptor, so the test can see the blocks after the CLI has unlinked the file
        arr = out["ntk"]
        arr[:] = 1.0
        arr.flush()
        kept["fd"] = os.open(arr.filename, os.O_RDONLY)
        kept["map"] = arr
        raise OSError(errno.ENOSPC, f"out (ntk): cannot reserve 1.0 MB on disk for the output "
                                    f"file {arr.filename}: No space left on device")

    monkeypatch.setattr(nf, "gram", disk_full)
    np.save(tmp_path / "x.npy", np.ones((300, 3)))
    try:
        rc, _, err = _main(capsys, "gram", tmp_path / "x.npy", "--get", "ntk", "-o",
                           tmp_path / "k.npy")
        blocks = os.fstat(kept["fd"]).st_blocks
    finally:
        os.close(kept["fd"])
    assert rc == 1 and "Traceback" not in err
    line, = err.strip().splitlines()
    assert line == (f"ntkfast gram: error: -o: cannot reserve 1.0 MB on disk for the output "
                    f"file {tmp_path / 'k.npy'}: No space left on device")  # not the .tmp file
    assert blocks == 0  # before: the unlinked file kept its 720 KB while still mapped
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


def test_write_error_on_a_temporary_output_names_the_output(capsys, tmp_path, monkeypatch):
    def failing_chmod(path, mode):
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(os, "chmod", failing_chmod)
    np.save(tmp_path / "x.npy", np.ones((5, 3)))
    rc, _, err = _main(capsys, "gram", tmp_path / "x.npy", "-o", tmp_path / "K.npy")
    assert rc == 1
    line, = err.strip().splitlines()
    assert line == (f"ntkfast gram: error: -o: cannot write {tmp_path / 'K.nngp.npy'}: "
                    "Input/output error")
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]
