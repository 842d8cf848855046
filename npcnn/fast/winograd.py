"""Which channels-last conv steps compute their conv by Winograd's minimal filtering instead of
im2col + GEMM, the transforms (built from their points, :func:`toom_cook`), and the arrays the
steps hand the kernels.

Winograd does a 3x3 stride-1 conv in 16 multiply-adds per channel pair and four outputs instead of
36 (F(2x2, 3x3), :mod:`npcnn.kernels.winograd`, written out), and a 5x5 one in 36 instead of 100
(F(2x2, 5x5), :mod:`npcnn.kernels.winograd_general`, its transforms as matrices), in GEMMs only C
wide plus two passes of transforms. Measured on a 2-core AMD EPYC with AVX2 only (one thread, 8
images of a chunk, float32), F(2x2, 3x3) against im2col + GEMM: 32 -> 32 channels at 32x32 1.78
against 2.34 ms, 32 -> 64 at 16x16 0.69 against 0.94, 64 -> 64 at 16x16 1.08 against 1.85, 16 -> 16
at 28x28 0.57 against 0.59. On a Zen 4 EPYC (AVX-512; one thread, chunks of one image as the steps
cut them): 16 -> 16 at 28x28 45 against 58 us, 16 -> 32 at 28x28 64 against 92, 64 -> 64 at 7x7 27
against 46, but 16 -> 16 at 14x14 29 against 26 (below 16 channels, or on small images, the narrow
GEMMs and the transforms eat the saving): hence :data:`WINOGRAD_MIN_CHANNELS`. F(2x2, 5x5) for Madry
et al.'s second conv (32 -> 64 at 14x14): 119 against 217 us. F(4x4, 3x3) (36 products per 16
outputs, through the general kernel) beat the written-out F(2x2, 3x3) only with 64 channels (64 -> 64
at 16x16, two images: 169 against 198 us; at 7x7, eight: 189 against 205) and lost at 32 -> 32 on
14x14 (157 against 111), so it is not used. The forward is computed by Winograd in inference
(``FastSequential.forward(x, inference=True)``, as the Classifier's logits and the evaluation after
each epoch call it) and, in training and for the attacks' input gradients too, in a net without
max-pools (the small ResNet; :func:`forward_may_take_winograd` says why only there). The backward's
dL/dx, itself a conv, takes it whenever it fits (:func:`input_grad_args`).
"""
from fractions import Fraction

import numpy as np

from .. import blas, kernels

#: Winograd is used when both the input and the output have at least this many channels.
WINOGRAD_MIN_CHANNELS = 16


def toom_cook(m, r, points):
    """The transforms of Winograd's F(m, r) (m outputs of an r-tap correlation from alpha = m + r - 1
    inputs, alpha products), built from ``points``, alpha - 1 distinct numbers (the last point is
    "infinity"), as Lavin & Gray (2016) do: ``(B^T, G, A^T)``, float64 arrays (alpha, alpha),
    (alpha, r), (m, alpha), such that ``y = A^T [(G g) * (B^T d)]`` is the correlation
    ``y[i] = sum_k d[i + k] g[k]`` for any ``d`` (alpha) and ``g`` (r); in 2-D,
    ``Y = A^T [(G g G^T) * (B^T d B)] A``. For point ``p_j``:

    * ``A^T[i, j] = p_j ** i`` (the polynomial product evaluated back), ``A^T[:, -1] = (0, ..., 0, 1)``;
    * ``G[j, k] = p_j ** k / N_j`` with ``N_j`` the product of ``p_j - p_l`` over the other points
      (the filter evaluated at the point, Lagrange's denominator folded in), ``G[-1] = (0, ..., 0, 1)``;
    * ``B^T[j]`` the coefficients (constant first) of the product of ``x - p_l`` over the other points,
      ``B^T[-1]`` those of the product over all of them.

    Computed in exact fractions; ``toom_cook(2, 3, (0, 1, -1))`` is F(2, 3) up to the signs of G's
    first row and A^T's last column (whose products are unchanged)."""
    p = [Fraction(x) for x in points]
    alpha = m + r - 1
    if len(p) != alpha - 1 or len(set(p)) != len(p):
        raise ValueError(f"F({m}, {r}) needs {alpha - 1} distinct points, got {points!r}")

    def poly(roots):                            # coefficients of prod (x - root), constant first
        coefs = [Fraction(1)]
        for root in roots:
            coefs = [(coefs[t - 1] if t else 0) - root * (coefs[t] if t < len(coefs) else 0)
                     for t in range(len(coefs) + 1)]
        return [float(c) for c in coefs]

    bt, g, at = np.zeros((alpha, alpha)), np.zeros((alpha, r)), np.zeros((m, alpha))
    for j, pj in enumerate(p):
        others = p[:j] + p[j + 1:]
        norm = Fraction(1)
        for pl in others:
            norm *= pj - pl
        at[:, j] = [float(pj ** i) for i in range(m)]
        g[j] = [float(pj ** k / norm) for k in range(r)]
        bt[j, :alpha - 1] = poly(others)
    at[m - 1, alpha - 1] = g[alpha - 1, r - 1] = 1.0
    bt[alpha - 1] = poly(p)
    return bt, g, at


#: F(2x2, 5x5)'s transforms, from the points 0, 1, -1, 2, -2 (and infinity).
F2X2_5X5 = toom_cook(2, 5, (0, 1, -1, 2, -2))


def fits(conv, dtype):
    """True if the conv steps compute ``conv`` (a :class:`~npcnn.nn.Conv2d`) on ``dtype`` by Winograd:
    a 3x3 or 5x5 stride-1 kernel, at least :data:`WINOGRAD_MIN_CHANNELS` channels in and out, and
    npcnn's kernels able to call BLAS themselves."""
    return (tuple(conv.kernel_size) in ((3, 3), (5, 5)) and tuple(conv.stride) == (1, 1)
            and min(conv.in_channels, conv.out_channels) >= WINOGRAD_MIN_CHANNELS
            and blas.kernel_gemm(dtype) is not None)


def forward_may_take_winograd(model):
    """True when no :class:`~npcnn.nn.MaxPool2d` is anywhere in ``model`` (nested blocks included): then its
    training forward may compute its convs by Winograd, too.

    Winograd's rounding differs from one position of a tile to the next, so outputs that im2col computes
    exactly equal (a conv over a constant background, as every MNIST digit has) come out unequal in the
    last bits. A max-pool downstream would pick its winners, so route its gradient, by that rounding
    instead of PyTorch's first-maximum rule: a net with max-pools computes its training forward by im2col
    (a forward that no backward follows may still take Winograd: its winners route nothing). Without
    max-pools the rounding moves every output and gradient by no more than rounding (a ReLU at an output
    of exactly 0 stays 0: a tile of zeros transforms to zeros)."""
    from ..nn.pool import MaxPool2d
    return not any(isinstance(module, MaxPool2d) for module in model.modules())


def kernel_args(step, conv, dtype, workers, images, ho, wo, winograd_forward):
    """``(u, v_all, m_all, bt, at)`` for :func:`npcnn.kernels.conv_rows_forward` and its pooled twin: the
    conv's Winograd weights (alpha^2, C, F), the scratch of ``workers`` threads for chunks of ``images``
    images with ``ho`` x ``wo`` outputs (kept on ``step``, a :class:`~npcnn.fast.fused.ScratchBuffers`)
    and the transforms B^T and A^T (empty for a 3x3 kernel: F(2x2, 3x3) is written out); ``u`` empty
    (the kernels' sign for im2col + GEMM) unless ``winograd_forward`` (the caller's: in inference, or in
    a net without max-pools, :func:`forward_may_take_winograd`) and :func:`fits`."""
    step._winograd_forward = None
    if not (winograd_forward and fits(conv, dtype)):
        return _args(step, None, dtype, workers, images, ho, wo, "", conv.in_channels, conv.out_channels)
    args = _args(step, conv.weight.data, dtype, workers, images, ho, wo, "winograd", conv.in_channels,
                 conv.out_channels)
    if tuple(conv.kernel_size) == (3, 3):   # kept for the backward's dL/dx (input_grad_args)
        step._winograd_forward = (conv.weight.data.copy(), args[0])
    return args


def input_grad_args(step, conv, dtype, workers, images, h, w, input_grad):
    """``(u, v_all, m_all, bt, at)`` as :func:`kernel_args` gives them, for the backward's dL/dx by
    Winograd (:func:`npcnn.kernels.conv_rows_backward`): the input gradient of a stride-1 conv is a conv
    too, of ``Ga`` = dL/d(conv output) (F channels) with the kernel flipped in both directions and its
    channels swapped (a C x F x k x k kernel), padded by ``k - 1 - p``, giving the ``h`` x ``w`` input's
    C channels. Taken whenever ``input_grad`` and :func:`fits` (so also in training: the backward's
    rounding decides no max-pool's winners, which the forward has chosen); ``u`` empty (col2im)
    otherwise or when the conv's padding exceeds ``k - 1``."""
    (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
    if not (input_grad and fits(conv, dtype) and ph <= kh - 1 and pw <= kw - 1):
        return _args(step, None, dtype, workers, images, h, w, "", conv.out_channels, conv.in_channels)
    kept = getattr(step, "_winograd_forward", None)
    if kept is not None and np.array_equal(kept[0], conv.weight.data):       # the forward's weights: reuse its U
        return _args(step, None, dtype, workers, images, h, w, "winograd_dx", conv.out_channels, conv.in_channels,
                     u=flipped_weights(kept[1]))
    flipped = conv.weight.data[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    return _args(step, flipped, dtype, workers, images, h, w, "winograd_dx", conv.out_channels, conv.in_channels)


#: F(2x2, 3x3)'s G with its columns reversed is G with its first and last rows swapped: G J = P G.
_FLIP = np.array([3, 1, 2, 0])


def flipped_weights(u):
    """F(2x2, 3x3)'s Winograd weights ``U'`` (16, F, C) of the kernel flipped in both directions with its
    channels swapped, from the kernel's own ``U`` (16, C, F) (:func:`npcnn.kernels.winograd_weights`): since
    ``G J = P G`` (``J`` reverses the 3 taps, ``P`` swaps the first and last of 4), ``G (J g J) G^T = P (G g
    G^T) P^T``, so ``U'[4r + s, f, c] = U[4P(r) + P(s), c, f]``: a permutation of the forward's, where the
    transform over the kernels cost 30-140 us a conv (16 to 64 channels, 2-core AMD EPYC Zen 4)."""
    c, f = u.shape[1], u.shape[2]
    return np.ascontiguousarray(u.reshape(4, 4, c, f)[_FLIP][:, _FLIP].transpose(0, 1, 3, 2)).reshape(16, f, c)


def _weight_grad_transforms(kernel):
    """``(bt, A, G)`` of the weight gradient of a ``kernel`` x ``kernel`` conv: F(2x2, 3x3)'s written-out
    transform (``bt`` empty) with its own A and G, or F(2x2, 5x5)'s matrices."""
    if kernel == 3:
        return np.empty((0, 0)), kernels.winograd.A_T.T, kernels.winograd.G
    bt, g, at = F2X2_5X5
    return bt, at.T, g


def weight_grad_args(step, conv, dtype, workers, images, ho, wo, param_grads):
    """``(bt, a_mat, v_all, g_all, m_all)`` for the backward's dL/dW by Winograd
    (:func:`npcnn.kernels.winograd_weight_grad_chunk`, called per chunk by ``kernels.conv_rows_backward``
    and the Python loop): the transforms in ``dtype``, the scratch of ``workers`` threads for chunks of
    ``images`` images with ``ho`` x ``wo`` outputs (kept on ``step``) and the threads' transform-domain
    sums ``m_all`` (workers, alpha^2, C, F), zeroed. ``a_mat`` empty (im2col + GEMM) unless
    ``param_grads`` and :func:`fits` (the forward's rule). Measured on a 2-core AMD EPYC Zen 4, one thread,
    per image, im2col + GEMM against Winograd: 16 -> 16 channels at 28x28 62 against 34 us (the ConvAct's
    whole backward at batch 64, two threads: 3.32 -> 2.78 ms), 32 -> 32 at 14x14 47 against 24, 64 -> 64 at
    7x7 40 against 25. (Until the transforms lost numba's per-loop views, :mod:`npcnn.kernels.winograd`, they
    cost what the GEMMs saved at 16 channels, and the weight gradient took Winograd from 32 only.)

    Why it works: the forward's tile ``Y = A^T [(G w G^T) * (B^T d B)] A`` is bilinear in the kernel ``w``
    and the patch ``d``, so for a tile's gradient ``Gy``, ``sum Gy * Y = sum w * G^T [(A Gy A^T) * (B^T d
    B)] G``: the tile's share of dL/dw is ``G^T [(A Gy A^T) * (B^T d B)] G``, an F(r x r, m x m) with the
    forward's A and G trading places. Summed over tiles and images in the transform domain first, it is
    alpha^2 GEMMs ``M[k] = V[k]^T W[k]`` with long inner dimensions, then one ``G^T M G`` per channel pair
    (:func:`weight_grad`)."""
    c, f = conv.in_channels, conv.out_channels
    kernel = conv.kernel_size[0]
    if not (param_grads and fits(conv, dtype)):
        none = np.empty((0, 0), dtype)
        return (none, none, np.empty((workers, 0, 0, c), dtype), np.empty((workers, 0, 0, f), dtype),
                np.empty((workers, 0, c, f), dtype))
    bt, a_mat, _ = _weight_grad_transforms(kernel)
    alpha, m = a_mat.shape
    th, tw = kernels.winograd_general_tiles(ho, wo, m)
    rows = images * th * tw + 1          # a row more: planes a power of two apart share cache sets
    return (bt.astype(dtype), a_mat.astype(dtype), step._buffer("wgrad_v", (workers, alpha * alpha, rows, c), dtype),
            step._buffer("wgrad_g", (workers, alpha * alpha, rows, f), dtype),
            np.zeros((workers, alpha * alpha, c, f), dtype))


def weight_grad(m_all, kernel):
    """dL/dW (F, C, kernel, kernel) in ``m_all``'s dtype, from the threads' transform-domain sums ``m_all``
    (workers, alpha^2, C, F): ``G^T M G`` per channel pair. (In float32, as the im2col path sums its dL/dW:
    summing the sums in float64 first cost the small ResNet's 64 -> 64 conv 123 instead of 56 us a step.)"""
    _, a_mat, g = _weight_grad_transforms(kernel)
    alpha, (c, f) = a_mat.shape[0], m_all.shape[2:]
    total = m_all.sum(axis=0).reshape(alpha, alpha * c * f)
    g_t = g.T.astype(m_all.dtype)
    half = np.matmul(g_t, total).reshape(kernel, alpha, c * f)        # (G^T M)[p, t], every channel pair
    return np.matmul(g_t, half).reshape(kernel, kernel, c, f).transpose(3, 2, 0, 1)   # (G^T M G)[p, q]


def weight_grad_chunk(wgrad, t, x3, ga3, first, last, n_ch, ph, pw, ho, wo):
    """One chunk's dL/dW by Winograd on the calling thread ``t`` (the Python-threaded paths' loop body),
    ``wgrad`` what :func:`weight_grad_args` gave, ``ga3`` the chunk's dL/d(conv output) (last - first,
    ho, wo*F)."""
    bt, a_mat, v_all, g_all, m_all = wgrad
    kernels.winograd_weight_grad_chunk(*blas.kernel_gemm(x3.dtype), x3, ga3, first, last, n_ch, ph, pw, ho, wo, bt,
                                       a_mat, v_all[t], g_all[t], m_all[t])


def _args(step, weight, dtype, workers, images, ho, wo, name, c, f, u=None):
    """The Winograd arguments for ``weight`` (F, C, k, k) and chunks of ``images`` images with ``ho`` x
    ``wo`` outputs, the scratch in ``step``'s buffers ``name``_v and ``name``_m; empty ones (im2col) for
    ``weight`` None, unless ``u``, a 3x3 kernel's Winograd weights (16, C, F), is given instead of it. The
    transforms come in ``dtype``, as the kernels read them."""
    none = np.empty((0, 0), dtype)
    if u is not None:
        (th, tw), alpha, bt, at = kernels.winograd_tiles(ho, wo), 4, none, none
    elif weight is None:
        return (np.empty((0, c, f), dtype), np.empty((workers, 0, 0, c), dtype), np.empty((workers, 0, 0, f), dtype),
                none, none)
    elif weight.shape[2:] == (3, 3):
        (th, tw), alpha, bt, at = kernels.winograd_tiles(ho, wo), 4, none, none
        u = kernels.winograd_weights(np.ascontiguousarray(weight))
    else:
        bt, g, at = F2X2_5X5
        (th, tw), alpha = kernels.winograd_general_tiles(ho, wo, at.shape[0]), bt.shape[0]
        bt, at = bt.astype(dtype), at.astype(dtype)
        u = kernels.winograd_general_weights(np.ascontiguousarray(weight), g, np.empty((alpha * alpha, c, f), dtype))
    rows = images * th * tw + 1          # a row more: planes a power of two apart share cache sets
    return (u, step._buffer(f"{name}_v", (workers, alpha * alpha, rows, c), dtype),
            step._buffer(f"{name}_m", (workers, alpha * alpha, rows, f), dtype), bt, at)


def conv_rows(wino, t, x3, first, last, n_ch, ph, pw, ho, wo, rows):
    """One chunk's conv by Winograd on the calling thread ``t`` (the Python-threaded paths' loop body),
    ``wino`` what :func:`kernel_args` gave: :func:`npcnn.kernels.winograd_conv_chunk` with npcnn's own
    BLAS call."""
    u, v_all, m_all, bt, at = wino
    kernels.winograd_conv_chunk(*blas.kernel_gemm(x3.dtype), x3, first, last, n_ch, ph, pw, ho, wo, u, v_all[t],
                                m_all[t], bt, at, rows)
