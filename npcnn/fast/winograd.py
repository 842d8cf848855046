"""Which channels-last conv steps compute their conv by Winograd's F(2x2, 3x3)
(:mod:`npcnn.kernels.winograd`) instead of im2col + GEMM, and the arrays they hand the kernels.

Winograd does a 3x3 stride-1 conv in 16 multiply-adds per channel pair and four outputs instead of
36, in 16 GEMMs only C wide plus two passes of additions. Measured on a 2-core AMD EPYC (one
thread, 8 images of a chunk, float32), Winograd against im2col + GEMM: 32 -> 32 channels at 32x32
1.78 against 2.34 ms, 32 -> 64 at 16x16 0.69 against 0.94, 64 -> 64 at 16x16 1.08 against 1.85,
but 16 -> 16 at 28x28 0.57 against 0.59: below 32 channels the narrow GEMMs and the transforms eat
the saving. Hence :data:`WINOGRAD_MIN_CHANNELS`. Only inference takes it (:func:`kernel_args` says why):
``FastSequential.forward(x, inference=True)``, as the Classifier's logits and the evaluation after each
epoch call it.
"""
import numpy as np

from .. import blas, kernels

#: Winograd is used when both the input and the output have at least this many channels.
WINOGRAD_MIN_CHANNELS = 32


def fits(conv, dtype):
    """True if the conv steps compute ``conv`` (a :class:`~npcnn.nn.Conv2d`) on ``dtype`` by Winograd:
    a 3x3 stride-1 kernel, at least :data:`WINOGRAD_MIN_CHANNELS` channels in and out, and npcnn's
    kernels able to call BLAS themselves."""
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and min(conv.in_channels, conv.out_channels) >= WINOGRAD_MIN_CHANNELS
            and blas.kernel_gemm(dtype) is not None)


def kernel_args(step, conv, dtype, workers, images, ho, wo, inference):
    """``(u, v_all, m_all)`` for :func:`npcnn.kernels.conv_rows_forward` and its pooled twin: the conv's
    Winograd weights (16, C, F) and the scratch of ``workers`` threads for chunks of ``images`` images
    with ``ho`` x ``wo`` outputs (kept on ``step``, a :class:`~npcnn.fast.fused.ScratchBuffers`); empty
    arrays (the kernels' sign for im2col + GEMM) unless ``inference`` and :func:`fits`.

    Only a forward that no backward follows (``inference``) takes Winograd: its rounding differs from
    one position of a tile to the next, so outputs that im2col computes exactly equal (a conv over a
    constant background, as every MNIST digit has) come out unequal in the last bits, and a max-pool
    downstream would pick its winners, so route its gradient, by rounding instead of PyTorch's
    first-maximum rule."""
    c, f = conv.in_channels, conv.out_channels
    if not (inference and fits(conv, dtype)):
        return np.empty((0, c, f), dtype), np.empty((workers, 0, 0, c), dtype), np.empty((workers, 0, 0, f), dtype)
    th, tw = kernels.winograd_tiles(ho, wo)
    rows = images * th * tw + 1          # a row more: planes a power of two apart share cache sets
    return (kernels.winograd_weights(conv.weight.data),
            step._buffer("winograd_v", (workers, 16, rows, c), dtype),
            step._buffer("winograd_m", (workers, 16, rows, f), dtype))


def conv_rows(u, v, m, x3, first, last, n_ch, ph, pw, ho, wo, rows):
    """One chunk's conv by Winograd on the calling thread (the Python-threaded paths' loop body):
    :func:`npcnn.kernels.winograd_conv_rows` with npcnn's own BLAS call."""
    kernels.winograd_conv_rows(*blas.kernel_gemm(x3.dtype), x3, first, last, n_ch, ph, pw, ho, wo, u, v, m, rows)
