"""ntkfast.sklearn under hostile use: failed refits, round-off ties in predict_proba, inputs
that are not real numbers."""
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import ntkfast  # noqa: E402
from ntkfast.sklearn import (NNGPClassifier, NNGPKernel, NNGPRegressor, NTKClassifier,  # noqa: E402
                             NTKKernel, NTKRegressor)
from sklearn.base import clone  # noqa: E402


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x, x_test = rng.standard_normal((20, 3)), rng.standard_normal((5, 3))
    return x, x_test, rng.standard_normal(20)


def _outputs(estimator, x_test):
    """Everything a fitted estimator predicts: means and spreads."""
    if hasattr(estimator, "classes_"):
        return [estimator.decision_function(x_test), estimator.predict_proba(x_test)]
    return list(estimator.predict(x_test, return_std=True))


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# A failed refit leaves the previous model whole.

@pytest.mark.parametrize("cls", [NTKRegressor, NNGPRegressor, NTKClassifier, NNGPClassifier])
@pytest.mark.parametrize("change", [{"depth": 5}, {"t": 1.0}, {"diag_reg": 0.5}])
def test_failed_refit_keeps_the_fitted_model(data, cls, change):
    x, x_test, y = data
    target = y if cls in (NTKRegressor, NNGPRegressor) else y > 0
    estimator = cls(depth=2, diag_reg=1e-3).fit(x, target)
    # the reference: a fresh estimator of the original parameters, never refitted
    before = _outputs(cls(depth=2, diag_reg=1e-3).fit(x, target), x_test)
    estimator.set_params(**change)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimator.fit(bad, target)
    _assert_same(_outputs(estimator, x_test), before)
    # the new parameters do apply once a fit succeeds
    refitted = _outputs(estimator.fit(x, target), x_test)
    assert not np.allclose(refitted[-1], before[-1])


def test_refit_failing_after_validation_keeps_features_and_solver(data):
    """Failures after the data were read (one class; a solve that does not converge) must not
    leave the new data's n_features_in_ behind."""
    x, x_test, y = data
    clf = NTKClassifier(diag_reg=1e-3).fit(x, y > 0)
    proba = clf.predict_proba(x_test)
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf.fit(np.ones((6, 4)), np.zeros(6))
    assert clf.n_features_in_ == 3
    np.testing.assert_array_equal(clf.predict_proba(x_test), proba)

    reg = NTKRegressor(diag_reg=1e-3, solver="eigh").fit(x, y)
    mean = reg.predict(x_test)
    reg.set_params(solver="cg", maxiter=1, diag_reg=0.0)
    wide = np.random.default_rng(1).standard_normal((30, 4))
    with pytest.raises(ntkfast.ConvergenceError):
        reg.fit(wide, wide[:, 0])
    assert reg.n_features_in_ == 3 and reg.solver_ == "eigh"
    np.testing.assert_array_equal(reg.predict(x_test), mean)


def test_failed_refit_keeps_feature_names_and_refit_drops_them(data):
    pd = pytest.importorskip("pandas")
    x, x_test, y = data
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    reg = NTKRegressor(diag_reg=1e-3).fit(frame, y)
    with pytest.raises(ValueError):
        reg.fit(np.full((4, 3), np.nan), y[:4])
    assert list(reg.feature_names_in_) == ["a", "b", "c"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "X has feature names" warning: still known
        reg.predict(pd.DataFrame(x_test, columns=["a", "b", "c"]))
    reg.fit(x, y)  # a plain array: the names of the earlier fit no longer apply
    assert not hasattr(reg, "feature_names_in_")


def test_predict_proba_availability_follows_the_fitted_model(data):
    """set_params(t=...) on a model fitted at t=None by CG must not hide its predict_proba."""
    x, x_test, y = data
    clf = NTKClassifier(solver="cg", diag_reg=1e-2).fit(x, y > 0)
    proba = clf.predict_proba(x_test)
    clf.set_params(t=1.0)
    assert hasattr(clf, "predict_proba")
    np.testing.assert_array_equal(clf.predict_proba(x_test), proba)
    clf.fit(x, y > 0)  # now fitted at a finite t on the iterative path: no spread
    assert not hasattr(clf, "predict_proba")
    assert not hasattr(clone(clf), "predict_proba")  # unfitted: the parameters decide


# ----------------------------------------------------------------------------------------------
# predict_proba: round-off means are ties.

@pytest.mark.parametrize("cls", [NTKClassifier, NNGPClassifier])
def test_contradictory_duplicates_split_evenly(data, cls):
    """Duplicated points with opposite labels and diag_reg=0: the mean is 0 up to round-off and
    σ = 0, so each class gets exactly 1/2; the points seen once keep their label with
    probability 1 (σ = 0, mean ±1)."""
    x, _, y = data
    labels = y > 0
    clf = cls().fit(np.r_[x, x[:10]], np.r_[labels, ~labels[:10]])
    mean = clf.decision_function(x)
    assert np.all(np.abs(mean[:10]) < 1e-10) and np.all(np.abs(np.abs(mean[10:]) - 1) < 1e-6)
    proba = clf.predict_proba(x)
    np.testing.assert_array_equal(proba[:10], 0.5)
    np.testing.assert_allclose(proba[10:, 1], labels[10:].astype(float), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", [NTKClassifier, NNGPClassifier])
def test_multiclass_round_off_ties_split_evenly(data, cls):
    """Each point twice, with labels c and c + 1 (mod 3): classes c and c + 1 tie, the third
    class has mean −1/3 and probability 0."""
    x, _, _ = data
    first = np.arange(20) % 3
    second = (first + 1) % 3
    clf = cls().fit(np.r_[x, x], np.r_[first, second])
    expected = np.zeros((20, 3))
    expected[np.arange(20), first] = expected[np.arange(20), second] = 0.5
    np.testing.assert_allclose(clf.predict_proba(x), expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# The GP kernels refuse what is not a real array, naming X or Y.

@pytest.mark.parametrize("kernel", [NTKKernel(), NNGPKernel()])
def test_kernels_reject_non_real_points(data, kernel):
    x = data[0]
    for bad, message in ((x + 1j, "X is complex"),
                         (np.full((2, 3), None, dtype=object), "X must hold real numbers"),
                         (np.full((2, 3), "1.0"), "X must hold real numbers"),
                         ("abc", "X must be a real 2-D array")):
        with pytest.raises(TypeError, match=message):
            kernel(bad)
        if not isinstance(bad, str):
            with pytest.raises(TypeError, match=message.replace("X", "Y")):
                kernel(x, bad)
            with pytest.raises(TypeError, match=message):
                kernel.diag(bad)
    with pytest.raises(ValueError, match=r"^Y contains 1 non-finite value\(s\)"):
        kernel(x, np.r_[x[:2], [[np.inf, 0.0, 0.0]]])
    with pytest.raises(ValueError, match=r"^X contains"):
        kernel.diag(np.full((2, 3), np.nan))
    # real integer and float32 points are still converted, to the float64 kernel of the engine
    get = "ntk" if isinstance(kernel, NTKKernel) else "nngp"
    np.testing.assert_array_equal(kernel(np.ones((2, 3), dtype=np.int32)),
                                  ntkfast.gram(np.ones((2, 3)), net=ntkfast.MLP(2, "relu", 1.0, 0.1),
                                               get=get))
