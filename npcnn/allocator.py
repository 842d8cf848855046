"""glibc's malloc kept from handing freed memory back to the kernel, so that a training step does not
pay page faults for the arrays the step before it freed (Linux with glibc only).

A training step allocates and frees arrays of a few MB: conv outputs, batch-norm outputs, gradients.
By default glibc gives the free memory at the top of its heap back to the kernel once more than
``M_TRIM_THRESHOLD`` of it is free there, and serves large requests with fresh ``mmap`` s that it
unmaps again on free; either way the next step writes to new pages, and the kernel takes a page
fault at the first touch of each 4 KiB page. On the 2-core virtual machine npcnn's benchmarks run
on, the small ResNet's training step (batch 64, forward and backward) took 52.6 ms that way and 45.0 ms
with the thresholds raised.

So at import npcnn raises them with ``mallopt``, to the values of the benchmarks' "malloc tuned"
environment (``MALLOC_MMAP_THRESHOLD_`` 1 GiB, ``MALLOC_TOP_PAD_`` 256 MiB, and ``MALLOC_TRIM_THRESHOLD_``
2 GiB, the largest ``mallopt`` takes). The price: memory freed by the process stays with it (its
resident size does not drop back after a large array is freed) until it exits. The settings are the
process's, so they hold for every library in it.

Nothing is changed when ``NPCNN_TUNE_MALLOC=0``, when the user set any of glibc's own ``MALLOC_*_``
variables or ``GLIBC_TUNABLES`` (their choice stands), or when the C library is not glibc. :data:`status`
says what happened.
"""
import ctypes
import ctypes.util
import os
import sys

# mallopt's parameters (malloc.h) and the values set
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, (1 << 31) - 1), (M_TOP_PAD, 1 << 28))
#: glibc before 2.35 refuses a mmap threshold above 32 MiB on 64-bit systems: that, then.
_MMAP_THRESHOLD_FALLBACK = 32 << 20

_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                   "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")

#: What :func:`tune_malloc` did at import: "tuned", or "left alone: <why>".
status = "not run"


def tune_malloc(environ=None):
    """Raise glibc's trim and mmap thresholds and its top pad (see the module's docstring); returns
    :data:`status`'s text."""
    environ = os.environ if environ is None else environ
    if environ.get("NPCNN_TUNE_MALLOC", "1").strip() == "0":
        return "left alone: NPCNN_TUNE_MALLOC=0"
    user = [name for name in _USER_VARIABLES if name in environ]
    if user:
        return f"left alone: the user set {', '.join(user)}"
    if not sys.platform.startswith("linux"):
        return f"left alone: not Linux ({sys.platform})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "left alone: the C library is not glibc"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for param, value in SETTINGS:
        if not mallopt(param, value) and param == M_MMAP_THRESHOLD:
            mallopt(param, _MMAP_THRESHOLD_FALLBACK)
    return "tuned"


status = tune_malloc()
