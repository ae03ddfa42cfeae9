"""Real training: finite-width NumPy networks trained by full-batch gradient descent approach
ntkfast.predict.gradient_descent_mse's infinite-width prediction as they widen.

A one-hidden-layer ReLU network in the NTK parameterisation (Jacot et al. 2018, the network of
``ntkfast.MLP(1, "relu", W_std, b_std)``) is trained on L = Σ(f − y)²/(2N) with a small step η
for s steps; the prediction is gradient_descent_mse(Θ_analytic, y, learning_rate=η) at t = s,
started from the same network's initial outputs. The network differs from its infinite-width
linearisation by O(1/√width) (its NTK at initialisation and its change during training), so
the gap, averaged over seeds, should fall like width^(-1/2). Discrete steps differ from the
flow by at most η·λ_max/(2eN) = 1e-3 of the residual here, far below the gaps measured.
"""
import numpy as np
import pytest

import ntkfast as nf
from ntkfast import predict

W_STD, B_STD = 1.5, 0.1
NET = nf.MLP(1, "relu", W_std=W_STD, b_std=B_STD)


def _train(x, y, x_test, width, seeds, rate, steps):
    """Train `seeds` independent networks at once; returns (f_train_0, f_test_0, f_train_s,
    f_test_s), each (seeds, n_points)."""
    rng = np.random.default_rng([width, seeds])
    d = x.shape[1]
    w1 = rng.standard_normal((seeds, width, d))
    b1 = rng.standard_normal((seeds, width))
    w2 = rng.standard_normal((seeds, width))
    b2 = rng.standard_normal(seeds)
    n_out = y.size

    def forward(points):  # pre-activations (seeds, n, width), activations, outputs (seeds, n)
        pre = W_STD / np.sqrt(d) * (points @ w1.transpose(0, 2, 1)) + B_STD * b1[:, None, :]
        act = np.maximum(pre, 0.0)
        out = W_STD / np.sqrt(width) * (act @ w2[:, :, None])[..., 0] + B_STD * b2[:, None]
        return pre, act, out

    f_train_0, f_test_0 = forward(x)[2], forward(x_test)[2]
    for _ in range(steps):
        pre, act, out = forward(x)
        r = (out - y) / n_out  # dL/df
        g_pre = (W_STD / np.sqrt(width)) * r[:, :, None] * w2[:, None, :] * (pre > 0)  # dL/dpre
        w2 -= rate * W_STD / np.sqrt(width) * (r[:, None, :] @ act)[:, 0, :]
        b2 -= rate * B_STD * r.sum(axis=1)
        w1 -= rate * W_STD / np.sqrt(d) * (g_pre.transpose(0, 2, 1) @ x)
        b1 -= rate * B_STD * g_pre.sum(axis=1)
    return f_train_0, f_test_0, forward(x)[2], forward(x_test)[2]


def _gaps(widths, seeds):
    rng = np.random.default_rng(0)
    x, x_test = rng.standard_normal((8, 4)), rng.standard_normal((4, 4))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1]
    theta = nf.gram(x, net=NET, get="ntk")
    theta_td = nf.gram(x_test, x, net=NET, get="ntk")
    top = np.linalg.eigvalsh(theta)[-1]
    rate = 0.005 * y.size / top  # η λ_max / N = 0.005: discrete steps ≈ the flow
    steps = 1000  # λ_max τ / N = 5: the fast modes are trained, the slowest ~10%
    predict_fn = predict.gradient_descent_mse(theta, y, learning_rate=rate)
    gaps = []
    for width in widths:
        f0, g0, f_s, g_s = _train(x, y, x_test, width, seeds, rate, steps)
        per_seed = []
        for i in range(seeds):
            want_train, want_test = predict_fn(float(steps), f0[i], g0[i], theta_td)
            assert np.abs(want_train - f0[i]).max() > 0.3  # the networks did move
            per_seed.append(max(np.abs(f_s[i] - want_train).max(), np.abs(g_s[i] - want_test).max()))
        gaps.append(np.mean(per_seed))
    return np.array(gaps)


def test_trained_networks_approach_the_prediction():
    widths = np.array([256, 1024, 4096])
    gaps = _gaps(widths, seeds=4)
    slope = np.polyfit(np.log(widths), np.log(gaps), 1)[0]
    assert -0.8 < slope < -0.3, (gaps, slope)  # ~ width^(-1/2)
    assert gaps[-1] < 0.06, gaps  # and close in absolute terms at width 4096


@pytest.mark.slow
def test_trained_networks_approach_the_prediction_wider():
    widths = np.array([256, 1024, 4096, 16384])
    gaps = _gaps(widths, seeds=6)
    slope = np.polyfit(np.log(widths), np.log(gaps), 1)[0]
    assert -0.7 < slope < -0.35, (gaps, slope)
    assert gaps[-1] < 0.03, gaps
