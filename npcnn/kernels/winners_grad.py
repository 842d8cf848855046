"""The backward of the fused channels-last conv -> ReLU -> 2x2 max-pool (the ``nhwc`` path, for
convs with many input channels): weight and input gradients computed from the pool's winners only.
"""
import numpy as np
from numba import njit, prange

from ._compile import _OPTS, _kernel


# The backward of the channels-last path visits only the pool's winners (``out`` and ``argmax``
# channels last, (N, Ho, Wo, F), as the forward wrote them; ``grad_out`` NCHW). A pooled gradient
# ``g = grad_out[n, f, oy, ox]`` reaches the conv output only at its window's winner ``(y, x)``,
# and only if the pooled value is > 0 (the ReLU's mask); the other three quarters of the conv
# outputs have zero gradient. From a winner, for each kernel row ``i``, the ``kw*C`` weights
# ``W[f, i, :, :]`` meet one contiguous run of ``kw*C`` values of the padded input row
# ``xp[n, y*sh + i, x*sw : x*sw + kw, :]``, so the kernels below take the arrays flattened to
# ``(..., rows, cols*C)`` and loop over that run. Weight and input gradient are two passes: one
# loop doing both ran slower than the two apart (its working set no longer fit the cache).
#
# Both kernels first list the live winners (a branch-free compaction: every entry is written and
# the count advances only if ``out > 0``; a branch on ``out > 0`` is taken at random half the
# time and mispredicts), then run over the runs of several winners that share a destination at
# once: ``dst[k] += g0*s0[k] + ... + g7*s7[k]`` loads and stores ``dst`` once per 8 winners
# instead of once per winner (one store and two loads per multiply-add made the loop wait on
# the stores). The runs are indexed with unsigned offsets into flat arrays: numba adds a
# negative-index fix-up to every signed index, and slicing a run costs a bounds clamp per slice.
@njit(**_OPTS)
def _tap_offsets(rows, wc, sh, sw, n_ch, row_len):
    """Flat offset in one padded channels-last image (Hp, Wp*C) of the receptive field's first
    value, for each conv output position ``y*wc + x`` (y < rows): ``y*sh*row_len + x*sw*C``."""
    table = np.empty(rows * wc, np.uint64)
    for y in range(rows):
        for x in range(wc):
            table[y * wc + x] = y * sh * row_len + x * sw * n_ch
    return table


@_kernel(size_arg=3, fma=True, min_size=1 << 15)   # much work per element: threads pay early
def winners_weight_grad_nhwc(grad_out, argmax, out, xp3, n_ch, sh, sw, wc, dw_part, db_part):
    """``dW[f, i, j, c] = sum g * xp[n, y+i, x+j, c]`` and ``db[f] = sum g`` over the winners.

    ``xp3`` is the padded input (N, Hp, Wp*C). The images are dealt round-robin to
    ``len(dw_part)`` blocks, each summing into its own ``dw_part[b]`` (F, kh, kw*C) and
    ``db_part[b]`` (F): the caller adds the blocks up. All arrays C-contiguous.

    For each image and filter the live winners are listed first (offset of the receptive field,
    gradient); then each row ``dW[f, i]`` gets 8 winners' runs per pass (then 2, then 1).
    """
    n_img, f_out, ho, wo = grad_out.shape
    n_blocks, kh, run = dw_part.shape[0], dw_part.shape[2], dw_part.shape[3]
    row_len = xp3.shape[2]
    img_len = xp3.shape[1] * row_len
    n_pix = ho * wo
    table = _tap_offsets(2 * ho, wc, sh, sw, n_ch, row_len)   # winners lie in the first 2*ho conv rows
    xf = xp3.reshape(-1)
    go = grad_out.reshape(n_img, f_out, n_pix)
    am = argmax.reshape(n_img, n_pix, f_out)
    live = out.reshape(n_img, n_pix, f_out)
    urun = np.uint64(run)
    for blk in prange(n_blocks):
        offs = np.empty(n_pix, np.uint64)
        gs = np.empty(n_pix, dw_part.dtype)
        dwf = dw_part[blk].reshape(-1)
        dwf[:] = 0.0
        db_part[blk] = 0.0
        for n in range(blk, n_img, n_blocks):
            base = np.uint64(n * img_len)
            for f in range(f_out):
                m = 0
                for p in range(n_pix):
                    offs[m] = base + table[am[n, p, f]]
                    gs[m] = go[n, f, p]
                    m += 1 if live[n, p, f] > 0 else 0
                db = db_part[blk, f]
                for j in range(m):
                    db += gs[j]
                db_part[blk, f] = db
                for i in range(kh):
                    d0 = np.uint64((f * kh + i) * run)
                    r = np.uint64(i * row_len)
                    j = 0
                    while j + 8 <= m:
                        g0, g1, g2, g3 = gs[j], gs[j + 1], gs[j + 2], gs[j + 3]
                        g4, g5, g6, g7 = gs[j + 4], gs[j + 5], gs[j + 6], gs[j + 7]
                        o0, o1, o2, o3 = offs[j] + r, offs[j + 1] + r, offs[j + 2] + r, offs[j + 3] + r
                        o4, o5, o6, o7 = offs[j + 4] + r, offs[j + 5] + r, offs[j + 6] + r, offs[j + 7] + r
                        for k in range(urun):
                            dwf[d0 + k] += (g0 * xf[o0 + k] + g1 * xf[o1 + k] + g2 * xf[o2 + k] + g3 * xf[o3 + k]
                                            + g4 * xf[o4 + k] + g5 * xf[o5 + k] + g6 * xf[o6 + k] + g7 * xf[o7 + k])
                        j += 8
                    while j + 2 <= m:
                        g0, g1 = gs[j], gs[j + 1]
                        o0, o1 = offs[j] + r, offs[j + 1] + r
                        for k in range(urun):
                            dwf[d0 + k] += g0 * xf[o0 + k] + g1 * xf[o1 + k]
                        j += 2
                    if j < m:
                        g0 = gs[j]
                        o0 = offs[j] + r
                        for k in range(urun):
                            dwf[d0 + k] += g0 * xf[o0 + k]
    return dw_part


@_kernel(size_arg=8, fma=True, min_size=1 << 15)   # size of dxp3, the whole batch's gradient
def winners_input_grad_nhwc(grad_out, argmax, out, wf3, n_ch, sh, sw, wc, dxp3):
    """``dxp[n, y+i, x+j, c] += g * W[f, i, j, c]`` over the winners, into the zeroed ``dxp3``
    (N, Hp, Wp*C); ``wf3`` is the weight as (F, kh, kw*C). Parallel over images; all arrays
    C-contiguous.

    Pooled pixel by pixel, the live filters are listed by the quadrant of their winner: the
    filters of one quadrant share the destination, so each row of it gets 4 filters' weight runs
    per pass (then 2, then 1).
    """
    n_img, f_out, ho, wo = grad_out.shape
    kh, run = wf3.shape[1], wf3.shape[2]
    row_len = dxp3.shape[2]
    wfl = wf3.reshape(-1)
    urun = np.uint64(run)
    for n in prange(n_img):
        dxf = dxp3[n].reshape(-1)
        dxf[:] = 0.0
        w_off = np.empty((4, f_out), np.uint64)             # per quadrant: offsets of W[f] in wfl
        gl = np.empty((4, f_out), wf3.dtype)                # and their gradients
        cnt = np.empty(4, np.int64)
        for oy in range(ho):
            for ox in range(wo):
                top_left = 2 * oy * wc + 2 * ox
                cnt[:] = 0
                for f in range(f_out):
                    d = argmax[n, oy, ox, f] - top_left
                    dy = 1 if d >= wc else 0
                    q = 2 * dy + d - dy * wc                   # 0..3, row-major in the window
                    c = cnt[q]
                    w_off[q, c] = f * kh * run
                    gl[q, c] = grad_out[n, f, oy, ox]
                    cnt[q] = c + (1 if out[n, oy, ox, f] > 0 else 0)
                for q in range(4):
                    m = cnt[q]
                    if m == 0:
                        continue
                    y = (2 * oy + (q >> 1)) * sh
                    x0 = (2 * ox + (q & 1)) * sw * n_ch
                    for i in range(kh):
                        d0 = np.uint64((y + i) * row_len + x0)
                        r = np.uint64(i * run)
                        j = 0
                        while j + 4 <= m:
                            g0, g1, g2, g3 = gl[q, j], gl[q, j + 1], gl[q, j + 2], gl[q, j + 3]
                            w0, w1 = w_off[q, j] + r, w_off[q, j + 1] + r
                            w2, w3 = w_off[q, j + 2] + r, w_off[q, j + 3] + r
                            for k in range(urun):
                                dxf[d0 + k] += g0 * wfl[w0 + k] + g1 * wfl[w1 + k] + g2 * wfl[w2 + k] + g3 * wfl[w3 + k]
                            j += 4
                        while j + 2 <= m:
                            g0, g1 = gl[q, j], gl[q, j + 1]
                            w0, w1 = w_off[q, j] + r, w_off[q, j + 1] + r
                            for k in range(urun):
                                dxf[d0 + k] += g0 * wfl[w0 + k] + g1 * wfl[w1 + k]
                            j += 2
                        if j < m:
                            g0 = gl[q, j]
                            w0 = w_off[q, j] + r
                            for k in range(urun):
                                dxf[d0 + k] += g0 * wfl[w0 + k]
    return dxp3
