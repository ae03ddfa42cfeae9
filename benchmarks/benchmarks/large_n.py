"""The large-N path: one KernelOperator product against one symmetric Gram (recompute and stored),
and iterative kernel regression / dynamics against the exact path (benchmarks/large_n.py has the
large-N runs; docs/large.md the cost model)."""
import numpy as np

import ntkfast
from ntkfast.demo import generated_regression

NET = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)


class OperatorProduct:
    """K @ V with V of 1 or 20 columns vs ntkfast.gram (the target: recompute ≤ 1.2x a Gram)."""

    params = ([3000], ["gram", "recompute", "memory"], [1, 20])
    param_names = ["n", "what", "columns"]
    timeout = 300

    def setup(self, n, what, columns):
        self.x, _, _, _ = generated_regression(n)
        self.v = np.random.default_rng(1).standard_normal((n, columns))
        if what != "gram":
            self.op = ntkfast.KernelOperator(self.x, net=NET, storage=what)

    def time_product(self, n, what, columns):
        if what == "gram":
            ntkfast.gram(self.x, net=NET, get="ntk")
        else:
            self.op @ self.v

    def peakmem_product(self, n, what, columns):
        self.time_product(n, what, columns)


class StoredProduct:
    """One product with a stored kernel (upper-triangle bands, float64 sums) against BLAS over
    the same full matrix: with one column a ?gemv, the memory-bandwidth floor (target: >= 70 %
    of its rate on the N²/2 stored entries a product reads, i.e. time <= 0.71x the ?gemv's);
    with 20 a ?gemm (as many FMAs as the product; float32 sums for float32)."""

    params = ([6000], ["float32", "float64"], ["blas", "memory", "file"], [1, 20])
    param_names = ["n", "dtype", "what", "columns"]
    timeout = 300

    def setup(self, n, dtype, what, columns):
        x, _, _, _ = generated_regression(n)
        self.v = np.random.default_rng(1).standard_normal((n, columns))
        storage = "memory" if what == "blas" else what
        self.op = ntkfast.KernelOperator(x, net=NET, dtype=dtype, storage=storage)
        if what == "blas":
            self.k = self.op._matrix
            self.v_blas = np.ones(n, dtype) if columns == 1 else np.asfortranarray(self.v, dtype)

    def teardown(self, n, dtype, what, columns):
        self.op.close()

    def time_product(self, n, dtype, what, columns):
        if what == "blas":
            self.k @ self.v_blas
        else:
            self.op @ self.v


class IterativePredict:
    """t = ∞ (PCG) and 20 times (Lanczos) on a recompute operator vs the exact path."""

    params = ([2000], ["iterative", "exact"])
    param_names = ["n", "path"]
    timeout = 600

    def setup(self, n, path):
        self.x, self.y, self.x_test, _ = generated_regression(n, n_test=200)
        self.times = np.logspace(0, 5, 20)

    def _predict(self, path, t):
        if path == "iterative":
            k = ntkfast.KernelOperator(self.x, net=NET, storage="recompute")
            k_td = ntkfast.KernelOperator(self.x_test, self.x, net=NET, storage="recompute")
        else:
            k = ntkfast.gram(self.x, net=NET, get="ntk")
            k_td = ntkfast.gram(self.x_test, self.x, net=NET, get="ntk")
        fn = ntkfast.predict.gradient_descent_mse(k, self.y, diag_reg=1e-4)
        return fn(t=t, fx_train_0=0.0, fx_test_0=0.0, k_test_train=k_td)

    def time_kernel_regression(self, n, path):
        self._predict(path, None)

    def time_dynamics_20_times(self, n, path):
        self._predict(path, self.times)

    def peakmem_dynamics_20_times(self, n, path):
        self._predict(path, self.times)
