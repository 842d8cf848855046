"""Sharing the cores between BLAS and npcnn's own threads.

OpenBLAS's worker threads spin for a while (~0.1 s) after each multi-threaded
GEMM, waiting for the next one. A numba kernel that runs in that time has its
second thread fighting a spinning thread for the second core, and a parallel
kernel is only as fast as its slowest thread: in a training step at batch 64
the second conv's input gradient took 1.75 ms right after a GEMM against
0.83 ms alone, no faster than on one thread (measured on 2 cores).

So while a :class:`~npcnn.nn.Sequential` runs forward or backward, BLAS is held
to one thread (:func:`one_blas_thread`; the user's setting comes back on the
way out), and npcnn shares its larger GEMMs among its own threads instead
(:func:`matmul`, :func:`run_threads`): numpy releases the GIL inside a GEMM and
npcnn's numba kernels are compiled ``nogil``, so Python threads run them at
once. No BLAS thread is left spinning, and a training step at batch 64 went
from 9.1 to 7.4 ms (medians, same machine).
"""
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba
import numpy as np

#: A GEMM of at least this many multiply-adds (m*k*n) is split among the threads; smaller ones
#: (about 0.05 ms on one core) are not worth handing a block to another thread.
SPLIT_MIN_MACS = 1 << 21

_lock = threading.Lock()
_depth = 0          # how many one_blas_thread() scopes are open (they nest, and may overlap across threads)
_saved = None       # the BLAS thread counts to restore when the last scope closes
_blas = None        # threadpoolctl's controllers of the BLAS libraries loaded in this process
_pool = None


def _blas_libraries():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


@contextlib.contextmanager
def one_blas_thread():
    """BLAS limited to one thread inside the block (nested blocks are free); restored after."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            libs = _blas_libraries()
            _saved = [lib.get_num_threads() for lib in libs]
            for lib in libs:
                lib.set_num_threads(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for lib, n in zip(_blas, _saved):
                    lib.set_num_threads(n)


def run_threads(fn, workers):
    """Call ``fn(0) ... fn(workers - 1)`` at once: ``fn(0)`` on this thread, the others in a pool of
    Python threads, BLAS on one thread each. Waits for all of them (they may share buffers), then
    re-raises the first exception of any."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max(1, numba.config.NUMBA_NUM_THREADS - 1), thread_name_prefix="npcnn")
    with one_blas_thread():
        futures = [_pool.submit(fn, t) for t in range(1, workers)]
        try:
            fn(0)
        finally:
            wait(futures)
        for f in futures:
            f.result()


def matmul(a, b, out=None):
    """``a @ b`` for 2-d arrays. From :data:`SPLIT_MIN_MACS` multiply-adds on, the rows of ``a``
    (or the columns of ``b``, if there are more of them) are split into one block per thread, each
    multiplied by single-threaded BLAS. Each output element is the same dot product either way."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    (m, k), n = a.shape, b.shape[1]
    workers = min(numba.get_num_threads(), max(m, n))
    if workers < 2 or m * k * n < SPLIT_MIN_MACS:
        return np.matmul(a, b, out=out)
    by_rows = m >= n
    bounds = np.linspace(0, m if by_rows else n, workers + 1).astype(int)

    def block(t):
        lo, hi = bounds[t], bounds[t + 1]
        if by_rows:
            np.matmul(a[lo:hi], b, out=out[lo:hi])
        else:
            np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])

    run_threads(block, workers)
    return out
