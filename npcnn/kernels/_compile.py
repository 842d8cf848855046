"""How npcnn's kernels are compiled: numba's threading layer, the compile options, and
:func:`_kernel`, which builds a threaded and a serial copy of each kernel and picks one per call.

Every other module of :mod:`npcnn.kernels` imports its decorators from here, so the threading
layer is chosen once, before any kernel can start numba's threads.
"""
import functools
import hashlib
import os
import pathlib
import types

import numba
from numba import njit

# numba's threading layer. Its usual first choice when TBB is missing, OpenMP, spin-waits between
# parallel regions, and so does OpenBLAS between GEMMs: on a machine with few cores the two pools
# fight for them and every kernel call waits for a time slice. TBB's threads spin only briefly and
# start a parallel region cheaply; numba's own workqueue layer never spins but starts a region
# slowly, which costs the gain of a second thread at small batches. So npcnn asks for TBB first
# (the ``tbb`` package, a dependency where it has wheels) and falls back to workqueue; OpenMP only
# if both fail (it never does: workqueue is built in). docs/performance-notes.md has the numbers.
_FAST_LAYERS = ("tbb", "workqueue")
if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER = "default"
    numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]
    try:  # too late if something already started numba's threads (numba.get_num_threads() does)
        _started = numba.threading_layer()
    except ValueError:  # not started yet: the usual case
        _started = None
    if _started not in (None, *_FAST_LAYERS):
        import warnings
        warnings.warn(f"numba's threads were started with the {_started!r} layer before npcnn was "
                      "imported; npcnn's kernels may run several times slower. Import npcnn first, "
                      "or set NUMBA_THREADING_LAYER=tbb (or workqueue).", RuntimeWarning, stacklevel=2)

# numba's on-disk cache (``cache=True``) checks only the source file of the function it compiled: a
# kernel that inlines a helper from another module (conv_rows inlines columns' im2col) would keep
# running the helper's old code after that module changed. So the cache of all of npcnn's kernels is
# dropped whenever any of their sources changes (a stamp of the sources sits beside the cache files).
_SOURCES = sorted(pathlib.Path(__file__).parent.glob("*.py")) + [pathlib.Path(__file__).parent.parent / "blas.py"]


def _drop_stale_kernel_caches(sources=_SOURCES):
    """Delete numba's cache files beside ``sources`` unless the stamp of their contents is unchanged;
    True if it deleted. Quietly does nothing where the folders cannot be written (numba then caches
    elsewhere, or not at all)."""
    stamp = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()
    folders = sorted({path.parent / "__pycache__" for path in sources})
    stamp_file = folders[0] / "npcnn-kernel-sources.sha256"
    try:
        if stamp_file.read_text() == stamp:
            return False
    except OSError:
        pass
    try:
        for folder in folders:
            for cached in [*folder.glob("*.nbi"), *folder.glob("*.nbc")]:
                cached.unlink(missing_ok=True)
        stamp_file.parent.mkdir(exist_ok=True)
        tmp = stamp_file.with_name(f"{stamp_file.name}.{os.getpid()}.tmp")
        tmp.write_text(stamp)
        os.replace(tmp, stamp_file)                # atomic: a parallel import reads the old or the new stamp
    except OSError:
        return False
    return True


_drop_stale_kernel_caches()

# ``error_model="numpy"``: a division by zero gives inf/nan (or 0 for integers) as in NumPy instead
# of raising. numba's default ("python") tests every division for zero, and that test keeps LLVM
# from vectorising any loop that divides (Adam's update among them).
_OPTS = dict(cache=True, nogil=True, error_model="numpy")

# Below this many elements (of the array named by ``size_arg``) a kernel runs on the calling
# thread: starting a parallel region has a fixed cost (small with TBB, large with workqueue), an
# OpenBLAS thread still spinning after a GEMM takes the second core for a while, and a parallel
# region waits for its slowest thread. The attack and occlusion loops run many small batches and
# gain most from this. Read at every call, so setting ``npcnn.kernels.PARALLEL_MIN_SIZE`` (which
# writes this value, see the package's ``__init__``) takes effect at once.
PARALLEL_MIN_SIZE = 1 << 18


def _kernel(size_arg, fma=False, min_size=None, reassoc=False):
    """Compile ``fn`` twice: with threads over ``prange`` and serially; pick by the size of one argument.

    The serial copy gets its own name so numba's on-disk cache keeps the two apart; ``min_size``
    (default :data:`PARALLEL_MIN_SIZE`) is the size from which threads pay. ``fma=True``
    lets LLVM fuse ``a += b * c`` into one fused multiply-add (numba's ``fastmath={"contract"}``:
    one rounding instead of two, nothing else about IEEE arithmetic changes). ``reassoc=True``
    (with ``fma``) also lets it reorder sums, so that a dot product vectorises: the sum is then
    taken in another order, as BLAS takes it.

    With ``NUMBA_DISABLE_JIT=1`` numba's ``njit`` returns the plain Python function, so both
    copies are ordinary Python (``prange`` is then ``range``).
    """
    opts = dict(_OPTS, fastmath={"contract", "reassoc"} if reassoc else {"contract"}) if fma else _OPTS

    def wrap(fn):
        parallel = njit(parallel=True, **opts)(fn)
        serial_fn = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                       fn.__defaults__, fn.__closure__)
        serial_fn.__qualname__ = fn.__qualname__ + "_serial"
        serial = njit(**opts)(serial_fn)

        return _Dispatch(fn, parallel, serial, size_arg, min_size)
    return wrap


class _Dispatch:
    """Calls the threaded or the serial compilation; looks like a numba dispatcher otherwise."""

    def __init__(self, fn, parallel, serial, size_arg, min_size):
        functools.update_wrapper(self, fn)
        self.parallel, self.serial, self.size_arg, self.min_size = parallel, serial, size_arg, min_size

    def __call__(self, *args):
        big = args[self.size_arg].size >= (PARALLEL_MIN_SIZE if self.min_size is None else self.min_size)
        return (self.parallel if big else self.serial)(*args)

    @property
    def signatures(self):
        return list(self.parallel.signatures) + list(self.serial.signatures)

    @property
    def nopython_signatures(self):
        return list(self.parallel.nopython_signatures) + list(self.serial.nopython_signatures)
