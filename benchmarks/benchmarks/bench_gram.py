"""ntkfast.gram on the CPU (and CUDA where available) against NumPy baselines; accuracy tracks."""
import pathlib
import sys
import tempfile

import numpy as np

import ntkfast

from .common import cuda_or_skip, points

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/baselines.py
from baselines import numpy_gemm, numpy_kernels  # noqa: E402


class Gram:
    """Symmetric NNGP + NTK Gram of MLP(depth, activation, W_std=1.5, b_std=0.05), d = 784 (tanh: a
    Hermite-series activation, no closed form)."""

    params = ([1000, 3000], [3, 10], ["float64", "float32"], ["relu", "erf", "tanh"])
    param_names = ["n", "depth", "dtype", "activation"]
    timeout = 300

    def setup(self, n, depth, dtype, activation):
        self.x = points(n, dtype=dtype)
        self.net = ntkfast.MLP(depth, activation, W_std=1.5, b_std=0.05)
        ntkfast.gram(self.x[:32], net=self.net)  # warm: BLAS loaded, program built

    def time_gram(self, n, depth, dtype, activation):
        ntkfast.gram(self.x, net=self.net)

    def peakmem_gram(self, n, depth, dtype, activation):
        ntkfast.gram(self.x, net=self.net)


class GramShapes:
    """Symmetric vs cross Gram, one kernel vs both, at N = 3000."""

    params = (["symmetric", "cross"], ["nngp", "ntk", "both"])
    param_names = ["shape", "get"]

    def setup(self, shape, get):
        self.x = points(3000)
        self.x2 = None if shape == "symmetric" else points(3000, seed=1)
        self.get = ("nngp", "ntk") if get == "both" else get
        self.net = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)

    def time_gram(self, shape, get):
        ntkfast.gram(self.x, self.x2, net=self.net, get=self.get)


class GramIntoFile:
    """The float32 NTK of MLP(3, relu) at N = 4000, d = 784 (64 MB) into a fresh np.memmap, which
    ntkfast writes a row panel at a time, and into a fresh RAM array; benchmarks/large_gram.py
    has N = 40000."""

    params = (["ram", "memmap"],)
    param_names = ["output"]
    timeout = 300

    def setup(self, output):
        self.x = points(4000, dtype="float32")
        self.net = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)
        self.dir = tempfile.TemporaryDirectory()
        self.count = 0
        ntkfast.gram(self.x[:32], net=self.net, get="ntk")

    def teardown(self, output):
        self.dir.cleanup()

    def time_gram_ntk(self, output):
        n = len(self.x)
        if output == "ram":
            out = np.empty((n, n), dtype=np.float32)
        else:
            self.count += 1
            path = pathlib.Path(self.dir.name) / f"ntk{self.count}.f32"
            out = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, n))
        ntkfast.gram(self.x, net=self.net, get="ntk", out=out)
        if output == "memmap":
            del out
            path.unlink()


class Baselines:
    """The same job done without ntkfast: NumPy's x @ x.T (the floor's main term) and a plain
    NumPy implementation of the kernels."""

    params = ([1000, 3000], [3, 10], ["float64", "float32"], ["ntkfast", "numpy-gemm", "numpy"])
    param_names = ["n", "depth", "dtype", "implementation"]
    timeout = 300

    def setup(self, n, depth, dtype, implementation):
        self.x = points(n, dtype=dtype)
        self.net = ntkfast.MLP(depth, "relu", W_std=1.5, b_std=0.05)
        self.run = {
            "ntkfast": lambda: ntkfast.gram(self.x, net=self.net),
            "numpy-gemm": lambda: numpy_gemm(self.x),
            "numpy": lambda: numpy_kernels(self.x, depth=depth),
        }[implementation]
        self.run()

    def time_kernel(self, n, depth, dtype, implementation):
        self.run()

    def peakmem_kernel(self, n, depth, dtype, implementation):
        self.run()


class Diagonal:
    params = ([10_000, 100_000], [3, 30])
    param_names = ["n", "depth"]

    def setup(self, n, depth):
        self.x = points(n, d=128)
        self.net = ntkfast.MLP(depth, "gelu", W_std=1.3, b_std=0.1)

    def time_diagonal(self, n, depth):
        ntkfast.diagonal(self.x, net=self.net)


class Accuracy:
    """Max relative error (against max |K|) of ntkfast's float32 result, and of float64 against
    the plain NumPy implementation, as the depth grows."""

    params = ([1, 3, 10, 30, 50], ["relu", "erf"])
    param_names = ["depth", "activation"]
    unit = "relative error"

    def setup(self, depth, activation):
        x = points(300, d=64)
        self.net = ntkfast.MLP(depth, activation, W_std=1.5 if activation == "relu" else 1.3, b_std=0.05)
        self.reference = ntkfast.gram(x, net=self.net, get="ntk")
        self.k32 = ntkfast.gram(x.astype(np.float32), net=self.net, get="ntk")
        _, self.numpy_ntk = numpy_kernels(x, depth=depth, activation=activation,
                                          W_std=1.5 if activation == "relu" else 1.3, b_std=0.05)

    def track_float32_vs_float64(self, depth, activation):
        return float(np.abs(self.k32 - self.reference).max() / np.abs(self.reference).max())

    def track_float64_vs_numpy(self, depth, activation):
        return float(np.abs(self.numpy_ntk - self.reference).max() / np.abs(self.reference).max())


class GramCuda:
    """The CUDA backend (skipped without a GPU): CuPy in, CuPy out, synchronized timings."""

    params = ([20_000], ["float32", "float64"])
    param_names = ["n", "dtype"]

    def setup(self, n, dtype):
        self.cupy = cuda_or_skip()
        self.x = self.cupy.asarray(points(n, d=3072, dtype=dtype))
        self.net = ntkfast.MLP(3, "relu", W_std=1.5, b_std=0.05)
        ntkfast.gram(self.x[:64], net=self.net, get="ntk")
        self.cupy.cuda.get_current_stream().synchronize()

    def time_gram_ntk(self, n, dtype):
        ntkfast.gram(self.x, net=self.net, get="ntk")
        self.cupy.cuda.get_current_stream().synchronize()
