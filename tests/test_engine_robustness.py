"""The compiled CPU engine (ntkfast._core) against hostile inputs, options and callers.

Non-finite inputs, variances that underflow, float32 rows whose Gram overflows the GEMM's type,
misaligned outputs, fork(), absurd thread counts and tiles, and progress callbacks that free the
output. Where the public API validates first, the engine is called directly with a hand-built
program, so these tests hold whatever the Python layer checks.
"""
import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ntkfast
from ntkfast import _blas, _core, _series
from ntkfast._errors import EngineNonFinite, KernelUnderflowError

RELU = ntkfast.MLP(2, "relu", W_std=1.5, b_std=0.1)
GETS = ["nngp", "ntk", ("nngp", "ntk")]


def _relu_program(depth=1, w_std=1.0, b_std=0.0):
    """Raw ops: depth x (Dense under the NTK parameterization, ReLU), then a readout Dense."""
    dense = (0, 0, 0, [w_std**2, b_std**2, 0.0, 0.0, 1.0])  # Dense
    relu = (2, 0, 0, [1.0 / (2 * math.pi), 0.5])  # ABRelu(a=0, b=1)
    return _core.Program([dense, relu] * depth + [dense], [])


def _engine_gram(x, program, *, nngp=None, ntk=None, threads=0, tile=0, progress=None):
    _blas.ensure_loaded()
    with _blas.single_threaded():
        _core.gram(program, x, None, nngp, ntk, threads, tile, progress)


# ------------------------------------------------------------------------------------------------
# NaN and Inf inputs must not vanish into a finite diagonal.

@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("get", GETS)
def test_engine_non_finite_input_row_raises(bad, get):
    x = np.random.default_rng(0).standard_normal((6, 4))
    x[3, 2] = bad
    with pytest.raises(ntkfast.NonFiniteKernelError):
        ntkfast.gram(x, net=RELU, get=get, check_finite=False)


@pytest.mark.parametrize("get", GETS)
def test_engine_non_finite_input_row_raises_in_diagonal(get):
    x = np.random.default_rng(1).standard_normal((6, 4))
    x[4, 0] = np.nan
    with pytest.raises(ntkfast.NonFiniteKernelError):
        ntkfast.diagonal(x, net=RELU, get=get, check_finite=False)


def test_engine_reports_the_input_layer_for_a_nan_row():
    x = np.ones((3, 2))
    x[1, 1] = np.nan
    with pytest.raises(EngineNonFinite) as info:
        _engine_gram(x, _relu_program(), nngp=np.empty((3, 3)))
    assert (info.value.point_set, info.value.row, info.value.op) == (1, 1, -1)
    assert math.isnan(info.value.value) and not info.value.underflow


# ------------------------------------------------------------------------------------------------
# Variances so small (or large) that q1·q2 leaves the double range: the positively homogeneous ops
# (ReLU & co.) are computed exactly at rescaled variances; a variance that is already subnormal
# raises KernelUnderflowError.

def _relu_mlp_oracle(x, depth):
    """ntkfast.MLP(depth) (ReLU, W_std=1, b_std=0, 'ntk'), computed at variances scaled by 2^l after
    ReLU l (exact: ReLU is positively homogeneous), so nothing underflows; numpy only."""
    c = x @ x.T / x.shape[1]
    t = np.zeros_like(c)
    for _ in range(depth):
        t = t + c  # Dense: c unchanged, t <- t + c
        q = np.diag(c).copy()
        r = np.sqrt(np.maximum(np.outer(q, q) - c * c, 0.0))
        theta = np.arctan2(r, c)
        c_new = (r + (np.pi - theta) * c) / (2 * np.pi)
        t = 2.0 * (np.pi - theta) / (2 * np.pi) * t
        c = 2.0 * c_new
        np.fill_diagonal(c, q)  # the exact diagonal: ReLU halves the variance, then x2
    t = t + c  # the readout Dense
    return c * 2.0**-depth, t * 2.0**-depth


@pytest.mark.parametrize("depth", [600, 1000])
def test_engine_deep_shrinking_relu_is_exact(depth):
    """The all-default MLP halves the variance every layer: 2^-600 and 2^-1000 are exact."""
    x = np.random.default_rng(3).standard_normal((5, 3))
    want_nngp, want_ntk = _relu_mlp_oracle(x, depth)
    got = ntkfast.gram(x, net=ntkfast.MLP(depth))
    # The NTK's sum over 600 layers of θ's rounding near ρ = 1 is ~1e-12 at any scale (depth 499,
    # all in range, agrees as closely); before, depth 600 was 6.7 % off.
    np.testing.assert_allclose(got.nngp, want_nngp, rtol=1e-13, atol=0)
    np.testing.assert_allclose(got.ntk, want_ntk, rtol=1e-10, atol=0)
    diag = ntkfast.diagonal(x, net=ntkfast.MLP(depth))
    np.testing.assert_array_equal(diag.nngp, np.diag(got.nngp))
    np.testing.assert_array_equal(diag.ntk, np.diag(got.ntk))


@pytest.mark.parametrize("scale_exp", [-340, -500, 300])
def test_engine_extreme_inputs_are_exact_for_homogeneous_nets(scale_exp):
    """K(2^k x) = 4^k K(x) for ReLU without biases, to the last bit, also where q1·q2 leaves the
    double range (inputs ~1e-100 were 37 % off)."""
    x = np.random.default_rng(4).standard_normal((6, 3))
    for net in (ntkfast.MLP(2, "relu", W_std=1.4, b_std=0.0), ntkfast.MLP(1, "relu", W_std=1.0)):
        scaled = ntkfast.gram(x * 2.0**scale_exp, net=net)
        ref = ntkfast.gram(x, net=net)
        np.testing.assert_array_equal(scaled.nngp, ref.nngp * 4.0**scale_exp)
        np.testing.assert_array_equal(scaled.ntk, ref.ntk * 4.0**scale_exp)


def test_engine_subnormal_variance_raises_underflow():
    x = np.random.default_rng(2).standard_normal((5, 3)) * 1e-160  # variance ~1e-320: subnormal
    with pytest.raises(KernelUnderflowError):
        ntkfast.gram(x, net=ntkfast.MLP(1, "relu"))
    with pytest.raises(EngineNonFinite) as info:
        _engine_gram(x, _relu_program(), nngp=np.empty((5, 5)))
    assert info.value.underflow and info.value.op == -1 and 0 < info.value.value < 2.0**-1022
    # 2^-1023 after 1023 ReLUs, entering the next one
    ops = [(0, 0, 0, [1.0, 0.0, 0.0, 0.0, 1.0]), (2, 0, 0, [1.0 / (2 * math.pi), 0.5])] * 1100
    with pytest.raises(EngineNonFinite) as info:
        _engine_gram(np.ones((2, 3)), _core.Program(ops, []), nngp=np.empty((2, 2)))
    assert info.value.underflow and info.value.op == 2 * 1023 and info.value.value == 2.0**-1023
    with pytest.raises(KernelUnderflowError):
        ntkfast.diagonal(np.ones((2, 3)), net=ntkfast.MLP(1100))


def test_engine_zero_variance_rows_still_work():
    x = np.random.default_rng(5).standard_normal((4, 3))
    x[2] = 0.0
    k = ntkfast.gram(x, net=ntkfast.MLP(3, "relu", W_std=1.4, b_std=0.0))
    assert np.all(np.isfinite(k.nngp)) and np.all(np.isfinite(k.ntk))
    assert np.all(k.nngp[2] == 0.0) and np.all(k.nngp[:, 2] == 0.0)


# ------------------------------------------------------------------------------------------------
# float32 rows whose Gram overflows (or turns subnormal) in the float32 GEMM.

@pytest.mark.parametrize("scale, w_std, mixed", [(1e19, 0.5, True), (1e-22, 1e20, False)])
def test_engine_float32_rows_out_of_gemm_range(scale, w_std, mixed):
    """x·x' overflows float32 at 1e19 (NaN, or ρ snapped to 1) and is subnormal at 1e-22, while
    the kernels (W_std chosen so) fit float32 comfortably."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, 16)) * scale
    if mixed:
        x[::3] /= scale  # ordinary rows among the scaled ones
    x32 = x.astype(np.float32)
    net = ntkfast.MLP(1, "relu", W_std=w_std, b_std=0.0)
    got = ntkfast.gram(x32, net=net)
    ref = ntkfast.gram(x32.astype(np.float64), net=net)
    for name in ("nngp", "ntk"):
        g, r = getattr(got, name), getattr(ref, name)
        assert g.dtype == np.float32 and np.all(np.isfinite(g))
        scale_ij = np.sqrt(np.outer(np.diag(r), np.diag(r)))
        assert np.max(np.abs(g - r) / scale_ij) <= 2e-6


def test_engine_float32_scaling_leaves_in_range_rows_bit_identical():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((30, 16)).astype(np.float32)
    huge = np.vstack([x, (rng.standard_normal((1, 16)) * 1e19).astype(np.float32)])
    net = ntkfast.MLP(2, "relu", W_std=0.5, b_std=0.1)
    plain = ntkfast.gram(x, net=net)
    mixed = ntkfast.gram(huge, net=net)
    np.testing.assert_array_equal(mixed.nngp[:30, :30], plain.nngp)
    np.testing.assert_array_equal(mixed.ntk[:30, :30], plain.ntk)


# ------------------------------------------------------------------------------------------------
# Outputs that are not element-aligned (streaming stores need alignment).

def test_engine_misaligned_large_output(tmp_path):
    n = 3000  # two float64 kernels of 72 MB each: above the streaming-store threshold
    x = np.random.default_rng(8).standard_normal((n, 4))
    nbytes = n * n * 8
    mm = np.memmap(tmp_path / "out.bin", dtype=np.uint8, mode="w+", shape=(2 * nbytes + 8,))
    nngp = np.ndarray((n, n), dtype=np.float64, buffer=mm, offset=4)
    ntk = np.ndarray((n, n), dtype=np.float64, buffer=mm, offset=4 + nbytes)
    assert nngp.ctypes.data % 8 == 4 and nngp.flags.c_contiguous
    program = _relu_program(2, 1.4, 0.1)
    _engine_gram(x, program, nngp=nngp, ntk=ntk)
    ref_nngp, ref_ntk = np.empty((200, 200)), np.empty((200, 200))
    _engine_gram(np.ascontiguousarray(x[:200]), program, nngp=ref_nngp, ntk=ref_ntk)
    np.testing.assert_array_equal(nngp[:200, :200], ref_nngp)
    np.testing.assert_array_equal(ntk[:200, :200], ref_ntk)
    assert np.array_equal(nngp, nngp.T)
    del nngp, ntk, mm


# ------------------------------------------------------------------------------------------------
# fork(): libgomp's pool does not survive it; the child must not hang.

def test_engine_gram_in_forked_child():
    """multiprocessing's 'fork' workers after a multi-threaded gram in the parent (hung forever)."""
    script = textwrap.dedent("""
        import multiprocessing, sys
        import numpy as np
        import ntkfast
        from ntkfast import _core
        x = np.random.default_rng(9).standard_normal((700, 20))
        net = ntkfast.MLP(2, "relu", W_std=1.4, b_std=0.1)
        def work(_):
            k = ntkfast.gram(x, net=net, num_threads=2)
            return _core.in_forked_child(), k.nngp, k.ntk
        if __name__ == "__main__":
            parent = work(0)
            assert not parent[0]
            with multiprocessing.get_context("fork").Pool(2) as pool:
                children = pool.map(work, [0, 1])
            for forked, nngp, ntk in children:
                assert forked
                assert np.array_equal(nngp, parent[1]) and np.array_equal(ntk, parent[2])
            print("ok")
    """)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", script], timeout=120,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_a_child_forked_during_a_call_gets_the_blas_threads_back():
    """fork() while another thread was inside gram: the child inherited the BLAS limit of one
    thread with nobody left to restore it, so it stayed there for good (even after the child's
    own calls)."""
    script = textwrap.dedent("""
        import os, sys
        import numpy as np
        import ntkfast
        from ntkfast import _blas
        from threadpoolctl import threadpool_info
        def blas_threads():
            return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        _blas.ensure_loaded()
        before = blas_threads()
        with _blas.single_threaded():  # a call in flight, as another thread's gram would be
            assert blas_threads() == [1] * len(before)
            pid = os.fork()
            if pid == 0:
                ok = blas_threads() == before
                ntkfast.gram(np.ones((50, 3)), net=ntkfast.MLP(1))
                os._exit(0 if ok and blas_threads() == before else 1)
            _, status = os.waitpid(pid, 0)
        print("ok" if os.waitstatus_to_exitcode(status) == 0 and blas_threads() == before
              and max(before) > 1 else f"child {status}, parent {blas_threads()} vs {before}")
    """)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", script], timeout=120,
                            capture_output=True, text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "2"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.stdout, result.stderr)


# ------------------------------------------------------------------------------------------------
# Thread counts and tiles: reject the absurd, clamp the oversized, never abort.

def test_a_huge_thread_count_on_a_small_gram_uses_no_more_threads_than_tiles():
    """num_threads=1024 on a 3-tile Gram: every thread of the team allocated its tile buffers
    (3.5 MB each), 3.6 GB in all, and the call took seconds instead of milliseconds."""
    script = textwrap.dedent("""
        import resource
        import numpy as np
        import ntkfast
        x = np.random.default_rng(0).standard_normal((600, 20))
        net = ntkfast.MLP(2)
        expected = ntkfast.gram(x, net=net, num_threads=2)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        k = ntkfast.gram(x, net=net, num_threads=1024)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        same = np.array_equal(k.ntk, expected.ntk) and np.array_equal(k.nngp, expected.nngp)
        print("ok" if same and grown < 200_000 else f"same={same}, peak grew by {grown} KiB")
    """)
    result = subprocess.run([sys.executable, "-c", script], timeout=300, capture_output=True,
                            text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.stdout, result.stderr)


def test_engine_rejects_absurd_thread_counts():
    x = np.random.default_rng(10).standard_normal((8, 3))
    with pytest.raises(ValueError, match="num_threads"):
        _engine_gram(x, _relu_program(), nngp=np.empty((8, 8)), threads=100000)


@pytest.mark.parametrize("tile", [2**20, 2**31 - 1])
def test_engine_clamps_huge_tiles(tile):
    x = np.random.default_rng(11).standard_normal((8, 3))
    got, ref = np.empty((8, 8)), np.empty((8, 8))
    _engine_gram(x, _relu_program(), nngp=got, tile=tile)
    _engine_gram(x, _relu_program(), nngp=ref)
    np.testing.assert_array_equal(got, ref)


# ------------------------------------------------------------------------------------------------
# A progress callback that frees the output must stop the engine, not let it write freed memory.

def test_engine_progress_callback_resizing_output_is_caught():
    x = np.random.default_rng(12).standard_normal((1200, 8))
    out = np.zeros((1200, 1200))
    calls = []

    def progress(done, total):
        calls.append(done)
        if len(calls) == 1:
            out.resize((0,), refcheck=False)

    _blas.ensure_loaded()
    with pytest.raises(RuntimeError, match="resized or reallocated"):
        with _blas.single_threaded():
            # tile 16: many tiles, so the first poll (after 0.1 s or at the end) comes mid-way or last
            _core.gram(_relu_program(40), x, None, out, None, 0, 16, progress)
    assert calls and out.shape == (0,)


# ------------------------------------------------------------------------------------------------
# What the extension exports for the Python side's consistency checks.

def test_engine_exports_op_kinds_and_limits():
    assert _core.OP_KINDS == {
        "Dense": 0, "Identity": 1, "ABRelu": 2, "Erf": 3, "Gelu": 4, "Sin": 5, "Rbf": 6, "Exp": 7,
        "ExpNormalized": 8, "Gaussian": 9, "Gabor": 10, "Sign": 11, "RectifiedMonomial": 12,
        "Polynomial": 13, "Hermite": 14, "Series": 15, "Callback": 16}
    assert _core.MAX_DEGREE == 24 and isinstance(_core.MAX_DEGREE, int)
    assert _core.MAX_SERIES_DEGREE == 1024 and isinstance(_core.MAX_SERIES_DEGREE, int)
    assert _core.in_forked_child() is False


def test_engine_relu_at_zero_variance_is_uncorrelated():
    """θ = π/2 where q1 q2 = 0 (the uncorrelated limit, as Sign and RectifiedMonomial): ReLU's
    E[φ'φ'] is 1/4 there, also for a point with itself (it was 1/2, θ = atan2(0, 0) = 0)."""
    x = np.array([[0.3, 1.0], [1.0, -0.2]])
    ops = [(0, 0, 0, [0.0, 0.0, 2.0, 0.0, 0.0]),  # Dense 'standard', W = b = 0: t <- 2·c_old
           (2, 0, 0, [1.0 / (2 * math.pi), 0.5])]
    ntk, nngp = np.empty((2, 2)), np.empty((2, 2))
    _engine_gram(x, _core.Program(ops, []), nngp=nngp, ntk=ntk)
    np.testing.assert_array_equal(nngp, 0.0)
    np.testing.assert_allclose(ntk, 2.0 * (x @ x.T / 2) * 0.25, rtol=1e-15)


@pytest.mark.parametrize("op, degree", [
    ((2, 0, 0, [0.3 / (2 * math.pi), 0.6]), 1),      # ABRelu, a leaky one
    ((11, 0, 0, []), 0),                               # Sign
    ((12, 2, 0, []), 2),                               # RectifiedMonomial(2)
    ((12, 0, 0, []), 0),                               # RectifiedMonomial(0)
    ((8, 1, 0, [0.7, -0.2]), 1),                       # ExpNormalized (clipped)
])
@pytest.mark.parametrize("k", [-260, 240])
def test_engine_homogeneous_ops_rescale_exactly(op, degree, k):
    """K(2^k x) = 4^(k·degree) K(x) bit for bit, where 2^k puts q1·q2 out of the double range."""
    x = np.random.default_rng(13).standard_normal((7, 3))
    dense = (0, 0, 0, [1.0, 0.0, 0.0, 0.0, 1.0])
    program = _core.Program([dense, op, dense], [])
    results = []
    for arr in (x * 2.0**k, x):
        nngp, ntk = np.empty((7, 7)), np.empty((7, 7))
        _engine_gram(arr, program, nngp=nngp, ntk=ntk)
        results.append((nngp, ntk))
    (nngp_s, ntk_s), (nngp, ntk) = results
    np.testing.assert_array_equal(nngp_s, nngp * 4.0 ** (k * degree))
    # the NTK: t = Σ (W² ... c_l) over the layers, each of its own degree; compare the
    # readout's share t - c (the op's E[φ'φ'] t_in, degree - 1 + 1 = degree for t_in ~ c_in)
    np.testing.assert_array_equal(ntk_s - nngp_s, (ntk - nngp) * 4.0 ** (k * degree))


@pytest.mark.parametrize("tiny", [1.6e-308, 1e-160])
def test_engine_unrepresentable_input_variance_raises(tiny):
    """A nonzero row whose variance underflows (to 0 or a subnormal) would be taken for a zero row
    (its Gram entries, 3.7e-308 here, were snapped to 0); an all-zero row is fine."""
    x = np.random.default_rng(14).standard_normal((5, 2))
    x[3] = [-tiny, 0.0]
    net = ntkfast.serial(ntkfast.Dense(1, 2.0, None, "standard"))
    with pytest.raises(KernelUnderflowError):
        ntkfast.gram(x, net=net, get="nngp")
    with pytest.raises(EngineNonFinite) as info:
        _engine_gram(x, _relu_program(), nngp=np.empty((5, 5)))
    assert info.value.underflow and (info.value.row, info.value.op) == (3, -1)
    x[3] = 0.0
    k = ntkfast.gram(x, net=net, get="nngp")
    assert np.all(k[3] == 0.0) and np.all(np.isfinite(k))


def test_series_ops_are_validated_by_the_engine():
    """A Series op whose tables are missing, short or misshapen is refused before any tile runs."""
    kind = _core.OP_KINDS["Series"]
    x = np.random.default_rng(0).standard_normal((5, 3))
    dense = (_core.OP_KINDS["Dense"], 0, 0, [1.0, 0.0, 0.0, 0.0, 1.0])
    prog = _core.Program([dense, (kind, 4, 0, [0.0, 0.0]), dense], [])
    out = np.empty((5, 5))
    tables = np.zeros((2 * 4 + 4, 5))
    profiles = np.zeros((1, 6))
    with _blas.single_threaded():
        with pytest.raises(ValueError, match="rows of series tables"):
            _core.gram(prog, x, None, out, None, 0, 0, None)
        with pytest.raises(ValueError, match="rows of series tables"):
            _core.gram(prog, x, None, out, None, 0, 0, None, tables[:5], None, profiles)
        with pytest.raises(ValueError, match="series1: wrong shape"):
            _core.gram(prog, x, None, out, None, 0, 0, None, np.zeros((12, 4)), None, profiles)
        with pytest.raises(ValueError, match="tail profiles required"):
            _core.gram(prog, x, None, out, None, 0, 0, None, tables, None, None)
        with pytest.raises(ValueError, match="shorter than degree"):
            _core.gram(prog, x, None, out, None, 0, 0, None, tables, None, profiles[:, :3].copy())
        other = _core.Program([dense, (kind, 4, 0, [0.0, 1.0]), dense], [])  # a second profile
        with pytest.raises(ValueError, match="no tail profile for op 1"):
            _core.gram(other, x, None, out, None, 0, 0, None, tables, None, profiles)
        # Fallback records (series_fallback.hpp): one per op, well-formed, or -1 for none.
        good = _series._fallback(ntkfast.Tanh(), 1.0)
        bad_records = [np.zeros((1, 3)), np.zeros((0, good.size)),  # too short / none for op 1
                       good[None, :-1].copy(),  # truncated coefficients
                       np.r_[good[:1], -good[1:2], good[2:]][None, :],  # h < 0
                       np.r_[2.0, good[1:]][None, :],  # kinked flag neither 0 nor 1
                       np.r_[good[:3], 1e9, good[4:]][None, :]]  # panels beyond the data
        for record in bad_records:
            with pytest.raises(ValueError, match="malformed fallback record for op 1"):
                _core.gram(prog, x, None, out, None, 0, 0, None, tables, None, profiles, record,
                           100.0)
        with pytest.raises(ValueError, match="fallback_above must be >= 1"):
            _core.gram(prog, x, None, out, None, 0, 0, None, tables, None, profiles,
                       good[None, :].copy(), float("nan"))
        none = np.array([[-1.0]])  # no fallback: accepted
        _core.gram(prog, x, None, out, None, 0, 0, None, tables, None, profiles, none, 100.0)
    for record, a, b, rho in [(good[:-1], 1.0, 1.0, 0.5), (np.array([-1.0]), 1.0, 1.0, 0.5),
                              (good, -1.0, 1.0, 0.5), (good, 1.0, np.inf, 0.5),
                              (good, 1.0, 1.0, 1.5), (good, 1.0, 1.0, np.nan)]:
        with pytest.raises(ValueError, match="record|rho"):
            _core.series_pair_fallback(record, a, b, rho)
    for params in ([-1.0, 0.0], [0.5, 0.0], [0.0, 1e12]):
        with pytest.raises(ValueError, match="malformed series op"):
            _core.Program([dense, (kind, 4, 0, params), dense], [])
    for degree in (0, 1025):
        with pytest.raises(ValueError, match=r"degree out of range \[1, 1024\]"):
            _core.Program([(kind, degree, 0, [0.0, 0.0])], [])


@pytest.mark.parametrize("n1,n2", [(1, None), (63, None), (65, None), (130, 3), (2, 129)])
def test_series_layers_at_edge_sizes(n1, n2):
    """Hermite-series layers read the per-row tables past the last row (the padding) and the
    caller's tables in place: ragged sizes, both shapes (a slice run under ASan, tools/sanitize.sh)."""
    rng = np.random.default_rng(n1)
    x1 = rng.standard_normal((n1, 5))
    x2 = None if n2 is None else rng.standard_normal((n2, 5))
    net = ntkfast.serial(ntkfast.Dense(None, 1.4, 0.1), ntkfast.Tanh(deg=40),
                         ntkfast.Dense(None, 1.4, 0.1), ntkfast.Elu(deg=40), ntkfast.Dense(1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # deg 40: truncation warnings expected
        k = ntkfast.gram(x1, x2, net=net)
        k_t = ntkfast.gram(x2 if x2 is not None else x1, x1, net=net)
    for name in ("nngp", "ntk"):
        assert np.all(np.isfinite(getattr(k, name)))
        np.testing.assert_allclose(getattr(k, name), getattr(k_t, name).T, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Ctrl-C and progress are served between tiles: a deep network's default tile must stay small
# enough that one tile's work is bounded (policy checked, never wall time).

from ntkfast import _backends, _layers, _program  # noqa: E402 - this section's own imports

SHALLOW_ACTIVATIONS = [
    ntkfast.Relu(), ntkfast.Erf(), ntkfast.Gelu(), ntkfast.Sin(), ntkfast.Rbf(), ntkfast.Exp(),
    ntkfast.ExpNormalized(), ntkfast.Gaussian(), ntkfast.Gabor(), ntkfast.Sign(),
    ntkfast.Hermite(_layers.MAX_DEGREE), ntkfast.RectifiedMonomial(_layers.MAX_DEGREE),
    ntkfast.Polynomial((0.5,) * (_layers.MAX_DEGREE + 1)), ntkfast.Tanh(),
    ntkfast.DualKernel(np.maximum)]


@pytest.mark.parametrize("activation", SHALLOW_ACTIVATIONS, ids=repr)
@pytest.mark.parametrize("n_features", [3, 784, 100_000])
def test_default_tile_of_shallow_networks_is_the_engines(activation, n_features):
    # depth <= 20 keeps the tile tuned for speed (the GEMM's rate), whatever the activation
    for depth in (1, 3, 10, 20):
        ops, _, _ = _layers.lower(ntkfast.MLP(depth, activation), n_features)
        assert _program.default_tile(ops, n_features) == _core.default_tile(n_features)


@pytest.mark.parametrize("net", [
    ntkfast.MLP(100, "tanh"), ntkfast.MLP(300, "sin"), ntkfast.MLP(3000, "erf"),
    ntkfast.MLP(5000, "erf"), ntkfast.MLP(20_000, "relu"),
    ntkfast.MLP(50_000, "tanh")], ids=lambda net: f"depth {net.depth}")
def test_default_tile_bounds_the_work_of_one_tile(net):
    ops, _, _ = _layers.lower(net, 10)
    work = _program.tile_work(ops)
    assert work >= len(ops)  # no op is free
    tile = _program.default_tile(ops, 10)
    assert 1 <= tile < _core.default_tile(10)
    # the most entries x ops one tile holds once the tile stops shrinking (tile 1 aside)
    assert tile**2 * work <= max(_program.TILE_WORK_BUDGET, work)
    assert _program.TILE_WORK_BUDGET <= 4e8  # ~0.2 s at 0.4 ns per Dense-op entry


def test_deep_gram_hands_the_engine_a_bounded_tile(monkeypatch):
    # before the fix the engine got tile 0 (its GEMM default, 384): 384^2 x 30001 Dense-op units
    # in one tile, 2-9 s between Ctrl-C checks on a 2-core box
    net = ntkfast.MLP(5000, "erf", W_std=1.0, b_std=0.1)
    seen = []

    class Stop(Exception):
        pass

    def recording_gram(program, x1, x2, nngp, ntk, threads, tile, *args, **kwargs):
        seen.append((program.n_ops, tile))
        raise Stop

    monkeypatch.setattr(_backends._core, "gram", recording_gram)
    x = np.random.default_rng(0).standard_normal((40, 10))
    with pytest.raises(Stop):
        ntkfast.gram(x, net=net)
    (n_ops, tile), = seen
    assert n_ops == 10_001 and tile >= 1
    assert tile**2 * _program.tile_work(_layers.lower(net, 10)[0]) <= _program.TILE_WORK_BUDGET
    seen.clear()
    with pytest.raises(Stop):
        ntkfast.gram(x, net=net, tile_size=384)  # an explicit tile_size still wins
    assert seen == [(10_001, 384)]


def test_deep_gram_is_cancelled_from_its_first_progress_report():
    # the engine's cancel path (a progress callback raising, as Ctrl-C does) on a deep net: the
    # first report comes after the first tiles, and many small tiles mean many reports
    net = ntkfast.MLP(5000, "erf", W_std=1.0, b_std=0.1)
    x = np.random.default_rng(0).standard_normal((400, 10))
    reports = []

    class Stop(Exception):
        pass

    def progress(done, total):
        reports.append((done, total))
        raise Stop

    with pytest.raises(Stop):
        ntkfast.gram(x, net=net, get="nngp", progress=progress)
    (done, total), = reports
    tile = _program.default_tile(_layers.lower(net, 10)[0], 10)
    tiles_per_side = -(-400 // tile)
    assert total == tiles_per_side * (tiles_per_side + 1) // 2 >= 15  # before: 3 tiles
    assert done < total


# ------------------------------------------------------------------------------------------------
# The per-row tables grow with points x depth: checked against free memory before they exist.

@pytest.mark.parametrize("call", ["gram", "gram_x2", "diagonal"])
def test_row_tables_beyond_memory_are_a_memory_error_up_front(monkeypatch, call):
    # before: the engine allocated them (std::bad_alloc under a memory limit) or ran on
    monkeypatch.setattr(_backends, "available_memory", lambda: 50 * 10**6)
    x = np.random.default_rng(0).standard_normal((600, 4))
    net = ntkfast.MLP(3000, "relu", W_std=1.0, b_std=0.1)  # 6001 ops: 6002 x 704 x 20 = 84.5 MB
    run = {"gram": lambda: ntkfast.gram(x, net=net, get="nngp"),
           "gram_x2": lambda: ntkfast.gram(x, x[:10], net=net, get="nngp"),
           "diagonal": lambda: ntkfast.diagonal(x, net=net, get="nngp")}[call]
    what = "diagonal" if call == "diagonal" else "gram"
    points = {"gram": "600 x1", "gram_x2": "600 x1 and 10 x2", "diagonal": "600 x"}[call]
    with pytest.raises(MemoryError, match=rf"^{what}: the per-row variance tables for {points} "
                                          r"points through the 6001 ops of net need \d+\.\d MB, "
                                          r"more than the 50\.0 MB"):
        run()


def test_small_row_tables_do_not_ask_for_free_memory(monkeypatch):
    def fail():
        raise AssertionError("available_memory read for small tables")

    monkeypatch.setattr(_backends, "available_memory", fail)
    x = np.random.default_rng(0).standard_normal((50, 4))
    assert ntkfast.gram(x, net=RELU, get="nngp").shape == (50, 50)
