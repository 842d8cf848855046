"""The numba kernels: the only gathers and scatters in npcnn that are not BLAS.

Everything here is a plain loop over arrays, compiled by numba. With
``NUMBA_DISABLE_JIT=1`` the same functions run as ordinary Python, so they can
be stepped through in a debugger (slowly). The layers in :mod:`npcnn.nn` call
these; this package knows nothing about layers, and it is the one place in
npcnn that compiles loops with numba (besides :mod:`npcnn.blas`, which calls
numpy's own BLAS from numba's threads).

One file per family:

- ``_compile.py``      numba's threading layer, the compile options, and the decorator that
                       builds each kernel twice (threaded and serial) and picks one per call
- ``columns.py``       im2col / col2im, the conv GEMM's result to NCHW and back, channels-last
                       padding and columns
- ``pooling.py``       max-pool forward and backward, ReLU -> 2x2 max-pool fused onto a conv, and
                       average pooling channels last
- ``direct_conv.py``   the fused conv -> ReLU -> pool computed directly, for convs with few weights
                       per filter (the first conv), and its gradients
- ``direct_conv_rows.py`` a stride-1 conv with few weights per filter, computed directly along the
                       output rows (no pool after it), and its gradients
- ``direct_conv_gemm.py`` the same conv as one GEMM per chunk on columns copied, not gathered, and its
                       weight gradient
- ``winners_grad.py``  the gradients of the channels-last fused conv, from the pool's winners only
- ``normalization.py`` batch normalisation, NCHW and channels last
- ``rows.py``          a channels-last conv's bias and ReLU, and the activations' derivatives, in one pass
- ``conv_rows.py``     the channels-last conv step's chunk loop (im2col, BLAS, bias, activation) on numba's threads
- ``winograd.py``      a 3x3 stride-1 conv by Winograd's F(2x2, 3x3): two transforms around 16 BLAS GEMMs
- ``winograd_general.py`` Winograd's F(m x m, r x r) with its transforms as matrices (the 5x5 convs)
- ``optimizer.py``     the Adam update

Images are NCHW unless a kernel's name says ``nhwc`` (channels last). The
loops are parallel over the batch (``prange``): each image writes a disjoint
slice of the output, so no two threads ever touch the same element, and the
scatter in ``col2im`` needs no atomics and no numpy unbuffered scatter-add.
Below :data:`PARALLEL_MIN_SIZE` elements a kernel runs its serial copy on the
calling thread; ``kernel.parallel`` and ``kernel.serial`` call one copy directly.

numba caches the compiled kernels on disk (``cache=True``, in ``__pycache__``
beside each file) and recompiles a kernel when its own file changes, not when
a helper it inlines from another file does (``direct_conv.py`` inlines the
window helpers of ``pooling.py``): after editing such a helper, delete
``npcnn/kernels/__pycache__``.
"""
import sys
import types

from . import _compile
from .columns import (col2im, col2im_nhwc, cols_to_nchw, im2col, im2col_nhwc, nchw_to_cols, pad_channels_last,
                      pad_to_phases)
from .direct_conv import (direct_conv_input_grad_1x3x3, direct_conv_relu_maxpool_nhwc, direct_conv_weight_grad_nhwc,
                          is_1x3x3_stride1)
from .conv_rows import conv_rows_backward, conv_rows_forward, conv_rows_relu_maxpool_forward
from .direct_conv_rows import direct_conv_input_grad_nchw, direct_conv_act_to_nhwc, direct_conv_weight_grad_nchw
from .direct_conv_gemm import direct_conv_gemm_to_nhwc, direct_conv_gemm_weight_grad
from .normalization import (batchnorm_add_rows, batchnorm_apply, batchnorm_apply_rows, batchnorm_backward,
                            batchnorm_backward_rows, batchnorm_stats, batchnorm_stats_rows)
from .optimizer import adam_update
from .rows import act_grad, add_relu, bias_relu_rows, run_length, tanh_inplace
from .pooling import (avgpool_backward_nhwc, avgpool_nhwc, bias_relu_maxpool, bias_relu_maxpool_nhwc_2x2,
                      maxpool_backward, maxpool_forward,
                      maxpool_relu_backward, winners_to_dense_nhwc)
from .winners_grad import winners_input_grad_nhwc, winners_weight_grad_nhwc
from .winograd import tiles as winograd_tiles, winograd_conv_rows, winograd_weights
from .winograd_general import (general_tiles as winograd_general_tiles, winograd_conv_chunk,
                               winograd_general_conv_rows, winograd_general_weights, winograd_weight_grad_chunk)

__all__ = [
    "PARALLEL_MIN_SIZE",
    "im2col", "col2im", "cols_to_nchw", "nchw_to_cols", "pad_channels_last", "pad_to_phases", "im2col_nhwc", "col2im_nhwc",
    "maxpool_forward", "maxpool_backward", "bias_relu_maxpool", "maxpool_relu_backward",
    "bias_relu_maxpool_nhwc_2x2", "winners_to_dense_nhwc", "avgpool_nhwc", "avgpool_backward_nhwc",
    "is_1x3x3_stride1", "direct_conv_relu_maxpool_nhwc", "direct_conv_weight_grad_nhwc",
    "direct_conv_input_grad_1x3x3",
    "direct_conv_act_to_nhwc", "direct_conv_weight_grad_nchw",
    "direct_conv_input_grad_nchw",
    "direct_conv_gemm_to_nhwc", "direct_conv_gemm_weight_grad",
    "winners_weight_grad_nhwc", "winners_input_grad_nhwc", "winograd_tiles", "winograd_conv_rows", "winograd_weights",
    "winograd_general_tiles", "winograd_general_conv_rows", "winograd_general_weights", "winograd_conv_chunk",
    "winograd_weight_grad_chunk",
    "batchnorm_stats", "batchnorm_apply", "batchnorm_backward",
    "batchnorm_stats_rows", "batchnorm_apply_rows", "batchnorm_add_rows", "batchnorm_backward_rows",
    "bias_relu_rows", "act_grad", "add_relu", "run_length", "tanh_inplace", "conv_rows_forward", "conv_rows_backward",
    "conv_rows_relu_maxpool_forward",
    "adam_update",
]


class _Package(types.ModuleType):
    """This package's module type: ``PARALLEL_MIN_SIZE`` is read from and written to
    ``_compile``, where the kernels read it at every call, so that
    ``npcnn.kernels.PARALLEL_MIN_SIZE = 0`` (or a test's monkeypatch of it) takes effect."""

    @property
    def PARALLEL_MIN_SIZE(self):
        """Elements (of a kernel's size argument) from which a kernel uses numba's threads."""
        return _compile.PARALLEL_MIN_SIZE

    @PARALLEL_MIN_SIZE.setter
    def PARALLEL_MIN_SIZE(self, value):
        _compile.PARALLEL_MIN_SIZE = value


sys.modules[__name__].__class__ = _Package
