"""NumPy's own BLAS GEMM, called from numba kernels, so that npcnn's threads can share a GEMM.

Why: inside a training step BLAS runs on one thread (see :mod:`npcnn.parallel`)
and npcnn splits its larger GEMMs into blocks, one per thread. Handing a block
to a Python thread cost ~100 us here (a thread wake-up on this virtual
machine); numba's TBB threads take it in ~2 us. So the blocks are multiplied
in a numba ``prange`` loop, each by a single-threaded call of the same
``cblas_?gemm`` that numpy uses.

How: :func:`gemm_functions` finds the ``cblas_sgemm`` / ``cblas_dgemm`` symbols
of the BLAS library numpy loaded (``threadpoolctl`` lists it; numpy's wheels
ship OpenBLAS as ``scipy_cblas_sgemm64_``, 64-bit integers) and gives their
addresses as plain integers. The kernels receive an address as an argument,
and the intrinsic that :func:`_make_cblas_gemm` builds turns it back into a
function in the generated code.
Numba would refuse to cache a kernel that had the address built in, and the
address changes from one process to the next anyway.

With numba's JIT disabled (``NUMBA_DISABLE_JIT=1``) an intrinsic cannot run as
Python: :func:`gemm_into` then multiplies the same blocks with ``np.matmul``
(:func:`numpy_gemm_blocks`).
"""
import ctypes
import functools

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

#: cblas's enums: row-major storage, and an operand used as stored or transposed.
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

# (prefix, suffix) of the cblas names to look for: numpy's wheels (scipy-openblas, 64-bit integers),
# then the usual OpenBLAS builds
_NAMES = [("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")]


@functools.lru_cache(maxsize=None)
def gemm_functions():
    """``(sgemm_address, dgemm_address, ilp64)`` of the BLAS numpy uses, or None if not found.

    The width of BLAS's integers must be known for sure (a wrong guess passes garbage sizes): the
    ``64_`` suffix says 64 bits; otherwise OpenBLAS's build string is asked (``USE64BITINT``). A
    BLAS that says neither (MKL, BLIS, ...) is not called: npcnn then leaves BLAS its threads.
    """
    import numpy  # noqa: F401  (numpy's BLAS must be loaded for threadpoolctl to see it)
    from threadpoolctl import ThreadpoolController
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    libs = sorted(libs, key=lambda lib: "numpy" not in lib.filepath)      # numpy's own first
    for lib in libs:
        try:
            handle = ctypes.CDLL(lib.filepath)
        except OSError:
            continue
        for prefix, suffix in _NAMES:
            try:
                s, d = (getattr(handle, f"{prefix}cblas_{t}gemm{suffix}") for t in "sd")
            except AttributeError:
                continue
            ilp64 = _openblas_ilp64(handle, prefix, suffix)
            if ilp64 is None and suffix:
                ilp64 = True
            if ilp64 is None:
                return None
            return ctypes.cast(s, ctypes.c_void_p).value, ctypes.cast(d, ctypes.c_void_p).value, ilp64
    return None


def kernel_gemm(dtype):
    """``(gemm_address, ilp64)`` of the ?gemm for ``dtype`` when npcnn's kernels may call BLAS themselves
    (float32 or float64, BLAS found, numba's JIT on: the intrinsic cannot run as Python), else None."""
    found = None if numba.config.DISABLE_JIT else gemm_functions()
    if found is None or np.dtype(dtype) not in (np.float32, np.float64):
        return None
    return found[int(np.dtype(dtype) == np.float64)], found[2]


def _openblas_ilp64(handle, prefix, suffix):
    """True / False if the library is OpenBLAS built with / without 64-bit integers, else None."""
    get_config = getattr(handle, f"{prefix}openblas_get_config{suffix}", None)
    if get_config is None:
        return None
    get_config.restype = ctypes.c_char_p
    return b"USE64BITINT" in (get_config() or b"")


def _make_cblas_gemm(float_type, int_bits):
    """An intrinsic ``call(address, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, beta)`` that calls
    ``cblas_?gemm(RowMajor, trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, beta, c, ldc)`` at
    ``address``; the matrices are passed as addresses too (``arr.ctypes.data``), ``beta`` as a float64."""

    @intrinsic
    def call(typingctx, address, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, beta):
        sig = types.void(*([types.int64] * 12), types.float64)

        def codegen(context, builder, signature, args):
            i32, idx = ir.IntType(32), ir.IntType(int_bits)
            ptr = float_type.as_pointer()
            fn_type = ir.FunctionType(ir.VoidType(), [i32, i32, i32, idx, idx, idx, float_type, ptr, idx,
                                                      ptr, idx, float_type, ptr, idx])
            address_, ta, tb, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_, beta_ = args
            fn = builder.inttoptr(address_, fn_type.as_pointer())
            if isinstance(float_type, ir.FloatType):
                beta_ = builder.fptrunc(beta_, float_type)

            def as_int(v):
                return builder.trunc(v, idx) if int_bits < 64 else v

            builder.call(fn, [ir.Constant(i32, ROW_MAJOR), builder.trunc(ta, i32), builder.trunc(tb, i32),
                              as_int(m_), as_int(n_), as_int(k_), ir.Constant(float_type, 1.0),
                              builder.inttoptr(a_, ptr), as_int(lda_), builder.inttoptr(b_, ptr), as_int(ldb_),
                              beta_, builder.inttoptr(c_, ptr), as_int(ldc_)])
            return context.get_dummy_value()

        return sig, codegen

    return call


_sgemm64, _dgemm64 = _make_cblas_gemm(ir.FloatType(), 64), _make_cblas_gemm(ir.DoubleType(), 64)
_sgemm32, _dgemm32 = _make_cblas_gemm(ir.FloatType(), 32), _make_cblas_gemm(ir.DoubleType(), 32)


@njit(cache=True, nogil=True)
def _gemm_beta(address, double, ilp64, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta):
    """``C = op(A) @ op(B) + beta * C`` through the ?gemm at ``address`` (``double``: dgemm, ``ilp64``: its
    64-bit integer interface)."""
    if double and ilp64:
        _dgemm64(address, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta)
    elif double:
        _dgemm32(address, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta)
    elif ilp64:
        _sgemm64(address, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta)
    else:
        _sgemm32(address, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta)


@njit(cache=True, nogil=True)
def _gemm(address, double, ilp64, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
    """``C = op(A) @ op(B)`` (:func:`_gemm_beta` with beta = 0)."""
    _gemm_beta(address, double, ilp64, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, 0.0)


@njit(cache=True, nogil=True)
def _gemm_acc(address, double, ilp64, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
    """``C += op(A) @ op(B)`` (beta = 1: a weight gradient summed over chunks by BLAS itself, without a
    scratch product and a loop adding it)."""
    _gemm_beta(address, double, ilp64, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, 1.0)


@njit(parallel=True, cache=True, nogil=True)
def gemm_blocks(address, double, ilp64, ta, tb, m, n, k, a, lda, b, ldb, c, ldc, itemsize, by_rows, bounds):
    """``C = op(A) @ op(B)`` (row-major, C is m x n), one block per ``prange`` iteration: rows
    ``bounds[t]:bounds[t+1]`` of op(A) and C (``by_rows``), else those columns of op(B) and C.
    ``a``, ``b``, ``c`` are addresses; ``ta``/``tb`` are NO_TRANS or TRANS; BLAS must be on one
    thread (the blocks are the threads)."""
    for t in prange(len(bounds) - 1):
        lo, hi = bounds[t], bounds[t + 1]
        if by_rows:     # row i of op(A) starts at a + i*lda (as stored) or a + i (transposed)
            a_first = a + lo * (1 if ta == TRANS else lda) * itemsize
            _gemm(address, double, ilp64, ta, tb, hi - lo, n, k, a_first, lda, b, ldb, c + lo * ldc * itemsize, ldc)
        else:           # column j of op(B) starts at b + j (as stored) or b + j*ldb (transposed)
            b_first = b + lo * (ldb if tb == TRANS else 1) * itemsize
            _gemm(address, double, ilp64, ta, tb, m, hi - lo, k, a, lda, b_first, ldb, c + lo * itemsize, ldc)


def operand(x):
    """``(trans, ld)`` for a 2-d array as cblas sees it in row-major terms, or None if BLAS cannot
    read it in place (neither rows nor columns contiguous)."""
    s0, s1 = (s // x.itemsize for s in x.strides)
    if x.strides[1] == x.itemsize and s0 >= max(1, x.shape[1]) and x.strides[0] % x.itemsize == 0:
        return NO_TRANS, s0
    if x.strides[0] == x.itemsize and s1 >= max(1, x.shape[0]) and x.strides[1] % x.itemsize == 0:
        return TRANS, s1
    return None


def numpy_gemm_blocks(a, b, out, bounds, by_rows):
    """``out = a @ b`` in the blocks :func:`gemm_blocks` would take, each by ``np.matmul`` on the
    calling thread: the fallback when numba's JIT is disabled, where the cblas intrinsic cannot run."""
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if by_rows:
            np.matmul(a[lo:hi], b, out=out[lo:hi])
        else:
            np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])


def gemm_into(a, b, out, bounds, by_rows):
    """``out = a @ b`` in blocks (see :func:`gemm_blocks`); False (nothing done) when the BLAS was
    not found, or the arrays are not what BLAS can take in place: the same float dtype, matching
    shapes, aligned, a writeable ``out`` that shares no memory with ``a`` or ``b`` (numpy copes
    with all of these by copying). With numba's JIT disabled, :func:`numpy_gemm_blocks` does the
    blocks."""
    found = gemm_functions()
    if found is None or not (a.dtype == b.dtype == out.dtype and a.dtype in (np.float32, np.float64)):
        return False
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or out.shape != (a.shape[0], b.shape[1]):
        return False
    if not (a.flags.aligned and b.flags.aligned and out.flags.aligned and out.flags.writeable):
        return False
    if np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return False
    ops = operand(a), operand(b), operand(out)
    if None in ops or ops[2][0] != NO_TRANS:
        return False
    if numba.config.DISABLE_JIT:            # NUMBA_DISABLE_JIT=1: no compiled code to call cblas from
        numpy_gemm_blocks(a, b, out, bounds, by_rows)
        return True
    (ta, lda), (tb, ldb), (_, ldc) = ops
    s_addr, d_addr, ilp64 = found
    double = a.dtype == np.float64
    (m, k), n = a.shape, b.shape[1]
    gemm_blocks(d_addr if double else s_addr, double, ilp64, ta, tb, m, n, k, a.ctypes.data, lda,
                b.ctypes.data, ldb, out.ctypes.data, ldc, a.itemsize, by_rows, bounds)
    return True
