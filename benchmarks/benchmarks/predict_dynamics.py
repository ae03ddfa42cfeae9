"""ntkfast.predict: gradient-descent predictions at 100 times against one eigh of the kernel
(the floor: predict does one eigh, then O(T·k·n²) GEMMs), and posteriors at t = ∞."""
import numpy as np
import scipy.linalg

import ntkfast
from ntkfast import predict

from .common import points

NET = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)
N_TIMES, N_OUTPUTS = 100, 10


def _problem(n, n_test):
    x = points(n + n_test, d=64)
    y = np.eye(N_OUTPUTS)[np.random.default_rng(1).integers(0, N_OUTPUTS, n)] - 1.0 / N_OUTPUTS
    return (x[:n], x[n:], ntkfast.gram(x[:n], net=NET), ntkfast.gram(x[n:], x[:n], net=NET),
            ntkfast.gram(x[n:], net=NET), y)


class GradientDescentTimes:
    """100 times, train + test outputs, from a cold start (the eigh included), against the
    eigendecomposition alone (the baselines: SciPy 'evd', the driver predict uses, and NumPy)."""

    params = ([1000, 2000], ["ntkfast.predict", "scipy-eigh-evd", "numpy-eigh"])
    param_names = ["n_train", "implementation"]
    timeout = 300

    def setup(self, n_train, implementation):
        _, _, self.k, self.k_td, _, self.y = _problem(n_train, n_train // 5)
        self.times = np.logspace(-1, 6, N_TIMES)

    def _run(self, implementation):
        if implementation == "ntkfast.predict":
            fn = predict.gradient_descent_mse(self.k.ntk, self.y)
            fn(self.times, 0.0, 0.0, self.k_td.ntk)
        elif implementation == "scipy-eigh-evd":
            scipy.linalg.eigh(self.k.ntk, driver="evd", check_finite=False)
        else:
            np.linalg.eigh(self.k.ntk)

    def time_predict(self, n_train, implementation):
        self._run(implementation)

    def peakmem_predict(self, n_train, implementation):
        self._run(implementation)


class Posteriors:
    """gp_inference (Cholesky) and the ensemble's covariances at 20 times."""

    params = ([1000, 2000],)
    param_names = ["n_train"]
    timeout = 300

    def setup(self, n_train):
        self.x, self.x_test, self.k, self.k_td, self.k_tt, self.y = _problem(n_train, n_train // 5)

    def _kernels(self, x1, x2, get):  # the precomputed kernels: this times predict, not gram
        if x1 is self.x:
            return self.k
        return self.k_tt if x2 is None else self.k_td

    def time_gp_inference(self, n_train):
        predict.gp_inference(self.k, self.y)(("nngp", "ntk", "ntkgp"), self.k_td, self.k_tt)

    def time_ensemble_covariances(self, n_train):
        ens = predict.gradient_descent_mse_ensemble(self._kernels, self.x, self.y)
        ens(np.logspace(0, 5, 20), self.x_test, compute_cov=True)

    def track_end_of_training_gap(self, n_train):
        """max |f(t = 1e9) − f(t = None)| / max |f|: eigh path vs Cholesky path (float64)."""
        fn = predict.gradient_descent_mse(self.k.ntk, self.y, diag_reg=1e-6)
        late = fn(1e9, 0.0, 0.0, self.k_td.ntk)[1]
        end = fn(None, 0.0, 0.0, self.k_td.ntk)[1]
        return float(np.abs(late - end).max() / np.abs(end).max())

    track_end_of_training_gap.unit = "relative"
