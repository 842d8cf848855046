"""Sharing the cores between BLAS and npcnn's own threads.

OpenBLAS's worker threads spin for a while (~0.1 s) after each multi-threaded
GEMM, waiting for the next one. A numba kernel that runs in that time has its
second thread fighting a spinning thread for the second core, and a parallel
kernel is only as fast as its slowest thread: in a training step at batch 64
the second conv's input gradient took 1.75 ms right after a GEMM against
0.83 ms alone, no faster than on one thread (measured on 2 cores).

So while a :class:`~npcnn.nn.Sequential` runs forward or backward on a batch
big enough for numba's kernels to use threads, BLAS is held to one thread
(:func:`one_blas_thread`; the user's setting comes back on the way out) and
npcnn shares its larger GEMMs among its own threads instead: :func:`matmul`
splits a GEMM into blocks that numba's threads multiply with numpy's own BLAS
(:mod:`npcnn.blas`), and the second conv's chunks go to Python threads
(:func:`run_threads`; numpy releases the GIL inside a GEMM and npcnn's numba
kernels are compiled ``nogil``). No BLAS thread is left spinning: a training
step at batch 64 went from 9.3 to 6.9 ms (medians, same machine, with the
kernel fixes of the same change).
"""
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba
import numpy as np

from . import blas

#: A GEMM is split among the threads from this many multiply-adds (m*k*n) on ...
SPLIT_MIN_MACS = 1 << 21
#: ... or from this many values read and written (m*k + k*n + m*n): a thin GEMM, like a Linear
#: layer on one image, is bound by reading its weight, and two cores read it faster than one
#: (the attack loop on one image: 1,850 -> 2,900 steps/s). Smaller GEMMs (about 0.05 ms on one
#: core) are not worth handing a block to another thread.
SPLIT_MIN_VALUES = 1 << 18

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


#: :class:`~npcnn.nn.Sequential` takes the GEMMs' threads over from BLAS from inputs of this many
#: values on (about 20 MNIST images). Below it every numba kernel runs on one thread anyway, so a
#: spinning BLAS thread is in nobody's way, and BLAS threads its few small GEMMs faster than npcnn
#: (the attack loop on one image: 2,900 steps/s against 2,150).
OWN_THREADS_MIN_VALUES = 1 << 14


def own_threads_pay(x):
    """True when npcnn should run the GEMMs of a pass over ``x`` on its own threads."""
    return x.size >= OWN_THREADS_MIN_VALUES


@contextlib.contextmanager
def one_blas_thread(active=True):
    """BLAS limited to one thread inside the block (nested blocks are free), and :func:`matmul`
    splitting GEMMs among npcnn's threads; the user's setting is restored after. Does nothing when
    not ``active`` or when npcnn cannot call BLAS itself (:func:`npcnn.blas.gemm_functions`)."""
    global _depth, _saved
    if not active or blas.gemm_functions() is None:
        yield
        return
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


def sharing():
    """True inside an active :func:`one_blas_thread` block: npcnn shares out its GEMMs itself."""
    return _depth > 0


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
    """``a @ b`` for 2-d arrays. Outside :func:`one_blas_thread`, plain ``np.matmul`` (BLAS's own
    threads). Inside it, from :data:`SPLIT_MIN_MACS` multiply-adds or
    :data:`SPLIT_MIN_VALUES` values on, the columns of ``b`` (or the rows of ``a``, if there are
    more of them) are split into one block per thread, each multiplied by single-threaded BLAS in
    a numba kernel (:func:`npcnn.blas.gemm_blocks`). Each output element is the same dot product
    either way."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    (m, k), n = a.shape, b.shape[1]
    workers = min(numba.get_num_threads(), max(m, n) // 16)
    if not sharing() or workers < 2 or (m * k * n < SPLIT_MIN_MACS and m * k + k * n + m * n < SPLIT_MIN_VALUES):
        return np.matmul(a, b, out=out)
    by_rows = m > n
    # block edges on multiples of 16 values (a 64-byte cache line of float32)
    bounds = np.array([(m if by_rows else n) * t // workers // 16 * 16 for t in range(workers)]
                      + [m if by_rows else n], dtype=np.int64)
    if not blas.gemm_into(a, b, out, bounds, by_rows):
        np.matmul(a, b, out=out)            # a layout BLAS cannot read in place: numpy copes
    return out
