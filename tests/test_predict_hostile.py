"""Hostile inputs to ntkfast.predict's iterative path and edge cases of the exact one: the
iterative solvers check array kernels as the exact path does (and refuse indefinite ones from
their Ritz values), honour maxiter, take t = ∞ inside time arrays; max_learning_rate of a zero
kernel; a relative diag_reg that overflows. Oracles: the exact (eigh) path's outputs and
messages, NumPy's eigvalsh and solve."""
import numpy as np
import pytest

import ntkfast as nf
from ntkfast import ConvergenceError, predict
from ntkfast._predict_iterative import as_operator
from ntkfast._solvers import DenseOperator, lanczos_functions

NOT_PSD = r"k_train_train must be positive semi-definite \(a kernel matrix\)"
ITERATIVE = ("cg", "lanczos")
NET = nf.MLP(2, "relu", W_std=1.5, b_std=0.05)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x, x_test = rng.standard_normal((20, 3)), rng.standard_normal((5, 3))
    return dict(x=x, x_test=x_test, y=rng.standard_normal((20, 2)),
                k=nf.gram(x, net=NET, get="ntk"), k_td=nf.gram(x_test, x, net=NET, get="ntk"),
                nngp=nf.gram(x, net=NET, get="nngp"))


def _indefinite(k):
    """k with its three smallest eigenvalues replaced by −0.1·λ_max (symmetric, not PSD)."""
    w, v = np.linalg.eigh(k)
    w[:3] = -0.1 * w[-1]
    bad = (v * w) @ v.T
    return (bad + bad.T) / 2


def _message(call):
    with pytest.raises((ValueError, TypeError)) as error:
        call()
    return type(error.value), str(error.value)


# -- D1: array kernels on the iterative path get the exact path's checks -------------------------

def _broken_kernels(k):
    non_symmetric = k.copy()
    non_symmetric[1, 5] += 0.3 * np.abs(k).max()
    with_nan, with_inf = k.copy(), k.copy()
    with_nan[2, 2] = np.nan
    with_inf[3, 4] = with_inf[4, 3] = np.inf
    return {"non-symmetric": non_symmetric, "nan": with_nan, "inf": with_inf,
            "complex": k + 0j, "3-D": k[None], "non-square": k[:, :19],
            "empty": np.zeros((0, 0)), "object": k.astype(object)}


@pytest.mark.parametrize("solver", ITERATIVE)
@pytest.mark.parametrize("kind", ["non-symmetric", "nan", "inf", "complex", "3-D", "non-square",
                                  "empty", "object"])
def test_iterative_path_checks_array_kernels_like_the_exact_path(problem, solver, kind):
    bad = _broken_kernels(problem["k"])[kind]
    y = problem["y"][:bad.shape[0]] if bad.ndim == 2 else problem["y"]
    expected = _message(lambda: predict.gradient_descent_mse(bad, y, diag_reg=1e-2,
                                                             solver="eigh"))
    got = _message(lambda: predict.gradient_descent_mse(bad, y, diag_reg=1e-2, solver=solver)(
        10.0, 0.0))
    assert got == expected
    assert "k_train_train" in got[1]


@pytest.mark.parametrize("kind", ["non-symmetric", "nan"])
def test_gp_inference_cg_checks_each_array_kernel_by_name(problem, kind):
    bad = _broken_kernels(problem["nngp"])[kind]
    kernels = nf.Kernels(nngp=bad, ntk=problem["k"])
    expected = _message(lambda: predict.gp_inference(kernels, problem["y"], 1e-2, solver="eigh")(
        "nngp", problem["k_td"]))
    got = _message(lambda: predict.gp_inference(kernels, problem["y"], 1e-2, solver="cg")(
        "nngp", problem["k_td"]))
    assert got == expected
    assert got[1].startswith("k_train_train (nngp) ")


def test_iterative_path_keeps_a_float32_kernel_without_a_copy(problem):
    k32 = problem["k"].astype(np.float32)
    op = as_operator(k32, "k_train_train")
    assert op.dtype == np.float32
    assert np.shares_memory(op.k, k32)


@pytest.mark.parametrize("maxiter", [None, 5])
def test_lanczos_refuses_an_indefinite_kernel_like_the_exact_path(problem, maxiter):
    bad = _indefinite(problem["k"])
    with pytest.raises(ValueError, match=NOT_PSD) as exact:
        predict.gradient_descent_mse(bad, problem["y"])(10.0, 0.0)
    # the smallest eigenvalue the exact path reports, -0.1·λ_max, bounds the Ritz value's
    with pytest.raises(ValueError, match=NOT_PSD + r", but it has eigenvalue -4\.\d+ "):
        predict.gradient_descent_mse(bad, problem["y"], solver="lanczos", maxiter=maxiter)(
            10.0, 0.0, 0.0, problem["k_td"])
    assert "eigenvalue -4.9075" in str(exact.value)


def test_lanczos_refusal_names_the_shifted_kernel(problem):
    bad = _indefinite(problem["k"])
    with pytest.raises(ValueError, match=NOT_PSD + r".*k_train_train \+ 0\.5·I \(diag_reg\)"):
        predict.gradient_descent_mse(bad, problem["y"], diag_reg=0.5,
                                     diag_reg_absolute_scale=True, solver="lanczos")(10.0, 0.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lanczos_accepts_a_singular_psd_kernel(problem, dtype):
    # duplicates: exact zero eigenvalues, negative ones only by round-off
    x = np.r_[problem["x"], problem["x"][:5]]
    k = nf.gram(x, net=NET, get="ntk", dtype=dtype)
    y = np.random.default_rng(1).standard_normal((25, 2))
    times = np.array([1.0, 100.0])
    exact = predict.gradient_descent_mse(k.astype(np.float64), y)(times, 0.3)
    got = predict.gradient_descent_mse(k, y, solver="lanczos")(times, 0.3)
    assert np.abs(got - exact).max() <= (1e-10 if dtype == np.float64 else 1e-5) * np.abs(y).max()


def test_lanczos_info_reports_ritz_values_inside_the_spectrum(problem):
    k, shift = problem["k"], 0.25
    w = np.linalg.eigvalsh(k) + shift
    _, info = lanczos_functions(DenseOperator(k), problem["y"], lambda lam: np.exp(-lam)[:, None],
                                shift=shift)
    slack = 1e-12 * w[-1]
    assert w[0] - slack <= info.ritz_min <= info.ritz_max <= w[-1] + slack
    assert info.ritz_max == pytest.approx(w[-1], rel=1e-10)  # the top converges first


# -- D2: maxiter ---------------------------------------------------------------------------------

def test_maxiter_limits_the_lanczos_steps(problem):
    fn = predict.gradient_descent_mse(problem["k"], problem["y"], diag_reg=1e-2, solver="lanczos",
                                      maxiter=1, preconditioner_rank=0)
    with pytest.raises(ConvergenceError, match=r"maxiter=1") as error:
        fn(10.0, 0.0)
    assert error.value.info.steps.max() == 1


@pytest.mark.parametrize("maxiter", [4, 20])
def test_lanczos_never_takes_more_than_maxiter_steps(problem, maxiter):
    fn = predict.gradient_descent_mse(problem["k"], problem["y"], diag_reg=1e-2, solver="lanczos",
                                      maxiter=maxiter)
    try:
        got = fn([1.0, 10.0], 0.0)
    except ConvergenceError as error:
        info = error.info
    else:
        info = fn.info
        exact = predict.gradient_descent_mse(problem["k"], problem["y"], diag_reg=1e-2)(
            [1.0, 10.0], 0.0)
        np.testing.assert_allclose(got, exact, atol=1e-9)
    assert info.steps.max() <= maxiter
    if maxiter == 20:  # n_train: the Krylov space is the whole space, Lanczos is exact
        assert info.converged


@pytest.mark.parametrize("solver", ("eigh",) + ITERATIVE)
@pytest.mark.parametrize("maxiter", [-3, 0, 2.5, True, "10"])
def test_maxiter_is_validated_when_the_system_is_built(problem, solver, maxiter):
    match = r"maxiter must be None or a positive integer"
    with pytest.raises(ValueError, match=match):
        predict.gradient_descent_mse(problem["k"], problem["y"], solver=solver, maxiter=maxiter)
    with pytest.raises(ValueError, match=match):
        predict.gp_inference(problem["k"], problem["y"], solver=solver, maxiter=maxiter)
    with pytest.raises(ValueError, match=match):
        predict.gradient_descent_mse_ensemble(NET, problem["x"], problem["y"], solver=solver,
                                              maxiter=maxiter)


# -- D3: t = ∞ and empty time arrays on the iterative path ----------------------------------------

TIMES = [np.inf, [1.0, np.inf], [[np.inf, 3.0], [0.0, 1e4]], [], [np.inf, np.inf]]


@pytest.mark.parametrize("solver", ITERATIVE)
@pytest.mark.parametrize("t", TIMES, ids=["inf", "1,inf", "2x2", "empty", "inf,inf"])
@pytest.mark.parametrize("one_d", [False, True])
def test_iterative_path_takes_infinite_and_empty_times(problem, solver, t, one_d):
    y = problem["y"][:, 0] if one_d else problem["y"]
    f0, g0 = (0.3, 0.1)
    args = (problem["k"], y)
    exact = predict.gradient_descent_mse(*args, diag_reg=1e-2)(t, f0, g0, problem["k_td"])
    fn = predict.gradient_descent_mse(*args, diag_reg=1e-2, solver=solver)
    got = fn(t, f0, g0, problem["k_td"])
    for a, b in zip(got, exact):
        assert a.shape == b.shape == np.shape(t) + b.shape[np.ndim(t):]
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8 * max(1.0, np.abs(b).max(initial=0)))
    np.testing.assert_allclose(fn(t, f0), exact[0], rtol=0, atol=1e-8)
    only_test = fn(t, None, g0, problem["k_td"])
    exact_test = predict.gradient_descent_mse(*args, diag_reg=1e-2)(t, None, g0, problem["k_td"])
    np.testing.assert_allclose(only_test, exact_test, rtol=0, atol=1e-8)


def test_iterative_t_inf_is_the_kernel_regression_solve(problem):
    k, y, k_td = problem["k"], problem["y"], problem["k_td"]
    lam = 1e-2 * np.trace(k) / 20
    train, test = predict.gradient_descent_mse(k, y, diag_reg=1e-2, solver="cg")(
        [2.0, np.inf], 0.0, 0.0, k_td)
    np.testing.assert_allclose(test[1], k_td @ np.linalg.solve(k + lam * np.eye(20), y),
                               rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(train[1], y, atol=1e-12)


@pytest.mark.parametrize("solver", ("eigh",) + ITERATIVE)
def test_learning_rate_times_t_overflowing_is_the_end_of_training(problem, solver):
    k, y, k_td = problem["k"], problem["y"], problem["k_td"]
    lam = 1e-2 * np.trace(k) / 20
    _, test = predict.gradient_descent_mse(k, y, 1e300, 1e-2, solver=solver)(1e10, 0.0, 0.0, k_td)
    np.testing.assert_allclose(test, k_td @ np.linalg.solve(k + lam * np.eye(20), y), rtol=1e-8,
                               atol=1e-9)


@pytest.mark.parametrize("solver", ITERATIVE)
def test_ensemble_iterative_path_takes_infinite_times(problem, solver):
    args = (NET, problem["x"], problem["y"])
    times = [1.0, np.inf]
    exact = predict.gradient_descent_mse_ensemble(*args, diag_reg=1e-2, solver="eigh")
    fn = predict.gradient_descent_mse_ensemble(*args, diag_reg=1e-2, solver=solver)
    for x_test in (None, problem["x_test"]):
        got, want = fn(times, x_test), exact(times, x_test)
        for g in ("nngp", "ntk"):
            assert getattr(got, g).shape == getattr(want, g).shape
            np.testing.assert_allclose(getattr(got, g), getattr(want, g), rtol=0, atol=1e-8)
        assert fn([], x_test).ntk.shape == exact([], x_test).ntk.shape


# -- D6: max_learning_rate of a zero kernel ------------------------------------------------------

@pytest.mark.parametrize("n", [10, 600])  # the full-spectrum path and the Lanczos one
@pytest.mark.parametrize("eps", [1e-12, 0.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_max_learning_rate_of_a_zero_kernel_is_inf(n, eps, dtype):
    assert predict.max_learning_rate(np.zeros((n, n), dtype), eps=eps) == np.inf


@pytest.mark.parametrize("n", [10, 600])
def test_max_learning_rate_with_eps_zero_is_the_plain_formula(n):
    k = np.diag(np.linspace(0.5, 3.0, n))
    assert predict.max_learning_rate(k, eps=0.0) == pytest.approx(2 * n / 3.0, rel=1e-12)


# -- D7: a relative diag_reg that overflows ------------------------------------------------------

OVERFLOW = r"diag_reg · mean\(diag\({}\)\) overflows: diag_reg = 1e\+307"


@pytest.mark.parametrize("solver", ("eigh",) + ITERATIVE)
def test_relative_diag_reg_overflow_names_diag_reg(problem, solver):
    k, y = 100 * problem["k"], problem["y"]
    with pytest.raises(ValueError, match=OVERFLOW.format("k_train_train")):
        predict.gradient_descent_mse(k, y, diag_reg=1e307, solver=solver)(1.0, 0.0)
    with pytest.raises(ValueError, match=OVERFLOW.format("k_train_train")):
        predict.gp_inference(k, y, diag_reg=1e307, solver=solver)("ntk", problem["k_td"])
    with pytest.raises(ValueError, match=OVERFLOW.format(r"k_train_train \(nngp\)")):
        predict.gp_inference(nf.Kernels(nngp=k, ntk=k), y, diag_reg=1e307, solver=solver)(
            "nngp", problem["k_td"])


def test_absolute_diag_reg_at_the_same_size_is_accepted(problem):
    # the limit is on the product: 1e307 as an absolute λ is finite and allowed
    out = predict.gradient_descent_mse(problem["k"], problem["y"], diag_reg=1e307,
                                       diag_reg_absolute_scale=True)(None, 0.0, 0.0,
                                                                     problem["k_td"])[1]
    assert np.isfinite(out).all()


def test_a_negative_diagonal_is_named_on_the_iterative_path():
    """The Nyström preconditioner finds it first; its message spoke of `op`, which the caller
    never named."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((60, 3)), rng.standard_normal(60)
    k = nf.gram(x, net=NET, get="ntk")
    k[7, 7] = -1.0
    with pytest.raises(ValueError, match=r"k_train_train: op must be positive semi-definite, but "
                                         r"its diagonal entry 7 is -1 < 0"):
        predict.gradient_descent_mse(k, y, solver="cg")(None, None, 0.0, k[:5])
