"""
Training dynamics on handwritten digits
=======================================

What an infinitely wide network trained by gradient descent predicts at every training time, on
scikit-learn's digits -- without training anything: :func:`ntkfast.predict.gradient_descent_mse_ensemble`
gives the mean output of an infinite ensemble of trained networks (NTK: all layers trained;
NNGP: only the readout) from the Gram matrices. This is ``ntkfast demo``, smaller.
"""
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import ntkfast
from ntkfast import predict

x, labels = load_digits(return_X_y=True)
rng = np.random.default_rng(0)
order = rng.permutation(len(x))[:500]
x, labels = x[order] / 16.0, labels[order]
x_train, x_test = x[:300], x[300:]
y_train = np.eye(10)[labels[:300]] - 0.1          # one-hot targets, centred
labels_test = labels[300:]

net = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)
fn = predict.gradient_descent_mse_ensemble(net, x_train, y_train, diag_reg=1e-4)
times = np.logspace(-1, 5, 40)
out = fn(t=times, x_test=x_test, get=("nngp", "ntk"))   # Kernels of (40, 200, 10) means

fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
for name, mean in zip(out._fields, out):
    y_test = np.eye(10)[labels_test] - 0.1
    loss = ((mean - y_test) ** 2).mean(axis=(1, 2)) / 2
    accuracy = (mean.argmax(axis=-1) == labels_test).mean(axis=1)
    ax_loss.semilogx(times, loss, label=name.upper())
    ax_acc.semilogx(times, accuracy, label=name.upper())
    print(f"{name}: test accuracy at t = {times[-1]:.0e}: {accuracy[-1]:.3f}")
ax_loss.set(xlabel="training time t (steps of size η)", ylabel="test loss (½·mean)")
ax_acc.set(xlabel="training time t (steps of size η)", ylabel="test accuracy")
ax_acc.legend()
fig.tight_layout()
plt.show()
