"""DualKernel layers (neural-tangents' ``Elementwise(nngp_fn=..., d_nngp_fn=...)``): the user's dual
kernels called by the engine between program segments (engine.hpp DualKernelFn).

Oracles: the built-in closed forms of the same activations (C++, layer_math.hpp), and the plain
NumPy layer loop of numpy_reference.py calling the same user functions on full matrices (no
tiles, no segments). Tolerances: float64 1e-13 relative to max|K| (the engine and NumPy evaluate
the same formulas in different orders), float32 outputs 1e-6; symmetry, the diagonal and results
across thread counts exactly.
"""
from __future__ import annotations

import math
import pickle
import re
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import ntkfast as nf
from ntkfast import _core
from ntkfast._dual_kernels import dual_kernel_callback
import numpy_reference
from conftest import interrupt_script


def erf_nngp(c, q1, q2):  # Williams 1997, for erf(x)
    return 2 / np.pi * np.arcsin(2 * c / np.sqrt((1 + 2 * q1) * (1 + 2 * q2)))


def erf_d_nngp(c, q1, q2):
    return 4 / np.pi / np.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * c ** 2)


def relu_nngp(c, q1, q2):  # Cho & Saul 2009, arc-cosine kernel of degree 1
    s = np.sqrt(q1 * q2)
    theta = np.arccos(np.clip(c / s, -1.0, 1.0))
    return s * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)


def relu_d_nngp(c, q1, q2):
    return (np.pi - np.arccos(np.clip(c / np.sqrt(q1 * q2), -1.0, 1.0))) / (2 * np.pi)


def square_nngp(c, q1, q2):  # φ(x) = x²: E[u²v²] = q1 q2 + 2c² (Isserlis)
    return q1 * q2 + 2 * c ** 2


def square_d_nngp(c, q1, q2):  # φ' = 2x: E[4uv] = 4c
    return 4 * c


ERF = nf.DualKernel(erf_nngp, erf_d_nngp)
RELU = nf.DualKernel(relu_nngp, relu_d_nngp)
SQUARE = nf.DualKernel(square_nngp, square_d_nngp)


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((90, 6))
    x[5] = x[3]          # a duplicate row
    x[6] = -2.0 * x[4]   # an anti-parallel one
    return x, rng.standard_normal((40, 6))


@pytest.mark.parametrize("user, builtin", [(ERF, nf.Erf()), (RELU, nf.Relu()),
                                           (SQUARE, nf.Monomial(2))], ids=["erf", "relu", "x^2"])
@pytest.mark.parametrize("depth", [1, 3])
def test_user_dual_kernels_reproduce_the_closed_forms(points, user, builtin, depth):
    x, x2 = points
    kw = dict(W_std=1.3, b_std=0.2)
    for args in ((x,), (x, x2)):
        got = nf.gram(*args, net=nf.MLP(depth, user, **kw))
        want = nf.gram(*args, net=nf.MLP(depth, builtin, **kw))
        oracle = numpy_reference.kernels(nf.MLP(depth, user, **kw), *args)
        for name, k in (("nngp", 0), ("ntk", 1)):
            assert rel_err(getattr(got, name), getattr(want, name)) <= 1e-13, name
            assert rel_err(getattr(got, name), oracle[k]) <= 1e-13, name


def test_float32_outputs_keep_float64_evaluation(points):
    x, _ = points
    net = nf.MLP(3, ERF, W_std=1.3, b_std=0.2)
    got = nf.gram(x.astype(np.float32), net=net)
    want = numpy_reference.kernels(net, x.astype(np.float32))
    assert got.ntk.dtype == np.float32
    assert rel_err(got.nngp, want[0]) <= 1e-6 and rel_err(got.ntk, want[1]) <= 1e-6


def test_mixed_with_series_and_closed_forms_in_any_order(points):
    x, x2 = points
    def net(first):
        return nf.serial(nf.Dense(1, 1.2, 0.1), first, nf.Dense(1, 1.2, 0.1), nf.Tanh(),
                         nf.Dense(1, 1.2, 0.1), RELU, nf.Dense(1, 1.2, 0.1), ERF, nf.Dense(1))
    builtin = nf.serial(nf.Dense(1, 1.2, 0.1), nf.Erf(), nf.Dense(1, 1.2, 0.1), nf.Tanh(),
                        nf.Dense(1, 1.2, 0.1), nf.Relu(), nf.Dense(1, 1.2, 0.1), nf.Erf(),
                        nf.Dense(1))
    for args in ((x,), (x, x2)):
        got, want = nf.gram(*args, net=net(ERF)), nf.gram(*args, net=builtin)
        assert rel_err(got.nngp, want.nngp) <= 1e-12 and rel_err(got.ntk, want.ntk) <= 1e-12


def test_symmetry_diagonal_and_tiles_are_exact(points):
    x, _ = points
    net = nf.MLP(3, ERF, W_std=1.4, b_std=0.1)
    k = nf.gram(x, net=net, tile_size=32)  # diagonal and off-diagonal tiles, partial ones
    d = nf.diagonal(x, net=net)
    assert np.array_equal(k.ntk, k.ntk.T) and np.array_equal(k.nngp, k.nngp.T)
    assert np.array_equal(np.diag(k.nngp), d.nngp) and np.array_equal(np.diag(k.ntk), d.ntk)
    one_tile = nf.gram(x, net=net, tile_size=4096)
    assert rel_err(k.ntk, one_tile.ntk) <= 1e-15


def test_same_bits_from_any_thread_count_and_concurrent_calls(points):
    x, _ = points
    net = nf.MLP(2, RELU, W_std=1.4, b_std=0.1)
    reference = nf.gram(x, net=net, num_threads=1, tile_size=16)
    results = [None] * 4

    def work(k):
        results[k] = nf.gram(x, net=net, num_threads=2, tile_size=16)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for k in results:
        assert np.array_equal(k.nngp, reference.nngp) and np.array_equal(k.ntk, reference.ntk)


def test_nngp_only_without_d_nngp_fn_and_ntk_refused_clearly(points):
    x, _ = points
    layer = nf.DualKernel(erf_nngp)
    nngp = nf.gram(x, net=nf.MLP(2, layer), get="nngp")
    assert rel_err(nngp, nf.gram(x, net=nf.MLP(2, "erf"), get="nngp")) <= 1e-13
    assert nf.diagonal(x, net=nf.MLP(2, layer), get="nngp").shape == (90,)
    for call in (lambda: nf.gram(x, net=nf.MLP(2, layer)),
                 lambda: nf.diagonal(x, net=nf.MLP(2, layer), get="ntk")):
        with pytest.raises(ValueError, match=r"DualKernel\(.*erf_nngp.*has no d_nngp_fn.*get='nngp'"):
            call()


def test_neural_tangents_signature():
    assert nf.Elementwise(nngp_fn=erf_nngp, d_nngp_fn=erf_d_nngp) == ERF
    with_fn = nf.Elementwise(np.tanh, erf_nngp, erf_d_nngp)
    assert isinstance(with_fn, nf.DualKernel) and with_fn.fn is np.tanh
    assert nf.Elementwise(np.tanh) == nf.ElementwiseNumerical(np.tanh)
    with pytest.raises(TypeError, match="d_nngp_fn needs nngp_fn"):
        nf.Elementwise(np.tanh, d_nngp_fn=erf_d_nngp)
    with pytest.raises(TypeError, match="fn or nngp_fn is required"):
        nf.Elementwise()
    with pytest.raises(TypeError, match="nngp_fn must be a callable, got 3"):
        nf.DualKernel(3)
    with pytest.raises(TypeError, match="d_nngp_fn must be a callable or None"):
        nf.DualKernel(erf_nngp, "no")
    assert pickle.loads(pickle.dumps(ERF)) == ERF  # module-level functions: Dask can ship it


def _bad(kind):
    return {
        "math": lambda c, a, b: math.sqrt(c),
        "shape": lambda c, a, b: np.ones(3),
        "reduction": lambda c, a, b: np.max(c, 0),  # meant np.maximum: broadcasts, but wrong
        "masked": lambda c, a, b: np.ma.masked_greater(c, 0.3),
        "nan": lambda c, a, b: np.where(c > 0.3, np.nan, c),
        "inf": lambda c, a, b: np.where(c > 0.3, np.inf, c),
        "complex": lambda c, a, b: c + 1j,
        "string": lambda c, a, b: "kernel",
        "in place": lambda c, a, b: np.multiply(c, 2, out=c),
        "negative variance": lambda c, a, b: -np.abs(c) - 1,
    }[kind]


@pytest.mark.parametrize("kind, message", [
    ("math", r"nngp_fn\(cov12, var1, var2\) raised TypeError.*must be vectorised"),
    ("shape", r"returned ndarray of shape \(3,\) \(not the shape of an elementwise result\); "
              r"expected real values of shape \(\) or \(90, 1\)"),
    ("reduction", r"returned ndarray of shape \(1,\)"),
    ("masked", r"returned MaskedArray .*\(\d+ masked entries\)"),
    ("nan", r"returned nan at cov12 = .*non-finite of .*must be finite"),
    ("inf", r"returned inf at cov12"),
    ("complex", r"dtype complex128"),
    ("string", r"returned .* \(dtype <U6\)"),
    ("in place", r"raised ValueError: output array is read-only.*read-only"),
    ("negative variance", r"nngp_fn\(var, var, var\) must be a variance \(>= 0\), got -"),
])
def test_bad_dual_kernels_raise_naming_the_layer(points, kind, message):
    x, _ = points
    before = x.copy()
    layer = nf.DualKernel(_bad(kind))
    with np.errstate(all="ignore"), pytest.raises(ValueError, match=r"DualKernel\(<function") as info:
        nf.gram(x, net=nf.MLP(2, layer), get="nngp")
    assert re.search(message, str(info.value)), str(info.value)
    assert np.array_equal(x, before)


def test_bad_derivative_is_named_too(points):
    x, _ = points
    layer = nf.DualKernel(erf_nngp, lambda c, a, b: np.full_like(c, np.nan))
    with pytest.raises(ValueError, match=r"d_nngp_fn\(cov12, var1, var2\) returned nan"):
        nf.gram(x, net=nf.MLP(1, layer))


def test_user_exceptions_propagate_and_stop_every_thread(points):
    x, _ = points
    calls = []

    def failing(c, q1, q2):
        calls.append(c.shape)
        if c.shape[1] > 1:  # a tile: the rows' own variances went through
            raise ZeroDivisionError("user bug")
        return erf_nngp(c, q1, q2)

    with pytest.raises(ZeroDivisionError, match="user bug"):
        nf.gram(x, net=nf.MLP(2, nf.DualKernel(failing)), get="nngp", num_threads=2, tile_size=16)
    tiles = [s for s in calls if s[1] > 1]
    assert 1 <= len(tiles) <= 2  # the first failure stopped the engine (one call per thread)


def test_progress_and_cancel_from_the_progress_callback(points):
    x, _ = points
    seen = []
    nf.gram(x, net=nf.MLP(2, ERF), tile_size=16, progress=lambda done, total: seen.append(total))
    assert seen and seen[-1] == 21  # 6 x 6 tiles, upper triangle

    def cancel(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        nf.gram(x, net=nf.MLP(2, ERF), tile_size=16, progress=cancel)


def test_ctrl_c_during_slow_user_functions():
    script = textwrap.dedent("""
        import signal, sys, time, numpy as np, ntkfast as nf
        signal.signal(signal.SIGINT, signal.default_int_handler)
        def slow(c, q1, q2):
            time.sleep(0.05)
            return c * 0.5
        x = np.random.default_rng(0).standard_normal((4000, 10))
        print("started", flush=True)
        t = time.perf_counter()
        try:
            nf.gram(x, net=nf.MLP(2, nf.DualKernel(slow)), get="nngp", tile_size=64)
        except KeyboardInterrupt:
            print(f"interrupted {time.perf_counter() - t:.3f}", flush=True)
            sys.exit(3)
        print("finished", flush=True)
    """)
    # 1 s: 63 x 64 tiles of 0.05 s each, well inside the computation
    code, out, err, elapsed = interrupt_script(script, after=1.0)
    assert code == 3 and "interrupted" in out, (out, err)
    assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"


def test_in_a_forked_child():
    script = textwrap.dedent("""
        import multiprocessing
        import numpy as np, ntkfast as nf
        from test_dual_kernels import ERF
        x = np.random.default_rng(9).standard_normal((300, 8))
        def work(_):
            k = nf.gram(x, net=nf.MLP(2, ERF), num_threads=2, tile_size=64)
            return k.nngp, k.ntk
        if __name__ == "__main__":
            parent = work(0)
            with multiprocessing.get_context("fork").Pool(2) as pool:
                for nngp, ntk in pool.map(work, [0, 1]):
                    assert np.array_equal(nngp, parent[0]) and np.array_equal(ntk, parent[1])
            print("ok")
    """)
    tests = str(__import__("pathlib").Path(__file__).parent)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", script], timeout=120,
                            capture_output=True, text=True, cwd=tests,
                            env={**__import__("os").environ, "PYTHONPATH": tests})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_predict_and_operator_compose(points):
    x, _ = points
    y = np.sin(x[:, :1])

    def predict(activation):
        net = nf.MLP(2, activation, W_std=1.3, b_std=0.2)
        fn = nf.predict.gradient_descent_mse_ensemble(net, x[:60], y[:60], diag_reg=1e-3)
        return fn(t=None, x_test=x[60:], get="ntk")

    assert np.allclose(predict(ERF), predict("erf"), rtol=1e-9, atol=1e-12)
    net = nf.MLP(2, ERF, W_std=1.3, b_std=0.2)
    op = nf.KernelOperator(x, net=net, get="ntk")
    v = np.ones(len(x))
    assert np.allclose(op @ v, nf.gram(x, net=net, get="ntk") @ v, rtol=1e-12)


def test_refused_where_python_cannot_run():
    with pytest.raises(NotImplementedError, match="backend='cuda' cannot run DualKernel layers"):
        dual_kernel_callback(nf.MLP(1, ERF), ("nngp",), "cuda")
    from ntkfast import _kernel_grad
    with pytest.raises(NotImplementedError, match="DualKernel"):
        _kernel_grad.check_supported(nf.MLP(1, ERF))


def test_engine_checks_callback_ops():
    with pytest.raises(ValueError, match="malformed callback op"):
        _core.Program([(_core.OP_KINDS["Callback"], 0, 0, [0.5])], [])
    program = _core.Program([(0, 0, 0, [1.0, 0.0, 0.0, 0.0, 1.0]),
                             (_core.OP_KINDS["Callback"], 0, 0, [0.0])], [])
    x = np.ones((3, 2))
    out = np.empty((3, 3))
    with pytest.raises(ValueError, match="no dual kernels were given"):
        _core.gram(program, x, None, out, None, 1, 0, None)
    with pytest.raises(ValueError, match="no dual kernels were given"):
        _core.diagonal(program, x, np.empty(3), None, 1)

    def wrong_shape(index, c, t, q1, q2):
        return np.zeros(2), t

    with pytest.raises(ValueError, match="wrong shape"):
        _core.gram(program, x, None, out, None, 1, 0, None, dual_kernels=wrong_shape)


@pytest.mark.parametrize("scale, error", [(1e-300, nf.KernelUnderflowError),
                                          (1e160, nf.NonFiniteKernelError)])
def test_out_of_range_inputs_fail_before_the_user_functions_see_them(scale, error):
    calls = []

    def watched(c, q1, q2):
        calls.append(c.shape)
        return relu_nngp(c, q1, q2)

    x = np.random.default_rng(0).standard_normal((20, 5)) * scale
    net = nf.MLP(2, nf.DualKernel(watched), b_std=0.0)
    with pytest.raises(error, match="after the input layer"):
        nf.gram(x, net=net, get="nngp")
    assert calls == []


def test_nngp_fn_and_d_nngp_fn_of_a_block_run_together_one_block_at_a_time(points):
    """A d_nngp_fn that reuses what its nngp_fn computed (θ, here) needs the pair not to be
    interleaved with another thread's: the calls are serialised per gram."""
    shared = {}

    def nngp(c, q1, q2):
        shared["theta"] = np.arccos(np.clip(c / np.sqrt(q1 * q2), -1.0, 1.0))
        time.sleep(0.001)  # let another engine thread try to get in between
        return relu_nngp(c, q1, q2)

    def d_nngp(c, q1, q2):
        return (np.pi - shared["theta"]) / (2 * np.pi)

    x = np.random.default_rng(3).standard_normal((600, 8))
    got = nf.gram(x, net=nf.MLP(2, nf.DualKernel(nngp, d_nngp)), get="ntk", num_threads=2,
                  tile_size=64)
    assert rel_err(got, nf.gram(x, net=nf.MLP(2, "relu"), get="ntk")) <= 1e-13


def test_the_callers_numpy_error_state_holds_on_every_engine_thread():
    seen = set()

    def nngp(c, q1, q2):
        seen.add(np.geterr()["divide"])
        return c

    x = np.random.default_rng(0).standard_normal((600, 4))
    with np.errstate(divide="raise"):
        nf.gram(x, net=nf.MLP(2, nf.DualKernel(nngp)), get="nngp", num_threads=2, tile_size=64)
    assert seen == {"raise"}


def test_users_exception_classes_propagate_unchanged(points):
    x, _ = points

    class OutOfDomain(ValueError):
        pass

    def nngp(c, q1, q2):
        raise OutOfDomain("c out of the domain")

    with pytest.raises(OutOfDomain, match="c out of the domain"):
        nf.gram(x, net=nf.MLP(1, nf.DualKernel(nngp)), get="nngp")


def test_unhashable_callables_are_refused_when_the_layer_is_built():
    import dataclasses

    @dataclasses.dataclass
    class Scaled:  # callable, but not frozen: unhashable
        a: float

        def __call__(self, c, q1, q2):
            return self.a * c

    with pytest.raises(TypeError, match="DualKernel: nngp_fn must be hashable.*Scaled"):
        nf.DualKernel(Scaled(0.5))
    with pytest.raises(TypeError, match="ElementwiseNumerical: fn must be hashable"):
        nf.ElementwiseNumerical(Scaled(0.5))


def test_the_users_functions_are_not_kept_alive_after_the_call(points):
    import gc
    import weakref

    x, _ = points

    def make():
        data = np.ones(10)

        def nngp(c, q1, q2):
            return c * data[0]

        return nngp

    fn = make()
    ref = weakref.ref(fn)
    net = nf.MLP(2, nf.DualKernel(fn, square_d_nngp))
    nf.gram(x, net=net)
    nf.diagonal(x, net=net)
    del fn, net
    gc.collect()
    assert ref() is None


def test_dask_keys_differ_for_functions_of_the_same_name():
    da = pytest.importorskip("dask.array")
    import dask
    from ntkfast import dask as nfd

    x = np.random.default_rng(0).standard_normal((200, 5))
    chunked = da.from_array(x, chunks=(100, 5))

    def version(scale):
        def nngp(c, q1, q2):
            return scale * c
        return nf.DualKernel(nngp)

    a = nfd.gram(chunked, net=nf.MLP(2, version(1.0)), get="nngp")
    b = nfd.gram(chunked, net=nf.MLP(2, version(0.5)), get="nngp")
    assert a.name != b.name
    got_a, got_b = dask.compute(a, b, scheduler="threads")
    assert np.allclose(got_b, nf.gram(x, net=nf.MLP(2, version(0.5)), get="nngp"), rtol=1e-14)
    assert not np.allclose(got_a, got_b)


@pytest.mark.parametrize("depth", [1, 3])
def test_near_parallel_pairs_stay_exact_up_to_the_first_dual_kernel(depth):
    """ReLU layers before a DualKernel keep the exact near-parallel recomputation (exact_pair.hpp,
    segment 0): the same network with the built-in Erf in its place agrees to rounding."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 50))
    x = np.vstack([base, base + 1e-7 * rng.standard_normal((4, 50)), 3 * base[:2]])

    def net(erf):
        return nf.serial(*[nf.Dense(1, 1.5, 0.0), nf.Relu()] * depth, nf.Dense(1, 1.5, 0.0),
                         erf, nf.Dense(1))

    got, want = nf.gram(x, net=net(ERF)), nf.gram(x, net=net(nf.Erf()))
    # Without the recomputation the NTK was 6e-9 (depth 1) and 1.8e-8 (depth 3) off.
    assert rel_err(got.ntk, want.ntk) <= 1e-14 and rel_err(got.nngp, want.nngp) <= 1e-14
