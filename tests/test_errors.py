"""Bad input gets a clear Python exception naming the argument; long calls release the GIL,
stop on Ctrl-C and report progress."""
import textwrap
import threading
import time

import numpy as np
import pytest

import ntkfast as nf
from conftest import interrupt_script

NET = nf.MLP(2, "relu", W_std=1.5, b_std=0.05)


@pytest.fixture
def x(rng):
    return rng.standard_normal((8, 5))


@pytest.mark.parametrize("bad,match", [
    (np.ones(5), r"x1 must be 2-D .*shape \(5,\)"),
    (np.ones((2, 3, 4)), r"x1 must be 2-D"),
    (np.ones((3, 4), dtype=complex), r"x1 is complex"),
    (np.array([[object(), 1.0]], dtype=object), r"x1 must hold real numbers.*object"),
    (np.array([["a", "b"]]), r"x1 must hold real numbers"),
    ("abc", r"x1 must be a real 2-D array"),
    ([[1.0, 2.0], [3.0]], r"x1 could not be read as an array"),
])
def test_bad_points(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        nf.gram(bad, net=NET)


def test_bad_second_set_and_mismatch(x):
    with pytest.raises(ValueError, match=r"same number of features.*x1 \(8, 5\).*x2 \(3, 4\)"):
        nf.gram(x, np.ones((3, 4)), net=NET)
    with pytest.raises(TypeError, match="x2 is complex"):
        nf.gram(x, np.ones((3, 5), dtype=np.complex64), net=NET)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(x, value):
    bad = x.copy()
    bad[2, 3] = value
    with pytest.raises(ValueError, match=r"x1 contains 1 non-finite value.*x1\[2, 3\].*check_finite"):
        nf.gram(bad, net=NET)
    with pytest.raises(ValueError, match=r"x2 contains"):
        nf.gram(x, bad, net=NET)
    with pytest.raises(ValueError, match=r"x contains"):
        nf.diagonal(bad, net=NET)



@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("get", ["nngp", "ntk", ("nngp", "ntk")])
def test_non_finite_inputs_without_the_check_still_raise(x, value, get):
    """check_finite=False skips the scan of the inputs, but a NaN/Inf row still cannot come back
    as numbers: the engine's per-row variance check raises (it used to clamp NaN to 0)."""
    bad = x.copy()
    bad[2, 3] = value
    with pytest.raises(nf.NonFiniteKernelError, match=r"x1\[2\]") as info:
        nf.gram(bad, net=NET, get=get, check_finite=False)
    assert info.value.argument == "x1" and info.value.row == 2
    with pytest.raises(nf.NonFiniteKernelError, match=r"x2\[2\]"):
        nf.gram(x, bad, net=NET, get=get, check_finite=False)
    with pytest.raises(nf.NonFiniteKernelError, match=r"x\[2\]"):
        nf.diagonal(bad, net=NET, get=get, check_finite=False)
    # clean data with the check off is the same computation as with it on
    assert np.array_equal(nf.gram(x, net=NET, get="ntk", check_finite=False),
                          nf.gram(x, net=NET, get="ntk"))


def test_bad_options(x):
    with pytest.raises(ValueError, match=r"get must be one of \('nngp', 'ntk'\)"):
        nf.gram(x, net=NET, get="ntkgp")
    with pytest.raises(ValueError, match="get must be"):
        nf.gram(x, net=NET, get=())
    with pytest.raises(ValueError, match="twice"):
        nf.gram(x, net=NET, get=("ntk", "ntk"))
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'cpu', 'cuda'\)"):
        nf.gram(x, net=NET, backend="tpu")
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        nf.gram(x, net=NET, dtype=np.float16)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        nf.gram(x, net=NET, dtype="not a dtype")
    for bad in (0, -1, 100_000, 2.0, True, "4"):
        with pytest.raises(ValueError, match=r"num_threads must be None or an integer from 1 to 1024"):
            nf.gram(x, net=NET, num_threads=bad)
    for bad in (0, -3, 10**9, 1.5):
        with pytest.raises(ValueError, match=r"tile_size must be None or an integer from 1 to 16384"):
            nf.gram(x, net=NET, tile_size=bad)
    with pytest.raises(ValueError, match="num_threads must be"):
        nf.diagonal(x, net=NET, num_threads=10**6)
    with pytest.raises(TypeError, match="progress must be"):
        nf.gram(x, net=NET, progress="yes")


def test_missing_or_wrong_net(x):
    with pytest.raises(TypeError, match="net"):
        nf.gram(x)
    with pytest.raises(TypeError, match="net must be an ntkfast network"):
        nf.gram(x, net="relu")


def test_bad_out(x):
    with pytest.raises(ValueError, match=r"out must have shape \(8, 8\) and dtype float64, got shape \(8, 7\)"):
        nf.gram(x, net=NET, get="ntk", out=np.empty((8, 7)))
    with pytest.raises(ValueError, match=r"out \(nngp\) must have shape \(8, 8\) and dtype float64.*float32"):
        nf.gram(x, net=NET, out=nf.Kernels(np.empty((8, 8), np.float32), np.empty((8, 8))))
    with pytest.raises(ValueError, match="C-contiguous"):
        nf.gram(x, net=NET, get="ntk", out=np.empty((8, 8), order="F"))
    ro = np.empty((8, 8))
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        nf.gram(x, net=NET, get="ntk", out=ro)
    with pytest.raises(ValueError, match="must hold 2 arrays"):
        nf.gram(x, net=NET, out=(np.empty((8, 8)),))
    with pytest.raises(TypeError, match="out must be an array"):
        nf.gram(x, net=NET, out=3)
    both = np.empty((8, 8))
    with pytest.raises(ValueError, match="overlap"):
        nf.gram(x, net=NET, out=(both, both))
    with pytest.raises(ValueError, match="not requested"):
        nf.gram(x, net=NET, get=("ntk",), out={"nngp": np.empty((8, 8))})


def test_output_too_large_is_memory_error_before_allocating():
    big = np.zeros((400_000, 2))  # two 400k x 400k float64 outputs: 2.56 TB
    start = time.perf_counter()
    with pytest.raises(MemoryError, match=r"2 arrays of 400000 x 400000 float64 = 2\.6 TB.*out="):
        nf.gram(big, net=NET)
    assert time.perf_counter() - start < 5.0
    with pytest.raises(MemoryError, match=r"an array of 400000 x 400000 float32"):
        nf.gram(big.astype(np.float32), net=NET, get="ntk")


def test_cuda_backend_unavailable_says_why(x):
    if nf.get_config()["cuda"]["available"]:
        pytest.skip("a CUDA GPU is available here")
    with pytest.raises(nf.BackendUnavailableError, match="CUDA backend is not available: .+"):
        nf.gram(x, net=NET, backend="cuda")


def test_progress_bar_and_callback(capsys, rng):
    x = rng.standard_normal((700, 30))
    seen = []
    nf.gram(x, net=NET, tile_size=64, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] == 11 * 12 // 2
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    nf.gram(x, net=NET, tile_size=64, progress=True)
    err = capsys.readouterr().err
    assert "ntkfast.gram" in err and "100%" in err


def test_progress_callback_exception_stops_the_computation(rng):
    x = rng.standard_normal((600, 20))

    def explode(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        nf.gram(x, net=NET, tile_size=32, progress=explode)


def _deep_net_lasting(seconds, x):
    """A ReLU network deep enough that gram(x) takes about `seconds` on this machine (the work is
    sized from a timed probe, so the tests below do not depend on the machine's speed)."""
    probe_depth = 4
    start = time.perf_counter()
    nf.gram(x, net=nf.MLP(probe_depth, "relu", W_std=1.4, b_std=0.1), get="ntk")
    per_layer = max(time.perf_counter() - start, 1e-4) / probe_depth
    return nf.MLP(max(probe_depth, int(seconds / per_layer)), "relu", W_std=1.4, b_std=0.1)


def test_gil_is_released(rng):
    """Another Python thread keeps running while a long gram computes: with the GIL held it could
    not run at all (no progress callback is given, so the engine never takes the GIL back)."""
    x = rng.standard_normal((1500, 50))
    net = _deep_net_lasting(1.0, x)
    window = []

    def compute():
        window.append(time.perf_counter())
        nf.gram(x, net=net, get="ntk")
        window.append(time.perf_counter())

    ticks = []
    worker = threading.Thread(target=compute)
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    start, end = window
    during = [t for t in ticks if start < t < end]
    assert len(during) >= 20, f"{len(during)} ticks in {end - start:.2f} s of computation"


_LONG_GRAM = textwrap.dedent("""
    import signal, sys, time, numpy as np, ntkfast as nf
    # As in an interactive session: a shell starts background jobs (CI run with '&' or nohup)
    # with SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    x = np.random.default_rng(0).standard_normal((3000, 100))
    # Sized from a timed probe to last about 60 s here, whatever the machine's speed.
    t = time.perf_counter()
    nf.gram(x[:1000], net=nf.MLP(4, "erf", W_std=1.4, b_std=0.1))
    per_layer = 9 * (time.perf_counter() - t) / 4
    net = nf.MLP(max(4, int(60 / max(per_layer, 1e-4))), "erf", W_std=1.4, b_std=0.1)
    print("started", flush=True)
    t = time.perf_counter()
    try:
        nf.gram(x, net=net)
    except KeyboardInterrupt:
        print(f"interrupted {time.perf_counter() - t:.3f}", flush=True)
        sys.exit(3)
    print("finished", flush=True)
""")


def test_ctrl_c_interrupts_within_a_second():
    # 1 s: well inside the computation (sized to take about a minute)
    code, out, err, elapsed = interrupt_script(_LONG_GRAM, after=1.0, timeout=30)
    assert code == 3, (out, err)
    assert "interrupted" in out
    assert elapsed < 1.0, f"took {elapsed:.2f} s to stop"
