"""``ntkfast demo``: what ntkfast is for, in under a minute, on data that ships with the install.

Infinitely wide networks, trained by gradient descent for any time t, without training
anything: on scikit-learn's handwritten digits (8x8 images, 10 classes) it computes the NNGP
and NTK Gram matrices with :func:`ntkfast.gram`, predicts the mean and covariance of an
infinite ensemble of trained networks with
:func:`ntkfast.predict.gradient_descent_mse_ensemble` at log-spaced times and at t = ∞, prints
train/test error, test accuracy and the posterior's spread, and saves a plot of them against
training time.

    pip install "ntkfast[demo]" && ntkfast demo [--depth 3] [--n-train 1000] [--output plot.png]
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

DEFAULT_OUTPUT = "ntkfast_demo.png"
_N_DIGITS = 1797  # sklearn.datasets.load_digits()


def add_parser(subparsers):
    """Register ``ntkfast demo`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "demo", help="train infinitely wide networks on handwritten digits (no training loop)",
        description="Predict what infinitely wide networks trained by gradient descent output at "
                    "every training time, on scikit-learn's digits: NNGP and NTK Gram matrices "
                    "(ntkfast.gram), then ntkfast.predict.gradient_descent_mse_ensemble at "
                    "log-spaced times and t = inf. Prints a table and the timings, saves a plot. "
                    "Needs the demo extra: pip install \"ntkfast[demo]\".")
    p.add_argument("--depth", type=int, default=3, help="hidden layers (default 3)")
    p.add_argument("--activation", default="relu", help="activation name (default relu)")
    p.add_argument("--W-std", dest="W_std", type=float, default=1.5, help="σw (default 1.5)")
    p.add_argument("--b-std", dest="b_std", type=float, default=0.05, help="σb (default 0.05)")
    p.add_argument("--n-train", type=int, default=1000, help="training images (default 1000)")
    p.add_argument("--n-test", type=int, default=500, help="test images (default 500)")
    p.add_argument("--times", type=int, default=40,
                   help="log-spaced training times to predict at (default 40)")
    p.add_argument("--diag-reg", type=float, default=0.0,
                   help="diagonal regulariser, relative to mean(diag K) (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads for the kernels")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction,
                   default=sys.stderr.isatty(),
                   help="progress bars for the Gram matrices (default: when stderr is a terminal)")
    p.add_argument("-o", "--output", default=DEFAULT_OUTPUT, metavar="PLOT.png",
                   help=f"where to save the plot (default ./{DEFAULT_OUTPUT})")
    p.add_argument("--large", type=int, default=None, metavar="N",
                   help="instead: the large-N path on N generated points of 784 features "
                        "(ntkfast.KernelOperator, preconditioned CG at t = inf, Lanczos at "
                        "--times times; no N x N eigendecomposition); N = 20000 takes a few "
                        "minutes on 2 cores. Needs no extra.")
    p.set_defaults(func=_run)
    return p


def _missing_extra():
    missing = []
    for module in ("sklearn", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append({"sklearn": "scikit-learn"}.get(module, module))
    return missing


def _check_args(args):
    if args.n_train < 1 or args.n_test < 1:
        raise ValueError(f"--n-train and --n-test must be >= 1, got {args.n_train} and {args.n_test}")
    if args.n_train + args.n_test > _N_DIGITS:
        raise ValueError(f"--n-train + --n-test must be at most {_N_DIGITS} (the digits data set), "
                         f"got {args.n_train} + {args.n_test}")
    if args.times < 2:
        raise ValueError(f"--times must be >= 2, got {args.times}")
    if args.depth < 0:
        raise ValueError(f"--depth must be >= 0, got {args.depth}")
    if pathlib.Path(args.output).is_dir():
        raise ValueError(f"--output: {args.output} is a directory; give a file name like "
                         f"{DEFAULT_OUTPUT}")


def load_digits_split(n_train, n_test, seed):
    """Digits as points on the sphere of radius √64 (x·x/d = 1: unit input variance), centred
    with the training mean; targets one-hot minus 1/10 (zero mean). Returns x_train, y_train,
    labels_train, x_test, labels_test."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(labels))
    train, test = order[:n_train], order[n_train:n_train + n_test]
    x = images - images[train].mean(axis=0)
    x *= np.sqrt(x.shape[1]) / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y = np.eye(10)[labels] - 0.1
    return x[train], y[train], labels[train], x[test], labels[test]


def _metrics(mean_train, mean_test, cov_test, y_train, y_test, labels_test):
    """Per time: train MSE, test MSE, test accuracy, mean posterior std (over test points)."""
    train_mse = ((mean_train - y_train) ** 2).mean(axis=(-2, -1))
    test_mse = ((mean_test - y_test) ** 2).mean(axis=(-2, -1))
    accuracy = (mean_test.argmax(axis=-1) == labels_test).mean(axis=-1)
    variances = np.diagonal(cov_test, axis1=-2, axis2=-1)
    std = np.sqrt(np.maximum(variances, 0.0)).mean(axis=-1)
    return train_mse, test_mse, accuracy, std


def _table(times, results, inf_results):
    names = list(results)
    head1 = " " * 9 + "".join(f"{title:^44}" for title in (
        "NNGP (readout trained)" if n == "nngp" else "NTK (all layers trained)" for n in names))
    head2 = f"{'t':>9}" + "".join(f"{'train MSE':>11}{'test MSE':>11}{'test acc':>10}{'post.std':>10}"
                                  "  " for _ in names)
    rows = [head1, head2]
    shown = np.unique(np.round(np.linspace(0, len(times) - 1, min(len(times), 9))).astype(int))
    for i in list(shown) + [None]:
        label = "inf" if i is None else f"{times[i]:.3g}"
        line = f"{label:>9}"
        for name in names:
            train_mse, test_mse, acc, std = inf_results[name] if i is None else (
                m[i] for m in results[name])
            line += f"{train_mse:11.4f}{test_mse:11.4f}{100 * acc:9.1f}%{std:10.4f}  "
        rows.append(line)
    return "\n".join(rows)


def _plot(path, times, results, inf_results, title):
    from matplotlib.figure import Figure  # no pyplot: no display, no global backend state

    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_loss, ax_acc, ax_std = fig.subplots(1, 3)
    colours = {"nngp": "tab:blue", "ntk": "tab:orange"}
    labels = {"nngp": "NNGP", "ntk": "NTK"}
    for name, (train_mse, test_mse, acc, std) in results.items():
        c, lab = colours[name], labels[name]
        ax_loss.plot(times, test_mse, color=c, label=f"{lab} test")
        ax_loss.plot(times, train_mse, color=c, linestyle="--", label=f"{lab} train")
        ax_loss.axhline(inf_results[name][1], color=c, linestyle=":", linewidth=1)
        ax_acc.plot(times, 100 * acc, color=c, label=lab)
        ax_acc.axhline(100 * inf_results[name][2], color=c, linestyle=":", linewidth=1)
        ax_std.plot(times, std, color=c, label=lab)
    lowest_test = min(float(np.min(r[1])) for r in results.values())
    ax_loss.set(xscale="log", yscale="log", xlabel="training time t", ylabel="mean squared error",
                title="loss (dotted: t = ∞)", ylim=(lowest_test / 100, None))
    ax_acc.set(xscale="log", xlabel="training time t", ylabel="test accuracy (%)",
               title="test accuracy of the ensemble mean")
    ax_std.set(xscale="log", xlabel="training time t", ylabel="mean posterior std (test)",
               title="ensemble spread")
    for ax in (ax_loss, ax_acc, ax_std):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, format="png")


def _run(args):
    if args.large is not None:
        return _run_large(args)
    missing = _missing_extra()
    if missing:
        print(f"ntkfast demo needs {' and '.join(missing)} (the 'demo' extra): "
              'pip install "ntkfast[demo]"', file=sys.stderr)
        return 1
    _check_args(args)

    import ntkfast

    start = time.perf_counter()
    net = ntkfast.MLP(args.depth, args.activation, W_std=args.W_std, b_std=args.b_std)
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    created = not output.exists()
    with open(output, "ab"):  # fail now, not after the computation, if it cannot be written
        pass
    try:
        _demo(args, net, output, start)
    except BaseException:
        if created:
            output.unlink(missing_ok=True)
        raise
    return 0


def _demo(args, net, output, start):
    import ntkfast
    from ntkfast import predict

    x_train, y_train, _, x_test, labels_test = load_digits_split(args.n_train, args.n_test,
                                                                 args.seed)
    y_test = np.eye(10)[labels_test] - 0.1
    print(f"ntkfast {ntkfast.__version__} demo: {args.n_train} training and {args.n_test} test "
          f"digits (8x8 pixels, 10 classes)\nnetwork: {net!r}, infinitely wide; targets one-hot "
          f"- 0.1; loss Σ(f-y)²/(2·{y_train.size}), learning rate 1 (neural-tangents' units)")

    seconds = {"kernels": 0.0}

    def timed_gram(x1, x2, get):  # ntkfast.gram, timed (a kernel_fn as neural-tangents passes)
        t0 = time.perf_counter()
        k = ntkfast.gram(x1, x2, net=net, get=get, progress=args.progress,
                         num_threads=args.threads)
        seconds["kernels"] += time.perf_counter() - t0
        return k

    ensemble = predict.gradient_descent_mse_ensemble(timed_gram, x_train, y_train,
                                                     diag_reg=args.diag_reg)
    names = ("nngp", "ntk")
    times = np.logspace(-1, 7, args.times)

    t0 = time.perf_counter()
    test_inf = ensemble(t=None, x_test=x_test, get=names, compute_cov=True)
    train_inf = ensemble(t=None, get=names)
    seconds["t = inf: Cholesky solves, means and covariances"] = (
        time.perf_counter() - t0 - seconds["kernels"])
    t0 = time.perf_counter()
    test_t = ensemble(t=times, x_test=x_test, get=names, compute_cov=True)
    train_t = ensemble(t=times, get=names)
    seconds[f"{args.times} times: one eigh per kernel, means and covariances"] = (
        time.perf_counter() - t0)

    results, inf_results = {}, {}
    for name in names:
        results[name] = _metrics(getattr(train_t, name), getattr(test_t, name).mean,
                                 getattr(test_t, name).covariance, y_train, y_test, labels_test)
        inf_results[name] = _metrics(getattr(train_inf, name), getattr(test_inf, name).mean,
                                     getattr(test_inf, name).covariance, y_train, y_test,
                                     labels_test)
    print()
    print(_table(times, results, inf_results))

    t0 = time.perf_counter()
    _plot(output, times, results, inf_results,
          f"ntkfast demo: infinitely wide depth-{args.depth} {args.activation} MLP "
          f"(W_std={args.W_std:g}, b_std={args.b_std:g}), {args.n_train} training / "
          f"{args.n_test} test digits")
    seconds["plot"] = time.perf_counter() - t0
    total = time.perf_counter() - start
    entries = args.n_train ** 2 + args.n_test * (args.n_train + args.n_test)
    rows = [(f"NNGP + NTK Gram matrices (ntkfast.gram, {entries:,} entries each)",
             seconds.pop("kernels")), *seconds.items(), ("total", total)]
    width = max(len(what) for what, _ in rows)
    print("\ntimings")
    for what, value in rows:
        print(f"  {what:<{width}} {value:7.2f} s")
    print(f"plot saved to {output.resolve()}")


def generated_regression(n, d=784, n_test=500, seed=0):
    """Structured synthetic data for large-N runs: x = tanh(Z W) on a 20-dimensional latent Z,
    rows scaled to norm √d; 10 targets sin(Z A/√20). Returns x (n, d), y (n, 10), x_test, y_test.
    (I.i.d. Gaussian points would give an NTK close to a multiple of I: too easy to solve.)"""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n + n_test, 20))
    x = np.tanh(z @ (rng.standard_normal((20, d)) / np.sqrt(20)))
    x /= np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(d)
    y = np.sin(z @ rng.standard_normal((20, 10)) / np.sqrt(20))  # smooth in z: learnable
    return x[:n], y[:n], x[n:], y[n:]


def _run_large(args):
    import ntkfast
    from ntkfast import predict

    if args.large < 2:
        raise ValueError(f"--large must be at least 2 points, got {args.large}")
    if args.times < 1:
        raise ValueError(f"--times must be at least 1, got {args.times}")
    start = time.perf_counter()
    net = ntkfast.MLP(args.depth, args.activation, W_std=args.W_std, b_std=args.b_std)
    x, y, x_test, y_test = generated_regression(args.large, seed=args.seed)
    diag_reg = args.diag_reg or 1e-4
    print(f"ntkfast {ntkfast.__version__} demo --large: {args.large} generated points of 784 "
          f"features (a 20-dimensional manifold), {len(x_test)} test points, 10 targets\n"
          f"network: {net!r}, infinitely wide; diag_reg {diag_reg:g}")
    op = ntkfast.KernelOperator(x, net=net, num_threads=args.threads, progress=args.progress)
    print(f"train kernel: {op!r}")
    cross = ntkfast.KernelOperator(x_test, x, net=net, storage="recompute",
                                   num_threads=args.threads)
    fn = predict.gradient_descent_mse(op, y, diag_reg=diag_reg, tol=1e-8, progress=args.progress)
    setup = time.perf_counter() - start
    t0 = time.perf_counter()
    f_inf = fn(t=None, fx_train_0=None, fx_test_0=0.0, k_test_train=cross)
    cg = fn.info
    t_cg = time.perf_counter() - t0
    times = np.logspace(0, 6, args.times)
    t0 = time.perf_counter()
    f_train, f_test = fn(t=times, fx_train_0=0.0, fx_test_0=0.0, k_test_train=cross)
    lanczos = fn.info
    t_lanczos = time.perf_counter() - t0

    def mse(f, target):
        return float(np.mean((f - target) ** 2))

    print(f"\n{'time t':>10}  {'train MSE':>10}  {'test MSE':>10}")
    for i in range(0, len(times), max(1, len(times) // 10)):
        print(f"{times[i]:10.3g}  {mse(f_train[i], y):10.4f}  {mse(f_test[i], y_test):10.4f}")
    print(f"{'inf':>10}  {0.0:10.4f}  {mse(f_inf, y_test):10.4f}")
    print(f"\nt = inf: preconditioned CG, {cg.iterations} iterations, relative residual "
          f"{float(np.max(cg.residuals)):.1e}, {t_cg:.1f} s")
    print(f"{args.times} times: Lanczos, {int(np.max(lanczos.steps))} steps, {t_lanczos:.1f} s")
    print(f"set-up (the operator{'s Gram matrix' if op.storage != 'recompute' else ''}): "
          f"{setup:.1f} s; total {time.perf_counter() - start:.1f} s")
    return 0


def main(argv=None):
    """Run ``ntkfast demo`` alone (``python -m ntkfast.demo``)."""
    parser = argparse.ArgumentParser(prog="ntkfast")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
