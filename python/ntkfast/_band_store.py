"""Stored kernels of :class:`ntkfast.KernelOperator`: products that read each stored entry once.

A symmetric kernel is used as the bands of its upper triangle: band b holds rows [r0, r1) and
columns [r0, n), and each entry of the upper triangle serves both its row (K_ij v_j) and,
mirrored, its column (K_ij v_i); of the band's diagonal block only the upper triangle is read, so
a product reads N²/2 entries. A cross
kernel is used as full row bands. The engine's ``band_matmat`` widens each entry in registers
and sums in float64, so a float32 kernel costs half the memory traffic of a float64 one and
never a float64 copy.

In memory the bands are views of the full matrix. In a file (``storage='file'``) only the bands
are written, packed one after the other (N²/2 entries for a symmetric kernel), and a product reads
them with ``os.preadv`` into two reused buffers, the next band while the engine works on the
current one: the process holds two bands, whatever N (the page cache is the operating system's),
and a product can be interrupted between bands. A file larger than the memory would, read in the
same order product after product, evict each band from the page cache just before it is needed
again (every read from disk); instead only the file's first ``cache_bytes`` are left to the page
cache and the rest is dropped after each use, so that part stays cached and only the rest
comes from disk.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
import threading

import numpy as np

from . import _core
from ._progress import Progress
from ._validation import available_memory, human_bytes

__all__ = ["band_bounds", "fill_band", "BandFile", "memory_product", "bands_product",
           "file_product", "write_bands", "transposed_vectors"]

#: Bytes of one band of a file (two are held during a product, three while writing).
FILE_BAND_BYTES = 64 << 20
#: Bytes of one band computed and kept as its own array (ntkfast.dask's workers).
MEMORY_BAND_BYTES = 32 << 20
#: Bytes of one band of a whole matrix in memory: a view, so the size only sets the work per
#: engine call; few calls, because each is a fork and join of the threads, which on a busy
#: machine can wait a scheduler time slice (N = 8000, two cores shared with two other
#: processes: 68 ms per float64 product with 9 bands of 32 MB, 10-21 ms with 2 of 256 MB).
VIEW_BAND_BYTES = 256 << 20
#: Share of the available memory (when the file is created) that its cached part may take.
CACHE_SHARE = 0.7
#: Rows of one band at most: the engine keeps rows × k float64 row sums per thread.
MAX_BAND_ROWS = 4096


def band_bounds(n_rows, n_cols, symmetric, itemsize, budget):
    """[(r0, r1, c0)]: the bands' rows and first column; each takes about ``budget`` bytes."""
    bounds, r0 = [], 0
    while r0 < n_rows:
        c0 = r0 if symmetric else 0
        rows = budget // max(1, (n_cols - c0) * itemsize)
        rows = int(max(1, min(rows, MAX_BAND_ROWS, n_rows - r0)))
        bounds.append((r0, r0 + rows, c0))
        r0 += rows
    return bounds


def fill_band(block, x, x2, r0, r1, out):
    """Rows r0:r1 of K(x, x2) into ``out``: columns r0: of a symmetric kernel (x2 None), all of a
    cross one. ``block(a, b)`` computes the kernel of two point sets (b None: the symmetric Gram
    of a), so the diagonal block of a symmetric kernel is exactly symmetric and its diagonal
    equals ``ntkfast.diagonal``."""
    if x2 is not None:
        out[...] = block(x[r0:r1], x2)
        return
    rows = r1 - r0
    out[:, :rows] = block(x[r0:r1], None)
    if r1 < len(x):
        out[:, rows:] = block(x[r0:r1], x[r1:])


def _apply_band(band, r0, c0, symmetric, transpose, vt, out, num_threads):
    """out (k × n) += this band's share of K @ V (or Kᵀ @ U), vectors transposed (vt: k × n)."""
    if symmetric:  # c0 == r0: the band starts with its diagonal block
        _core.symmetric_band_matmat(band, r0, vt, out, num_threads)
    elif transpose:
        _core.band_matmat(band, r0, c0, None, vt, None, out, 0, num_threads)
    else:
        _core.band_matmat(band, r0, c0, vt, None, out, None, band.shape[1], num_threads)


def transposed_vectors(v, n_out):
    """(V transposed, C-contiguous (k x n); zero outputs (k x n_out)): band_matmat's layout."""
    vt = np.ascontiguousarray(v.T)
    return vt, np.zeros((v.shape[1], n_out))


def memory_product(k, v, *, symmetric, transpose, num_threads, progress, desc):
    """K @ V (Kᵀ @ V) for a matrix K in memory, in float64, reading each entry once."""
    bounds = band_bounds(*k.shape, symmetric, k.dtype.itemsize, VIEW_BAND_BYTES)
    bands = [((r0, r1, c0), k[r0:r1, c0:]) for r0, r1, c0 in bounds]
    return bands_product(bands, k.shape, v, symmetric=symmetric, transpose=transpose,
                         num_threads=num_threads, progress=progress, desc=desc)


def bands_product(bands, shape, v, *, symmetric, transpose, num_threads, progress=False, desc=""):
    """The share of K @ V (Kᵀ @ V) of the given bands [((r0, r1, c0), array)], in float64 (all
    bands of K: the whole product)."""
    vt, out = transposed_vectors(v, shape[1] if transpose else shape[0])
    with _progress(progress, desc, len(bands)) as step:
        for b, ((r0, _, c0), band) in enumerate(bands):
            _apply_band(band, r0, c0, symmetric, transpose, vt, out, num_threads)
            step(b + 1)
    return out.T


@contextlib.contextmanager
def _progress(enabled, desc, total):
    reporter = Progress(enabled, desc, unit="band")
    try:
        yield (lambda done: reporter(done, total)) if reporter.enabled else (lambda done: None)
    finally:
        reporter.close()


#: (device, inode) of every open BandFile in this process: a second operator given the same
#: path would truncate and rewrite the first one's kernel under it (wrong products, silently).
_live_files = set()
_live_files_lock = threading.Lock()


def _file_identity(path_or_fd):
    st = os.stat(path_or_fd)
    return st.st_dev, st.st_ino


class BandFile:
    """The bands of a kernel (all of them, or the given ``bounds``), packed in a file; created
    at its full size up front, so a disk too small fails here (OSError naming the size and the
    path) rather than mid-computation."""

    def __init__(self, path, shape, dtype, symmetric, temporary, bounds=None):
        self.path, self.shape, self.dtype = os.fspath(path), shape, np.dtype(dtype)
        self.symmetric, self.temporary = symmetric, temporary
        self.bounds = band_bounds(*shape, symmetric, self.dtype.itemsize, FILE_BAND_BYTES) \
            if bounds is None else list(bounds)
        sizes = [(r1 - r0) * (shape[1] - c0) for r0, r1, c0 in self.bounds]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]) * self.dtype.itemsize
        self.nbytes = int(self.offsets[-1])
        self.max_band = max(sizes, default=0)
        free = available_memory()
        self.cache_bytes = self.nbytes if free is None else min(self.nbytes, int(CACHE_SHARE * free))
        self._fd = self._open_fd = None  # _fd: None once closed; _open_fd: until released
        self._readers, self._readers_lock = 0, threading.Lock()
        with _live_files_lock:
            if os.path.exists(self.path) and _file_identity(self.path) in _live_files:
                raise ValueError(f"path {self.path!r} holds the kernel of another open "
                                 "KernelOperator, which it would overwrite: choose another path, "
                                 "or close() that operator first")
            self._fd = self._open_fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC,
                                               0o600)
            self._identity = _file_identity(self._fd)
            _live_files.add(self._identity)
        try:
            if self.nbytes:
                os.posix_fallocate(self._fd, 0, self.nbytes)
        except OSError as error:
            self.close()
            reason = "not enough disk space" if error.errno == errno.ENOSPC else error.strerror
            raise OSError(error.errno, f"storage='file': cannot reserve {human_bytes(self.nbytes)} "
                                       f"for the kernel at {self.path} ({reason})") from error

    def band(self, b, buffer):
        """Band b as a (rows, cols) view of ``buffer`` (a flat array of at least max_band)."""
        r0, r1, c0 = self.bounds[b]
        return buffer[:(r1 - r0) * (self.shape[1] - c0)].reshape(r1 - r0, self.shape[1] - c0)

    def write(self, b, band):
        view, offset = memoryview(np.ascontiguousarray(band)).cast("B"), int(self.offsets[b])
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def read(self, b, buffer):
        band = self.band(b, buffer)
        view, offset = memoryview(band).cast("B"), int(self.offsets[b])
        with self._reading() as fd:
            while view:
                got = os.preadv(fd, [view], offset)
                if got == 0:
                    raise OSError(errno.EIO, f"storage='file': {self.path} ended early (was it "
                                             "truncated while the operator was in use?)")
                view, offset = view[got:], offset + got
            self._uncache(b, fd)
        return band

    @contextlib.contextmanager
    def _reading(self):
        """The file stays open while a band is read: a close() meanwhile (another thread, a copy
        of the operator sharing this store, a finalizer run by the garbage collector inside the
        read) marks the store closed and leaves the descriptor to the last reader, rather than
        let it be closed, or even reused for another file, under the read."""
        with self._readers_lock:
            if self._fd is None:
                raise ValueError("this KernelOperator was closed (its file is gone): close() was "
                                 "called on it or on a copy of it")
            self._readers += 1
            fd = self._open_fd
        try:
            yield fd
        finally:
            with self._readers_lock:
                self._readers -= 1
                release = self._readers == 0 and self._fd is None and self._open_fd is not None
            if release:
                self._release()

    def _uncache(self, b, fd):
        """Drop band b from the page cache if it lies beyond the part that stays cached."""
        end = int(self.offsets[b + 1])
        if end > self.cache_bytes and hasattr(os, "posix_fadvise"):
            start = max(int(self.offsets[b]), self.cache_bytes)
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)

    def finish_writing(self):
        """Once all bands are written: the part beyond cache_bytes goes to disk and leaves the
        page cache (dirty pages cannot be dropped before they are written)."""
        if self.cache_bytes < self.nbytes and hasattr(os, "posix_fadvise"):
            os.fdatasync(self._fd)
            os.posix_fadvise(self._fd, self.cache_bytes, self.nbytes - self.cache_bytes,
                             os.POSIX_FADV_DONTNEED)

    def buffers(self, count):
        return [np.empty(self.max_band, self.dtype) for _ in range(count)]

    def close(self):
        lock = getattr(self, "_readers_lock", None)
        if lock is None:  # __init__ failed before the file was opened
            return
        with lock:
            self._fd = None  # no new reads; the last running one releases the file
            release = self._readers == 0 and self._open_fd is not None
        if release:
            self._release()

    def _release(self):
        with self._readers_lock:
            fd, self._open_fd = self._open_fd, None
        if fd is None:
            return
        with _live_files_lock:
            _live_files.discard(self._identity)
        os.close(fd)
        if self.temporary:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def write_bands(store, compute_band, *, progress, desc):
    """Fill ``store`` band by band: compute_band(r0, r1, c0, out) writes the band into ``out``;
    band b + 1 is computed while band b is written."""
    buffers = store.buffers(2)
    with concurrent.futures.ThreadPoolExecutor(1) as writer, \
            _progress(progress, desc, len(store.bounds)) as step:
        pending = None
        for b, (r0, r1, c0) in enumerate(store.bounds):
            band = store.band(b, buffers[b % 2])
            compute_band(r0, r1, c0, band)
            if pending is not None:
                pending.result()
            pending = writer.submit(store.write, b, band)
            step(b + 1)
        if pending is not None:
            pending.result()
    store.finish_writing()


def file_product(store, v, *, transpose, num_threads, progress, desc):
    """K @ V (Kᵀ @ V) from a BandFile, in float64; band b + 1 is read while band b is used."""
    n1, n2 = store.shape
    vt, out = transposed_vectors(v, n2 if transpose else n1)
    buffers = store.buffers(2)
    with concurrent.futures.ThreadPoolExecutor(1) as reader, \
            _progress(progress, desc, len(store.bounds)) as step:
        pending = reader.submit(store.read, 0, buffers[0]) if store.bounds else None
        for b, (r0, _, c0) in enumerate(store.bounds):
            band = pending.result()
            if b + 1 < len(store.bounds):
                pending = reader.submit(store.read, b + 1, buffers[(b + 1) % 2])
            _apply_band(band, r0, c0, store.symmetric, transpose, vt, out, num_threads)
            step(b + 1)
    return out.T
