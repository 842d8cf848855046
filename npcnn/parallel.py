"""Sharing the cores between BLAS and npcnn's own threads.

OpenBLAS's worker threads spin for a while after each multi-threaded GEMM,
waiting for the next one. A numba kernel that runs next then has its second
thread fighting a spinning thread for the second core, and a parallel
kernel is only as fast as its slowest thread: the first conv of the
reference net at batch 1000 took 19.9 ms right after a GEMM against 11.3 ms
alone (measured on 2 cores). So where a batch is large, npcnn runs its GEMMs
with BLAS limited to one thread, several at once from a pool of Python
threads (numpy releases the GIL inside a GEMM, and npcnn's numba kernels are
compiled ``nogil``): no BLAS thread is left spinning. For the small GEMMs of a
training step at batch 64 this does not pay, and BLAS keeps its threads.
"""
import numba
import numpy as np

#: A GEMM whose first operand has at least this many rows (the batch, in a Linear layer) is
#: split by rows among the threads, each with single-threaded BLAS.
SPLIT_MIN_ROWS = 256

_pool = _blas = None


def thread_pool():
    """``(executor, blas)``: a pool of ``numba.get_num_threads()`` threads and threadpoolctl's
    handle on the BLAS libraries (for ``blas.limit(limits=1)``), both made on first use."""
    global _pool, _blas
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas")
        _pool = ThreadPoolExecutor(numba.get_num_threads(), thread_name_prefix="npcnn")
    return _pool, _blas


def run_threads(fn, workers):
    """Call ``fn(0) ... fn(workers - 1)`` in the pool, BLAS on one thread each; re-raises the
    first exception of any of them."""
    pool, blas = thread_pool()
    with blas.limit(limits=1):
        list(pool.map(fn, range(workers)))


def matmul_rows(a, b, out=None):
    """``a @ b`` for 2-d arrays; from :data:`SPLIT_MIN_ROWS` rows of ``a`` on, blocks of rows are
    multiplied in parallel by single-threaded BLAS (same result: each row's sum is unchanged)."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    workers = numba.get_num_threads()
    if a.shape[0] < SPLIT_MIN_ROWS or workers == 1:
        return np.matmul(a, b, out=out)
    bounds = np.linspace(0, a.shape[0], workers + 1).astype(int)

    def block(t):
        lo, hi = bounds[t], bounds[t + 1]
        np.matmul(a[lo:hi], b, out=out[lo:hi])

    run_threads(block, workers)
    return out
