"""The package's structure and process-wide behaviour: no import cycle, every module imports on
its own, one validation path for every backend, BLAS thread limits restored after overlapping
calls, file-backed outputs on a full disk."""
import ast
import pathlib
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import ntkfast as nf
from ntkfast import _backends, _cuda_probe, _validation

PACKAGE = pathlib.Path(nf.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
NET = nf.MLP(2, "relu", W_std=1.5, b_std=0.05)


def _imports_of(path):
    """ntkfast modules that `path` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ntkfast."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ntkfast."))
    return found


def test_no_import_cycle_between_modules():
    """Counting imports inside functions too: a lazy import is still a dependency."""
    graph = {m: {d for d in _imports_of(PACKAGE / f"{m}.py") if d in MODULES} for m in MODULES}
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "active", f"import cycle: {' -> '.join(path + [module])}"
        state[module] = "active"
        for dep in sorted(graph[module]):
            visit(dep, path + [module])
        state[module] = "done"

    for module in MODULES:
        visit(module, [])


@pytest.mark.parametrize("module", [m for m in MODULES if m not in ("__main__",)])
def test_each_module_imports_alone(module):
    """In a fresh interpreter, importing one module first (before the package's __init__ has
    imported the others in its own order) works."""
    code = f"import importlib; importlib.import_module('ntkfast.{module}')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_cuda_probe_runs_once():
    probe = _cuda_probe.cuda_unavailable_reason
    probe.cache_clear()
    x = np.ones((3, 2))
    for _ in range(3):
        nf.gram(x, net=NET)
        nf.get_config()
        try:
            nf.gram(x, net=NET, backend="cuda")
        except nf.BackendUnavailableError:
            pass
    assert probe.cache_info().misses == 1


def test_backends_receive_checked_requests(monkeypatch):
    """The CPU backend gets a GramRequest whose arrays and options are already checked."""
    seen = []
    cpu = _backends.CpuBackend
    original = cpu.gram

    def spy(self, request):
        seen.append(request)
        return original(self, request)

    monkeypatch.setattr(cpu, "gram", spy)
    nf.gram([[1, 2], [3, 4]], net=NET, get="ntk", num_threads=1, tile_size=8)
    (request,) = seen
    assert isinstance(request, _validation.GramRequest)
    assert request.x1.dtype == np.int64 and request.dtype == np.float64
    assert request.names == ("ntk",) and request.single and request.symmetric
    assert (request.num_threads, request.tile, request.backend) == (1, 8, "cpu")


# ----------------------------------------------------------------------------------------------
# BLAS thread limits.

class _RecordingController:
    """threadpoolctl's controller, observable from any thread: one BLAS library whose thread
    count is ``current``. (OpenBLAS's own thread count, read from a thread other than the one
    that set it, does not always show the change.) ``interrupt_at``: the numbers of the
    set_num_threads calls at which Ctrl-C arrives (before the count is set)."""

    def __init__(self, interrupt_at=()):
        self.current = 2
        self.calls = 0
        self.interrupt_at = set(interrupt_at)

    def select(self, user_api):
        controller = self

        class Library:
            @property
            def num_threads(self):
                return controller.current

            def set_num_threads(self, threads):
                controller.calls += 1
                if controller.calls in controller.interrupt_at:
                    raise KeyboardInterrupt
                controller.current = threads

        class Selection:
            lib_controllers = [Library()]

        return Selection()


@pytest.mark.parametrize("interrupt_at", [(1,), (2,), (1, 2, 3)])
def test_ctrl_c_while_the_blas_limits_are_set_or_restored_loses_nothing(monkeypatch,
                                                                         interrupt_at):
    """Ctrl-C inside the restore left some libraries at one thread; the next call read that as
    the original and kept the process there for good."""
    from ntkfast import _blas

    _blas.ensure_loaded()
    controller = _RecordingController(interrupt_at)
    monkeypatch.setattr(_blas, "_controller", controller)
    with pytest.raises(KeyboardInterrupt):
        with _blas.single_threaded():
            assert controller.current == 1
    assert controller.current == 2 and _blas._limit_users == 0
    with _blas.single_threaded():  # the next call limits and restores as usual
        assert controller.current == 1
    assert controller.current == 2


def test_overlapping_calls_restore_the_blas_thread_limits(rng, monkeypatch):
    """Two Python threads whose gram calls overlap used to leave the BLAS libraries at one thread
    for the rest of the process: each call saved and restored the limits itself, so A enters
    (saves 2), B enters (saves 1), A leaves (restores 2), B leaves (restores 1). Progress
    callbacks force exactly that order."""
    from ntkfast import _blas

    _blas.ensure_loaded()
    controller = _RecordingController()
    monkeypatch.setattr(_blas, "_controller", controller)
    x = rng.standard_normal((300, 20))
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    errors, seen = [], []

    def wait(event):
        if not event.wait(timeout=60):
            raise TimeoutError("the other thread did not arrive")

    def progress_a(done, total):
        seen.append(controller.current)
        a_inside.set()
        wait(b_inside)

    def progress_b(done, total):
        seen.append(controller.current)
        b_inside.set()
        wait(a_done)
        seen.append(controller.current)  # A has left, B still computes: must still be 1

    def run_a():
        try:
            nf.gram(x, net=NET, progress=progress_a)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            a_done.set()

    def run_b():
        try:
            wait(a_inside)
            nf.gram(x, net=NET, progress=progress_b)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert seen == [1, 1, 1]  # single-threaded BLAS whenever an engine call runs
    assert controller.current == 2  # and the original limit back once both have left


# ----------------------------------------------------------------------------------------------
# File-backed outputs.

def test_memmap_output_reserves_its_disk_blocks(tmp_path, rng):
    """open_memmap makes a sparse file; the output's blocks are allocated before the engine runs."""
    x = rng.standard_normal((300, 4))
    path = tmp_path / "k.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(300, 300))
    assert path.stat().st_blocks * 512 < out.nbytes  # sparse
    nf.gram(x, net=NET, get="ntk", out=out)
    assert path.stat().st_blocks * 512 >= out.nbytes
    np.testing.assert_array_equal(out, nf.gram(x, net=NET, get="ntk"))


_FULL_DISK = textwrap.dedent("""
    import subprocess, sys, numpy as np, ntkfast as nf
    mount = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount], check=True)
    x = np.random.default_rng(0).standard_normal((1000, 5))
    out = np.lib.format.open_memmap(mount + "/k.npy", mode="w+", dtype=np.float64, shape=(1000, 1000))
    try:
        nf.gram(x, net=nf.MLP(2), get="ntk", out=out)
    except OSError as error:
        print("OSError:", error)
        sys.exit(0)
    print("no error")
""")


def test_memmap_output_on_a_full_disk_is_an_oserror(tmp_path):
    """8 MB of output on a 1 MB file system: an OSError before computing, not SIGBUS."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1) to mount a small tmpfs in a private namespace")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a user+mount namespace here: {probe.stderr.decode().strip()}")
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-c", _FULL_DISK, str(mount)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode} (SIGBUS is -7): {proc.stderr}"
    assert "OSError:" in proc.stdout and "No space left on device" in proc.stdout, proc.stdout
    assert "out: cannot reserve 8.0 MB on disk for the output file" in proc.stdout, proc.stdout


def test_a_disk_without_the_space_is_refused_before_any_block_is_reserved(tmp_path, rng,
                                                                          monkeypatch):
    """ext4's posix_fallocate keeps the blocks it got before failing, which would leave the disk
    full; the free space is compared first. An r+ map of written data needs no new blocks."""
    reserved = []
    monkeypatch.setattr(_validation, "_free_bytes", lambda fd: 1 << 20)
    monkeypatch.setattr(_validation.os, "posix_fallocate", lambda *a: reserved.append(a))
    x = rng.standard_normal((600, 5))
    path = tmp_path / "k.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(600, 600))
    with pytest.raises(OSError, match=r"out: cannot reserve 2.9 MB on disk for the output file "
                                      r".*k.npy: No space left on device \(1.0 MB free\)"):
        nf.gram(x, net=NET, get="ntk", out=out)
    assert not reserved and not out.any()
    del out
    np.save(path, np.ones((600, 600)))  # every block written: nothing more to reserve
    out = np.load(path, mmap_mode="r+")
    nf.gram(x, net=NET, get="ntk", out=out)
    np.testing.assert_array_equal(out, nf.gram(x, net=NET, get="ntk"))


def test_two_maps_of_one_file_part_are_an_overlap(tmp_path, rng):
    """np.may_share_memory compares addresses: two memory maps of one file look disjoint to it,
    and the outputs would overwrite each other or an input (wrong numbers, a destroyed input)."""
    x = rng.standard_normal((300, 300))
    path, inputs = tmp_path / "k.bin", tmp_path / "x.npy"
    a = np.memmap(path, np.float64, "w+", shape=(300, 300))
    b = np.memmap(path, np.float64, "r+", shape=(300, 300))
    with pytest.raises(ValueError, match="out: the nngp and ntk arrays map the same part of the "
                                         "file .*k.bin"):
        nf.gram(x, net=NET, out=(a, b))
    np.save(inputs, x)
    for x1, x2 in [(np.load(inputs, mmap_mode="r"), None), (x, np.load(inputs, mmap_mode="r")),
                   (np.load(inputs, mmap_mode="c"), None)]:  # a private map sees the file too
        with pytest.raises(ValueError, match="out maps the same part of the file .*x.npy as an "
                                             "input array"):
            nf.gram(x1, x2, net=NET, get="ntk", out=np.load(inputs, mmap_mode="r+"))
    np.testing.assert_array_equal(np.load(inputs), x)  # the input file is untouched
    # allowed: disjoint parts of one file, and a copy-on-write output (its writes stay private)
    both = np.memmap(path, np.float64, "w+", shape=(600, 300))
    nngp = np.memmap(path, np.float64, "r+", shape=(300, 300))
    ntk = np.memmap(path, np.float64, "r+", shape=(300, 300), offset=300 * 300 * 8)
    expected = nf.gram(x, net=NET)
    nf.gram(x, net=NET, out=(nngp, ntk))
    np.testing.assert_array_equal(both[:300], expected.nngp)
    np.testing.assert_array_equal(both[300:], expected.ntk)
    private = nf.gram(np.load(inputs, mmap_mode="r"), net=NET, get="ntk",
                      out=np.load(inputs, mmap_mode="c"))
    np.testing.assert_array_equal(private, expected.ntk)
    np.testing.assert_array_equal(np.load(inputs), x)
