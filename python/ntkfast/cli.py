"""The ``ntkfast`` command: ``ntkfast gram``, ``ntkfast info`` (and ``ntkfast demo``).

    ntkfast gram X.npy [--x2 Y.npy] --depth 3 --activation relu --W-std 1.5 --b-std 0.05 \\
        [--get ntk] [--dtype float32] -o K.npy
    ntkfast gram random:4000x784 ...        (generated points, no input file)
    ntkfast info

Outputs are written memory-mapped (``np.lib.format.open_memmap``), so a Gram matrix larger than
memory streams to disk. With both kernels (the default), ``-o K.npy`` writes ``K.nngp.npy`` and
``K.ntk.npy``.
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import sys
import time


def _parse_param(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return name.strip(), parsed


def _load_points(path, what, seed=0):
    import numpy as np

    if str(path).startswith("random:"):
        # generated data, no file needed: random:N x D standard normal points
        spec = str(path)[len("random:"):].lower().replace(",", "x")
        try:
            n, d = (int(v) for v in spec.split("x"))
        except ValueError:
            raise ValueError(f"{what}: expected random:NxD (e.g. random:2000x784), got {path!r}") from None
        return np.random.default_rng(seed).standard_normal((n, d))
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{what}: {path} is not a .npy array file ({error})") from None


def _output_paths(out, names):
    out = pathlib.Path(out)
    if len(names) == 1:
        return {names[0]: out}
    stem = out.name[:-4] if out.name.endswith(".npy") else out.name
    return {name: out.with_name(f"{stem}.{name}.npy") for name in names}


def _cmd_gram(args):
    import numpy as np

    import ntkfast

    x1 = _load_points(args.x, "X", args.seed)
    x2 = None if args.x2 is None else _load_points(args.x2, "--x2", args.seed + 1)
    net = ntkfast.MLP(args.depth, args.activation, W_std=args.W_std, b_std=args.b_std,
                      parameterization=args.parameterization, width=args.width,
                      **dict(args.param or []))
    names = ("nngp", "ntk") if args.get == "both" else (args.get,)
    n1 = x1.shape[0] if x1.ndim == 2 else None
    n2 = (x2.shape[0] if x2 is not None and x2.ndim == 2 else n1)
    dtype = np.dtype(args.dtype) if args.dtype else (
        np.dtype(np.float32) if x1.dtype == np.float32 and (x2 is None or x2.dtype == np.float32)
        else np.dtype(np.float64))
    paths = _output_paths(args.output, names)
    outs = {}
    if n1 is not None and n2 is not None:
        for name, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            outs[name] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n1, n2))
    start = time.perf_counter()
    ntkfast.gram(x1, x2, net=net, get=names, dtype=dtype, out=outs or None,
                 num_threads=args.threads, progress=args.progress)
    elapsed = time.perf_counter() - start
    for name, arr in outs.items():
        arr.flush()
        print(f"{name}: {arr.shape[0]} x {arr.shape[1]} {arr.dtype} -> {paths[name]}")
    print(f"{net!r}: {elapsed:.2f} s")
    return 0


def _cmd_info(args):
    import ntkfast

    ntkfast.show_config()
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="ntkfast", description="NNGP and NTK kernels of infinitely wide networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("gram", help="compute a Gram matrix from .npy points",
                       description="Compute the NNGP and/or NTK Gram matrix of an MLP "
                                   "(ntkfast.MLP) for the points in X.npy (n_points x n_features).")
    g.add_argument("x", metavar="X.npy", help="points, shape (n1, n_features); or random:NxD for "
                                            "generated standard-normal points")
    g.add_argument("--seed", type=int, default=0, help="seed for random:NxD inputs")
    g.add_argument("--x2", metavar="Y.npy", help="second point set (default: X itself, symmetric)")
    g.add_argument("--depth", type=int, default=3, help="hidden layers (default 3)")
    g.add_argument("--activation", default="relu", help="activation name (default relu)")
    g.add_argument("--param", action="append", type=_parse_param, metavar="NAME=VALUE",
                   help="activation parameter, e.g. --param alpha=0.1 (repeatable)")
    g.add_argument("--W-std", dest="W_std", type=float, default=1.0, help="σw (default 1.0)")
    g.add_argument("--b-std", dest="b_std", type=float, default=0.0, help="σb (default 0.0)")
    g.add_argument("--parameterization", choices=("ntk", "standard"), default="ntk")
    g.add_argument("--width", type=int, default=None, help="hidden width ('standard' only)")
    g.add_argument("--get", choices=("nngp", "ntk", "both"), default="both")
    g.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="output dtype (default: float32 for float32 inputs, else float64)")
    g.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: all)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="show a progress bar (default: when stderr is a terminal)")
    g.add_argument("-o", "--output", required=True, metavar="K.npy",
                   help="output .npy (with both kernels: K.nngp.npy and K.ntk.npy)")
    g.set_defaults(func=_cmd_gram)

    i = sub.add_parser("info", help="show the build and the backends available here")
    i.set_defaults(func=_cmd_info)

    from . import demo  # imports scikit-learn and matplotlib only when it runs

    demo.add_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("ntkfast: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, MemoryError, OSError, FloatingPointError, RuntimeError) as error:
        print(f"ntkfast {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
