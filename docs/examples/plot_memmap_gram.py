"""
Gram matrices into a memory-mapped file, with progress
======================================================

:func:`ntkfast.gram` writes straight into preallocated arrays, such as :class:`numpy.memmap`:
a matrix larger than memory goes to disk tile by tile. ``progress=True`` shows a tqdm bar; a
callable is called as ``progress(tiles_done, tiles_total)`` -- here it records the progress.
"""
import os
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np

import ntkfast

n, d = 4000, 256
x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
net = ntkfast.MLP(20, "relu", W_std=1.5, b_std=0.05)   # deep: a few tenths of a second

events = []
start = time.perf_counter()


def progress(done, total):
    events.append((time.perf_counter() - start, done / total))


with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "ntk.f32")
    k = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, n))
    ntkfast.gram(x, net=net, get="ntk", out=k, progress=progress, tile_size=128)
    k.flush()
    print(f"{path}: {os.path.getsize(path) / 2**20:.1f} MiB, {len(events)} progress calls")
    on_disk = np.memmap(path, dtype=np.float32, mode="r", shape=(n, n))
    assert np.array_equal(on_disk, on_disk.T)   # the symmetric Gram is exactly symmetric
    corner = np.array(on_disk[:200, :200])
    del k, on_disk

fig, (ax_k, ax_p) = plt.subplots(1, 2, figsize=(9, 3.8))
image = ax_k.imshow(corner, cmap="viridis")
ax_k.set_title("NTK, first 200 points (from the file)")
fig.colorbar(image, ax=ax_k)
seconds, fraction = np.array(events).T
ax_p.plot(seconds, fraction, ".-")
ax_p.set(xlabel="seconds", ylabel="fraction of tiles done", title="progress(done, total)")
fig.tight_layout()
plt.show()
