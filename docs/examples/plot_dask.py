"""
Kernels on a Dask cluster
=========================

:mod:`ntkfast.dask` computes Gram matrices as Dask arrays (one engine call per chunk) and runs a
:class:`ntkfast.dask.KernelOperator`'s products over the workers of a ``distributed`` cluster --
here a :class:`distributed.LocalCluster` of two in-process workers; the same code runs on a
multi-node cluster.
"""
import matplotlib.pyplot as plt
import numpy as np
from distributed import Client, LocalCluster

import ntkfast
import ntkfast.dask as ntkdask
from ntkfast import predict

rng = np.random.default_rng(0)
x = rng.standard_normal((800, 32))
x_test = rng.standard_normal((100, 32))
y, y_test = np.sin(x[:, :1]), np.sin(x_test[:, :1])
net = ntkfast.MLP(2, "relu", W_std=1.5, b_std=0.05)

with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                  dashboard_address=None) as cluster, Client(cluster) as client:
    k = ntkdask.gram(x, net=net, get="ntk", chunks=200)    # lazy: 4 x 4 chunks
    print(k)
    dense = k.compute()
    in_process = ntkfast.gram(x, net=net, get="ntk")
    print(f"max |dask - in-process| / max|K|: "
          f"{np.abs(dense - in_process).max() / np.abs(in_process).max():.1e}")
    assert np.array_equal(dense, dense.T)   # chunks J < I are transposes: exactly symmetric

    op = ntkdask.KernelOperator(x, net=net, get="ntk", client=client, block_size=400)
    cross = ntkdask.KernelOperator(x_test, x, net=net, get="ntk", client=client, block_size=400)
    v = rng.standard_normal((800, 3))
    print(f"op @ v vs dense: {np.abs(op @ v - dense @ v).max() / np.abs(dense @ v).max():.1e}")
    fn = predict.gradient_descent_mse(op, y, diag_reg=1e-2, tol=1e-8)
    f_test = fn(t=None, fx_train_0=None, fx_test_0=0.0, k_test_train=cross)  # CG on the cluster
    print(fn.info)
    op.close()
    cross.close()

fig, (ax_k, ax_f) = plt.subplots(1, 2, figsize=(9, 3.8))
ax_k.imshow(dense[:200, :200], cmap="viridis")
ax_k.set_title("NTK chunk (0, 0), computed on the cluster")
ax_f.plot(x_test[:, 0], y_test[:, 0], "k.", label="target sin(x₀)")
ax_f.plot(x_test[:, 0], f_test[:, 0], "x", label="NTK prediction, t = ∞")
ax_f.set(xlabel="x₀", title="kernel regression, products on 2 workers")
ax_f.legend(fontsize=8)
fig.tight_layout()
plt.show()
