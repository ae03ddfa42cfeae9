"""
A large-N solve with a KernelOperator
=====================================

For kernels too large to hold or factor, :class:`ntkfast.KernelOperator` computes products
``K @ V`` block by block without storing K, and :mod:`ntkfast.predict` solves with preconditioned
conjugate gradients (t = ∞) and Lanczos (finite t). N = 2000 here, small enough to check the
answer against the dense solve.
"""
import matplotlib.pyplot as plt
import numpy as np

import ntkfast
from ntkfast import predict

rng = np.random.default_rng(0)
n, n_test, d = 2000, 100, 16
x_train = rng.standard_normal((n, d))
x_test = rng.standard_normal((n_test, d))
w = rng.standard_normal(d)
y_train = np.tanh(x_train @ w / 4)[:, None]
y_test = np.tanh(x_test @ w / 4)[:, None]

net = ntkfast.MLP(2, "relu", W_std=1.5, b_std=0.05)
op = ntkfast.KernelOperator(x_train, net=net, get="ntk", storage="recompute")
cross = ntkfast.KernelOperator(x_test, x_train, net=net, get="ntk", storage="recompute")
fn = predict.gradient_descent_mse(op, y_train, diag_reg=1e-2)
f_test = fn(t=None, fx_train_0=None, fx_test_0=0.0, k_test_train=cross)
print(op)
print(fn.info)

# the dense path on the same kernel, for comparison
k = ntkfast.gram(x_train, net=net, get="ntk")
k_td = ntkfast.gram(x_test, x_train, net=net, get="ntk")
dense = predict.gradient_descent_mse(k, y_train, diag_reg=1e-2)
f_dense = dense(t=None, fx_train_0=None, fx_test_0=0.0, k_test_train=k_td)
print(f"iterative vs dense: {np.abs(f_test - f_dense).max() / np.abs(f_dense).max():.1e} relative")

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.plot(y_test[:, 0], f_test[:, 0], ".", label="CG (KernelOperator)")
ax.plot(y_test[:, 0], f_dense[:, 0], "x", ms=4, label="dense (Cholesky)")
ax.plot([-1, 1], [-1, 1], "k-", lw=0.5)
ax.set(xlabel="target", ylabel="NTK prediction at t = ∞", title=f"N = {n}")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
