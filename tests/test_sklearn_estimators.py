"""ntkfast.sklearn's estimators: scikit-learn's own estimator checks, agreement with
ntkfast.predict and with plain NumPy solves, the classifiers' probabilities against Monte-Carlo
sampling, pipelines, grid searches (threads), pandas inputs, parameter errors, pickling, the
iterative solver path and the lazy import."""
import inspect
import pickle
import subprocess
import sys

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
ntksk = pytest.importorskip("ntkfast.sklearn")

import ntkfast  # noqa: E402
from ntkfast.sklearn import NNGPClassifier, NNGPRegressor, NTKClassifier, NTKRegressor  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

ESTIMATORS = (NTKRegressor, NNGPRegressor, NTKClassifier, NNGPClassifier)


# ----------------------------------------------------------------------------------------------
# scikit-learn's estimator checks.

def _expected_failed_checks(estimator):
    """The one check that does not apply, with its reason (scikit-learn's mechanism)."""
    if isinstance(estimator, (NTKClassifier, NNGPClassifier)):
        return {"check_decision_proba_consistency":
                "predict_proba is Φ(μ(x)/σ(x)): the share of the trained ensemble (or of the "
                "NNGP posterior) voting for a class, with a spread σ(x) that varies from point "
                "to point, while decision_function is the mean output μ(x) alone; across points "
                "the two rank differently by design (an uncertain point is pulled towards 1/2), "
                "so the check, which assumes a monotone link from one to the other, does not "
                "apply (on some data sets the rankings coincide by chance, hence non-strict)"}
    return {}


# xfail_strict=False (scikit-learn >= 1.8): the inapplicable check may pass by chance
_NON_STRICT = ({"xfail_strict": False} if "xfail_strict" in
               inspect.signature(parametrize_with_checks).parameters else {})


@parametrize_with_checks([NTKRegressor(), NNGPRegressor(), NTKClassifier(), NNGPClassifier(),
                          NNGPClassifier(t=20.0, diag_reg=1e-3, activation="gelu"),
                          NTKRegressor(solver="cg", diag_reg=1e-3, activation="erf", depth=1)],
                         expected_failed_checks=_expected_failed_checks, **_NON_STRICT)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ----------------------------------------------------------------------------------------------
# Agreement with ntkfast.predict and with NumPy.

def _regression_data(rng, n=60, m=15, d=4, k=None):
    x = rng.standard_normal((n, d))
    x_test = rng.standard_normal((m, d))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
    if k is not None:
        y = np.column_stack([y * (j + 1) + j for j in range(k)])
    return x, y, x_test


@pytest.mark.parametrize("cls", [NTKRegressor, NNGPRegressor])
@pytest.mark.parametrize("t", [None, 0.0, 3.0, 1e3])
@pytest.mark.parametrize("outputs", [None, 1, 3])
def test_regressor_equals_ntkfast_predict(rng, cls, t, outputs):
    x, y, x_test = _regression_data(rng, k=outputs)
    params = dict(depth=3, activation="erf", W_std=1.3, b_std=0.2, diag_reg=1e-3, t=t)
    reg = cls(**params).fit(x, y)
    mean, std = reg.predict(x_test, return_std=True)
    net = ntkfast.MLP(3, "erf", W_std=1.3, b_std=0.2)
    fn = ntkfast.predict.gradient_descent_mse_ensemble(net, x, y, diag_reg=1e-3)
    expected = fn(t=t, x_test=x_test, get=cls._kernel, compute_cov=True)
    assert mean.shape == np.shape(expected.mean) == std.shape
    scale = max(np.abs(expected.mean).max(), 1e-300)
    assert np.abs(mean - expected.mean).max() <= 1e-12 * scale + (1e-300 if t == 0 else 0)
    expected_std = np.sqrt(np.maximum(np.diagonal(expected.covariance), 0.0))
    if std.ndim == 2:
        assert np.array_equal(std, np.repeat(std[:, :1], std.shape[1], axis=1))
        std = std[:, 0]
    assert np.allclose(std, expected_std, rtol=1e-10, atol=1e-12 * expected_std.max())
    if t == 0.0:  # the ensemble's mean at initialisation is 0, its spread the prior's
        assert np.all(mean == 0)
        prior = ntkfast.diagonal(x_test, net=net, get="nngp")
        assert np.allclose(std, np.sqrt(prior), rtol=1e-12)


@pytest.mark.parametrize("absolute", [False, True])
def test_regressor_equals_numpy_kernel_ridge(rng, absolute):
    """t = None is kernel ridge regression: a NumPy solve with the ntkfast Gram matrices."""
    x, y, x_test = _regression_data(rng, k=2)
    net = ntkfast.MLP(2, "relu", W_std=1.4, b_std=0.3)
    for cls, get in ((NTKRegressor, "ntk"), (NNGPRegressor, "nngp")):
        k = ntkfast.gram(x, net=net, get=get)
        lam = 1e-2 if absolute else 1e-2 * np.mean(np.diag(k))
        alpha = np.linalg.solve(k + lam * np.eye(len(x)), y)
        expected = ntkfast.gram(x_test, x, net=net, get=get) @ alpha
        reg = cls(net=net, diag_reg=1e-2, diag_reg_absolute_scale=absolute).fit(x, y)
        assert np.allclose(reg.predict(x_test), expected, rtol=1e-10, atol=1e-12)
        assert np.allclose(reg.dual_coef_, alpha, rtol=1e-9, atol=1e-12)


def test_regressor_finite_time_equals_numpy_flow(rng):
    """Finite t: Θ* Θ⁻¹(I − e^{−Θt/N}) Y from a NumPy eigendecomposition (Lee et al. 2019)."""
    x, y, x_test = _regression_data(rng)
    net = ntkfast.MLP(2, "gelu", W_std=1.2, b_std=0.1)
    theta = ntkfast.gram(x, net=net, get="ntk")
    mu, v = np.linalg.eigh(theta)
    t = 7.0
    coef = v @ (-np.expm1(-mu * t / y.size) / mu * (v.T @ y))
    expected = ntkfast.gram(x_test, x, net=net, get="ntk") @ coef
    reg = NTKRegressor(net=net, t=t).fit(x, y)
    assert np.allclose(reg.predict(x_test), expected, rtol=1e-9, atol=1e-12)


def test_regressor_time_limits(rng):
    x, y, x_test = _regression_data(rng)
    converged = NTKRegressor(diag_reg=1e-2).fit(x, y).predict(x_test)
    late = NTKRegressor(diag_reg=1e-2, t=1e7).fit(x, y).predict(x_test)
    assert np.allclose(late, converged, rtol=1e-8, atol=1e-10)
    infinite = NTKRegressor(diag_reg=1e-2, t=np.inf).fit(x, y)
    assert np.array_equal(infinite.predict(x_test), converged)
    early = NTKRegressor(diag_reg=1e-2, t=1e-3).fit(x, y).predict(x_test)
    assert np.abs(early).max() < 1e-2 * np.abs(converged).max()


def test_interpolation_and_float32(rng):
    x, y, x_test = _regression_data(rng)
    reg = NTKRegressor(depth=2).fit(x, y)  # diag_reg = 0: the end of training interpolates
    assert np.allclose(reg.predict(x), y, rtol=1e-8, atol=1e-8)
    reg32 = NTKRegressor(depth=2, diag_reg=1e-3).fit(x.astype(np.float32), y)
    reg64 = NTKRegressor(depth=2, diag_reg=1e-3).fit(x, y)
    assert reg32.predict(x_test.astype(np.float32)).dtype == np.float32
    assert reg32.dual_coef_.dtype == np.float32
    assert np.allclose(reg32.predict(x_test.astype(np.float32)), reg64.predict(x_test),
                       rtol=0, atol=1e-3 * np.abs(y).max())
    forced = NTKRegressor(depth=2, diag_reg=1e-3, dtype="float64").fit(x.astype(np.float32), y)
    assert forced.predict(x_test.astype(np.float32)).dtype == np.float64


# ----------------------------------------------------------------------------------------------
# Classifiers.

@pytest.mark.parametrize("cls", [NTKClassifier, NNGPClassifier])
def test_classifier_is_regression_on_centred_one_hot(rng, cls):
    x = rng.standard_normal((45, 3))
    labels = np.array(["cat", "dog", "emu"])[np.argmax(x, axis=1)]
    x_test = rng.standard_normal((10, 3))
    clf = cls(depth=2, diag_reg=1e-2).fit(x, labels)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    onehot = (labels[:, None] == clf.classes_[None, :]) - 1 / 3
    net = ntkfast.MLP(2, "relu", W_std=1.0, b_std=0.1)
    fn = ntkfast.predict.gradient_descent_mse_ensemble(net, x, onehot, diag_reg=1e-2)
    expected = fn(x_test=x_test, get=cls._kernel)
    scores = clf.decision_function(x_test)
    assert np.abs(scores - expected).max() <= 1e-12 * np.abs(expected).max()
    assert np.array_equal(clf.predict(x_test), clf.classes_[np.argmax(expected, axis=1)])
    assert np.allclose(scores.sum(axis=1), 0, atol=1e-12)  # centred targets, linear model


@pytest.mark.parametrize("cls", [NTKClassifier, NNGPClassifier])
def test_binary_classifier_uses_one_signed_output(rng, cls):
    x = rng.standard_normal((40, 3))
    y = np.where(x[:, 0] + 0.3 * x[:, 1] > 0, 7, 3)
    x_test = rng.standard_normal((12, 3))
    clf = cls(diag_reg=1e-2).fit(x, y)
    net = ntkfast.MLP(2, "relu", W_std=1.0, b_std=0.1)
    fn = ntkfast.predict.gradient_descent_mse_ensemble(net, x, np.where(y == 7, 1.0, -1.0)[:, None],
                                                       diag_reg=1e-2)
    result = fn(x_test=x_test, get=cls._kernel, compute_cov=True)
    scores = clf.decision_function(x_test)
    assert scores.shape == (12,)
    assert np.allclose(scores, result.mean[:, 0], rtol=1e-12, atol=1e-14)
    assert np.array_equal(clf.predict(x_test), np.where(scores > 0, 7, 3))
    # P(class 7) = Φ(μ/σ), the share of the ensemble (or posterior) with a positive output
    sigma = np.sqrt(np.diagonal(result.covariance))
    from scipy.stats import norm

    proba = clf.predict_proba(x_test)
    assert np.allclose(proba[:, 1], norm.cdf(result.mean[:, 0] / sigma), rtol=1e-10, atol=1e-12)
    assert np.allclose(proba.sum(axis=1), 1.0)


def test_argmax_probabilities_match_monte_carlo(rng):
    """The quadrature of P(argmax = c) for independent N(μ_c, σ²) against sampling them, from
    nearly certain to nearly uniform, with exact ties and σ = 0."""
    mu = rng.standard_normal((8, 4))
    mu[1, 2] = mu[1, 0]  # a tie
    sigma = np.array([0.05, 0.3, 0.5, 1.0, 2.0, 5.0, 20.0, 0.0])
    proba = ntksk._argmax_probabilities(mu, sigma)
    samples = 400_000
    draws = mu[:, None, :] + sigma[:, None, None] * rng.standard_normal((8, samples, 4))
    counts = np.stack([np.mean(np.argmax(draws, axis=2) == c, axis=1) for c in range(4)], axis=1)
    assert np.abs(proba - counts).max() < 5 * np.sqrt(0.25 / samples)
    assert np.allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    assert np.array_equal(proba[7], (mu[7] == mu[7].max()).astype(float))
    assert np.isclose(proba[1, 0], proba[1, 2], rtol=1e-12)
    assert np.all(np.abs(proba[6] - 0.25) < 0.05)  # σ ≫ gaps: nearly uniform


def test_multiclass_probabilities_use_the_ensemble_spread(rng):
    x = rng.standard_normal((60, 2))
    y = np.digitize(x[:, 0] + 0.5 * rng.standard_normal(60), [-0.5, 0.5])  # noisy 3 classes
    x_test = 2.0 * rng.standard_normal((6, 2))
    clf = NTKClassifier(depth=2, W_std=2.0, diag_reg=0.1).fit(x, y)
    proba = clf.predict_proba(x_test)
    mu = clf.decision_function(x_test)
    net = ntkfast.MLP(2, "relu", W_std=2.0, b_std=0.1)
    fn = ntkfast.predict.gradient_descent_mse_ensemble(net, x, np.zeros((60, 3)), diag_reg=0.1)
    sigma = np.sqrt(np.diagonal(fn(x_test=x_test, get="ntk", compute_cov=True).covariance))
    assert np.allclose(proba, ntksk._argmax_probabilities(mu, sigma), rtol=1e-9, atol=1e-12)
    assert np.sum(np.max(proba, axis=1) < 0.99) >= 2  # informative: some uncertain points
    assert np.array_equal(np.argmax(proba, axis=1), np.argmax(mu, axis=1))
    assert np.allclose(np.exp(clf.predict_log_proba(x_test)), proba)


def test_probabilities_are_hard_at_training_points(rng):
    """No regularisation: the trained ensemble reproduces the labels with zero spread."""
    x = rng.standard_normal((30, 3))
    y = np.argmax(x, axis=1)
    clf = NNGPClassifier(diag_reg=0.0).fit(x, y)
    proba = clf.predict_proba(x)
    assert np.allclose(proba[np.arange(30), y], 1.0, atol=1e-6)


def test_classifier_rejects_one_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        NTKClassifier().fit(np.ones((4, 2)), [1, 1, 1, 1])


# ----------------------------------------------------------------------------------------------
# Pipelines, model selection, threads.

@pytest.mark.parametrize("cls", ESTIMATORS)
def test_pipeline_grid_search_and_cross_val_score(cls):
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    if "Regressor" in cls.__name__:  # petal width from the other three measurements
        x, y, scoring, floor = x[:, :3], x[:, 3], "r2", 0.8
    else:
        scoring, floor = "accuracy", 0.9
    step = cls.__name__.lower()
    pipe = make_pipeline(StandardScaler(), cls())
    folds = KFold(3, shuffle=True, random_state=0)
    grid = GridSearchCV(pipe, {f"{step}__depth": [1, 3], f"{step}__diag_reg": [1e-3, 1e-1]},
                        cv=folds, scoring=scoring).fit(x, y)
    assert set(grid.best_params_) == {f"{step}__depth", f"{step}__diag_reg"}
    assert grid.best_score_ > floor
    assert isinstance(grid.best_estimator_[-1], cls)
    scores = cross_val_score(pipe.set_params(**grid.best_params_), x, y, cv=folds, scoring=scoring)
    assert scores.shape == (3,) and np.all(scores > floor - 0.1)


def test_grid_search_workers_do_not_oversubscribe_threads():
    """joblib's loky workers cap OMP_NUM_THREADS at cpu_count // n_jobs, and the engine follows
    it: GridSearchCV(n_jobs=2) runs 2 × (cores/2) threads, not 2 × cores."""
    import os

    import joblib

    if "OMP_NUM_THREADS" in os.environ:
        pytest.skip("OMP_NUM_THREADS is set: joblib passes it to its workers unchanged")
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    grid = GridSearchCV(make_pipeline(StandardScaler(), NTKClassifier()),
                        {"ntkclassifier__depth": [1, 2]}, cv=2, n_jobs=2).fit(x, y)
    assert grid.best_score_ > 0.9
    configs = joblib.Parallel(n_jobs=2)(joblib.delayed(ntkfast.get_config)() for _ in range(2))
    expected = max(joblib.cpu_count() // 2, 1)
    assert [c["cpu"]["threads"] for c in configs] == [expected, expected]


def test_num_threads_reaches_the_engine(rng, monkeypatch):
    seen = []
    original = ntksk._gram

    def spy(*args, **kwargs):
        seen.append(kwargs.get("num_threads"))
        return original(*args, **kwargs)

    monkeypatch.setattr(ntksk, "_gram", spy)
    x, y, _ = _regression_data(rng)
    NTKRegressor(num_threads=1).fit(x, y).predict(x)
    assert seen == [1, 1]


# ----------------------------------------------------------------------------------------------
# pandas inputs.

def test_dataframes_and_set_output(rng):
    pd = pytest.importorskip("pandas")
    x, y, x_test = _regression_data(rng)
    columns = ["a", "b", "c", "d"]
    frame, frame_test = pd.DataFrame(x, columns=columns), pd.DataFrame(x_test, columns=columns)
    reg = NTKRegressor(diag_reg=1e-3).fit(frame, pd.Series(y))
    assert list(reg.feature_names_in_) == columns and reg.n_features_in_ == 4
    plain = NTKRegressor(diag_reg=1e-3).fit(x, y)
    assert np.array_equal(reg.predict(frame_test), plain.predict(x_test))
    with pytest.raises(ValueError, match="feature names should match"):
        reg.predict(pd.DataFrame(x_test, columns=["z", "b", "c", "d"]))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        reg.predict(x_test)
    pipe = make_pipeline(StandardScaler().set_output(transform="pandas"), NNGPClassifier())
    labels = pd.Series(np.where(y > 0, "up", "down"))
    pipe.fit(frame, labels)
    assert list(pipe[-1].feature_names_in_) == columns
    assert set(pipe.predict(frame_test)) <= {"up", "down"}


def test_lists_are_accepted(rng):
    x, y, x_test = _regression_data(rng)
    a = NNGPRegressor().fit(x.tolist(), y.tolist()).predict(x_test.tolist())
    assert np.array_equal(a, NNGPRegressor().fit(x, y).predict(x_test))


# ----------------------------------------------------------------------------------------------
# Errors.

BAD_PARAMETERS = [
    ("depth", -1), ("depth", 1.5), ("depth", True), ("activation", "softsign"),
    ("activation", ntkfast.Dense(3)), ("activation", 3), ("W_std", -1.0), ("W_std", "big"),
    ("W_std", np.nan), ("b_std", -0.1), ("parameterization", "mup"), ("width", 0),
    ("net", "relu"), ("diag_reg", -1e-3), ("diag_reg", np.inf), ("diag_reg_absolute_scale", 1),
    ("t", -1.0), ("t", np.nan), ("t", "end"), ("solver", "lu"), ("dtype", "float16"),
    ("dtype", "int"), ("backend", "tpu"), ("num_threads", 0), ("num_threads", 2.0),
    ("tol", 0.0), ("tol", -1e-8), ("maxiter", 0), ("maxiter", "many"),
]


@pytest.mark.parametrize("cls", ESTIMATORS)
@pytest.mark.parametrize("name,value", BAD_PARAMETERS,
                         ids=[f"{n}={v!r}" for n, v in BAD_PARAMETERS])
def test_bad_parameters_are_named_in_fit(rng, cls, name, value):
    est = cls(**{name: value})  # construction never validates (scikit-learn's convention)
    x = rng.standard_normal((8, 2))
    y = np.arange(8) % 2
    with pytest.raises(ValueError, match=rf"The '{name}' parameter of {cls.__name__} must be"):
        est.fit(x, y)
    with pytest.raises(TypeError):  # the same error is also a TypeError
        est.fit(x, y)


def test_standard_parameterization_needs_width(rng):
    x = rng.standard_normal((8, 2))
    with pytest.raises(ValueError, match="'width' parameter .*'standard'"):
        NTKRegressor(parameterization="standard").fit(x, x[:, 0])
    reg = NTKRegressor(parameterization="standard", width=256, diag_reg=1e-3).fit(x, x[:, 0])
    net = ntkfast.MLP(2, "relu", 1.0, 0.1, "standard", width=256)
    k = ntkfast.gram(x, net=net, get="ntk")
    lam = 1e-3 * np.mean(np.diag(k))
    assert np.allclose(reg.predict(x), k @ np.linalg.solve(k + lam * np.eye(8), x[:, 0]))


def test_net_replaces_the_mlp_parameters(rng):
    x = rng.standard_normal((20, 3))
    net = ntkfast.serial(ntkfast.Dense(64, 1.5, 0.2), ntkfast.Erf(), ntkfast.Dense(64, 1.1, 0.0),
                         ntkfast.Relu(), ntkfast.Dense(1, 0.9, 0.1))
    reg = NTKRegressor(net=net, diag_reg=1e-3).fit(x, x[:, 0])
    assert reg.net_ is net
    with pytest.raises(ValueError, match=r"'net' parameter .* None when depth, W_std are set"):
        NTKRegressor(net=net, depth=3, W_std=2.0).fit(x, x[:, 0])


def test_not_fitted_nan_and_feature_count(rng):
    x, y, x_test = _regression_data(rng)
    for cls in ESTIMATORS:
        with pytest.raises(NotFittedError):
            cls().predict(x_test)
    reg = NTKRegressor().fit(x, y)
    bad = x_test.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        reg.predict(bad)
    with pytest.raises(ValueError, match="X has 3 features, but NTKRegressor is expecting 4"):
        reg.predict(x_test[:, :3])
    y_bad = y.copy()
    y_bad[3] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        NTKRegressor().fit(x, y_bad)


def test_std_at_finite_time_on_the_iterative_path_is_refused(rng):
    x, y, x_test = _regression_data(rng)
    reg = NTKRegressor(t=5.0, solver="lanczos").fit(x, y)
    reg.predict(x_test)  # the mean is available
    with pytest.raises(ValueError, match="solver='eigh' or t=None"):
        reg.predict(x_test, return_std=True)


# ----------------------------------------------------------------------------------------------
# Pickling, cloning, the iterative path.

@pytest.mark.parametrize("cls", ESTIMATORS)
def test_pickle_round_trip_keeps_predictions(rng, cls):
    x, y, x_test = _regression_data(rng)
    target = y if "Regressor" in cls.__name__ else (y > 0).astype(int)
    est = cls(diag_reg=1e-2).fit(x, target)
    method = "predict_proba" if hasattr(est, "predict_proba") else "predict"
    before = getattr(est, method)(x_test)  # builds the (unpicklable) posterior cache
    restored = pickle.loads(pickle.dumps(est))
    assert np.array_equal(getattr(restored, method)(x_test), before)
    assert np.array_equal(restored.predict(x_test), est.predict(x_test))
    assert clone(est).get_params() == est.get_params()


@pytest.mark.parametrize("cls", [NTKRegressor, NNGPRegressor])
@pytest.mark.parametrize("solver", ["cg", "lanczos"])
def test_iterative_solver_matches_dense(rng, cls, solver):
    x, y, x_test = _regression_data(rng, n=80)
    dense = cls(diag_reg=1e-3, solver="eigh").fit(x, y)
    iterative = cls(diag_reg=1e-3, solver=solver).fit(x, y)
    assert iterative.solver_ == solver and dense.solver_ == "eigh"
    assert dense.solve_info_ is None and iterative.solve_info_.converged
    scale = np.abs(dense.predict(x_test)).max()
    assert np.abs(iterative.predict(x_test) - dense.predict(x_test)).max() < 1e-8 * scale
    _, std_dense = dense.predict(x_test, return_std=True)
    _, std_iterative = iterative.predict(x_test, return_std=True)
    assert np.allclose(std_iterative, std_dense, rtol=1e-6, atol=1e-9)
    finite = cls(diag_reg=1e-3, solver=solver, t=50.0).fit(x, y).predict(x_test)
    expected = cls(diag_reg=1e-3, solver="eigh", t=50.0).fit(x, y).predict(x_test)
    assert np.abs(finite - expected).max() < 1e-8 * np.abs(expected).max()


def test_probabilities_need_the_spread(rng):
    """predict_proba is absent (scikit-learn's available_if) where the spread cannot be
    computed: a finite t on the iterative path."""
    assert not hasattr(NNGPClassifier(solver="lanczos", t=5.0), "predict_proba")
    assert not hasattr(NTKClassifier(solver="cg", t=5.0), "predict_log_proba")
    assert hasattr(NTKClassifier(solver="cg"), "predict_proba")
    x = rng.standard_normal((30, 3))
    y = (x[:, 0] > 0).astype(int)
    clf = NTKClassifier(solver="lanczos", t=50.0, diag_reg=1e-2).fit(x, y)
    assert not hasattr(clf, "predict_proba")
    dense = NTKClassifier(solver="eigh", t=50.0, diag_reg=1e-2).fit(x, y)
    assert np.allclose(clf.decision_function(x), dense.decision_function(x), rtol=1e-7, atol=1e-9)
    assert dense.predict_proba(x).shape == (30, 2)


def test_iterative_solver_options_reach_the_solver(rng):
    x, y, _ = _regression_data(rng)
    with pytest.raises(ntkfast.ConvergenceError, match="maxiter=2"):
        NTKRegressor(solver="cg", diag_reg=1e-6, maxiter=2).fit(x, y)
    loose = NTKRegressor(solver="cg", diag_reg=1e-3, tol=1e-4).fit(x, y)
    assert loose.solve_info_.tol == 1e-4 and loose.solve_info_.converged


def test_auto_solver_is_dense_for_small_data(rng):
    x, y, _ = _regression_data(rng)
    assert NTKRegressor().fit(x, y).solver_ == "eigh"


# ----------------------------------------------------------------------------------------------
# Import.

def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_ntkfast_does_not_import_sklearn():
    done = _run("import sys, ntkfast, ntkfast.predict; "
                "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    done = _run("import sys, ntkfast.sklearn; print('sklearn' in sys.modules)")
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr


def test_missing_sklearn_is_an_import_error_naming_the_extra():
    done = _run("import sys; sys.modules['sklearn'] = None\n"
                "try:\n    import ntkfast.sklearn\n"
                "except ImportError as e:\n    print(e)\n")
    assert done.returncode == 0, done.stderr
    assert 'pip install "ntkfast[sklearn]"' in done.stdout
    assert "scikit-learn >= 1.6" in done.stdout
