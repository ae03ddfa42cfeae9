"""The ``ntkfast`` command: ``ntkfast gram``, ``ntkfast info`` (and ``ntkfast demo``).

    ntkfast gram X.npy [--x2 Y.npy] --depth 3 --activation relu --W-std 1.5 --b-std 0.05 \\
        [--get ntk] [--dtype float32] -o K.npy
    ntkfast gram random:4000x784 ...        (generated points, no input file)
    ntkfast info [--json]

Outputs are written memory-mapped (``np.lib.format.open_memmap``), so a Gram matrix larger than
memory streams to disk. With both kernels (the default), ``-o K.npy`` writes ``K.nngp.npy`` and
``K.ntk.npy``. Each output is written to a temporary file next to it and renamed onto its name
only once every kernel is complete: a failed or interrupted run leaves existing files as they
were and no partial output behind.

Exit status: 0 on success, 2 for bad input or usage (a one-line ``ntkfast gram: error: ...``
on stderr; also points whose kernel overflows or underflows, NonFiniteKernelError and
KernelUnderflowError), 1 when the machine fails the run (out of memory, disk full: the message
names the -o file), 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import ast
import os
import pathlib
import re
import sys
import tempfile
import time


class UsageError(Exception):
    """Bad input or arguments: reported in one line, exit status 2."""


def _parse_param(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        parsed = value
    return name.strip(), parsed


def _random_points(spec_text, what, seed):
    import numpy as np

    spec = spec_text[len("random:"):].lower().replace(",", "x")
    parts = spec.split("x")
    # digits only: int() would also take "+5", " 5" or "1_000", and "-3" must not slip through
    if len(parts) != 2 or not all(p.isdigit() and p.isascii() for p in parts):
        raise UsageError(f"{what}: expected random:NxD with positive integers N and D (e.g. "
                         f"random:2000x784), got {spec_text!r}")
    n, d = (int(p) for p in parts)
    if n < 1 or d < 1:
        raise UsageError(f"{what}: random:NxD needs N >= 1 points and D >= 1 features, got "
                         f"{spec_text!r}")
    return np.random.default_rng(seed).standard_normal((n, d))


def _load_points(path, what, seed=0):
    """The points of a .npy file (memory-mapped) or of a random:NxD spec, checked to be a real
    2-D array with at least one point and one feature."""
    import numpy as np

    if str(path).startswith("random:"):
        return _random_points(str(path), what, seed)
    path = pathlib.Path(path)
    if not path.is_file():
        raise UsageError(f"{what}: no such file: {path}")
    try:
        with open(path, "rb") as f:
            # np.load would unpickle or unzip other formats (or fail with EOFError on an empty
            # file): only the .npy magic string is accepted
            magic = f.read(len(np.lib.format.MAGIC_PREFIX))
    except OSError as error:
        raise UsageError(f"{what}: cannot read {path}: {error.strerror or error}") from None
    if magic != np.lib.format.MAGIC_PREFIX:
        kind = ("an empty file" if not magic else
                "a .npz archive (save one array with np.save)" if magic.startswith(b"PK")
                else "not a .npy file")
        raise UsageError(f"{what}: {path} is {kind}; expected a .npy array file (np.save)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        # object arrays ("pickled data"), truncated data, corrupt headers
        raise UsageError(f"{what}: {path} is not a readable .npy array ({error})") from None
    except (OSError, EOFError, SyntaxError) as error:
        raise UsageError(f"{what}: {path} is a corrupt .npy file ({error})") from None
    if arr.dtype.kind not in "biuf":
        raise UsageError(f"{what}: {path} must hold real numbers (int or float), got dtype "
                         f"{arr.dtype}")
    if arr.ndim != 2:
        raise UsageError(f"{what}: {path} must be a 2-D array (n_points, n_features), got shape "
                         f"{arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UsageError(f"{what}: {path} must have at least one point and one feature, got shape "
                         f"{arr.shape}")
    return arr


def _output_paths(out, names):
    out = pathlib.Path(out)
    if len(names) == 1:
        return {names[0]: out}
    stem = out.name[:-4] if out.name.endswith(".npy") else out.name
    return {name: out.with_name(f"{stem}.{name}.npy") for name in names}


def _check_outputs(paths, inputs):
    """Refuse outputs that are directories or the same file as an input (symlinks and hard links
    included): inputs are memory-mapped, so writing over one would read its own output."""
    for path in paths.values():
        if path.is_dir():
            raise UsageError(f"-o: {path} is a directory; expected a .npy file name")
        for option, source in inputs:
            try:
                same = path.exists() and os.path.samefile(path, source)
            except OSError:
                same = False
            if same:
                raise UsageError(f"-o: {path} is the input file {option} {source}; choose "
                                 "another output name")


def _discard(temp):
    """Delete a temporary output. Truncated first: the failed computation's traceback may still
    hold its memory map, and an unlinked file's blocks stay allocated while it is mapped; on a
    full disk the error message could then not even be written to a log on it."""
    for step in (lambda: os.truncate(temp, 0), lambda: os.unlink(temp)):
        try:
            step()
        except OSError:
            pass


def _output_error(error, user_paths):
    """An OSError about a temporary output (disk full, ...) reworded to name the -o file."""
    for temp, path in user_paths.items():
        if error.filename == temp:  # from os: "[Errno N] strerror: 'temp'"
            text = f"cannot write {path}: {error.strerror or error}"
        elif temp in str(error):  # from ntkfast.gram's out= checks
            text = re.sub(r"^(\[Errno \d+\] )?out( \(\w+\))?: ", "",  # gram's out= label
                          str(error).replace(temp, str(path)))
        else:
            continue
        reworded = OSError(f"-o: {text}")  # one argument: no "[Errno N]" in the line
        reworded.errno = error.errno
        return reworded
    return error


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cmd_gram(args):
    import numpy as np

    import ntkfast
    from ntkfast import KernelUnderflowError, NonFiniteKernelError
    from ntkfast._validation import check_fits_dtype, reject_non_finite

    # argument values argparse cannot check by type alone
    if args.depth < 0:
        raise UsageError(f"--depth must be >= 0, got {args.depth}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {args.threads}")
    if args.width is not None and args.width < 1:
        raise UsageError(f"--width must be a positive integer, got {args.width}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")

    x1 = _load_points(args.x, "X", args.seed)
    x2 = None if args.x2 is None else _load_points(args.x2, "--x2", args.seed + 1)
    if x2 is not None and x2.shape[1] != x1.shape[1]:
        raise UsageError(f"--x2: expected {x1.shape[1]} features like X, got shape {x2.shape}")
    net = ntkfast.MLP(args.depth, args.activation, W_std=args.W_std, b_std=args.b_std,
                      parameterization=args.parameterization, width=args.width,
                      **dict(args.param or []))
    names = ("nngp", "ntk") if args.get == "both" else (args.get,)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    dtype = np.dtype(args.dtype) if args.dtype else (
        np.dtype(np.float32) if x1.dtype == np.float32 and (x2 is None or x2.dtype == np.float32)
        else np.dtype(np.float64))
    paths = _output_paths(args.output, names)
    inputs = [(option, pathlib.Path(value)) for option, value in (("X", args.x), ("--x2", args.x2))
              if value is not None and not str(value).startswith("random:")]
    _check_outputs(paths, inputs)

    temps, outs = {}, {}
    try:
        for name, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            # same directory as the target, so os.replace is an atomic rename
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            temps[name] = temp
            outs[name] = np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=(n1, n2))
        for points, label in ((x1, "X"), (x2, "--x2")):
            if points is not None:  # in the CLI's names (gram's says x1, check_finite=, dtype=)
                reject_non_finite(points, label, hint="; ntkfast gram needs finite inputs")
                try:
                    check_fits_dtype(points, label, dtype)
                except ValueError as error:
                    raise UsageError(str(error).replace("pass dtype=float64",
                                                        "pass --dtype float64")) from None
        start = time.perf_counter()
        ntkfast.gram(x1, x2, net=net, get=names, dtype=dtype, out=outs,
                     num_threads=args.threads, progress=args.progress, check_finite=False)
        elapsed = time.perf_counter() - start
        mode = 0o666 & ~_umask()  # mkstemp creates 0600; give the file a normal file's mode
        for name, arr in outs.items():
            arr.flush()
            os.chmod(temps[name], mode)
        for name in names:
            os.replace(temps.pop(name), paths[name])
    except OSError as error:
        # name the user's -o file, not the hidden temporary one
        raise _output_error(error, {temps[name]: paths[name] for name in temps}) from None
    except (NonFiniteKernelError, KernelUnderflowError) as error:
        # the points' (or the net's) fault: bad input, in the CLI's names for the point sets
        labels = {"x1": "X", "x2": "--x2"}
        where = f"{error.argument}[{error.row}]"
        message = str(error).replace(where, f"{labels.get(error.argument, error.argument)}"
                                            f"[{error.row}]", 1)
        raise UsageError(message.replace("try dtype=float64", "try --dtype float64")) from None
    finally:
        outs.clear()
        for temp in temps.values():  # failure or Ctrl-C: no partial output left behind
            _discard(temp)
    for name in names:
        print(f"{name}: {n1} x {n2} {dtype} -> {paths[name]}")
    print(f"{net!r}: {elapsed:.2f} s")
    return 0


def _cmd_info(args):
    import json

    import ntkfast

    if args.json:
        print(json.dumps(ntkfast.get_config(), indent=2, default=str))
    else:
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
                   help="output .npy (with both kernels: K.nngp.npy and K.ntk.npy); never an "
                        "input file")
    g.set_defaults(func=_cmd_gram)

    i = sub.add_parser("info", help="show the build and the backends available here",
                       description="What was built (compiler, CPU kernel variants, OpenMP, CUDA "
                                   "version and architectures, the wheel's manylinux policy) and "
                                   "what works here (backends, threads, GPU driver needed and "
                                   "found, BLAS): ntkfast.show_config().")
    i.add_argument("--json", action="store_true",
                   help="print ntkfast.get_config() as JSON instead")
    i.set_defaults(func=_cmd_info)

    from . import demo  # imports scikit-learn and matplotlib only when it runs

    demo.add_parser(sub)
    return parser


def _one_line(error):
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"ntkfast {args.command}"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, OverflowError, MemoryError, OSError,
            FloatingPointError, RuntimeError) as error:
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        # gram: bad input (ours or ntkfast's checks, e.g. non-finite points, a number out of
        # range) is 2, a failed computation or write (out of memory, disk full) 1; demo keeps
        # its documented 1
        bad_input = isinstance(error, UsageError) or (
            args.command == "gram" and isinstance(error, (ValueError, TypeError, OverflowError)))
        return 2 if bad_input else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
