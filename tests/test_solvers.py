"""ntkfast._solvers: CG, the Nyström preconditioner and Lanczos f(K)b against dense solutions.

Tolerances (float64 operators): CG residuals ≤ tol (default 1e-10) and solutions within
κ·tol of np.linalg.solve; Lanczos f(K)b within 1e-8 relative of the eigh-based value;
the dynamics within 1e-8 of ntkfast.predict (the same formulas, so any time-convention slip
shows as an O(1) difference). float32 operators: default tol 1e-5.
"""
import time
import warnings

import numpy as np
import pytest

import ntkfast
from ntkfast import predict
from ntkfast._solvers import (ConvergenceError, DenseOperator, block_cg, default_tol,
                              dynamics_functions, lanczos_functions, nystrom_preconditioner)

NET = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)


def ntk(x, x2=None):
    return ntkfast.gram(x, x2, net=NET, get="ntk")


@pytest.fixture(scope="module")
def digits_ntk():
    datasets = pytest.importorskip("sklearn.datasets")
    x = datasets.load_digits().data.astype(np.float64)  # bundled with scikit-learn, no download
    x = (x - x.mean(0)) / (x.std(0) + 1e-9) / np.sqrt(x.shape[1])
    return ntk(x)


@pytest.fixture(scope="module")
def random_problem():
    rng = np.random.default_rng(0)
    x, x_test = rng.standard_normal((400, 8)), rng.standard_normal((30, 8))
    y = np.sin(x[:, :2]) + 0.1 * rng.standard_normal((400, 2))
    return x, x_test, y


def cond(k, shift):
    w = np.linalg.eigvalsh(k)
    return (w[-1] + shift) / max(w[0] + shift, 1e-300)


# ---------------------------------------------------------------------------------------------
# block_cg

@pytest.mark.parametrize("shift", [0.0, 1e-3])
def test_cg_matches_dense_solve_on_ntk(random_problem, shift):
    x, _, y = random_problem
    k = ntk(x)
    b = np.concatenate([y, np.zeros((400, 1)), np.random.default_rng(1).standard_normal((400, 1))],
                       axis=1)
    sol, info = block_cg(DenseOperator(k), b, shift=shift)
    ref = np.linalg.solve(k + shift * np.eye(400), b)
    assert info.converged and info.residuals.max() <= 1e-10
    assert info.residuals[2] == 0 and not sol[:, 2].any()  # zero column: zero solution
    true = np.linalg.norm(b - k @ sol - shift * sol, axis=0)
    np.testing.assert_allclose(info.residuals[[0, 1, 3]],
                               true[[0, 1, 3]] / np.linalg.norm(b[:, [0, 1, 3]], axis=0), rtol=1e-6)
    err = np.linalg.norm(sol - ref) / np.linalg.norm(ref)
    assert err <= 10 * cond(k, shift) * 1e-10
    # one matmat per iteration plus the final true-residual check
    assert info.matmats == info.iterations + 1 + info.restarts
    # 1-D right-hand side keeps its shape
    sol1, _ = block_cg(DenseOperator(k), b[:, 0], shift=shift)
    assert sol1.shape == (400,)
    np.testing.assert_allclose(sol1, sol[:, 0], rtol=1e-7, atol=1e-9 * np.abs(ref).max())


def test_preconditioner_speeds_up_digits_ntk(digits_ntk):
    k = digits_ntk
    n = k.shape[0]
    op = DenseOperator(k)
    b = np.random.default_rng(2).standard_normal((n, 4))
    ref = np.linalg.solve(k, b)
    plain, info_plain = block_cg(op, b)
    precond = nystrom_preconditioner(op, 200, 0.0)
    fast, info_fast = block_cg(op, b, precond=precond)
    assert info_plain.converged and info_fast.converged
    # measured 285 vs 71 iterations (n = 1797)
    assert info_fast.iterations * 3 <= info_plain.iterations
    for sol in (plain, fast):
        assert np.linalg.norm(sol - ref) / np.linalg.norm(ref) <= 1e-7


def test_preconditioner_exact_when_rank_covers_kernel():
    # a rank-20 linear kernel with duplicated points: rank(K) = 20 < n = 300
    rng = np.random.default_rng(3)
    x = rng.standard_normal((150, 20))
    x = np.concatenate([x, x[:150]])
    k = x @ x.T
    op = DenseOperator(k)
    precond = nystrom_preconditioner(op, 64, 0.5, block_size=16)
    assert precond.rank == 20 and precond.rho == 0.0  # stopped early at the kernel's rank
    b = rng.standard_normal((300, 3))
    sol, info = block_cg(op, b, shift=0.5, precond=precond)
    assert info.iterations == 1 and info.converged
    np.testing.assert_allclose(sol, np.linalg.solve(k + 0.5 * np.eye(300), b), rtol=1e-9,
                               atol=1e-12)
    # shift = 0 on the singular kernel, consistent right-hand side b = K z: one iteration too
    exact = nystrom_preconditioner(op, 64, 0.0)
    b0 = k @ rng.standard_normal((300, 2))
    sol0, info0 = block_cg(op, b0, precond=exact)
    assert info0.converged and info0.iterations <= 2
    assert np.linalg.norm(k @ sol0 - b0) <= 1e-10 * np.linalg.norm(b0)


def test_singular_kernel_duplicates(random_problem):
    x, _, y = random_problem
    xd = np.concatenate([x[:200], x[:100]])  # 100 duplicated points
    k = ntk(xd)
    op = DenseOperator(k)
    n = k.shape[0]
    # shift > 0: regular
    sol, info = block_cg(op, y[:n], shift=1e-2)
    np.testing.assert_allclose(sol, np.linalg.solve(k + 1e-2 * np.eye(n), y[:n]), rtol=1e-7,
                               atol=1e-9)
    # shift = 0, consistent: any solution with a small residual
    b = k @ np.random.default_rng(4).standard_normal((n, 2))
    sol, info = block_cg(op, b)
    assert info.converged
    assert np.linalg.norm(k @ sol - b) <= 1e-10 * np.linalg.norm(b) * 1.01
    # shift = 0, inconsistent (different targets on duplicates): no solution -> error, quickly
    b_bad = y[:n].copy()
    b_bad[200:] += 1.0
    start = time.perf_counter()
    with pytest.raises(ConvergenceError, match=r"relative residual \d\.\d+e[-+]\d+") as err:
        block_cg(op, b_bad, maxiter=300)
    assert time.perf_counter() - start < 10
    assert err.value.residuals.shape == (2,) and (err.value.residuals > 1e-10).all()
    # with the preconditioner too
    with pytest.raises(ConvergenceError):
        block_cg(op, b_bad, precond=nystrom_preconditioner(op, 100, 0.0), maxiter=300)


def test_ill_conditioned_maxiter_raises_and_warn_returns_best():
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    k = (q * np.logspace(0, -12, 200)) @ q.T
    op = DenseOperator(0.5 * (k + k.T))
    b = rng.standard_normal((200, 2))
    with pytest.raises(ConvergenceError, match="maxiter=20") as err:
        block_cg(op, b, maxiter=20)
    achieved = err.value.residuals
    assert (achieved > 1e-10).all() and f"{achieved.max():.3e}" in str(err.value)
    assert err.value.info.iterations == 20
    with pytest.warns(RuntimeWarning, match="did not converge"):
        sol, info = block_cg(op, b, maxiter=20, on_nonconvergence="warn")
    assert not info.converged and np.isfinite(sol).all()
    true = np.linalg.norm(b - op.matmat(sol), axis=0) / np.linalg.norm(b, axis=0)
    np.testing.assert_allclose(info.residuals, true, rtol=1e-8)
    assert (true <= 1).all()  # the best iterate is never worse than x = 0


def test_nan_from_operator_raises():
    class Broken(DenseOperator):
        calls = 0

        def matmat(self, v):
            Broken.calls += 1
            out = super().matmat(v)
            if Broken.calls >= 3:
                out[0] = np.nan
            return out

    k = ntk(np.random.default_rng(6).standard_normal((50, 3)))
    with pytest.raises(FloatingPointError, match="NaN"):
        block_cg(Broken(k), np.ones(50))
    with pytest.raises(FloatingPointError, match="NaN"):
        lanczos_functions(Broken(k), np.ones(50), lambda lam: np.exp(-lam)[:, None])


def test_keyboard_interrupt_leaves_solvers_rerunnable(random_problem):
    x, _, y = random_problem
    op = DenseOperator(ntk(x))

    def interrupt(iteration, residuals):
        if iteration == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        block_cg(op, y, callback=interrupt, progress=True)
    sol, info = block_cg(op, y, progress=True)
    assert info.converged
    with pytest.raises(KeyboardInterrupt):
        lanczos_functions(op, y, dynamics_functions([1.0, 10.0], 1.0), callback=interrupt)
    _, linfo = lanczos_functions(op, y, dynamics_functions([1.0, 10.0], 1.0))
    assert linfo.converged


def test_float32_operator_default_tolerance(random_problem):
    x, _, y = random_problem
    k32 = ntkfast.gram(x, net=NET, get="ntk", dtype=np.float32)
    op = DenseOperator(k32)
    assert default_tol(np.float32) == 1e-5 and default_tol(np.float64) == 1e-10
    sol, info = block_cg(op, y, shift=1e-3)
    assert info.tol == 1e-5 and info.converged and info.residuals.max() <= 1e-5
    ref = np.linalg.solve(k32.astype(np.float64) + 1e-3 * np.eye(400), y)
    assert np.linalg.norm(sol - ref) / np.linalg.norm(ref) <= cond(k32, 1e-3) * 1e-5


def test_uniform_nystrom_and_block_sizes(digits_ntk):
    op = DenseOperator(digits_ntk)
    calls = []

    class Counting(DenseOperator):
        def columns(self, idx):
            calls.append(len(idx))
            return super().columns(idx)

    p = nystrom_preconditioner(Counting(digits_ntk), 200, 1e-3, block_size=64)
    assert p.rank == 200 and max(calls) <= 64 and sum(calls) == 200
    u = nystrom_preconditioner(op, 200, 1e-3, method="uniform", rng=np.random.default_rng(1))
    assert u.rank <= 200
    b = np.ones((digits_ntk.shape[0], 1))
    sol, info = block_cg(op, b, shift=1e-3, precond=u)
    assert info.converged
    # P⁻¹ is symmetric positive definite
    r = np.random.default_rng(7).standard_normal((digits_ntk.shape[0], 5))
    m = r.T @ p.apply(r)
    np.testing.assert_allclose(m, m.T, rtol=1e-10, atol=1e-12)
    assert np.linalg.eigvalsh(m).min() > 0


# ---------------------------------------------------------------------------------------------
# Lanczos and the dynamics

def test_lanczos_matches_eigh_for_20_times(random_problem):
    x, _, y = random_problem
    k = ntk(x)
    shift = 1e-4
    w, v = np.linalg.eigh(k + shift * np.eye(400))
    b = np.stack([y[:, 0], np.random.default_rng(8).standard_normal(400)], axis=1)
    # times where e^{−λ_min τ} ≥ e^{−5}: a relative error of a result far below ‖b‖ is limited
    # by round-off, n·ε·‖b‖ (lanczos_functions' floor)
    taus = np.logspace(-3, np.log10(5.0 / w[0]), 20)

    def functions(lam):
        return np.concatenate([np.exp(-np.outer(lam, taus)),
                               -np.expm1(-np.outer(lam, taus)) / lam[:, None]], axis=1)

    out, info = lanczos_functions(DenseOperator(k), b, functions, shift=shift)
    assert info.converged and out.shape == (40, 400, 2)
    exact = np.concatenate([np.exp(-np.outer(taus, w)), -np.expm1(-np.outer(taus, w)) / w])
    for j in range(2):
        ref = v @ (exact * (v.T @ b[:, j])).T  # (n, 40)
        rel = np.linalg.norm(out[:, :, j].T - ref, axis=0) / np.linalg.norm(ref, axis=0)
        assert rel.max() <= 1e-8, rel.max()
    assert info.steps.max() < 400  # stopped before the full space
    # scipy.linalg.expm agrees on one time
    scipy_linalg = pytest.importorskip("scipy.linalg")
    e = scipy_linalg.expm(-taus[5] * (k + shift * np.eye(400))) @ b[:, 1]
    assert np.linalg.norm(out[5, :, 1] - e) <= 1e-8 * np.linalg.norm(e)


def test_lanczos_singular_kernel_and_zero_column(random_problem):
    x, _, y = random_problem
    k = ntk(np.concatenate([x[:100], x[:100]]))
    fns = dynamics_functions(np.logspace(0, 6, 7), 200.0)
    b = np.stack([y[:200, 0], np.zeros(200)], axis=1)
    out, info = lanczos_functions(DenseOperator(k), b, fns)
    assert info.converged and not out[:, :, 1].any()
    w, v = np.linalg.eigh(k)
    exact = fns(w)  # (n, 14): decay, then growth, λ₊ clipped as in predict
    ref = v @ (exact * (v.T @ b[:, 0])[:, None])
    rel = np.linalg.norm(out[:, :, 0].T - ref, axis=0) / np.linalg.norm(ref, axis=0)
    assert rel.max() <= 1e-8, rel.max()


def test_dynamics_functions_match_gradient_descent_mse(random_problem):
    """The integration test: predict's outputs at several t and t = ∞ from the solvers."""
    x, x_test, y = random_problem
    k, k_td = ntk(x), ntk(x_test, x)
    rng = np.random.default_rng(9)
    f0, g0 = 0.1 * rng.standard_normal(y.shape), 0.1 * rng.standard_normal((30, 2))
    eta, diag_reg = 0.7, 1e-3
    reg = diag_reg * np.trace(k) / k.shape[0]  # neural-tangents' relative diag_reg
    t = np.array([0.0, 1.0, 30.0, 1e3, 3e4, 1e6])
    fn = predict.gradient_descent_mse(k, y, learning_rate=eta, diag_reg=diag_reg)
    train_ref, test_ref = fn(t=t, fx_train_0=f0, fx_test_0=g0, k_test_train=k_td)

    fns = dynamics_functions(eta * t, y.size)  # τ = η t, neural-tangents' mean-loss scale N
    out, info = lanczos_functions(DenseOperator(k), np.concatenate([f0 - y, y - f0], 1), fns,
                                  shift=reg)
    decay, growth = fns.split(out)
    train = y[None] + decay[..., :2]  # y + e^{−K̃τ/N}(f₀ − y)
    test = g0[None] + np.einsum("mn,tnk->tmk", k_td, growth[..., 2:])
    np.testing.assert_allclose(train, train_ref, rtol=0, atol=1e-8 * np.abs(train_ref).max())
    np.testing.assert_allclose(test, test_ref, rtol=0, atol=1e-8 * np.abs(test_ref).max())

    # t = ∞: the solve
    train_inf, test_inf = fn(t=None, fx_train_0=f0, fx_test_0=g0, k_test_train=k_td)
    sol, _ = block_cg(DenseOperator(k), y - f0, shift=reg)
    np.testing.assert_allclose(g0 + k_td @ sol, test_inf, atol=1e-8 * np.abs(test_inf).max())

    # the ½·sum convention: scale = 1 at times t/N
    fn_sum = predict.gradient_descent_mse(k, y, learning_rate=eta, diag_reg=diag_reg,
                                          loss_scale="sum")
    ref_sum = fn_sum(t=t / y.size, fx_train_0=f0, fx_test_0=None)
    out_sum, _ = lanczos_functions(DenseOperator(k), f0 - y, dynamics_functions(eta * t / y.size,
                                                                                1.0), shift=reg)
    np.testing.assert_allclose(y[None] + out_sum[:len(t)], ref_sum,
                               atol=1e-8 * np.abs(ref_sum).max())


def test_gp_posterior_mean_and_variance_with_block_cg(random_problem):
    x, x_test, y = random_problem
    kernels = ntkfast.gram(x, net=NET)
    k_td, k_tt = ntkfast.gram(x_test, x, net=NET), ntkfast.gram(x_test, net=NET)
    diag_reg = 1e-3
    post = predict.gp_inference(kernels, y, diag_reg=diag_reg)("nngp", k_td, k_tt)
    k = kernels.nngp
    reg = diag_reg * np.trace(k) / k.shape[0]
    # mean and K*(K + λI)⁻¹K*ᵀ: one block_cg with 2 + 30 right-hand sides
    sol, info = block_cg(DenseOperator(k), np.concatenate([y, k_td.nngp.T], 1), shift=reg)
    assert info.converged
    mean = k_td.nngp @ sol[:, :2]
    cov = k_tt.nngp - k_td.nngp @ sol[:, 2:]
    np.testing.assert_allclose(mean, post.mean, atol=1e-8 * np.abs(post.mean).max())
    np.testing.assert_allclose(np.diagonal(cov), np.diagonal(post.covariance),
                               atol=1e-8 * np.abs(k_tt.nngp).max())


# ---------------------------------------------------------------------------------------------
# Argument checks

@pytest.fixture(scope="module")
def small_op():
    return DenseOperator(ntk(np.random.default_rng(10).standard_normal((20, 3))))


@pytest.mark.parametrize("call, error, match", [
    (lambda op: block_cg(op, np.ones(19)), ValueError, r"B must have shape \(20,\)"),
    (lambda op: block_cg(op, np.ones((20, 2, 2))), ValueError, "B must have shape"),
    (lambda op: block_cg(op, np.ones(20), shift=-1.0), ValueError, "shift must be >= 0"),
    (lambda op: block_cg(op, np.ones(20), tol=0.0), ValueError, r"tol must be in \(0, 1\)"),
    (lambda op: block_cg(op, np.ones(20), tol=-1e-3), ValueError, "tol must be in"),
    (lambda op: block_cg(op, np.ones(20), maxiter=0), ValueError, "maxiter must be a positive"),
    (lambda op: block_cg(op, np.ones(20), x0=np.ones(3)), ValueError, "x0 must have shape"),
    (lambda op: block_cg(op, np.full(20, np.nan)), ValueError, "B contains NaN"),
    (lambda op: block_cg(op, np.ones(20), precond=3), TypeError, "precond must be"),
    (lambda op: block_cg(op, np.ones(20), on_nonconvergence="ignore"), ValueError,
     "on_nonconvergence must be"),
    (lambda op: block_cg(np.eye(20), np.ones(20)), TypeError, r"op must have a callable \.matmat"),
    (lambda op: block_cg(object(), np.ones(20)), TypeError, "op must be a kernel operator"),
    (lambda op: block_cg(op, np.ones(20), callback=1), TypeError, "callback must be callable"),
    (lambda op: nystrom_preconditioner(op, 21, 0.1), ValueError, "rank must be at most 20"),
    (lambda op: nystrom_preconditioner(op, 0, 0.1), ValueError, "rank must be a positive"),
    (lambda op: nystrom_preconditioner(op, 5, -0.1), ValueError, "shift must be >= 0"),
    (lambda op: nystrom_preconditioner(op, 5, 0.1, method="svd"), ValueError,
     "method must be 'rpcholesky' or 'uniform'"),
    (lambda op: nystrom_preconditioner(op, 5, 0.1, rng="x"), TypeError, "rng must be"),
    (lambda op: lanczos_functions(op, np.ones(20), "exp"), TypeError, "functions must be callable"),
    (lambda op: lanczos_functions(op, np.ones(20), lambda lam: np.ones((3, 3))), ValueError,
     r"functions must map an eigenvalue array of shape \(2,\)"),
    (lambda op: lanczos_functions(op, np.ones(21), np.exp), ValueError, "b must have shape"),
    (lambda op: lanczos_functions(op, np.ones(20), np.exp, steps=0), ValueError,
     "steps must be a positive"),
    (lambda op: lanczos_functions(op, np.ones(20), np.exp, tol=2.0), ValueError, "tol must be in"),
    (lambda op: lanczos_functions(op, np.ones(20), np.exp, shift=-1), ValueError,
     "shift must be >= 0"),
    (lambda op: dynamics_functions([1.0, -1.0], 1.0), ValueError, "times must be >= 0"),
    (lambda op: dynamics_functions([1.0, np.inf], 1.0), ValueError, "use block_cg"),
    (lambda op: dynamics_functions([], 1.0), ValueError, "times is empty"),
    (lambda op: dynamics_functions([1.0], 0.0), ValueError, "scale must be > 0"),
    (lambda op: DenseOperator(np.ones((3, 4))), ValueError, "k must be a square"),
])
def test_bad_arguments(small_op, call, error, match):
    with pytest.raises(error, match=match):
        call(small_op)


def test_lanczos_nonconvergence_raises_or_warns(random_problem):
    x, _, y = random_problem
    op = DenseOperator(ntk(x))
    fns = dynamics_functions([1e5], y.size)
    with pytest.raises(ConvergenceError, match=r"steps=8: .*estimated relative error") as err:
        lanczos_functions(op, y[:, 0], fns, steps=8)
    assert err.value.residuals.shape == (2, 1)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        out, info = lanczos_functions(op, y[:, 0], fns, steps=8, on_nonconvergence="warn")
    assert out.shape == (2, 400) and not info.converged and info.steps[0] == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lanczos_functions(op, y[:, 0], fns, progress=True)
