"""
Posterior mean and variance
===========================

The NNGP posterior (exact Bayesian inference with the infinitely wide network as the prior) and
the NTK posterior (an infinite ensemble of networks trained to convergence) of a 1-D regression,
with :func:`ntkfast.predict.gp_inference`. The inputs are points on the unit circle
``(cos θ, sin θ)``, so the kernels depend on the angle between points.
"""
import matplotlib.pyplot as plt
import numpy as np

import ntkfast
from ntkfast import predict


def circle(theta):
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


rng = np.random.default_rng(1)
theta_train = np.sort(rng.uniform(-2.5, 2.5, 12))
theta_test = np.linspace(-np.pi, np.pi, 300)
y_train = np.sin(2 * theta_train)[:, None] + 0.05 * rng.standard_normal((12, 1))

net = ntkfast.MLP(2, "erf", W_std=1.5, b_std=0.1)
k_train = ntkfast.gram(circle(theta_train), net=net)
k_test_train = ntkfast.gram(circle(theta_test), circle(theta_train), net=net)
k_test = ntkfast.diagonal(circle(theta_test), net=net, get="nngp")   # only its diagonal is used
k_test_full = ntkfast.gram(circle(theta_test), net=net)

fn = predict.gp_inference(k_train, y_train, diag_reg=1e-3)
post = fn(("nngp", "ntk"), k_test_train, k_test_full)     # Gaussian(mean, covariance) per kernel

fig, ax = plt.subplots(figsize=(7, 3.5))
for name, gaussian in zip(("nngp", "ntk"), post):
    mean = gaussian.mean[:, 0]
    std = np.sqrt(np.clip(np.diag(gaussian.covariance), 0, None))
    ax.plot(theta_test, mean, label=f"{name.upper()} posterior mean")
    ax.fill_between(theta_test, mean - 2 * std, mean + 2 * std, alpha=0.2)
    print(f"{name}: largest posterior std {std.max():.3f} (prior std {np.sqrt(k_test.max()):.3f})")
ax.plot(theta_train, y_train[:, 0], "k.", label="training points")
ax.set(xlabel="θ", ylabel="f(cos θ, sin θ)", title="mean ± 2 std")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
