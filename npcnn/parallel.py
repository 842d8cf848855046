"""Sharing the cores between BLAS and npcnn's own threads.

OpenBLAS's worker threads spin for a while (~0.1 s) after each multi-threaded
GEMM, waiting for the next one. A numba kernel that runs in that time has its
second thread fighting a spinning thread for the second core, and a parallel
kernel is only as fast as its slowest thread: in a training step at batch 64
the second conv's input gradient took 1.75 ms right after a GEMM against
0.83 ms alone, no faster than on one thread (measured on 2 cores).

So while the fast path (:mod:`npcnn.fast`) runs forward or backward on a batch
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

#: Inside :func:`one_blas_thread`, a GEMM of at least this many multiply-adds (m*k*n) is split
#: among the threads; smaller ones (about 0.05 ms on one core) are not worth handing out.
SPLIT_MIN_MACS = 1 << 21

#: The fast path (:mod:`npcnn.fast`) takes the GEMMs' threads over from BLAS from inputs of this many
#: values on (about 20 MNIST images). Below it the kernels have little to share, and BLAS's own
#: threads run the few small GEMMs faster than npcnn's blocks would (the attack loop on one image:
#: 2,900 steps/s with BLAS's threads, 2,150 with npcnn's).
OWN_THREADS_MIN_VALUES = 1 << 14

_lock = threading.Lock()
_depth = 0                   # open one_blas_thread() blocks, all threads together (for the BLAS limit)
_local = threading.local()   # .depth: open blocks on this thread (for sharing())
_saved = None                # the BLAS thread counts to restore when the last block closes
_blas = None                 # threadpoolctl's controllers of the BLAS libraries loaded in this process
_pool = None


def _blas_libraries():
    global _blas
    if _blas is None:
        # numba's first kernel call imports scipy.linalg, and with it SciPy's own OpenBLAS (a
        # second BLAS, with threads of its own): import it now, so that the list below has it
        # and it is held to one thread too
        try:
            import scipy.linalg  # noqa: F401
        except ImportError:
            pass
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


def num_threads():
    """How many threads npcnn's kernels run on (numba's setting; ``NUMBA_NUM_THREADS`` caps it)."""
    return numba.get_num_threads()


def own_threads_pay(x):
    """True when npcnn should run the GEMMs of a pass over ``x`` on its own threads."""
    return np.size(x) >= OWN_THREADS_MIN_VALUES


def _set_blas_threads(counts):
    for lib, n in zip(_blas, counts):
        lib.set_num_threads(n)


@contextlib.contextmanager
def one_blas_thread(active=True):
    """BLAS limited to one thread inside the block (nested blocks are free), and :func:`matmul`
    on this thread splitting GEMMs among npcnn's threads; the user's setting is restored when the
    last block closes. Does nothing when not ``active`` or when npcnn cannot call BLAS itself
    (:func:`npcnn.blas.gemm_functions`).

    The limit is process-wide, as BLAS's setting is: numpy GEMMs that other Python threads run
    meanwhile get one thread too."""
    global _depth, _saved
    if not active or blas.gemm_functions() is None:
        yield
        return
    with _lock:
        if _depth == 0:
            libs = _blas_libraries()
            saved = [lib.get_num_threads() for lib in libs]
            try:
                _set_blas_threads([1] * len(libs))
            except BaseException:
                _set_blas_threads(saved)
                raise
            _saved = saved
        _depth += 1
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set_blas_threads(_saved)


def sharing():
    """True inside an active :func:`one_blas_thread` block on this thread: npcnn shares out its
    GEMMs itself."""
    return getattr(_local, "depth", 0) > 0


def run_threads(fn, workers):
    """Call ``fn(0) ... fn(workers - 1)`` at once: ``fn(0)`` on this thread, the others in a pool of
    Python threads, BLAS on one thread each. Waits for all of them (they may share buffers), then
    re-raises the first exception of any. ``fn`` must not run numba's threaded kernels: numba's
    fallback threading layer (workqueue) aborts when two threads launch them at once."""
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
    threads). Inside it, from :data:`SPLIT_MIN_MACS` multiply-adds on, the columns of ``b`` (or the
    rows of ``a``, if there are more of them) are split into one block per thread, each multiplied
    by single-threaded BLAS in a numba kernel (:func:`npcnn.blas.gemm_blocks`). Each output element
    is the same dot product either way."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    (m, k), n = a.shape, b.shape[1]
    workers = min(numba.get_num_threads(), max(m, n) // 16)
    if not sharing() or workers < 2 or m * k * n < SPLIT_MIN_MACS or not _may_launch_threads():
        return np.matmul(a, b, out=out)
    by_rows = m > n
    size = m if by_rows else n
    # block edges on multiples of 16 values (one 64-byte cache line of float32 rows)
    bounds = np.array([size * t // workers // 16 * 16 for t in range(workers)] + [size], dtype=np.int64)
    if not blas.gemm_into(a, b, out, bounds, by_rows):
        np.matmul(a, b, out=out)            # shapes, layouts or overlaps BLAS can't take in place: numpy copes
    return out


def kernel_gemm(dtype):
    """``(gemm_address, ilp64)`` for ``dtype`` when npcnn's threaded kernels may run their own BLAS calls
    on this thread now (inside :func:`one_blas_thread`, and :func:`npcnn.blas.kernel_gemm`, and threads
    launchable), else None."""
    return blas.kernel_gemm(dtype) if sharing() and _may_launch_threads() else None


def _may_launch_threads():
    """numba's workqueue layer (used when TBB is missing) aborts if two Python threads launch
    threaded kernels at once: with it, only the main thread does."""
    if threading.current_thread() is threading.main_thread():
        return True
    try:
        return numba.threading_layer() != "workqueue"
    except ValueError:          # no threaded kernel has run yet: the layer is not chosen
        return False
