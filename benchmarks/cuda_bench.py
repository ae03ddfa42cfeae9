"""CUDA backend benchmark: ntkfast.gram on a GPU against cuBLAS SGEMM of the same X·Xᵀ, a
hand-written CuPy implementation of the same kernel, and the CPU engine; plus the throughput of
outputs streamed to host memory / np.memmap; and a Hermite-series activation (MLP(3, 'tanh'):
per-row coefficient tables built on the host, the series summed per entry on the GPU) against the
ReLU network at the same N and against the CPU engine; the grid of symmetric NNGP + NTK Grams
(ReLU depth 3 and 10, d = 784 and 3072, float32 and float64) against CuPy's x @ x.T in the same
dtype; and ntkfast.predict (one eigh of the train NTK) on CuPy against NumPy arrays.
tools/gpu_check.sh runs it on a GPU machine with sizes that fit its time limits.

    python benchmarks/cuda_bench.py                      # N = 50k and 100k, d = 3072, float32, NTK
    python benchmarks/cuda_bench.py --n 20000 --stream-n 20000 --cpu-n 2048   # a quick run

Every GPU timing is taken with CUDA events on the current stream around the call and
synchronised, after a warm-up call. The float32 GEMMs run in full FP32 (ntkfast switches TF32
off for its own GEMMs; the SGEMM baseline is timed the same way); the TF32 settings found are
recorded. Prints a markdown table and writes it to benchmarks/results/cuda_bench_<device>.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import re
import shutil
import sys
import tempfile
import time

import numpy as np


def _gpu_time(cp, fn, repeat=1):
    """Seconds per call of fn() on the current stream (CUDA events), best of `repeat`."""
    best = float("inf")
    for _ in range(repeat):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, end) / 1e3)
    return best


def _relu_ntk_cupy(cp, x, depth, w_std, b_std, out, block=4096):
    """The same kernel (MLP(depth, 'relu'), NTK parameterization), written directly in CuPy:
    per row block the input Gram by cuBLAS, then the textbook arc-cosine recursion elementwise
    (float64 math on the block, as ntkfast does), one layer after the other. It has no snap of
    |ρ| ≈ 1, so its diagonal is off by ~√(float32 ε) ≈ 1e-4 (the "max rel. diff" column)."""
    n, d = x.shape
    w2, b2 = w_std * w_std, b_std * b_std
    q = (x.astype(cp.float64) ** 2).sum(axis=1) / d
    pre = []  # per-row variance of each layer's pre-activation
    for _ in range(depth):
        q = w2 * q + b2
        pre.append(q)
        q = q / 2  # E[relu(u)²] = q/2
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        c = (x[i0:i1] @ x.T).astype(cp.float64) / d
        t = cp.zeros_like(c)
        for layer in range(depth):
            c = w2 * c + b2
            t = w2 * t + c
            s = cp.sqrt(pre[layer][i0:i1, None] * pre[layer][None, :])
            theta = cp.arccos(cp.clip(c / s, -1.0, 1.0))
            c = s * (cp.sin(theta) + (np.pi - theta) * cp.cos(theta)) / (2 * np.pi)
            t = t * (np.pi - theta) / (2 * np.pi)
        c = w2 * c + b2
        t = w2 * t + c
        out[i0:i1] = t.astype(out.dtype)
    return out


def _cpu_estimate(nf, args, x_host, net, n):
    """The CPU engine's NTK time at N = n, scaled by N² from N = --cpu-n (empty without it)."""
    if not args.cpu_n:
        return ""
    m = min(args.cpu_n, n)
    start = time.perf_counter()
    nf.gram(x_host[:m], net=net, get="ntk", backend="cpu")
    t_cpu = time.perf_counter() - start
    return f"{t_cpu * (n / m) ** 2:.1f} ({t_cpu:.2f} at N = {m})"


def _matrix_section(cp, nf, args, rng):
    """Issue 13's grid: the symmetric NNGP + NTK Gram of MLP(depth, 'relu') for each depth, d,
    dtype and N, against CuPy's own x @ x.T (cuBLAS, the same dtype, FP32 without TF32) at that N."""
    out = ["", "Symmetric NNGP + NTK Gram, MLP(depth, 'relu', W_std=1.5, b_std=0.05), against "
           "CuPy's x @ x.T in the same dtype (the target: <= 2x at depth 3, float32):", "",
           "| depth | d | dtype | N | x @ x.T (s) | ntkfast NNGP + NTK (s) | ratio |",
           "|---|---|---|---|---|---|---|"]
    print("\n".join(out), flush=True)
    for d in args.matrix_d:
        for dtype in (np.float32, np.float64):
            for n in args.matrix_n:
                x = cp.asarray(rng.standard_normal((n, d)).astype(dtype))
                product = cp.empty((n, n), dtype=dtype)
                with _cuda_backend_fp32(nf, dtype):
                    t_gemm = _gpu_time(cp, lambda: cp.matmul(x, x.T, out=product), repeat=2)
                del product
                cp.get_default_memory_pool().free_all_blocks()
                for depth in args.matrix_depths:
                    net = nf.MLP(depth, "relu", W_std=1.5, b_std=0.05)
                    outputs = nf.Kernels(nngp=cp.empty((n, n), dtype=dtype),
                                         ntk=cp.empty((n, n), dtype=dtype))
                    nf.gram(x[:1024], net=net)  # warm-up
                    t_ours = _gpu_time(cp, lambda: nf.gram(x, net=net, out=outputs), repeat=2)
                    row = (f"| {depth} | {d} | {np.dtype(dtype).name} | {n} | {t_gemm:.3f} | "
                           f"{t_ours:.3f} | {t_ours / t_gemm:.2f} |")
                    out.append(row)
                    print(row, flush=True)
                    del outputs
                    cp.get_default_memory_pool().free_all_blocks()
                del x
                cp.get_default_memory_pool().free_all_blocks()
    return out


def _cuda_backend_fp32(nf, dtype):
    from ntkfast import _cuda_backend

    return _cuda_backend._fp32_gemms(np.dtype(dtype))


def _predict_section(cp, nf, args, rng):
    """ntkfast.predict.gradient_descent_mse (one eigh of the train NTK, then the outputs at 100
    times) on CuPy arrays against the same on NumPy arrays (LAPACK), float64."""
    out = ["", "predict: gradient_descent_mse(k_train_train, y_train) then the train and test "
           "outputs at 100 times (one eigh of the train kernel), float64, 1000 test points; the "
           "kernels precomputed (NTK of MLP(3, 'relu'), d = 784):", "",
           "| N train | GPU, CuPy arrays (s) | CPU, NumPy arrays (s) | CPU / GPU | "
           "max rel. diff of the test outputs |", "|---|---|---|---|---|"]
    print("\n".join(out), flush=True)
    net = nf.MLP(3, "relu", W_std=1.5, b_std=0.05)
    times = np.logspace(0, 4, 100)
    for n in args.predict_n:
        x = cp.asarray(rng.standard_normal((n + 1000, 784)))
        k = nf.gram(x, net=net, get="ntk")
        k_train, k_test = k[:n, :n].copy(), k[n:, :n].copy()
        del k
        y = cp.asarray(rng.standard_normal((n, 1)))

        def on_gpu():
            fn = nf.predict.gradient_descent_mse(k_train, y)
            return fn(times, fx_test_0=0.0, k_test_train=k_test)

        result = {}
        t_gpu = _gpu_time(cp, lambda: result.__setitem__("gpu", on_gpu()))  # one eigh: ~1 min at 40k
        gpu = result.pop("gpu")
        cpu_row = ""
        if n <= args.predict_cpu_max_n:
            k_train_h, k_test_h, y_h = cp.asnumpy(k_train), cp.asnumpy(k_test), cp.asnumpy(y)
            start = time.perf_counter()
            fn = nf.predict.gradient_descent_mse(k_train_h, y_h)
            cpu = fn(times, fx_test_0=0.0, k_test_train=k_test_h)
            t_cpu = time.perf_counter() - start
            want, got = np.asarray(cpu[1]), cp.asnumpy(gpu[1])
            cpu_row = (f"{t_cpu:.2f} | {t_cpu / t_gpu:.1f} | "
                       f"{np.abs(got - want).max() / np.abs(want).max():.1e}")
        else:
            cpu_row = "(not run) | | "
        row = f"| {n} | {t_gpu:.2f} | {cpu_row} |"
        out.append(row)
        print(row, flush=True)
        del x, k_train, k_test, y, gpu
        cp.get_default_memory_pool().free_all_blocks()
    return out


def _series_section(cp, nf, args, rng, relu):
    """MLP(depth, 'tanh') (Hermite series: tables on the host, sums on the GPU): NTK, float32,
    against the ReLU network of the same depth and the CPU engine (subsample, extrapolated)."""
    tanh = nf.MLP(args.depth, "tanh", W_std=1.5, b_std=0.05)
    out = ["", f"Hermite-series activation: NTK of {tanh!r}, float32, d = {args.d} (time includes "
           "building the coefficient tables on the host):", "",
           "| N | ntkfast tanh (s) | ntkfast ReLU (s) | tanh / ReLU | max rel. err. vs CPU (256 rows) | "
           "CPU engine tanh (s, extrapolated) |", "|---|---|---|---|---|---|"]
    print("\n".join(out), flush=True)
    for n in args.series_n:
        x_host = rng.standard_normal((n, args.d), dtype=np.float32)
        x = cp.asarray(x_host)
        nf.gram(x[:1024], net=tanh, get="ntk")  # warm-up (and the tables' caches)
        holder = {}
        t_tanh = _gpu_time(cp, lambda: holder.__setitem__("k", nf.gram(x, net=tanh, get="ntk")))
        t_relu = _gpu_time(cp, lambda: nf.gram(x, net=relu, get="ntk"))
        check = nf.gram(x_host[:256], x_host, net=tanh, get="ntk", backend="cpu")
        error = float(np.abs(holder["k"][:256].get() - check).max() / np.abs(check).max())
        del holder["k"]
        cpu = _cpu_estimate(nf, args, x_host, tanh, n)
        row = (f"| {n} | {t_tanh:.3f} | {t_relu:.3f} | {t_tanh / t_relu:.1f} | {error:.1e} | "
               f"{cpu} |")
        out.append(row)
        print(row, flush=True)
        del x
        cp.get_default_memory_pool().free_all_blocks()
    return out


def _device_label(name):
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[50_000, 100_000])
    parser.add_argument("--d", type=int, default=3072)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--cpu-n", type=int, default=4096, help="CPU engine subsample (extrapolated as N²)")
    parser.add_argument("--cupy-n", type=int, default=20_000, help="N of the hand-written CuPy version")
    parser.add_argument("--stream-n", type=int, default=50_000, help="N of the streamed-to-host runs")
    parser.add_argument("--series-n", type=int, nargs="*", default=[20_000],
                        help="N of the tanh depth-3 (Hermite series) runs; none: skipped")
    parser.add_argument("--memmap-dir", default=None, help="also stream to an np.memmap in this folder")
    parser.add_argument("--stream-gpu-limit-gb", type=float, default=1.0,
                        help="also stream with CuPy's pool limited to this many GB, far below the "
                             "outputs (an H200's 141 GB exceeds a host's memory and disk); 0: skipped")
    parser.add_argument("--matrix-n", type=int, nargs="*", default=[20_000, 50_000],
                        help="N of the depth x d x dtype grid (NNGP + NTK); none: skipped")
    parser.add_argument("--matrix-d", type=int, nargs="+", default=[784, 3072])
    parser.add_argument("--matrix-depths", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--predict-n", type=int, nargs="*", default=[10_000, 20_000, 40_000],
                        help="N train of the predict runs; none: skipped")
    parser.add_argument("--predict-cpu-max-n", type=int, default=20_000,
                        help="largest N train also run on the CPU (LAPACK eigh is O(N³))")
    parser.add_argument("--out", default=None, help="markdown file (default benchmarks/results/...)")
    args = parser.parse_args(argv)

    import cupy as cp

    import ntkfast as nf
    from ntkfast import _cuda_backend

    problem = _cuda_backend.device_problem()
    if problem is not None:
        sys.exit(f"the CUDA backend cannot run here: {problem}")
    device = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(device.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    net = nf.MLP(args.depth, "relu", W_std=1.5, b_std=0.05)
    tf32 = _cuda_backend.tf32_state()
    lines = [
        f"# ntkfast CUDA benchmark: {name}",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- device: {name} (GPU {device.id}, compute capability {device.compute_capability}, "
        f"{props['totalGlobalMem'] / 2**30:.0f} GiB)",
        f"- CUDA driver {cp.cuda.runtime.driverGetVersion()}, CuPy {cp.__version__} (runtime "
        f"{cp.cuda.runtime.runtimeGetVersion()}), ntkfast {nf.__version__} "
        f"({nf.get_config()['cuda']['build']})",
        f"- host: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
        f"- TF32: {tf32}",
        f"- kernel: NTK only of {net!r}, float32 in and out, d = {args.d}",
        "",
        "| N | cuBLAS SGEMM X·Xᵀ (s) | ntkfast (s) | ratio | hand-written CuPy (s, at N) | "
        "CPU engine (s, extrapolated) |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    target = pathlib.Path(args.out) if args.out else (
        pathlib.Path(__file__).parent / "results" / f"cuda_bench_{_device_label(name)}.md")
    target.parent.mkdir(parents=True, exist_ok=True)

    def save(*sections):  # after every section: a run cut short by a time limit keeps its results
        target.write_text("\n".join(line for section in sections for line in section) + "\n")

    rng = np.random.default_rng(0)
    rows = []
    for n in args.n:
        x_host = rng.standard_normal((n, args.d), dtype=np.float32)
        x = cp.asarray(x_host)
        out = cp.empty((n, n), dtype=cp.float32)
        with _cuda_backend._fp32_gemms(np.dtype(np.float32)):
            sgemm = _gpu_time(cp, lambda: cp.matmul(x, x.T, out=out), repeat=2)
        reference = out[:256].get()
        del out
        cp.get_default_memory_pool().free_all_blocks()
        ntk = nf.gram(x[:1024], net=net, get="ntk")  # warm-up
        del ntk
        holder = {}

        def run():
            holder["k"] = nf.gram(x, net=net, get="ntk")

        ours = _gpu_time(cp, run)
        check = nf.gram(x_host[:256], x_host, net=net, get="ntk", backend="cpu") if n <= 20_000 else None
        error = ""
        if check is not None:
            error = f" (max rel. err. vs CPU {np.abs(holder['k'][:256].get() - check).max() / np.abs(check).max():.1e})"
        del holder["k"], reference
        cp.get_default_memory_pool().free_all_blocks()

        hand = ""
        if args.cupy_n and args.cupy_n <= n:
            m = args.cupy_n
            out = cp.empty((m, m), dtype=cp.float32)
            xs = x[:m]
            t_hand = _gpu_time(cp, lambda: _relu_ntk_cupy(cp, xs, args.depth, 1.5, 0.05, out))
            t_ours = _gpu_time(cp, lambda: nf.gram(xs, net=net, get="ntk"))
            diff = float(cp.abs(out - nf.gram(xs, net=net, get="ntk")).max() / cp.abs(out).max())
            hand = f"{t_hand:.3f} at N = {m} (ntkfast {t_ours:.3f}; max rel. diff {diff:.1e})"
            del out
            cp.get_default_memory_pool().free_all_blocks()

        cpu = _cpu_estimate(nf, args, x_host, net, n)
        row = f"| {n} | {sgemm:.3f} | {ours:.3f}{error} | {ours / sgemm:.2f} | {hand} | {cpu} |"
        rows.append(row)
        print(row, flush=True)
        del x
        cp.get_default_memory_pool().free_all_blocks()

    save(lines, rows)
    stream_lines = ["", "Streamed to host (NTK, float32; GB/s = output bytes / wall time):", "",
                    "| N | destination | tile | time (s) | GB/s |", "|---|---|---|---|---|"]
    print("\n".join(stream_lines), flush=True)
    n = args.stream_n
    x = cp.asarray(rng.standard_normal((n, args.d), dtype=np.float32))
    def host_array():
        out = np.empty((n, n), dtype=np.float32)
        out.fill(0)  # first touch of the pages outside the timing
        return out

    targets = [("host np.empty", host_array)]
    if args.memmap_dir:
        path = pathlib.Path(tempfile.mkdtemp(dir=args.memmap_dir)) / "ntk.f32"
        targets.append((f"np.memmap ({args.memmap_dir})",
                        lambda: np.memmap(path, dtype=np.float32, mode="w+", shape=(n, n))))
    pool = cp.get_default_memory_pool()
    limit_bytes = int(args.stream_gpu_limit_gb * 1e9)
    if limit_bytes:
        targets.append((f"host np.empty, GPU pool limited to {args.stream_gpu_limit_gb:g} GB", host_array))
    for label, make in targets:
        out = make()
        limited = "limited" in label
        if limited:
            pool.free_all_blocks()
            previous, pool_limit = pool.get_limit(), pool.used_bytes() + limit_bytes
            pool.set_limit(size=pool_limit)
        tiles = []
        try:
            start = time.perf_counter()
            nf.gram(x, net=net, get="ntk", out=out,
                    progress=(lambda done, total: tiles.append(total)) if limited else None)
            elapsed = time.perf_counter() - start
            if limited:
                assert out.nbytes > limit_bytes and pool.total_bytes() <= pool_limit
                check = nf.gram(x[:256].get(), x.get(), net=net, get="ntk", backend="cpu")
                error = np.abs(out[:256] - check).max() / np.abs(check).max()
                label += f" ({len(tiles) and tiles[-1]} tiles; rows 0-255 vs CPU: {error:.1e} max|K|)"
        finally:
            if limited:
                pool.set_limit(size=previous)
        row = f"| {n} | {label} | default | {elapsed:.2f} | {out.nbytes / elapsed / 1e9:.2f} |"
        stream_lines.append(row)
        print(row, flush=True)
        del out
    if args.memmap_dir:
        shutil.rmtree(path.parent, ignore_errors=True)  # the output file (N² floats) of the run

    save(lines, rows, stream_lines)
    series_lines = _series_section(cp, nf, args, rng, net)
    save(lines, rows, stream_lines, series_lines)
    matrix_lines = _matrix_section(cp, nf, args, rng) if args.matrix_n else []
    save(lines, rows, stream_lines, series_lines, matrix_lines)
    predict_lines = _predict_section(cp, nf, args, rng) if args.predict_n else []
    save(lines, rows, stream_lines, series_lines, matrix_lines, predict_lines)
    print(f"\nwritten to {target}")


if __name__ == "__main__":
    main()
